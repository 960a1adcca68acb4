"""The hostile-input corpus (tests/fuzz_corpus.py) and random round trips (Hypothesis).

For every case: no traceback, the documented exit code, ``rows_read`` equal to the number of
records the file was made with, and the accounting identities; a few go through the real
``geoflow run`` as well.
"""

import codecs
import csv
import io
import json
import threading

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoflow.cli import cli
from geoflow.errors import GeoflowError
from geoflow.io import DELIMITERS, PLACEHOLDERS, read_traces
from tests.fuzz_corpus import CASE_NAMES, OK, build_corpus

CORPUS_ROWS = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return {case.name: case for case in build_corpus(folder, rows=CORPUS_ROWS)}


def _read_with_timeout(path, seconds=60):
    """read_traces in a thread, so a hang (a FIFO, a runaway loop) fails the test."""
    box = {}

    def work():
        try:
            box["result"] = read_traces(path)
        except GeoflowError as exc:
            box["error"] = exc
        except Exception as exc:  # any other exception is a traceback: a bug
            box["crash"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{path}: the reader hangs"
    assert "crash" not in box, f"{path}: traceback {box.get('crash')!r}"
    return box.get("result"), box.get("error")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_corpus_case(corpus, name):
    case = corpus[name]
    result, error = _read_with_timeout(case.path)
    exit_code = OK if error is None else error.exit_code
    assert exit_code == case.exit_code, f"{name}: {error}"
    if error is not None:
        assert str(error).startswith(case.path), "a fatal message names the file"
        return
    assert result.rows_read == case.records
    assert result.rows_read == result.rows_valid + result.rows_rejected
    assert result.source["rows_valid"] == len(result.records)
    if case.rejected is not None:
        assert result.rows_rejected == case.rejected, result.rejects[["line", "reason"]]
    lines = result.records["source_line"]
    assert lines.is_unique and lines.is_monotonic_increasing
    assert not set(lines) & set(result.rejects["line"])
    reasons = result.warnings["reason"].tolist()
    for expected in case.warnings:
        assert any(r.startswith(expected) for r in reasons), (expected, reasons)


def test_line_per_record_shortcut_reads_as_the_full_scan(corpus, monkeypatch):
    """The reader's shortcut for files of one record per line (``io._line_records``: no scan
    of every quote and delimiter) gives what the full scan gives, or steps aside: the same
    records, lines, rejects and warnings on every readable hostile file."""
    from geoflow import io as reader

    readable = [case for case in corpus.values() if case.exit_code == OK]
    assert len(readable) >= 20
    for case in readable:
        shortcut = read_traces(case.path)
        with monkeypatch.context() as patch:
            patch.setattr(reader, "_line_records", lambda buf, delimiter: None)
            scanned = read_traces(case.path)
        for part in ("records", "rejects", "warnings"):
            pd.testing.assert_frame_equal(getattr(shortcut, part), getattr(scanned, part),
                                          obj=f"{case.name}: {part}")
        assert shortcut.source == scanned.source, case.name


def test_line_per_record_shortcut_on_stray_and_multiline_quotes(tmp_path, monkeypatch):
    """Quotes the shortcut must not misread: a quoted line break, a quote inside a bare cell,
    a quote left open mid-file, CRLF ends; each read as the full scan reads it."""
    from geoflow import io as reader

    header = "Trace Number,FFL State,Recovery State,Purchaser Name"
    rows = [f"T{i},TX,Jalisco,Buyer {i}" for i in range(8)]
    variants = {
        "quoted_break": [*rows[:3], 'T9,TX,Jalisco,"Two\nlines"', *rows[3:]],
        "bare_quote": [*rows[:3], 'T9,TX,Jal"isco,Buyer 9', 'T10,TX,Son"ora,Buyer 10',
                       *rows[3:]],
        "open_mid_file": [*rows[:3], 'T9,TX,"Jalisco,Buyer 9', *rows[3:], 'T11,"TX,x,y'],
        "crlf": rows,
    }
    for name, lines in variants.items():
        path = tmp_path / f"{name}.csv"
        newline = "\r\n" if name == "crlf" else "\n"
        path.write_bytes((newline.join([header, *lines]) + newline).encode())
        shortcut = read_traces(path)
        with monkeypatch.context() as patch:
            patch.setattr(reader, "_line_records", lambda buf, delimiter: None)
            scanned = read_traces(path)
        pd.testing.assert_frame_equal(shortcut.records, scanned.records, obj=name)
        pd.testing.assert_frame_equal(shortcut.rejects, scanned.rejects, obj=name)
        assert shortcut.source["rows_read"] == scanned.source["rows_read"], name
    # a plain CRLF file takes the shortcut: one record per line, lines 1 (header) to 9
    found = []
    original = reader._line_records

    def spy(buf, delimiter):
        found.append(original(buf, delimiter))
        return found[-1]

    monkeypatch.setattr(reader, "_line_records", spy)
    assert read_traces(tmp_path / "crlf.csv").source["rows_read"] == 8
    assert found[0] is not None and found[0].lines.tolist() == list(range(1, 10))


def test_the_real_cli_on_hostile_inputs(corpus, tmp_path):
    runner = CliRunner()
    for name in ("directory", "fifo", "missing", "bom_only", "fake_xlsx"):
        result = runner.invoke(cli, ["run", corpus[name].path, "-o", str(tmp_path / name)])
        assert result.exit_code == 3, (name, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.output
        assert not (tmp_path / name).exists()
    result = runner.invoke(cli, ["run", corpus["no_trace_columns"].path, "-o",
                                 str(tmp_path / "schema")])
    assert result.exit_code == 4
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = runner.invoke(cli, ["run", corpus["base_lf"].path, "-o", str(blocker / "out")])
    assert result.exit_code == 7 and "is a file" in result.output  # before any work
    # a file that breaks many rules at once still runs through, accounting exact
    out = tmp_path / "mixed"
    result = runner.invoke(cli, ["-q", "run", corpus["out_of_range_coordinates"].path,
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    counts = manifest["counts"]
    assert counts["rows_read"] == CORPUS_ROWS
    assert counts["rows_read"] == counts["rows_valid"] + counts["rows_rejected"]
    assert counts["rows_valid"] == counts["rows_placed"] + counts["rows_unplaced"] + counts.get(
        "rows_filtered_out", 0)
    flows = pd.read_parquet(out / "flows_full.parquet")
    assert int(flows["guns"].sum()) == counts["rows_placed"]
    assert len(pd.read_csv(out / "rejects.csv")["line"].unique()) == counts["rows_rejected"]


# ------------------------------------------------------------------ random round trips

#: Cell text: letters, accents (all cp1252, never UTF-8 continuation bytes), digits,
#: spaces, every delimiter, quotes and line breaks.
_ALPHABET = "abcXYZ019 áéñóüÁÉÑ,;|\t\"'\r\n.-/"
_cells = st.text(_ALPHABET, max_size=12)


def _expected(cell: str):
    text = cell.strip()
    return None if not text or text.upper() in PLACEHOLDERS else text


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(st.from_regex(r"[A-Z][0-9A-Z]{0,7}", fullmatch=True).filter(
        lambda serial: serial not in PLACEHOLDERS), _cells, _cells), min_size=1, max_size=25),
    delimiter=st.sampled_from(DELIMITERS),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16"]),
)
def test_random_records_read_back_exactly(tmp_path, rows, delimiter, quoting, ending,
                                          encoding):
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, quoting=quoting, lineterminator=ending)
    writer.writerow(["Serial Number", "Note A", "Note B"])
    writer.writerows(rows)
    path = tmp_path / "random.csv"
    path.write_bytes(text.getvalue().encode(encoding))
    result = read_traces(path)
    assert (result.rows_read, result.rows_rejected) == (len(rows), 0)
    got = result.records[["serial_number", "note_a", "note_b"]].astype(object)
    got = got.where(got.notna(), None).values.tolist()
    assert got == [[serial, _expected(a), _expected(b)] for serial, a, b in rows]
    assert result.source["delimiter"] == delimiter
    if encoding != "utf-16":
        assert codecs.lookup(result.source["encoding"].split("/")[0]).name in (
            codecs.lookup(encoding).name, "utf-8")
