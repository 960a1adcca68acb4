"""Chunked reading (geoflow.chunked): the outputs equal the in-memory path's, file by file,
on the sample and on a broken file, and partial aggregates combine associatively. So do a
large input's, whose tables are built on a second thread beside its map layers."""

import codecs
import csv
import filecmp
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoflow.aggregate import build_tables
from geoflow.chunked import NameTable, combine, csv_chunks, prepare_chunk, wants_chunks
from geoflow.crossings import load_ports
from geoflow.io import DAY_FIRST_DETECTED, UNKNOWN_HEADER, SeenRecords
from geoflow.pipeline import RunOptions, prepare_records, run_pipeline, write_outputs
from geoflow.sample import sample_path

KEY = b"chunked-test-key-32-bytes-long!!"
#: Manifest members that differ by nature between two runs (clock, memory, the option).
VOLATILE = {"created", "timings", "memory_peak_mb"}


@pytest.fixture(scope="module")
def sample_csv() -> Path:
    return sample_path()


def _with_field(row: str, header: str, value: str) -> str:
    """A sample row (every field quoted) with the field under ``header`` replaced."""
    from geoflow.sample import HEADERS

    fields = next(csv.reader([row]))
    fields[HEADERS.index(header)] = value
    return ",".join(f'"{f}"' if f else "" for f in fields)


def _broken(sample: Path, folder: Path) -> Path:
    """The sample with the problems of real files spread through it: a row with a field
    missing, unparseable and future dates, a record repeated far from its first copy (in
    another chunk), blank lines, a cell holding a quoted line break, a lone-CR line end, a
    place nobody knows, a cp1252 byte in a UTF-8 file, and no line break at the end."""
    lines = sample.read_bytes().decode("utf-8").split("\n")
    header, rows = lines[0], [r for r in lines[1:] if r]
    broken = list(rows)
    broken[10] = broken[10].rsplit(",", 2)[0]  # two fields short: rejected
    broken[40] = broken[40].replace('"04/', '"13/', 1).replace('"05/', '"13/', 1)
    broken[41] = broken[41].replace("/20", "/29", 1)  # a year far ahead
    broken[300] = _with_field(broken[300], "Model", "Model\n1911")  # a quoted line break
    broken[500] = _with_field(broken[500], "Recovery City", "Nowhereville Zzq")
    broken.insert(600, "")
    broken.insert(601, "   ")
    broken.append(rows[5])  # a repeat of an early record, chunks away
    broken.append(rows[900])
    text = header + "\n" + "\n".join(broken[:700]) + "\r" + "\n".join(broken[700:])
    data = text.encode("utf-8").replace(b"Rosarito", "Ros\xe1rito".encode("cp1252"))
    assert data.count(b"Model\n1911") == 1 and data.count(b"Nowhereville") == 1
    path = folder / "broken.csv"
    path.write_bytes(data.rstrip(b"\n"))  # no line break at the end
    return path


