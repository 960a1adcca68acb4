"""Batches (--per state|mx-state|trafficker|dealer): safe folder names, accounting, index page."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from handmade import batch_files, output_text

from geoflow.batch import assign_slugs, entity_table, render_index, safe_child, slugify
from geoflow.errors import OutputError

SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
            *(f"lpt{i}" for i in range(10))}

HOSTILE = [
    "../../x", "..", ".", "/etc/passwd", "C:\\Windows\\system32", "CON", "con", "NUL", "com1",
    "LPT9", "aux.txt", "x" * 300, "é" * 300, "", "   ", "-", "🔫🔫", "a/b", "a\\b", "a\x00b",
    "Nuevo León", "NUEVO LEON", "<script>alert(1)</script>",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_slugs_are_plain_short_and_never_reserved(name, tmp_path):
    slug = slugify(name)
    assert SLUG.fullmatch(slug), slug
    assert len(slug) <= 48
    assert slug.split("-")[0] not in RESERVED or "-" in slug  # always suffixed by the hash
    assert slug.casefold() not in RESERVED
    # the folder it names sits directly inside the output folder
    assert safe_child(tmp_path, "state", slug).parent == (tmp_path / "state").resolve()


def test_slugs_read_like_the_name():
    assert slugify("Nuevo León").startswith("nuevo-leon-")
    assert slugify("GAT Guns (East Dundee, IL)").startswith("gat-guns-east-dundee-il-")


def test_names_that_read_alike_get_different_slugs():
    names = ["Nuevo León", "NUEVO LEON", "nuevo-leon", "Nuevo  León", "x" * 300, "x" * 301]
    slugs = [slugify(n) for n in names]
    assert len(set(slugs)) == len(names)
    assert all(s.startswith("nuevo-leon-") for s in slugs[:4])


def test_same_name_always_gets_the_same_slug():
    assert slugify("Rogelio Barajas") == slugify("Rogelio Barajas")


def test_assign_slugs_are_unique_for_same_labels_different_keys():
    slugs = assign_slugs(["D-1", "D-2", "D-3"], ["Guns", "Guns", "Guns"])
    assert len(set(slugs)) == 3
    assert all(s.startswith("guns-") for s in slugs)


def test_assign_slugs_lengthens_the_hash_on_a_clash(monkeypatch):
    import geoflow.batch as batch

    real = batch.slugify

    def clashing(name, *, key=None, max_length=48, hash_length=6):
        if hash_length == 6:  # force every short hash to collide
            return "same-000000"
        return real(name, key=key, max_length=max_length, hash_length=hash_length)

    monkeypatch.setattr(batch, "slugify", clashing)
    slugs = batch.assign_slugs(["a", "b"], ["Same", "Same"])
    assert len(set(slugs)) == 2
    assert all(len(s.split("-")[-1]) == 12 for s in slugs)


@pytest.mark.parametrize("part", ["..", ".", "../x", "a/b", "CON", "nul", "com1.txt", "", "X"])
def test_safe_child_refuses_anything_but_plain_slugs(tmp_path, part):
    with pytest.raises(OutputError, match=r"unsafe folder name|would leave"):
        safe_child(tmp_path, "state", part)


def test_safe_child_refuses_a_symlink_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "state").symlink_to(outside)
    with pytest.raises(OutputError, match="would leave the output folder"):
        safe_child(root, "state", "texas-abc123")


# --------------------------------------------------------------------------- entity table


@pytest.fixture
def records() -> pd.DataFrame:
    return pd.DataFrame({
        "dealer_admin1": ["US-TX", "US-TX", "US-TX", "US-AZ", pd.NA, "US-IL"],
        "dealer_state": ["TX", "TX", "TX", "AZ", pd.NA, "IL"],
        "recovery_admin1": ["MX-TAM"] * 6,
        "purchaser_id": ["P-000001", "P-000001", "P-000002", "P-000003", "P-000001", pd.NA],
        "purchaser_name": ["A B", "A B", "C D", "E F", "A B", pd.NA],
        "dealer_id": ["D-1", "D-2", "D-2", "D-3", "D-3", "D-4"],
        "dealer_name": ["One", "Two", "Two", "Three", "Three", "Four"],
        "placed": [True, True, False, True, False, True],
    }).astype({"dealer_admin1": "string", "dealer_state": "string", "purchaser_id": "string"})


def test_entity_table_accounts_for_every_record(records):
    table, accounting = entity_table(records, "state", min_guns=2)
    assert table["key"].tolist() == ["US-TX"]
    assert table[["guns", "placed", "purchasers", "dealers"]].iloc[0].tolist() == [3, 2, 2, 2]
    assert accounting == {
        "records": 6, "entities": 1, "guns_in_entities": 3, "min_guns": 2,
        "entities_below_threshold": 2, "guns_below_threshold": 2, "records_without_entity": 1,
        "duplicate_records": 0,
    }
    assert (accounting["guns_in_entities"] + accounting["guns_below_threshold"]
            + accounting["records_without_entity"]) == accounting["records"]
    assert table["folder"].iloc[0] == f"state/{table['slug'].iloc[0]}"


def test_repeated_trace_records_count_once_in_the_index_and_min_guns(records):
    # the entity's own tables leave repeats out (aggregate.counted): so must its index row
    records = records.assign(flag_duplicate=[False, False, True, False, False, False])
    table, accounting = entity_table(records, "state", min_guns=3)
    assert table.empty  # Texas has 3 records but 2 guns: below --min-guns 3
    table, accounting = entity_table(records, "state", min_guns=2)
    assert table[["key", "guns"]].values.tolist() == [["US-TX", 2]]
    assert accounting["duplicate_records"] == 1
    assert (accounting["guns_in_entities"] + accounting["guns_below_threshold"]
            + accounting["records_without_entity"] + accounting["duplicate_records"]
            ) == accounting["records"] == 6


def test_traffickers_default_threshold_is_ten_guns(records):
    table, accounting = entity_table(records, "trafficker")
    assert table.empty
    assert accounting["min_guns"] == 10
    assert accounting["guns_below_threshold"] == 5


def test_trafficker_folders_are_named_by_pseudonym_unless_show_names(records):
    hidden, _ = entity_table(records, "trafficker", min_guns=1)
    assert all(s.startswith("p-") for s in hidden["slug"])
    shown, _ = entity_table(records, "trafficker", min_guns=1, show_names=True)
    assert shown["slug"].iloc[0].startswith("a-b-")
    # the hash is of the pseudonym either way: nothing in a hidden slug derives from the name
    assert hidden["slug"].iloc[0].split("-")[-1] == shown["slug"].iloc[0].split("-")[-1]


# --------------------------------------------------------------------------- index page

PAYLOAD = "<img src=x onerror=alert(1)></script><script>window.pwned=1</script>`${x}`\\"


def index_rows(labels):
    return pd.DataFrame({
        "label": labels, "guns": [5, 3][: len(labels)], "placed": [4, 3][: len(labels)],
        "purchasers": [2, 1][: len(labels)], "dealers": [1, 1][: len(labels)],
        "folder": [f"state/s{i}-abc123" for i in range(len(labels))],
        "href": [f"state/s{i}-abc123/map.html" for i in range(len(labels))],
    })


def test_index_escapes_every_value_and_loads_nothing():
    html = render_index(index_rows([PAYLOAD, "Texas"]), kind="state", title=PAYLOAD,
                        description=PAYLOAD, notes=[PAYLOAD])
    assert "<img" not in html
    assert "window.pwned=1</script>" not in html
    assert html.count("<script>") == 1  # only the sorting script
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_index_lists_counts_and_links():
    html = render_index(index_rows(["Texas", "Arizona"]), kind="state", title="By state",
                        totals={"guns": 10})
    assert 'href="state/s0-abc123/map.html"' in html
    assert ">50.0%<" in html and ">30.0%<" in html
    assert "2 US states · 10 guns" in html
    # counted in the singular, proper adjectives kept capitalised
    one = render_index(index_rows(["Sonora"]), kind="mx-state", title="By state",
                       totals={"guns": 1})
    assert "1 Mexican state · 1 gun in the records analysed" in one


def test_index_notes_read_right_for_one_and_for_several():
    from geoflow.batch import _accounting_notes

    one = {"entities_below_threshold": 1, "guns_below_threshold": 1, "min_guns": 3,
           "duplicate_records": 1, "records_without_entity": 1}
    assert _accounting_notes(one, kind="state") == [
        "1 more US state with fewer than 3 guns (1 gun) is not listed.",
        "1 repeated trace record is not counted again.",
        "1 gun has no US state (the geocoder could not tell which) and is in no folder."]
    several = {"entities_below_threshold": 2, "guns_below_threshold": 5, "min_guns": 3,
               "duplicate_records": 0, "records_without_entity": 4}
    assert _accounting_notes(several, kind="trafficker") == [
        "2 more purchasers with fewer than 3 guns each (5 guns) are not listed.",
        "4 guns have no purchaser and are in no folder."]


# --------------------------------------------------------------------------- whole batches

HOSTILE_PEOPLE = ["../../x", "CON", "y" * 300 + "a", "y" * 300 + "b", "Straße", "Strasse"]


def prepared_records(show_names: bool = False):
    """Hand-made prepared records (tests/handmade.py): six hostile names, 2–4 guns each."""
    from handmade import make_records

    from geoflow.pipeline import PreparedRecords, RunOptions

    spots = [("dundee", "reynosa"), ("houston", "cdmx"), ("phoenix", "hermosillo"),
             ("albert_lea", "culiacan"), ("houston", "reynosa"), ("phoenix", "culiacan")]
    rows = [
        {"purchaser": name, "dealer": f"Shop {i % 3}", "ffl": f"5-74-00{i % 3}",
         "dealer_at": spots[i][0], "recovered_at": spots[i][1], "n": 2 + i % 3}
        for i, name in enumerate(HOSTILE_PEOPLE)
    ]
    rows.append({"purchaser": "Nobody Placed", "dealer_at": None, "n": 1})
    records = make_records(rows)
    return PreparedRecords(
        records=records, rejects=pd.DataFrame(columns=["line", "column", "reason"]),
        geocode_report=pd.DataFrame(), source={"path": "hand.csv", "rows_read": len(records)},
        # min_cell 2: the 2-gun purchasers get folders (the small-count rule lists purchasers
        # with at least min_cell guns, default 3)
        timings={}, options=RunOptions(show_names=show_names, min_cell=2),
    )


def quick_write(result, folder):
    from geoflow.pipeline import write_outputs

    write_outputs(result, folder, write_map=False)


def run(kind, out, *, show_names=False, **kw):
    from geoflow.batch import run_batch

    return run_batch(prepared_records(show_names), kind=kind, out_dir=out, write=quick_write,
                     **kw)


def folder_counts(out: Path, kind: str) -> dict[str, dict]:
    return {
        sub.name: json.loads((sub / "manifest.json").read_text(encoding="utf-8"))
        for sub in sorted((out / kind).iterdir())
    }


def test_per_state_writes_one_folder_per_state_and_counts_add_up(tmp_path):
    out = tmp_path / "out"
    batch = run("state", out)
    manifests = folder_counts(out, "state")
    assert set(manifests) == set(batch.entities["slug"])
    assert len(manifests) == 4  # IL, TX, AZ, MN
    per_state = {m["description"]: m["counts"] for m in manifests.values()}
    assert "US state: Texas (US-TX)" in per_state
    analysed = [c["rows_valid"] - c["rows_filtered_out"] for c in per_state.values()]
    top = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    # every record is in exactly one state folder, or counted as having no state
    assert sum(analysed) + top["counts"]["records_without_entity"] == len(
        prepared_records().records)
    assert top["counts"]["records_without_entity"] == 1
    assert sum(c["rows_placed"] for c in per_state.values()) == batch.entities["placed"].sum()
    assert (out / "index.html").is_file()
    assert top["generator"] == "geoflow"
    assert top["options"]["flow_level"] == "place"
    assert top["input"]["path"] == "hand.csv"
    assert {e["slug"]: e["key"] for e in top["entities"]}["texas-" + slugify(
        "x", key="US-TX").split("-")[-1]] == "US-TX"


def test_entities_are_written_with_fewer_garbage_collections(tmp_path):
    """Each entity is written with the collector's first threshold raised (a batch makes
    many short-lived frames and artists), and the threshold is as it was after the batch,
    also when an entity fails."""
    import gc

    from geoflow.batch import run_batch
    from geoflow.processes import BATCH_GC_THRESHOLD

    seen = []

    def write(result, folder):
        seen.append(gc.get_threshold()[0])
        quick_write(result, folder)

    before = gc.get_threshold()
    run_batch(prepared_records(), kind="state", out_dir=tmp_path / "out", write=write)
    assert seen == [BATCH_GC_THRESHOLD] * 4 and gc.get_threshold() == before

    def fail(result, folder):
        raise ValueError("a broken writer")

    with pytest.raises(ValueError, match="a broken writer"):
        run_batch(prepared_records(), kind="state", out_dir=tmp_path / "failed", write=fail)
    assert gc.get_threshold() == before


def test_per_trafficker_folders_are_pseudonyms_by_default(tmp_path):
    out = tmp_path / "out"
    batch = run("trafficker", out, min_guns=2)
    names = [p.name for p in (out / "trafficker").iterdir()]
    assert len(names) == 6  # "Straße" and "Strasse" are different pseudonyms
    assert all(n.startswith("p-") for n in names)
    blob = "".join(output_text(p) for p in out.rglob("*") if p.is_file())
    assert "Straße" not in blob and "Strasse" not in blob and "y" * 40 not in blob
    assert batch.manifest["show_names"] is False


def test_hostile_names_stay_inside_the_output_folder(tmp_path):
    out = tmp_path / "deep" / "out"
    batch = run("trafficker", out, show_names=True, min_guns=2)
    written = sorted(p.name for p in (out / "trafficker").iterdir())
    assert len(written) == len(HOSTILE_PEOPLE)
    assert all(SLUG.fullmatch(n) and len(n) <= 48 for n in written)
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()
    assert {p.parent for p in out.rglob("manifest.json")} <= {out, *(
        out / "trafficker" / n for n in written)}
    # names that slug alike still get their own folders, and the manifest says who is where
    labels = dict(zip(batch.entities["slug"], batch.entities["label"], strict=True))
    assert sorted(labels.values()) == sorted(HOSTILE_PEOPLE)
    assert sum(s.startswith("strasse-") for s in labels) == 2
    assert sum(s.startswith("y" * 20) for s in labels) == 2


def test_min_guns_leaves_small_entities_out_but_counts_them(tmp_path):
    out = tmp_path / "out"
    batch = run("trafficker", out, min_guns=4)
    assert batch.entities["guns"].tolist() == [4, 4]
    counts = batch.manifest["counts"]
    assert counts["entities_below_threshold"] == 5
    assert counts["guns_in_entities"] + counts["guns_below_threshold"] + counts[
        "records_without_entity"] == counts["records"]
    assert "5 more purchasers with fewer than 4 guns" in (out / "index.html").read_text(
        encoding="utf-8")


def test_batch_refuses_a_folder_geoflow_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious", encoding="utf-8")
    with pytest.raises(OutputError, match="not written by geoflow"):
        run("state", out, min_guns=7)
    assert (out / "thesis.docx").read_text(encoding="utf-8") == "precious"
    run("state", out, force=True, min_guns=7)
    assert not (out / "thesis.docx").exists()
    assert (out / "index.html").exists()


def test_rerun_replaces_its_own_batch_whole(tmp_path):
    out = tmp_path / "out"
    run("trafficker", out, min_guns=4)
    run("mx-state", out, min_guns=5)
    assert not (out / "trafficker").exists()
    assert len(list((out / "mx-state").iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temp folders left


def test_failed_batch_leaves_the_previous_one(tmp_path):
    from geoflow.batch import run_batch

    out = tmp_path / "out"
    run("state", out, min_guns=7)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(result, folder):
        raise OSError("disk full")

    with pytest.raises(OutputError, match="cannot write outputs: disk full"):  # exit 7
        run_batch(prepared_records(), kind="state", out_dir=out, write=broken)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_entity_with_nothing_placed_still_gets_a_complete_output_set(tmp_path):
    from geoflow.batch import run_batch

    out = tmp_path / "out"
    prepared = prepared_records()
    some = prepared.records[prepared.records["purchaser_name"].isin(["Nobody Placed", "CON"])]
    from dataclasses import replace

    batch = run_batch(prepared, kind="trafficker", out_dir=out, records=some, min_guns=1,
                      write=quick_write, options=replace(prepared.options, min_cell=1))
    assert len(batch.entities) == 2
    lonely = batch.entities.loc[batch.entities["placed"] == 0]
    assert len(lonely) == 1
    folder = out / lonely["folder"].iloc[0]
    flows = json.loads((folder / "flows.geojson").read_text(encoding="utf-8"))
    assert flows == {"type": "FeatureCollection", "synthetic": False, "flow_level": "place",
                     "flows_total": 0, "flows_full": "flows_full.parquet", "features": []}
    assert len(pd.read_parquet(folder / "flows_full.parquet")) == 0
    counts = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["counts"]
    assert (counts["rows_placed"], counts["rows_unplaced"]) == (0, 1)
    assert ">0<" in (out / "index.html").read_text(encoding="utf-8")  # 0 placed on the map


# --------------------------------------------------------------------------- on the sample


@pytest.fixture(scope="module")
def sample_prepared():
    from geoflow.pipeline import analyse, prepare_records
    from geoflow.sample import sample_path

    prepared = prepare_records(sample_path())
    return prepared, analyse(prepared)


@pytest.mark.parametrize(("kind", "table"), [("state", "by_us_state"),
                                             ("mx-state", "by_mx_state")])
def test_sample_state_batches_add_up_to_the_whole_run(sample_prepared, kind, table):
    prepared, whole = sample_prepared
    entities, accounting = entity_table(prepared.records, kind)
    assert accounting["records"] == 2922
    assert accounting["guns_in_entities"] + accounting["records_without_entity"] == 2922
    # every state folder holds exactly the guns the whole run's table gives that state
    tab = whole.tables[table]
    known = tab[tab["state"].str.match(r"^(US|MX)-")]
    assert dict(zip(entities["key"], entities["guns"], strict=True)) == dict(
        zip(known["state"], known["guns"], strict=True))
    assert accounting["records_without_entity"] == int(tab["guns"].sum() - known["guns"].sum())
    assert entities["slug"].is_unique


def test_sample_trafficker_entities_follow_the_reporting(sample_prepared):
    prepared, _ = sample_prepared
    entities, accounting = entity_table(prepared.records, "trafficker")
    assert len(entities) == 11  # purchasers tied to 10 or more guns
    assert accounting["guns_in_entities"] + accounting["guns_below_threshold"] == 2922
    assert entities["label"].str.fullmatch(r"P-[0-9a-f]{6}").all()


def test_parallel_batch_writes_the_same_files_as_the_serial_one(tmp_path, monkeypatch):
    """--jobs 2: this process and a spawned worker share the entities (the writer makes this
    process wait until the worker has written one); the files are those of --jobs 1."""
    from handmade import write_noting_process

    from geoflow.batch import default_jobs, run_batch

    prepared = prepared_records()
    done, writers, begun = [], {}, []
    for jobs in (1, 2):
        writers[jobs] = tmp_path / f"writers-{jobs}"
        writers[jobs].mkdir()
        monkeypatch.setenv("GEOFLOW_TEST_WRITERS", str(writers[jobs]))
        if jobs == 2:
            monkeypatch.setenv("GEOFLOW_TEST_MAIN", str(os.getpid()))
        run_batch(prepared, kind="trafficker", out_dir=tmp_path / f"jobs-{jobs}", min_guns=3,
                  jobs=jobs, write=write_noting_process, progress=done.append,
                  begin=begun.append)
    serial = run_batch(prepared, kind="trafficker", out_dir=tmp_path / "serial", min_guns=3,
                       jobs=1)
    parallel = run_batch(prepared, kind="trafficker", out_dir=tmp_path / "parallel",
                         min_guns=3, jobs=2)
    labels = sorted(serial.entities["label"])
    assert len(labels) == 4 and sorted(done) == sorted(labels * 2) and begun == [4, 4]
    pids = {jobs: {note.name.split("-")[0] for note in writers[jobs].iterdir()}
            for jobs in writers}
    assert pids[1] == {str(os.getpid())} and len(list(writers[2].iterdir())) == 4
    assert pids[2] - {str(os.getpid())}, "no entity was written by a worker"
    for one, two in ((tmp_path / "jobs-1", tmp_path / "jobs-2"),
                     (tmp_path / "serial", tmp_path / "parallel")):
        one, two = batch_files(one), batch_files(two)
        assert sum(name.endswith("/map.html") for name in one) == 4
        assert one.keys() == two.keys()
        assert [name for name in one if one[name] != two[name]] == []
    assert parallel.manifest["counts"] == serial.manifest["counts"]
    assert default_jobs() >= 1


def test_small_entities_text_held_by_python_writes_the_same_files(tmp_path, monkeypatch):
    """A small entity's text is made as Python strings (quicker on small tables); its files,
    the Parquet's column types included, are those of Arrow-held text."""
    import pyarrow.parquet as pq

    from geoflow import batch

    with batch.python_text(1):
        assert pd.array(["a"], dtype="string").dtype.storage == "python"
    with batch.python_text(batch.PYTHON_TEXT_ROWS):
        assert pd.array(["a"], dtype="string").dtype.storage == "pyarrow"
    prepared = prepared_records()
    python = batch.run_batch(prepared, kind="state", out_dir=tmp_path / "python", jobs=1)
    monkeypatch.setattr(batch, "PYTHON_TEXT_ROWS", 0)  # every entity's text held by Arrow
    arrow = batch.run_batch(prepared, kind="state", out_dir=tmp_path / "arrow", jobs=1)
    one, two = batch_files(tmp_path / "python"), batch_files(tmp_path / "arrow")
    assert len(python.entities) == len(arrow.entities) > 1 and one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []
    slug = python.entities["slug"].iloc[0]
    types = pq.read_schema(tmp_path / "python" / "state" / slug / "flows_full.parquet")
    assert str(types.field("dealer_id").type) == "large_string"


