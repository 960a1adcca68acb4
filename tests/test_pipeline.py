"""The whole pipeline on real files: accounting, privacy, atomic outputs, GeoJSON read back."""

from __future__ import annotations

import dataclasses
import json
import unicodedata

import pandas as pd
import pyogrio
import pytest
import shapely
from handmade import output_text

from geoflow.errors import OutputError
from geoflow.flows import flow_geometry
from geoflow.pipeline import (
    ANALYSED_COLUMNS,
    PreparedRecords,
    RunOptions,
    analyse,
    prepare_records,
    run_pipeline,
    write_outputs,
)
from geoflow.sample import write_sample

BROKEN = """\
Trace Number,Weapon Type,Purchaser Name,Purchase Date,FFL Name,FFL City,FFL State,\
Recovery Date,Recovery City,Recovery State,Possessor Name,Crossing
T1,Pistol,Rogelio Barajas,2007-03-01,GAT Guns,E DUNDEE,IL,2008-09-10,NVO. LAREDO,TAMPS.,\
Juan Pérez,LAREDO TX
T2,Rifle,ROGELIO  BARAJAS,2007-04-01,GAT Guns,E DUNDEE,IL,2008-10-10,CD. JUAREZ,CHIH.,\
Ana Ruiz,2304
T3,Rifle,Lupe Gómez,2007-04-01,Border Guns,HOUSTON,TX,2009-10-10,REYNOSA,TAMPS.,,
T4,Rifle,Lupe Gómez,2007-04-01,Border Guns,HOUSTON,TX,2009-10-10,ATLANTIS,ZZ,,
T5,Rifle,Lupe Gómez,2007-04-01,Nowhere Arms,GOTHAM,ZZ,2009-10-10,REYNOSA,TAMPS.,,
T6,Rifle,=HYPERLINK(1),2007-04-01,Nowhere Arms,GOTHAM,ZZ,2009-10-10,ATLANTIS,ZZ,,
T7,too,many,fields,here,a,b,c,d,e,f,g,h,i
T8,Pistol
"""
NAMES = ("Rogelio Barajas", "Juan Pérez", "Ana Ruiz", "Lupe Gómez", "HYPERLINK")
OPTIONS = RunOptions()


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "broken.csv"
    path.write_text(BROKEN, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(broken):
    return prepare_records(broken, options=OPTIONS)


@pytest.fixture(scope="module")
def result(prepared):
    return analyse(prepared, options=OPTIONS)


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    return write_outputs(result, tmp_path_factory.mktemp("out") / "run", write_map=False)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def test_row_accounting_on_a_broken_file(result, written):
    counts = json.loads((written / "manifest.json").read_text())["counts"]
    assert counts["rows_read"] == 8
    assert counts["rows_read"] == counts["rows_valid"] + counts["rows_rejected"]
    assert counts["rows_valid"] == counts["rows_placed"] + counts["rows_unplaced"]
    assert (counts["rows_rejected"], counts["rows_placed"], counts["rows_unplaced"]) == (2, 3, 3)
    assert int(result.flows["guns"].sum()) == counts["rows_placed"]
    unplaced = pd.read_csv(written / "unplaced.csv")
    assert unplaced[["line", "reason"]].values.tolist() == [
        [5, "no recovery location"],
        [6, "no dealer location"],
        [7, "no dealer or recovery location"],
    ]
    rejects = pd.read_csv(written / "rejects.csv")
    assert sorted(rejects["line"].unique()) == [8, 9]
    # tables about people and stores cover every valid record, placed or not
    assert result.tables["by_dealer"]["guns"].sum() == counts["rows_valid"]
    assert result.tables["by_us_state"]["guns"].sum() == counts["rows_valid"]


def test_a_recovery_in_another_country_is_unplaced_as_outside_mexico(tmp_path):
    """A gun recovered in Guatemala is no unknown place: unplaced.csv says it was recovered
    outside Mexico; Mexico however written (or no country) is Mexico."""
    path = tmp_path / "countries.csv"
    path.write_text(
        "Trace Number,Dealer City,Dealer State,Recovery City,Recovery State,Recovery Country\n"
        "T1,Houston,TX,Reynosa,Tamaulipas,México\n"
        "T2,Houston,TX,Guatemala City,Guatemala,Guatemala\n"
        "T3,Phoenix,AZ,Hermosillo,Sonora,MEX\n"
        "T4,Phoenix,AZ,Nowhereville,,\n"
        "T5,,,San Salvador,,El Salvador\n", encoding="utf-8")
    out = write_outputs(run_pipeline(path), tmp_path / "out", write_map=False)
    unplaced = pd.read_csv(out / "unplaced.csv")
    assert unplaced[["line", "reason", "recovery_country"]].fillna("").values.tolist() == [
        [3, "recovered outside Mexico", "Guatemala"],
        [5, "no recovery location", "MX"],  # no country given: Mexico
        [6, "recovered outside Mexico", "El Salvador"],
    ]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["rows_placed"], counts["rows_unplaced"]) == (2, 3)