def _outputs(source: Path, out: Path, **options) -> dict:
    result = run_pipeline(source, options=RunOptions(pseudonym_key=KEY, **options))
    write_outputs(result, out, force=True)
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _same_outputs(a: Path, b: Path) -> list[str]:
    """Files of ``a`` whose bytes differ in ``b`` (the manifest aside)."""
    differ = []
    for path in sorted(a.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            other = b / path.relative_to(a)
            if not other.is_file() or not filecmp.cmp(path, other, shallow=False):
                differ.append(path.relative_to(a).as_posix())
    return differ


def _comparable(manifest: dict) -> dict:
    out = {k: v for k, v in manifest.items() if k not in VOLATILE}
    out["options"] = {k: v for k, v in out["options"].items() if k != "chunk_mb"}
    out["input"] = {k: v for k, v in out["input"].items() if k != "chunks"}
    return out


@pytest.mark.parametrize("chunk_mb", [0.06, 0.25])
def test_chunked_outputs_equal_in_memory_on_the_sample(sample_csv, tmp_path, chunk_mb):
    whole = _outputs(sample_csv, tmp_path / "whole")
    chunked = _outputs(sample_csv, tmp_path / "chunked", chunk_mb=chunk_mb)
    assert chunked["input"]["chunks"] >= 3
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    assert _comparable(chunked) == _comparable(whole)


def test_chunked_outputs_equal_in_memory_on_a_broken_file(sample_csv, tmp_path):
    broken = _broken(sample_csv, tmp_path)
    whole = _outputs(broken, tmp_path / "whole")
    chunked = _outputs(broken, tmp_path / "chunked", chunk_mb=0.05)
    counts = chunked["counts"]
    assert chunked["input"]["chunks"] >= 10
    # the problems are there, and accounted for the same way
    assert counts["rows_rejected"] == 1
    assert counts["rows_read"] == counts["rows_valid"] + counts["rows_rejected"]
    assert counts["rows_valid"] == counts["rows_placed"] + counts["rows_unplaced"]
    assert chunked["quality"]["flags"]["flag_duplicate"] == 2
    assert counts["guns_read"] == counts["guns_placed"] + counts["guns_unplaced"] + 1
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    assert _comparable(chunked) == _comparable(whole)
    unplaced = pd.read_csv(tmp_path / "chunked" / "unplaced.csv")
    assert "repeated trace record" in " ".join(unplaced["reason"]) or (
        unplaced["reason"].str.contains("duplicate").any())
    warnings = pd.read_csv(tmp_path / "chunked" / "warnings.csv")
    assert len(warnings) >= 3  # the dates and the bad byte, at their file lines


def test_a_title_above_the_header_is_skipped_whole_and_chunked(sample_csv, tmp_path):
    # a published table's title (an unbalanced quote in it) and a blank line above the
    # header of the broken file: a large CSV's chunks read it as the whole file does
    broken = _broken(sample_csv, tmp_path)
    titled = tmp_path / "titled.csv"
    titled.write_bytes(b'Table 3: pistols, 5" barrels, 2019-2020\r\n\r\n' + broken.read_bytes())
    whole = _outputs(titled, tmp_path / "whole")
    chunked = _outputs(titled, tmp_path / "chunked", chunk_mb=0.05)
    assert chunked["input"]["chunks"] >= 10
    assert chunked["counts"]["rows_rejected"] == 1
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    assert _comparable(chunked) == _comparable(whole)
    rejects = pd.read_csv(tmp_path / "chunked" / "rejects.csv")
    plain = _outputs(broken, tmp_path / "plain")
    assert plain["counts"] == chunked["counts"]
    assert rejects["line"].tolist() == [
        line + 2 for line in pd.read_csv(tmp_path / "plain" / "rejects.csv")["line"]]
    warnings = pd.read_csv(tmp_path / "chunked" / "warnings.csv")
    assert warnings["reason"].iloc[0] == "lines 1-2 above the header skipped (a title or note)"


def test_header_warnings_come_first_whole_and_chunked(sample_csv, tmp_path):
    # a column geoflow does not use (its warning on line 1) and bad bytes further down, in
    # later chunks: warnings.csv lists them in the same order either way; the file's
    # byte-order mark (Excel's "CSV UTF-8") is the whole file's encoding, chunked too
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False).assign(Notes="x")
    data = codecs.BOM_UTF8 + frame.to_csv(index=False, lineterminator="\r\n").encode()
    path = tmp_path / "notes.csv"
    path.write_bytes(data.replace(b"Rosarito", "Ros\xe1rito".encode("cp1252")))
    whole = _outputs(path, tmp_path / "whole")
    chunked = _outputs(path, tmp_path / "chunked", chunk_mb=0.05)
    assert chunked["input"]["chunks"] >= 10
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    assert _comparable(chunked) == _comparable(whole)
    assert chunked["input"]["encoding"] == "utf-8-sig"
    warnings = pd.read_csv(tmp_path / "chunked" / "warnings.csv")
    assert warnings["reason"].iloc[0] == UNKNOWN_HEADER
    assert len(warnings) > 1 and (warnings["line"].iloc[1:] > 100).any()