def test_entity_records_keep_only_their_categories_and_write_the_same_files(
        tmp_path, monkeypatch, sample_prepared):
    """An entity's categoricals are trimmed to the values its records use (its work then
    grows with its records, not with the input's distinct purchasers and places), columns
    that shared categories still share them, and every file is as without trimming."""
    from geoflow import batch

    prepared, _ = sample_prepared
    records = prepared.records
    state = records["dealer_state"].astype("string")
    rows = np.flatnonzero(state.eq("KY").fillna(False).to_numpy())
    monkeypatch.setattr(batch, "TRIM_CATEGORIES", 0)
    part = batch.entity_records(records, rows)
    assert 0 < len(part) == len(rows) and part.index.equals(records.index[rows])
    for column in ("purchaser_id", "dealer_id", "recovery_place", "crossing_code"):
        before, after = records[column].iloc[rows], part[column]
        used = set(before.dropna())
        assert len(before.cat.categories) > len(used)  # there was something to trim
        assert list(after.cat.categories) == [c for c in before.cat.categories if c in used]
        assert after.astype("string").equals(before.astype("string"))
    for column in records.columns:  # columns that shared categories still do
        if records[column].dtype is records["purchaser_id"].dtype:
            assert part[column].dtype is part["purchaser_id"].dtype
    few = records[state.isin(["KY", "NV", "GA"]).fillna(False).to_numpy()]
    trimmed = batch.run_batch(prepared, kind="state", out_dir=tmp_path / "trimmed",
                              records=few, jobs=1)
    monkeypatch.setattr(batch, "TRIM_CATEGORIES", 10**9)
    whole = batch.run_batch(prepared, kind="state", out_dir=tmp_path / "whole", records=few,
                            jobs=1)
    one, two = batch_files(tmp_path / "trimmed"), batch_files(tmp_path / "whole")
    assert len(trimmed.entities) == len(whole.entities) == 3 and one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []

@pytest.mark.parametrize(("kind", "level", "min_cell"), [
    ("state", "place", 1), ("mx-state", "place", 1), ("trafficker", "place", 1),
    ("dealer", "place", 1), ("state", "state", 1), ("trafficker", "state", 1),
    ("state", "place", 3)])
def test_every_entitys_layers_and_tables_made_at_once_are_those_it_makes_alone(
        sample_prepared, kind, level, min_cell):
    """A batch makes the layers, most tables and the geocode reports of all its entities at
    once: each entity's rows, their order and their types are those of its own analysis
    (every cell shown with --min-cell 1; small cells withheld alike with 3)."""
    from geopandas.testing import assert_geodataframe_equal

    from geoflow import aggregate, batch, pipeline

    prepared, _ = sample_prepared
    options = replace(prepared.options, flow_level=level, min_cell=min_cell)
    records = prepared.records
    table, _ = entity_table(records, kind, min_guns=3)
    keys = batch.entity_keys(records, kind).astype("string")
    rows = [np.flatnonzero(keys.eq(key).fillna(False).to_numpy()) for key in table["key"]]
    assert len(rows) > 3
    with batch.python_text(len(records)):
        made = pipeline.batch_frames(records, rows, options, report=prepared.geocode_report,
                                     kind=kind)
    assert set(made.frames) == {*pipeline.LAYERS_MADE, *aggregate.ENTITY_TABLES,
                                "purchasers_left_out", "geocode_report"}
    for at in rows[::-(-len(rows) // 8)]:  # eight of them, the largest to the smallest
        with batch.python_text(len(at)):
            part = batch.entity_records(records, at)
            entity = (kind, "the entity")
            own = pipeline.analyse(prepared, options=options, records=part, entity=entity)
            given = pipeline.analyse(prepared, options=options, records=part, entity=entity,
                                     given=made.of(at))
        assert len(own.flows) > 0
        for name in pipeline.LAYERS_MADE:
            assert_geodataframe_equal(getattr(given, name), getattr(own, name),
                                      check_column_type=False)
        for name in (*aggregate.ENTITY_TABLES, "by_trafficker"):
            assert len(own.tables[name]) > 0 or name in ("by_purchaser", "by_trafficker")
            pd.testing.assert_frame_equal(given.tables[name], own.tables[name],
                                          check_column_type=False)
            assert given.tables[name].attrs == own.tables[name].attrs
        assert given.suppression == own.suppression
        assert given.findings == own.findings
        assert len(own.geocode_report) > 0
        pd.testing.assert_frame_equal(given.geocode_report, own.geocode_report)


def test_layers_are_made_at_once_only_where_each_entitys_own_would_be_the_same(
        tmp_path, monkeypatch):
    """Names shown (a purchaser's label is the first spelling among the records looked at)
    and large inputs make each entity's layers and tables alone; the files are the same
    either way."""
    from geoflow import batch, pipeline

    prepared = prepared_records()
    rows = [np.arange(2), np.arange(2, 4)]
    shown = replace(prepared.options, show_names=True)
    assert pipeline.batch_frames(prepared.records, rows, shown) is None
    assert pipeline.batch_frames(prepared.records, rows, prepared.options) is not None
    at_once = batch.run_batch(prepared, kind="dealer", min_guns=1, out_dir=tmp_path / "once",
                              jobs=1)
    monkeypatch.setattr(pipeline, "BATCH_FRAMES_ROWS", 0)
    assert pipeline.batch_frames(prepared.records, rows, prepared.options) is None
    alone = batch.run_batch(prepared, kind="dealer", min_guns=1, out_dir=tmp_path / "alone",
                            jobs=1)
    one, two = batch_files(tmp_path / "once"), batch_files(tmp_path / "alone")
    assert len(at_once.entities) == len(alone.entities) == 4 and one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []


def test_jobs_default_to_what_free_memory_holds():
    """Each process holds the records: a big input on a small machine gets fewer processes
    than CPUs, never none, never more than the CPUs."""
    from geoflow.batch import jobs_for_memory

    gb, mb = 2**30, 2**20
    assert jobs_for_memory(8, 16 * gb, 249 * mb) == 8  # 1M records on a 16 GB laptop
    # this process about 1.5 GB, each worker about 0.8 GB: 4 GB free holds 4 processes
    assert jobs_for_memory(8, 4 * gb, 249 * mb) == 4
    assert jobs_for_memory(8, 8 * gb, 2508 * mb) == 1  # 10M records: one process only
    assert jobs_for_memory(8, 0, 1) == 1
    assert jobs_for_memory(2, 64 * gb, 1) == 2


def test_a_file_too_big_for_memory_is_batched_by_one_process(tmp_path, caplog):
    """A 1 TB input (a sparse file: no disk used) cannot have a copy of its records per CPU:
    the default says why it takes one process; a small input gets every CPU."""
    from geoflow.batch import default_jobs

    huge = tmp_path / "huge.csv"
    with huge.open("wb") as handle:
        handle.truncate(2**40)
    small = tmp_path / "small.csv"
    small.write_text("a,b\n1,2\n")
    with caplog.at_level("INFO", logger="geoflow.batch"):
        assert default_jobs(huge) == 1
        cores = default_jobs()
        assert default_jobs(small) == cores
    if cores > 1:
        assert "writing with 1 of" in caplog.text and "--jobs sets the count" in caplog.text
    assert default_jobs(tmp_path / "missing.csv") == cores
    caplog.clear()
    with caplog.at_level("INFO", logger="geoflow.batch"):  # asked for: kept, and warned
        assert default_jobs(huge, asked=3) == 3 and default_jobs(small, asked=3) == 3
    assert caplog.text.count("--jobs 3 may run out of memory") == 1
    assert "enough for 1" in caplog.text


def test_compressed_inputs_count_as_the_text_they_hold(tmp_path):
    from geoflow.batch import text_bytes

    parquet = tmp_path / "t.parquet"
    pd.DataFrame({"a": ["x"] * 1000}).to_parquet(parquet)
    assert text_bytes(parquet) == 5 * parquet.stat().st_size
    xlsx = tmp_path / "t.xlsx"
    pd.DataFrame({"a": ["x"] * 10}).to_excel(xlsx, index=False)
    assert text_bytes(xlsx) == 1.5 * xlsx.stat().st_size
    csv = tmp_path / "t.csv"
    csv.write_text("a\nx\n")
    assert text_bytes(csv) == 4 and text_bytes(tmp_path / "none.csv") is None


def _cgroup(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_free_memory_stays_within_a_container_limit(tmp_path):
    """A container's memory limit (cgroup v2 ``memory.max`` of the process's group or of a
    parent, v1 ``memory.limit_in_bytes``) caps the memory free, inactive page cache counted
    as free; an unlimited group is ignored."""
    from geoflow.batch import free_memory

    gb = 2**30
    system = free_memory(tmp_path / "none", tmp_path / "none")
    assert system is not None and system > 0
    v2 = tmp_path / "v2"
    _cgroup(v2 / "box", memory_max=str(2 * gb), memory_current=str(int(1.5 * gb)))
    _cgroup(v2 / "box" / "job", memory_max="max", memory_current=str(gb),
            memory_stat=f"anon 1\ninactive_file {gb // 4}\n")
    (tmp_path / "v2.cgroup").write_text("0::/box/job\n")
    assert free_memory(v2, tmp_path / "v2.cgroup") == min(system, gb // 2)
    v1 = tmp_path / "v1"
    _cgroup(v1 / "memory", memory_limit_in_bytes="9223372036854771712",
            memory_usage_in_bytes=str(8 * gb))
    _cgroup(v1 / "memory" / "docker" / "c1", memory_limit_in_bytes=str(3 * gb),
            memory_usage_in_bytes=str(2 * gb),
            memory_stat=f"cache 5\ntotal_inactive_file {gb}\n")
    (tmp_path / "v1.cgroup").write_text("5:cpu,cpuacct:/docker/c1\n4:memory:/docker/c1\n"
                                        "not a cgroup line\n")
    assert free_memory(v1, tmp_path / "v1.cgroup") == min(system, 2 * gb)


def test_a_writer_workers_cannot_take_stops_the_batch_at_once(tmp_path):
    """--jobs > 1 needs a module-level ``write`` (the workers unpickle it): a lambda is refused
    before any entity is written, not left to the workers, which would wait for ever."""
    import multiprocessing
    import pickle
    import time

    from geoflow.batch import run_batch

    clock = time.monotonic()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        run_batch(prepared_records(), kind="trafficker", out_dir=tmp_path / "out", min_guns=3,
                  jobs=2, write=lambda result, folder: None)
    assert time.monotonic() - clock < 60 and not (tmp_path / "out").exists()
    gone = time.monotonic() + 10  # a worker joined by two threads may be listed a moment
    while multiprocessing.active_children() and time.monotonic() < gone:
        time.sleep(0.05)
    assert multiprocessing.active_children() == []


def test_a_worker_killed_mid_batch_is_reported_in_one_line(tmp_path, monkeypatch):
    """A worker the kernel kills (out of memory) stops the batch with geoflow's own error,
    exit code 7 on the command line, not a traceback; OUT is left as it was."""
    from handmade import write_unless_a_worker

    from geoflow.batch import run_batch

    (tmp_path / "notes").mkdir()
    monkeypatch.setenv("GEOFLOW_TEST_WRITERS", str(tmp_path / "notes"))
    monkeypatch.setenv("GEOFLOW_TEST_MAIN", str(os.getpid()))
    with pytest.raises(OutputError, match="worker process ended abruptly") as caught:
        run_batch(prepared_records(), kind="trafficker", out_dir=tmp_path / "out",
                  min_guns=3, jobs=2, write=write_unless_a_worker)
    assert caught.value.exit_code == 7 and len(list((tmp_path / "notes").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no OUT, no temp


def test_a_batch_whose_input_fails_leaves_no_worker_behind(tmp_path):
    """``run --per`` starts its workers before reading; an input that cannot be read still
    ends the command at once with its message, the workers stopped: none is left importing
    or waiting for records, and none prints a traceback once the command has gone (its
    pipes stay open until every worker has ended, so ``communicate`` sees all they write)."""
    import subprocess
    import sys
    import time

    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n", encoding="utf-8")
    clock = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "geoflow", "run", str(bad), "--per", "state",
                           "--jobs", "3", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4 and "no recognisable trace columns" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - clock < 60
    assert not (tmp_path / "out").exists()


def test_jobs_is_refused_without_per(tmp_path):
    from click.testing import CliRunner

    from geoflow.cli import cli

    result = CliRunner().invoke(cli, ["run", "--sample", "--jobs", "2", "-o",
                                      str(tmp_path / "out")], obj={})
    assert result.exit_code == 2 and "--jobs" in result.output and "--per" in result.output
    assert not (tmp_path / "out").exists()