def test_known_crossings_are_used_as_given(result):
    gat = result.flows[result.flows["dealer_name"] == "GAT Guns"]
    assert set(gat["route_kind"]) == {"known"}
    assert set(gat["crossing_name"]) == {"Laredo"}  # "LAREDO TX" and "2304"
    modelled = result.flows[result.flows["dealer_name"] == "Border Guns"].iloc[0]
    assert modelled["route_kind"] == "modelled"


def test_every_output_is_written_and_geojson_reads_back(result, written):
    expected = {
        "flows.geojson", "dealers.geojson", "recoveries.geojson", "crossings.geojson",
        "states.geojson", "rejects.csv", "unplaced.csv", "geocode_report.csv",
        "manifest.json", "findings.json", "findings.md",
    } | {f"tables/{t}.csv" for t in result.tables}
    manifest = json.loads((written / "manifest.json").read_text())
    assert expected <= set(manifest["files"])
    assert all((written / name).is_file() for name in manifest["files"])
    assert manifest["generator"] == "geoflow" and manifest["show_names"] is False
    assert len(manifest["input"]["sha256"]) == 64
    assert set(manifest["timings"]) >= {"read", "geocode", "crossings", "flows", "aggregate",
                                        "export"}
    for layer in ("flows", "dealers", "recoveries", "crossings", "states"):
        frame = pyogrio.read_dataframe(written / f"{layer}.geojson")
        assert len(frame) == len(getattr(result, layer)), layer
        assert frame.crs.to_epsg() == 4326
    flows = pyogrio.read_dataframe(written / "flows.geojson")
    for row in flows.itertuples():
        xy = shapely.get_coordinates(row.geometry)
        assert xy[0] == pytest.approx([row.dealer_lon, row.dealer_lat], abs=1e-6)
        assert xy[-1] == pytest.approx([row.recovery_lon, row.recovery_lat], abs=1e-6)
        assert ((abs(xy - [row.port_lon, row.port_lat]) < 1e-6).all(axis=1)).any()
    states = json.loads((written / "states.geojson").read_text())
    assert "crs" not in states
    polygon = shapely.geometry.shape(states["features"][0]["geometry"])
    rings = getattr(polygon, "geoms", [polygon])
    assert all(ring.exterior.is_ccw for ring in rings)


def test_names_are_absent_from_every_output_unless_asked(prepared, written, tmp_path):
    for path in written.rglob("*"):
        if path.is_file():
            text = _fold(output_text(path))
            for name in NAMES:
                assert _fold(name) not in text, (path.name, name)
    table = pd.read_csv(written / "tables" / "by_purchaser.csv")
    assert len(table) and table["purchaser"].str.fullmatch(r"P-[0-9a-f]{6,}").all()
    shown = RunOptions(show_names=True, min_cell=1)
    out = write_outputs(analyse(prepared, options=shown), tmp_path / "named", write_map=False)
    named = pd.read_csv(out / "tables" / "by_purchaser.csv")
    assert "Rogelio Barajas" in set(named["purchaser"])
    assert json.loads((out / "manifest.json").read_text())["show_names"] is True
    # the formula-looking name is quoted, never a live formula
    assert "'=HYPERLINK(1)" in set(named["purchaser"])