def test_day_first_warning_sits_where_a_whole_read_puts_it(sample_csv, tmp_path):
    # a Mexican export (dates day-first) with a column not used and bad bytes: the header's
    # warning, then the bad bytes, then the day-first decision, chunked as whole
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False).assign(Notas="x")
    for column in ("Purchase Date", "Recovery Date"):
        day, month, year = frame[column].str.split("/", expand=True).T.to_numpy()
        frame[column] = month + "/" + day + "/" + year
    data = frame.to_csv(index=False, quoting=csv.QUOTE_ALL).encode()
    path = tmp_path / "dias.csv"
    path.write_bytes(data.replace(b"Rosarito", "Ros\xe1rito".encode("cp1252")))
    _outputs(path, tmp_path / "whole")
    chunked = _outputs(path, tmp_path / "chunked", chunk_mb=0.05)
    assert chunked["input"]["chunks"] >= 10
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    reasons = pd.read_csv(tmp_path / "chunked" / "warnings.csv")["reason"]
    kinds = reasons.drop_duplicates().tolist()
    assert kinds[0] == UNKNOWN_HEADER and kinds[-1] == DAY_FIRST_DETECTED


def test_day_first_dates_are_detected_whole_and_chunked(sample_csv, tmp_path):
    """The sample with its dates written day-first (06/05/2001 → 05/06/2001), as Mexican
    records are, read without --dayfirst: read day-first (a line-1 warning says so), so
    every table is the month-first sample's; a chunked read decides from its first chunk
    and writes the same files."""
    dates = ["Purchase Date", "Recovery Date"]
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    parts = {c: frame[c].str.extract(r"^(\d\d)/(\d\d)/(\d{4})$").astype(int) for c in dates}
    # and at the end, chunks of dates either order reads (04/05/2010): only the first
    # chunk's decision reads them right
    either = frame[(parts[dates[0]][1] <= 12) & (parts[dates[1]][1] <= 12)]
    extra = pd.concat([either] * 4, ignore_index=True)
    extra["Trace Number"] = [f"TX{i:06d}" for i in range(len(extra))]
    frame = pd.concat([frame, extra], ignore_index=True)
    frame.to_csv(tmp_path / "us.csv", index=False, quoting=csv.QUOTE_ALL)
    for column in dates:
        split = frame[column].str.split("/", expand=True)
        frame[column] = split[1] + "/" + split[0] + "/" + split[2]
    day_first = tmp_path / "dias.csv"
    frame.to_csv(day_first, index=False, quoting=csv.QUOTE_ALL)
    assert len(extra) > 400  # several chunks of 0.06 MB
    _outputs(tmp_path / "us.csv", tmp_path / "us")
    whole = _outputs(day_first, tmp_path / "whole")
    chunked = _outputs(day_first, tmp_path / "chunked", chunk_mb=0.06)
    assert chunked["input"]["chunks"] >= 3 and whole["options"]["dayfirst"] is None
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    assert _comparable(chunked) == _comparable(whole)
    for name in ("by_year", "by_purchaser", "by_trafficker", "by_dealer"):
        table = f"tables/{name}.csv"
        assert filecmp.cmp(tmp_path / "us" / table, tmp_path / "whole" / table, shallow=False)
    warnings = pd.read_csv(tmp_path / "whole" / "warnings.csv", keep_default_na=False)
    assert warnings.loc[warnings["line"] == 1, "reason"].tolist() == [DAY_FIRST_DETECTED]
    assert not (pd.read_csv(tmp_path / "us" / "warnings.csv")["line"] == 1).any()


@pytest.mark.parametrize(("source", "overview"),
                         [("sample", False), ("broken", False), ("sample", True)])
