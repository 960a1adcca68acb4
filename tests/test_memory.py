"""glibc's allocator settings for a large input's run (``pipeline.reuse_freed_memory``):
memory a stage frees is reused rather than faulted in again, in this process and in the
processes the run starts; a user's own settings win; nothing leaks into later runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from geoflow import pipeline, readahead
from geoflow.cli import cli
from geoflow.sample import sample_path

glibc = pytest.mark.skipif(pipeline._glibc() is None, reason="glibc's mallopt only")

#: Page faults of a second round of 8 MB arrays, after a first round was freed.
_FAULTS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from geoflow import pipeline
    def round_of_arrays():
        arrays = [np.ones(1 << 20) for _ in range(24)]  # 24 x 8 MB, written
        del arrays
    round_of_arrays()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    if sys.argv[1] == "chunked":  # what a chunked read sets for the rest of its process
        pipeline.page_large_allocations()
        round_of_arrays()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        round_of_arrays()
    elif sys.argv[1] == "reuse":
        with pipeline.reuse_freed_memory():
            round_of_arrays()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            round_of_arrays()
    else:
        round_of_arrays()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                            text=True, env=env, check=True)
    return int(result.stdout)


@glibc
def test_freed_arrays_are_reused_instead_of_faulted_in_again():
    usual, reused, chunked = _faults("usual"), _faults("reuse"), _faults("chunked")
    # 192 MB of arrays are 49,152 pages: glibc's own thresholds fault thousands in again
    # (12,094 here; a map threshold alone as many), the settings none
    assert usual > 5_000
    assert reused * 10 < usual
    assert chunked * 10 < usual


@glibc
def test_processes_started_meanwhile_take_the_settings_and_nothing_stays(monkeypatch):
    for name in pipeline._MALLOC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    child = [sys.executable, "-c", "import os; print(os.environ.get('MALLOC_TRIM_THRESHOLD_'),"
             " os.environ.get('MALLOC_MMAP_THRESHOLD_'))"]
    with pipeline.reuse_freed_memory():
        inside = subprocess.run(child, capture_output=True, text=True, check=True).stdout
    after = subprocess.run(child, capture_output=True, text=True, check=True).stdout
    assert inside.split() == [str(1 << 30), str(32 << 20)]
    assert after.split() == ["None", "None"]


@glibc
def test_a_users_own_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    calls = []
    monkeypatch.setattr(pipeline, "_glibc", lambda: type("libc", (), {
        "mallopt": lambda *args: calls.append(args)})())
    with pipeline.reuse_freed_memory():
        assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
    assert calls == []
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"


def test_only_a_large_input_read_whole_runs_with_them(tmp_path, monkeypatch):
    entered = []
    real = pipeline.reuse_freed_memory

    def recording():
        entered.append(True)
        return real()

    monkeypatch.setattr(pipeline, "reuse_freed_memory", recording)
    source = tmp_path / "traces.csv"
    source.write_bytes(sample_path().read_bytes())
    runner = CliRunner()

    def run(*extra):
        out = tmp_path / f"out{len(entered)}{len(extra)}"
        result = runner.invoke(cli, ["-q", "run", str(source), "-o", str(out), *extra],
                               obj={}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads((out / "manifest.json").read_text(encoding="utf-8"))

    run()  # the sample is small: glibc's own settings
    assert entered == []
    monkeypatch.setattr(readahead, "READ_AHEAD_MIN_BYTES", 1)  # as large as it takes
    manifest = run()
    assert entered == [True]
    assert manifest["counts"]["rows_read"] == 2922
    run("--chunk-mb", "0.2")  # read in chunks: its own settings (page_large_allocations)
    assert entered == [True]
    assert not any(name in os.environ for name in pipeline._MALLOC_ENVIRONMENT)