def test_pseudonyms_are_stable_across_runs(broken, result):
    again = run_pipeline(broken, options=OPTIONS)
    assert again.tables["by_purchaser"]["purchaser"].tolist() == (
        result.tables["by_purchaser"]["purchaser"].tolist())
    other_key = run_pipeline(broken, options=RunOptions(pseudonym_key="newsroom"))
    assert set(other_key.tables["by_purchaser"]["purchaser"]).isdisjoint(
        result.tables["by_purchaser"]["purchaser"])


def test_filtered_subset_is_accounted(prepared):
    subset = prepared.records[prepared.records["dealer_name"] == "GAT Guns"]
    result = analyse(prepared, records=subset, description="dealer GAT Guns")
    counts = result.manifest["counts"]
    assert counts["rows_filtered_out"] == 4
    assert counts["rows_placed"] + counts["rows_unplaced"] + counts["rows_filtered_out"] == (
        counts["rows_valid"])
    assert result.manifest["description"] == "dealer GAT Guns"


def test_a_subset_with_every_record_placed_has_an_empty_unplaced_table_of_its_own(prepared):
    """A batch entity whose records are all placed gets unplaced.csv's columns and types
    with no row; the empty table is made once, and one run changing it changes no other."""
    records = prepared.records
    placed = records[records["placed"].to_numpy(dtype=bool)]
    first = analyse(prepared, records=placed).unplaced
    with_rows = analyse(prepared).unplaced
    assert len(first) == 0 and len(with_rows) == 3
    assert first.dtypes.to_dict() == with_rows.dtypes.to_dict()
    first.loc[0] = with_rows.iloc[0]
    assert len(analyse(prepared, records=placed).unplaced) == 0


def test_every_record_given_keeps_the_geocode_report_recount_free(prepared):
    from geoflow.geocode import report_for

    # the CLI passes prepared.records when no filter applies: the report is not recounted
    # (a million rows), and recounting would give the same file
    given = analyse(prepared, records=prepared.records)
    assert given.geocode_report is prepared.geocode_report
    recount = report_for(prepared.geocode_report, prepared.records)
    assert recount.to_csv(index=False) == prepared.geocode_report.to_csv(index=False)
    subset = prepared.records.iloc[:3]
    assert given.geocode_report is not analyse(prepared, records=subset).geocode_report


@pytest.mark.parametrize("subset", [False, True])
def test_a_consuming_analysis_gives_the_same_result_and_empties_the_records(broken, subset):
    # geoflow run hands its records over (consume=True): they are dropped column by column
    # as the placed ones are copied, and every output is what a plain analysis gives
    def run(consume):
        prepared = prepare_records(broken, options=OPTIONS)
        records = prepared.records.iloc[1:] if subset else None
        return prepared, analyse(prepared, records=records, consume=consume)

    _, kept = run(consume=False)
    prepared, consumed = run(consume=True)
    assert len(prepared.records.columns) == 0
    for name in ("flows", "dealers", "recoveries", "crossings", "unplaced", "geocode_report"):
        pd.testing.assert_frame_equal(pd.DataFrame(getattr(consumed, name)),
                                      pd.DataFrame(getattr(kept, name)))
    for name, table in kept.tables.items():
        pd.testing.assert_frame_equal(consumed.tables[name], table)
    assert consumed.findings == kept.findings
    assert consumed.manifest["counts"] == kept.manifest["counts"]
    assert consumed.manifest["synthetic"] == kept.manifest["synthetic"]
    assert consumed.manifest["counts"]["rows_unplaced"] > 0  # the copy left rows out