def test_tables_built_beside_the_layers_give_the_same_outputs(sample_csv, tmp_path,
                                                             monkeypatch, source, overview):
    """A large file's tables and findings are built on a second thread while its flows
    are (pipeline.THREADED_TABLES_ROWS), and its point layers follow the tables there; its
    flows (and state-level overview, ``overview``) are suppressed while the point layers
    are built: every file is the one the one-thread path writes, and the manifest still
    times both stages."""
    from geoflow import pipeline, privacy

    path = sample_csv if source == "sample" else _broken(sample_csv, tmp_path)
    if overview:  # more flows than flows.geojson holds: it gets the state-level flows
        monkeypatch.setattr(pipeline, "FLOWS_GEOJSON_MAX", 100)
    layers_in = {}  # point layer -> the threads it was built in

    def recorded(name):
        build = getattr(pipeline, name)
        monkeypatch.setattr(pipeline, name, lambda *a, **k: layers_in.setdefault(
            name, []).append(threading.current_thread()) or build(*a, **k))

    points = ("build_dealers", "build_recoveries", "build_crossings")
    for name in points:
        recorded(name)
    alone = _outputs(path, tmp_path / "one_thread")
    assert layers_in == {name: [threading.main_thread()] for name in points}
    layers_in.clear()
    monkeypatch.setattr(pipeline, "THREADED_TABLES_ROWS", 0)
    built = []  # the threads the tables are built in
    monkeypatch.setattr(pipeline, "build_tables", lambda *a, **k: built.append(
        threading.current_thread()) or build_tables(*a, **k))
    suppressed = []  # the cells suppressed beside the point layers, by their row count
    monkeypatch.setattr(pipeline, "suppress_cells", lambda frame, **k: suppressed.append(
        len(frame)) or privacy.suppress_cells(frame, **k))
    # the records consumed as `geoflow run` consumes them, column by column
    options = RunOptions(pseudonym_key=KEY)
    write_outputs(pipeline.analyse(prepare_records(path, options=options), options=options,
                                   consume=True), tmp_path / "two_threads")
    assert built and threading.main_thread() not in built
    assert layers_in == dict.fromkeys(points, built)  # after the tables, on their thread
    beside = json.loads((tmp_path / "two_threads" / "manifest.json").read_text("utf-8"))
    assert _same_outputs(tmp_path / "one_thread", tmp_path / "two_threads") == []
    assert _comparable(beside) == _comparable(alone)
    flows = [beside["counts"]["flows"], *([beside["counts"]["flows_geojson"]] * overview)]
    assert suppressed == flows
    assert alone["suppression"]["cells"]["flows"]["rows"] > 0  # small cells were there
    for manifest in (alone, beside):
        assert manifest["timings"]["aggregate"] > 0 and manifest["timings"]["flows"] > 0


def test_a_filtered_run_builds_its_tables_beside_the_layers_alike(sample_csv, tmp_path,
                                                                  monkeypatch):
    """`geoflow run --state TX` on a large file: the subset's tables on a second thread while
    the subset's and the whole records' columns are consumed give the same files."""
    from geoflow import pipeline

    options = RunOptions(pseudonym_key=KEY)

    def texas(prepared):
        return prepared.records[(prepared.records["dealer_admin1"] == "US-TX").to_numpy()]

    prepared = prepare_records(sample_csv, options=options)
    alone = pipeline.analyse(prepared, options=options, records=texas(prepared))
    write_outputs(alone, tmp_path / "one_thread")
    monkeypatch.setattr(pipeline, "THREADED_TABLES_ROWS", 0)
    prepared = prepare_records(sample_csv, options=options)
    beside = pipeline.analyse(prepared, options=options, records=texas(prepared), consume=True)
    write_outputs(beside, tmp_path / "two_threads")
    assert 0 < beside.manifest["counts"]["rows_filtered_out"] < 2922
    assert _same_outputs(tmp_path / "one_thread", tmp_path / "two_threads") == []
    assert _comparable(beside.manifest) == _comparable(alone.manifest)


def test_a_chunked_read_builds_its_tables_alone(sample_csv, monkeypatch):
    """A chunked read's peak memory is its analysis's: its tables are built before its map
    layers, in this thread, however many records it holds."""
    from geoflow import pipeline

    monkeypatch.setattr(pipeline, "THREADED_TABLES_ROWS", 0)
    built = []
    monkeypatch.setattr(pipeline, "build_tables", lambda *a, **k: built.append(
        threading.current_thread()) or build_tables(*a, **k))
    run_pipeline(sample_csv, options=RunOptions(pseudonym_key=KEY, chunk_mb=0.25))
    assert built == [threading.main_thread()]


