"""The read-ahead of a run's input (geoflow.readahead): the bytes and SHA-256 the reader takes
are the file's, a file changed since is read again, and nothing is kept once taken."""

from __future__ import annotations

import hashlib
import json
import os

import pandas as pd
import pytest
from click.testing import CliRunner

from geoflow import io, readahead
from geoflow.cli import cli
from geoflow.sample import sample_path


@pytest.fixture
def any_size(monkeypatch):
    """Read ahead files of any size (the sample is far below the real threshold)."""
    monkeypatch.setattr(readahead, "READ_AHEAD_MIN_BYTES", 1)
    yield
    readahead._pending.clear()


def _no_second_read(monkeypatch):
    def refuse(path):
        raise AssertionError(f"{path} was read again")
    monkeypatch.setattr(io, "_read_bytes", refuse)


def test_take_hands_over_the_file_and_its_digest_once(tmp_path, any_size):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,2\n" * 1000)
    assert readahead.read_ahead(path)
    data, digest = readahead.take(tmp_path / "." / "t.csv")  # the same file, another spelling
    assert data == path.read_bytes()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert readahead.take(path) is None  # handed over: nothing kept
    assert readahead._pending == {}


def test_a_file_changed_after_the_read_is_read_again(tmp_path, any_size):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,2\n")
    assert readahead.read_ahead(path)
    readahead._pending[path.resolve()][1].result()  # the read is done
    path.write_bytes(b"a,b\n1,2\n3,4\n")
    assert readahead.take(path) is None
    # same size, later modification time
    assert readahead.read_ahead(path)
    readahead._pending[path.resolve()][1].result()
    path.write_bytes(b"a,b\n9,9\n3,4\n")
    stamp = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert readahead.take(path) is None


def test_what_is_not_read_ahead(tmp_path):
    small = tmp_path / "small.csv"
    small.write_bytes(b"a\n1\n")
    assert not readahead.read_ahead(small)  # below READ_AHEAD_MIN_BYTES
    assert not readahead.read_ahead(tmp_path)  # a folder
    assert not readahead.read_ahead(tmp_path / "missing.csv")
    assert readahead.take(small) is None
    assert readahead._pending == {}


def test_a_large_csv_is_left_to_the_chunked_reader(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a\n1\n" * 100)
    monkeypatch.setattr(readahead, "READ_AHEAD_MIN_BYTES", 1)
    monkeypatch.setattr(readahead, "CHUNKED_MIN_BYTES", 200)
    assert not readahead.read_ahead(path)


def test_a_failed_read_ahead_is_read_and_reported_by_the_reader(tmp_path, any_size):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,2\n")
    assert readahead.read_ahead(path)
    readahead._pending[path.resolve()][1].result()
    path.unlink()
    assert readahead.take(path) is None
    assert readahead.read_ahead(tmp_path / "gone.csv") is False
    with pytest.raises(io.InputError, match="file not found"):
        io.read_traces(path)


def test_the_reader_takes_the_bytes_read_ahead(any_size, monkeypatch):
    expected = io.read_traces(sample_path())
    assert readahead.read_ahead(sample_path())
    _no_second_read(monkeypatch)
    got = io.read_traces(sample_path())
    pd.testing.assert_frame_equal(got.records, expected.records)
    pd.testing.assert_frame_equal(got.rejects, expected.rejects)
    assert got.source["sha256"] == hashlib.sha256(sample_path().read_bytes()).hexdigest()
    assert got.source == expected.source
    assert readahead._pending == {}


def test_run_reads_a_large_input_ahead_and_keeps_nothing(tmp_path, any_size, monkeypatch):
    source = tmp_path / "traces.csv"
    source.write_bytes(sample_path().read_bytes())
    started = []
    original = readahead.read_ahead
    monkeypatch.setattr(readahead, "read_ahead",
                        lambda path: started.append(path) or original(path))
    _no_second_read(monkeypatch)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["-q", "run", str(source), "-o", str(out)],
                                obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert started == [str(source)]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["input"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["counts"]["rows_read"] == 2922
    assert readahead._pending == {}


@pytest.mark.parametrize("extra", [["--chunk-mb", "0.2"],
                                   ["--per", "state", "--min-guns", "400", "--jobs", "1"]])
def test_chunked_reads_and_batches_are_not_read_ahead(tmp_path, any_size, monkeypatch, extra):
    source = tmp_path / "traces.csv"
    source.write_bytes(sample_path().read_bytes())
    monkeypatch.setattr(readahead, "read_ahead", lambda path: pytest.fail("read ahead"))
    result = CliRunner().invoke(cli, ["-q", "run", str(source), "-o", str(tmp_path / "out"),
                                      *extra], obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