def test_a_run_compacts_only_the_columns_its_analysis_reads_and_writes_the_same_files(
        tmp_path):
    # geoflow run prepares with compact=ANALYSED_COLUMNS: the reader's columns its analysis
    # drops stay as read (addresses: no CPU spent making them categoricals), and every file
    # it writes is the same; the texts the preparing stages group by (KEY_TEXT_COLUMNS: raw
    # places …) and those the reader reads as categoricals (makes, models, calibres: each
    # distinct text cleaned once) are categoricals either way
    source = write_sample(tmp_path / "sample.csv", rows=1_500)

    def run(compact, name):
        prepared = prepare_records(source, options=OPTIONS, compact=compact)
        categorical = {c for c in prepared.records.columns
                       if isinstance(prepared.records[c].dtype, pd.CategoricalDtype)}
        result = analyse(prepared, options=OPTIONS, consume=True)
        return categorical, write_outputs(result, tmp_path / name, write_map=False)

    every, full = run(None, "full")
    read, lean = run(ANALYSED_COLUMNS, "lean")
    left_as_read = every - read
    assert "dealer_address" in left_as_read
    assert {"manufacturer", "model", "caliber"} <= read - ANALYSED_COLUMNS
    assert not left_as_read & ANALYSED_COLUMNS
    assert {"recovery_state", "recovery_country", "crossing"} <= read - ANALYSED_COLUMNS
    files = sorted(p.relative_to(full).as_posix() for p in full.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(lean).as_posix() for p in lean.rglob("*")
                           if p.is_file())
    assert "unplaced.csv" in files  # written from columns left as read
    for name in files:
        if name != "manifest.json":  # its time and timings differ
            assert (lean / name).read_bytes() == (full / name).read_bytes(), name
    manifests = [json.loads((out / "manifest.json").read_text()) for out in (full, lean)]
    assert manifests[0]["counts"] == manifests[1]["counts"]


def test_state_level_flows(prepared):
    result = analyse(prepared, options=RunOptions(flow_level="state"))
    assert result.flows["guns"].sum() == result.manifest["counts"]["rows_placed"]
    assert set(result.flows["dealer_place"]) <= {"Illinois", "Texas"}