@pytest.mark.parametrize("step", ["build_tables", "build_dealers"])
def test_an_error_on_the_tables_thread_ends_the_run(sample_csv, monkeypatch, step):
    """The tables and the point layers after them are built on a second thread: an error
    there ends the run with that error."""
    from geoflow import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError(f"{step} failed")

    monkeypatch.setattr(pipeline, "THREADED_TABLES_ROWS", 0)
    monkeypatch.setattr(pipeline, step, broken)
    with pytest.raises(RuntimeError, match=f"{step} failed"):
        run_pipeline(sample_csv, options=RunOptions(pseudonym_key=KEY))


def test_chunked_outputs_equal_in_memory_with_a_name_column_left_blank(sample_csv, tmp_path):
    """A possessor column with no name in it (an export that leaves it empty): the chunked
    read has no possessor name to code, and still reads as the whole file does."""
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    frame["Possessor Name"] = ""
    blank = tmp_path / "blank_possessors.csv"
    frame.to_csv(blank, index=False)
    whole = _outputs(blank, tmp_path / "whole")
    chunked = _outputs(blank, tmp_path / "chunked", chunk_mb=0.25)
    assert chunked["input"]["chunks"] >= 3
    assert chunked["counts"]["rows_valid"] == len(frame)
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    assert _comparable(chunked) == _comparable(whole)


class _NotingGeocoder:
    """The offline geocoder, noting every place string it is asked."""

    def __init__(self) -> None:
        from geoflow.geocode import OfflineGeocoder

        self.offline, self.asked = OfflineGeocoder(), []

    def geocode(self, queries: pd.Series, *, country: str | None = None) -> pd.DataFrame:
        self.asked += [(country, query) for query in queries]
        return self.offline.geocode(queries, country=country)


def test_a_chunked_read_geocodes_each_place_once(sample_csv, tmp_path):
    """Places repeat from chunk to chunk: each is geocoded once per input (a paid or
    rate-limited geocoder is asked as often as for the whole file), with the same outputs."""
    asked = {}
    for name, chunk_mb in (("whole", None), ("chunked", 0.06)):
        geocoder = _NotingGeocoder()
        manifest = _outputs(sample_csv, tmp_path / name, chunk_mb=chunk_mb, geocoder=geocoder)
        asked[name] = geocoder.asked
    assert manifest["input"]["chunks"] >= 10
    assert len(asked["chunked"]) == len(set(asked["chunked"])), "a place geocoded twice"
    assert sorted(asked["chunked"]) == sorted(asked["whole"])
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []


def test_chunks_cover_the_file_with_file_line_numbers(sample_csv, tmp_path):
    broken = _broken(sample_csv, tmp_path)
    data = broken.read_bytes()
    digest = hashlib.sha256()
    chunks = list(csv_chunks(broken, 20_000, digest))
    header = chunks[0].data.split(b"\n", 1)[0] + b"\n"
    assert len(chunks) > 10 and digest.hexdigest() == hashlib.sha256(data).hexdigest()
    bodies = [chunks[0].data] + [c.data.removeprefix(header) for c in chunks[1:]]
    assert b"".join(bodies) == data  # every byte once, in order
    for chunk in chunks[1:]:  # the first record of a chunk is at its file line
        first_line = chunk.line_offset + 2
        start = sum(len(b) for b in bodies[: chunks.index(chunk)])
        assert data[:start].count(b"\n") + data[:start].count(b"\r") + 1 == first_line


@pytest.mark.parametrize("before", ["", "\n \r\n" * 40_000])
def test_a_header_far_in_or_over_lines_starts_every_chunk(tmp_path, before):
    """The header record is found past 120 KB of blank lines, and when a quoted name in it
    runs over two lines (CRLF): every chunk begins with all of it, then records only, and
    the chunks hold each record of the file once, in order."""
    header = 'Trace Number,"Purchaser\r\nName",FFL State\r\n'
    rows = [f"T{i},Name {i},TX\r\n" for i in range(6000)]
    path = tmp_path / "far.csv"
    path.write_bytes((before + header + "".join(rows)).encode())
    chunks = list(csv_chunks(path, 20_000))
    head = (before + header).encode()  # what the reader skips, then the header
    assert len(chunks) > 4 and all(chunk.data.startswith(head) for chunk in chunks)
    assert all(chunk.data[len(head):].startswith(b"T") for chunk in chunks)
    assert b"".join(chunk.data[len(head):] for chunk in chunks) == "".join(rows).encode()


def test_partial_aggregates_combine_associatively(sample_csv):
    options = RunOptions(pseudonym_key=KEY)
    seen, names, ports = SeenRecords(), NameTable(), load_ports()
    parts = [prepare_chunk(chunk, sample_csv, options=options, seen=seen, names=names,
                           ports=ports, timings={}, memory={})[0]
             for chunk in csv_chunks(sample_csv, 200_000)]
    assert len(parts) >= 3
    left = combine([combine(parts[:2]), *parts[2:]])
    right = combine([parts[0], combine(parts[1:])])
    pd.testing.assert_frame_equal(left.records, right.records)
    pd.testing.assert_frame_equal(left.report, right.report)
    assert left.rows_read == right.rows_read == 2922
    assert int(left.records["record_count"].sum()) == 2922
    # the record-unique text (trace and serial numbers, makes, possessors) is gone
    assert not {"serial_number", "model", "possessor_name"} & set(left.records.columns)


def test_records_alike_collapse_to_one_row_each(sample_csv, tmp_path):
    """Memory grows with distinct combinations: 40 records × 25 copies (new trace and
    serial numbers, same everything else) become at most 40 rows, with the same outputs."""
    lines = sample_csv.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:41]
    copies = [row.replace('"T20', f'"C{n:02d}', 1).replace('","', f'","X{n:02d}', 1)
              for n in range(25) for row in rows]
    path = tmp_path / "alike.csv"
    path.write_text(header + "\n" + "\n".join(copies) + "\n", encoding="utf-8")
    options = RunOptions(pseudonym_key=KEY, chunk_mb=0.02)
    prepared = prepare_records(path, options=options)
    assert prepared.source["chunks"] >= 5
    assert int(prepared.records["record_count"].sum()) == 1000
    assert len(prepared.records) <= 40
    whole = _outputs(path, tmp_path / "whole")
    chunked = _outputs(path, tmp_path / "chunked", chunk_mb=0.02)
    assert chunked["counts"]["rows_placed"] + chunked["counts"]["rows_unplaced"] == 1000
    assert _same_outputs(tmp_path / "whole", tmp_path / "chunked") == []
    assert _comparable(chunked) == _comparable(whole)