def test_outputs_are_atomic_and_foreign_folders_refused(result, tmp_path):
    out = tmp_path / "run"
    broken_result = dataclasses.replace(result, tables={})  # fails half-way through
    with pytest.raises(KeyError):
        write_outputs(broken_result, out, write_map=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    write_outputs(result, out, write_map=False)
    write_outputs(result, out, write_map=False)  # our own folder: replaced whole
    (out / "stale.txt").write_text("added by the user")
    with pytest.raises(OutputError, match=r"did not write \(stale\.txt\)"):
        write_outputs(result, out, write_map=False)  # not deleted without --force
    assert (out / "stale.txt").exists()
    write_outputs(result, out, write_map=False, force=True)
    assert not (out / "stale.txt").exists()
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not written by geoflow"):
        write_outputs(result, foreign, write_map=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_tables_only_analysis_skips_the_layers(prepared, result):
    quick = analyse(prepared, options=OPTIONS, layers=False)
    assert len(quick.flows) == 0 and list(quick.flows.columns) == list(result.flows.columns)
    assert quick.manifest["counts"]["rows_placed"] == result.manifest["counts"]["rows_placed"]
    for name, table in result.tables.items():
        pd.testing.assert_frame_equal(quick.tables[name], table)
    assert [f["text"] for f in quick.findings] == [f["text"] for f in result.findings]


QUALITY = """\
Trace Number,Purchaser Name,Purchase Date,FFL Name,FFL City,FFL State,Recovery Date,\
Recovery City,Recovery State,Crossing
Q1,Ana Ruiz,2007-03-01,Border Guns,HOUSTON,TX,2008-09-10,REYNOSA,TAMPS.,
Q1,Ana Ruiz,2007-03-01,Border Guns,HOUSTON,TX,2008-09-10,REYNOSA,TAMPS.,
Q2,Ana Ruiz,13/45/2007,Border Guns,HOUSTON,TX,2008-09-10,REYNOSA,TAMPS.,Atlantis
Q3,Ana Ruiz,2007-03-01,Border Guns,HOUSTON,TX,2031-01-01,REYNOSA,TAMPS.,
"""


def test_duplicates_bad_dates_and_unknown_crossings_are_accounted(tmp_path):
    source = tmp_path / "quality.csv"
    source.write_text(QUALITY, encoding="utf-8")
    result = run_pipeline(source, options=RunOptions(today=pd.Timestamp("2026-01-01").date()))
    counts, quality = result.manifest["counts"], result.manifest["quality"]
    # the repeated trace is one gun: its copy is unplaced with a reason, and accounting holds
    assert counts["rows_valid"] == counts["rows_placed"] + counts["rows_unplaced"] == 4
    assert counts["rows_placed"] == int(result.flows["guns"].sum()) == 3
    assert result.unplaced["reason"].tolist() == ["duplicate trace record"]
    assert quality["flags"]["flag_duplicate"] == 1 and quality["flags"]["flag_future_date"] == 1
    assert quality["unmatched_crossings"] == [{"crossing": "Atlantis", "records": 1}]
    assert result.manifest["input"]["path"] == "quality.csv"  # no folders of the user
    out = write_outputs(result, tmp_path / "out", write_map=False)
    warnings = pd.read_csv(out / "warnings.csv", dtype=str)
    bad = warnings[warnings["value"] == "13/45/2007"]
    assert bad[["line", "column"]].values.tolist() == [["4", "Purchase Date"]]  # header as written


def test_too_many_flows_for_geojson_go_state_level_and_all_into_parquet(
        prepared, result, written, tmp_path, monkeypatch):
    import geopandas as gpd

    from geoflow import pipeline

    small = json.loads((written / "flows.geojson").read_text(encoding="utf-8"))
    assert (small["flow_level"], small["flows_total"]) == ("place", len(result.flows))
    assert len(small["features"]) == len(result.flows)
    monkeypatch.setattr(pipeline, "FLOWS_GEOJSON_MAX", 1)
    many = analyse(prepared, options=OPTIONS)
    assert len(many.flows) > 1
    out = write_outputs(many, tmp_path / "big", write_map=False)
    shown = json.loads((out / "flows.geojson").read_text(encoding="utf-8"))
    assert shown["flow_level"] == "state" and shown["flows_total"] == len(many.flows)
    assert shown["flows_full"] == "flows_full.parquet"
    guns = [f["properties"]["guns"] for f in shown["features"]]
    assert sum(guns) == many.manifest["counts"]["rows_placed"]  # every placed gun, coarser
    assert all(f["properties"]["dealer_id"] is None for f in shown["features"])
    # the run keeps no line object per flow: its coordinates are the three points
    assert not isinstance(many.flows, gpd.GeoDataFrame)
    full = gpd.read_parquet(out / "flows_full.parquet")
    assert full.crs.to_epsg() == 4326
    assert full["flow_id"].tolist() == many.flows["flow_id"].tolist()
    assert int(full["guns"].sum()) == many.manifest["counts"]["rows_placed"]
    assert shapely.equals_exact(full.geometry.to_numpy(), flow_geometry(many.flows),
                                tolerance=1e-9).all()
    # too many to draw as arcs: each flow is its dealer, port and recovery points
    assert (shapely.get_num_points(full.geometry.to_numpy()) == 3).all()
    assert shapely.equals(shapely.get_point(full.geometry.to_numpy(), 1),
                          shapely.points(full[["port_lon", "port_lat"]].to_numpy())).all()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["flows_geojson_level"] == "state"
    assert manifest["counts"]["flows_geojson"] == len(shown["features"])


def test_many_records_in_few_flows_still_get_arcs(prepared, result, monkeypatch):
    from geoflow import pipeline

    twice = pd.concat([prepared.records] * 2, ignore_index=True)  # two guns per flow
    monkeypatch.setattr(pipeline, "FLOWS_GEOJSON_MAX", len(result.flows))
    again = analyse(prepared, options=OPTIONS, records=twice)
    assert again.manifest["counts"]["rows_placed"] > len(again.flows) == len(result.flows)
    assert again.flows_overview is None and again.flows_geojson[1] == "place"
    assert again.flows.crs.to_epsg() == 4326
    assert again.flows.geometry.geom_equals_exact(result.flows.geometry, tolerance=0).all()


def test_unique_text_columns_are_held_in_one_piece():
    """The reader parses a large file in blocks, one chunk each; a batch entity's rows taken
    from a column of many chunks made Arrow join them all first, every entity."""
    import pyarrow as pa

    from geoflow.pipeline import _compact

    dtype = pd.StringDtype("pyarrow", na_value=float("nan"))
    ids = pa.chunked_array([[f"T{i}" for i in range(j, j + 50)] for j in range(0, 200, 50)],
                           pa.large_string())
    frame = pd.DataFrame({"trace_id": pd.array(ids, dtype=dtype),
                          "state": pd.array(pa.chunked_array([["TX", "AZ"] * 50] * 2),
                                            dtype=dtype)})

    def pieces(values: pd.Series) -> int:
        text = pa.array(values.array)
        return text.num_chunks if isinstance(text, pa.ChunkedArray) else 1

    assert pieces(frame["trace_id"]) == 4
    compact = _compact(frame)
    assert compact["trace_id"].dtype == dtype
    assert compact["trace_id"].tolist() == [f"T{i}" for i in range(200)]
    assert pieces(compact["trace_id"]) == 1
    assert isinstance(compact["state"].dtype, pd.CategoricalDtype)


def test_a_small_analysis_leaves_the_heap_alone(prepared, monkeypatch, tmp_path):
    """Handing freed memory back walks the whole heap (a few ms with a large input's records
    in memory): a batch entity's small analysis and output set skip it. A large input read
    whole peaked in its read: its analysis and files keep what they free (handing it back
    only made the next stage fault the same pages in again); one read in chunks peaks in its
    analysis and hands memory back after each stage and before the files."""
    from geoflow import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "release_memory", lambda: calls.append(1))
    records = prepared.records.iloc[:3]

    def handed_back(source: PreparedRecords, name: str) -> tuple[int, int]:
        """Calls made by the analysis and by the writing of its files."""
        calls.clear()
        result = analyse(source, options=OPTIONS, records=records)
        analysed = len(calls)
        write_outputs(result, tmp_path / name, write_map=False)
        assert (tmp_path / name / "manifest.json").is_file()
        return analysed, len(calls) - analysed

    assert handed_back(prepared, "small") == (0, 0)
    monkeypatch.setattr(pipeline, "COLUMNWISE_ROWS", 1)  # the same records as a large input
    assert handed_back(prepared, "large") == (0, 0)
    chunked = dataclasses.replace(prepared, source={**prepared.source, "chunks": 2})
    analysed, written = handed_back(chunked, "chunked")
    assert analysed >= 2 and written == 1  # after each stage of the analysis, and before


def test_a_small_output_set_draws_its_map_first_and_a_large_one_beside_the_files(
        result, monkeypatch, tmp_path):
    """A few hundred records' map and stills are drawn in the writing thread (on a thread of
    their own the two took turns for the GIL: a `--jobs 1` batch about 15 % slower); from
    THREADED_MAP_ROWS placed records on, beside the data files. The files are complete
    either way."""
    import threading

    from geoflow import pipeline

    drawers = []
    draw = pipeline._write_maps

    def recorded(*args, **kwargs):
        drawers.append(threading.current_thread())
        return draw(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_write_maps", recorded)
    small = write_outputs(result, tmp_path / "small")
    monkeypatch.setattr(pipeline, "THREADED_MAP_ROWS", 1)  # the same result as a large one
    large = write_outputs(result, tmp_path / "large")
    forced = write_outputs(result, tmp_path / "forced", map_thread=False)
    assert drawers[0] is threading.current_thread()
    assert drawers[1] is not threading.current_thread()
    assert drawers[2] is threading.current_thread()
    for out in (small, large, forced):
        assert {"map.html", "map.svg", "map.png"} <= {p.name for p in out.iterdir()}
    assert (small / "map.svg").read_bytes() == (large / "map.svg").read_bytes()


@pytest.mark.parametrize("source", ["sample", "broken"])
def test_grouping_texts_read_as_categoricals_place_records_as_their_texts_do(
        tmp_path, broken, source):
    """prepare_records makes the dealers', places' and crossings' texts categoricals as soon
    as they are read: geocoding, the dealers' ids and the crossings then give the records and
    geocode report the plain texts give (the crossings' warning: test_crossings)."""
    from geoflow.crossings import assign_crossings, load_ports
    from geoflow.flows import dealer_ids
    from geoflow.geocode import geocode_traces
    from geoflow.io import read_traces
    from geoflow.pipeline import KEY_TEXT_COLUMNS, _compact

    path = write_sample(tmp_path / "s.csv") if source == "sample" else broken
    texts = read_traces(path).records
    coded = _compact(texts, only=KEY_TEXT_COLUMNS)
    made = [c for c in KEY_TEXT_COLUMNS if c in coded and isinstance(coded[c].dtype,
                                                                    pd.CategoricalDtype)]
    assert {"dealer_state", "recovery_state", "dealer_city"} <= set(made) or (
        source == "broken" and made)  # six records: only the empty columns are few texts
    ports = load_ports()
    out = {}
    for name, records in (("texts", texts), ("coded", coded)):
        placed, report = geocode_traces(records)
        placed = assign_crossings(placed, ports)
        placed["dealer_id"] = dealer_ids(placed)
        categorical = [c for c in placed if isinstance(placed[c].dtype, pd.CategoricalDtype)]
        out[name] = placed.astype(dict.fromkeys(categorical, "string")), report
    pd.testing.assert_frame_equal(out["coded"][0].drop(columns=made),
                                  out["texts"][0].drop(columns=made))
    pd.testing.assert_frame_equal(out["coded"][1], out["texts"][1])
    for column in made:
        pd.testing.assert_series_equal(out["coded"][0][column].astype("string"),
                                       out["texts"][0][column].astype("string"))


def test_input_columns_named_like_derived_ones_are_kept_apart(tmp_path):
    """A file whose own columns are named like columns geoflow derives (``dealer_id``,
    ``purchaser_id``, ``placed``, ``record_count`` …, as an export of geoflow's records has)
    keeps them as ``<name>_input``: never overwritten, never a second column of the same
    name, never read as geoflow's own (``record_count`` would weight each record)."""
    path = tmp_path / "own_columns.csv"
    path.write_text(
        "Trace Number,Purchaser Name,FFL Name,FFL City,FFL State,Recovery City,"
        "Recovery State,dealer_id,purchaser_id,placed,record_count\n"
        "T1,Rogelio Barajas,GAT Guns,E DUNDEE,IL,NVO. LAREDO,TAMPS.,X1,Y1,no,40\n"
        "T2,Ana Ruiz,GAT Guns,E DUNDEE,IL,ATLANTIS,ZZ,X2,Y2,yes,50\n",
        encoding="utf-8")
    records = prepare_records(path, options=OPTIONS).records
    assert records.columns.is_unique
    own = records[["dealer_id_input", "purchaser_id_input", "placed_input",
                   "record_count_input"]]
    assert own.to_numpy().tolist() == [["X1", "Y1", "no", "40"], ["X2", "Y2", "yes", "50"]]
    assert records["placed"].tolist() == [True, False]  # geoflow's own: ATLANTIS is unknown
    assert records["dealer_id"].str.startswith("D-").all()
    assert records["purchaser_id"].str.startswith("P-").all()
    counts = analyse(prepare_records(path, options=OPTIONS), options=OPTIONS).manifest["counts"]
    # each line one record (its record_count read as geoflow's made rows_valid 90 of 2 read)
    assert {k: counts[k] for k in ("rows_read", "rows_valid", "rows_rejected", "rows_placed",
                                   "rows_unplaced")} == {
        "rows_read": 2, "rows_valid": 2, "rows_rejected": 0, "rows_placed": 1,
        "rows_unplaced": 1}