def test_run_chunk_mb_from_the_command_line(sample_csv, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "geoflow", "--quiet", "run", str(sample_csv),
                             "-o", str(out), "--chunk-mb", "0.2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["input"]["chunks"] >= 3
    assert manifest["counts"]["rows_placed"] == 2907


def test_only_large_csvs_are_chunked_by_default(sample_csv, tmp_path):
    assert not wants_chunks(sample_csv, None)
    assert wants_chunks(sample_csv, 1.0)
    parquet = tmp_path / "t.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(parquet)
    assert not wants_chunks(parquet, 1.0)


def test_name_table_codes_are_stable_across_chunks():
    table = NameTable()
    first = table.codes(pd.Series(["Ana Ruiz", None, "Bob Lee", "Ana Ruiz"]))
    second = table.codes(pd.Series(["Bob Lee", "Álvaro Díaz", "", None]))
    assert first.tolist() == [0, -1, 1, 0]
    assert second.tolist() == [1, 2, 3, -1]  # a blank name is a name; a missing one is not
    assert table.names.tolist() == ["Ana Ruiz", "Bob Lee", "Álvaro Díaz", ""]
    names = table.categorical(np.concatenate([first, second]))
    assert list(names.categories) == sorted(table.names)  # code point order, like Python
    assert [None if pd.isna(name) else name for name in names] == [
        "Ana Ruiz", None, "Bob Lee", "Ana Ruiz", "Bob Lee", "Álvaro Díaz", "", None]


@pytest.mark.parametrize("records_from", ["guns", "record_count"])
def test_grouping_equals_pandas_groupby(records_from):
    """Collapsing rows (chunked._group, numbered keys and bincount sums) gives what pandas'
    groupby over the same keys gives: the same rows in first-appearance order, sums, least
    source line, NA keys a value like any other, lines out of order too."""
    from geoflow.chunked import RECORDS_COLUMN, _group

    rng = np.random.default_rng(7)
    n = 5_000
    place = pd.Categorical(rng.choice(["Laredo", "El Paso", None], n))
    frame = pd.DataFrame({
        "place": place,
        "year": pd.Categorical(rng.choice([2019, 2020], n)),
        "placed": rng.random(n) < 0.9,
        "purchaser_name": rng.integers(-1, 40, n),  # a name table's codes, −1 for none
        "guns": rng.integers(1, 4, n),
        "source_line": rng.permutation(n) + 2,
        RECORDS_COLUMN: rng.integers(1, 5, n),
    })
    keys = ["place", "year", "placed", "purchaser_name"]
    how = "size" if records_from == "guns" else "sum"
    for rows in (frame, frame.sort_values("source_line", ignore_index=True)):
        expected = rows.groupby(keys, dropna=False, observed=True, sort=False).agg(
            guns=("guns", "sum"), source_line=("source_line", "min"),
            **{RECORDS_COLUMN: (records_from, how)}).reset_index()
        expected = expected.astype({c: rows[c].dtype for c in keys})[list(rows.columns)]
        got = _group(rows, records_from)
        pd.testing.assert_frame_equal(got, expected)
        assert got["guns"].sum() == rows["guns"].sum()


@pytest.mark.parametrize("collide", [False, True])
def test_name_table_codes_are_exact_across_chunks(monkeypatch, collide):
    """Names get one code each, in first-seen order over every chunk (NA: −1); names are
    found by hash and compared as text, so even names sharing a hash keep their own codes."""
    if collide:  # every name with the same hash: the texts alone must tell them apart
        monkeypatch.setattr(pd.util, "hash_array",
                            lambda values, categorize=True: np.zeros(len(values), np.uint64))
    table = NameTable()
    chunks = [["ANA", "BO", None, "ANA"], ["CY", "BO", "ANA", "CY"], ["DEE", None, "CY"]]
    got = [table.codes(pd.Series(chunk, dtype="string")).tolist() for chunk in chunks]
    assert got == [[0, 1, -1, 0], [2, 1, 0, 2], [3, -1, 2]]
    assert table.names.tolist() == ["ANA", "BO", "CY", "DEE"]


def test_last_record_end_is_found_from_the_end_of_a_chunk():
    """The cut after a chunk's last whole record, searched from its end (quotes before only
    counted), is where a scan of the whole chunk puts it: quoted line breaks, CR, CRLF, a
    CR at the very end, no break at all."""
    from geoflow.chunked import _breaks_outside_quotes, _last_break

    rng = np.random.default_rng(3)
    for trial in range(500):
        size = int(rng.integers(0, 300))
        a = rng.choice(np.frombuffer(b'ab,"\n\r', dtype=np.uint8), size,
                       p=[0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
        ends = _breaks_outside_quotes(a)
        expected = int(ends[-1]) if len(ends) else -1
        assert _last_break(a, tail=int(rng.integers(1, 40))) == expected, trial


def test_sorted_positions_find_each_value_in_a_sorted_table():
    """The lookup SeenRecords and NameTable share: each value's position in the sorted
    table (the first of equal entries), −1 when absent, whatever the values' order."""
    from geoflow.io import sorted_positions

    rng = np.random.default_rng(4)
    for trial in range(200):
        table = np.sort(rng.integers(0, 60, int(rng.integers(0, 40))).astype(np.uint64))
        values = rng.integers(0, 70, int(rng.integers(0, 40))).astype(np.uint64)
        first = {int(v): i for i, v in reversed(list(enumerate(table)))}
        expected = [first.get(int(v), -1) for v in values]
        assert sorted_positions(table, values).tolist() == expected, trial
