"""A large run's map process: the same map and stills as drawn in the run's own process, its
errors raised in the run, a process that died replaced by drawing here."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.connection import wait

import pytest
from click.testing import CliRunner

from geoflow import pipeline, processes
from geoflow.cli import cli
from geoflow.pipeline import analyse, prepare_records, write_outputs
from geoflow.processes import MapProcess
from geoflow.sample import write_sample
from geoflow.scene import MapOptions, build_scene

MAP_FILES = ("map.html", "map.svg", "map.png")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    source = write_sample(tmp_path_factory.mktemp("in") / "sample.csv", rows=400)
    return analyse(prepare_records(source))


@pytest.fixture(scope="module")
def drawn_here(result, tmp_path_factory):
    return write_outputs(result, tmp_path_factory.mktemp("here") / "run")


@pytest.fixture(scope="module")
def map_process():
    with MapProcess() as drawer:
        yield drawer


def test_the_map_process_draws_the_same_files(result, drawn_here, map_process, tmp_path):
    out = write_outputs(result, tmp_path / "run", map_process=map_process)
    for name in MAP_FILES:
        assert (out / name).read_bytes() == (drawn_here / name).read_bytes(), name
    assert (out / "map.png").read_bytes().startswith(b"\x89PNG")


def test_an_error_in_the_map_process_is_raised_in_the_run(result, map_process, tmp_path):
    scene = build_scene(result, options=MapOptions())
    with pytest.raises(FileNotFoundError):
        map_process.draw(scene, MapOptions(), tmp_path / "no such folder")
    # the process is still there for the next map
    map_process.draw(scene, MapOptions(), tmp_path)
    assert all((tmp_path / name).stat().st_size > 0 for name in MAP_FILES)


def test_a_map_process_that_died_is_reported_and_the_map_drawn_here(result, drawn_here,
                                                                    tmp_path, caplog):
    scene = build_scene(result, options=MapOptions())
    with MapProcess() as drawer:
        (pid,) = drawer.pool._processes  # the one spawned process
        os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger=processes.log.name):
            drawer.draw(scene, MapOptions(), tmp_path)
    assert "drawing the map in this process" in caplog.text
    for name in MAP_FILES:
        assert (tmp_path / name).read_bytes() == (drawn_here / name).read_bytes(), name


def test_an_error_ends_the_map_process_at_once():
    """Ctrl-C or an error while the process still imports (about 2 s): it is ended, not
    waited for."""
    with pytest.raises(KeyboardInterrupt), MapProcess() as drawer:
        (process,) = drawer.pool._processes.values()
        raise KeyboardInterrupt
    assert _ended(process) == -signal.SIGTERM  # ended, not left to finish and exit (0)


def test_leaving_after_a_draw_ends_the_process_with_its_files_whole(result, drawn_here,
                                                                     tmp_path):
    """The run does not wait for the map process to tear down what it imported (0.2 s at the
    end of every large run): once :meth:`MapProcess.draw` has returned, its files are
    written, and leaving ends the process."""
    scene = build_scene(result, options=MapOptions())
    with MapProcess() as drawer:
        (process,) = drawer.pool._processes.values()
        drawer.draw(scene, MapOptions(), tmp_path)
    assert _ended(process) == -signal.SIGTERM  # ended, not shut down and waited for (0)
    for name in MAP_FILES:
        assert (tmp_path / name).read_bytes() == (drawn_here / name).read_bytes(), name


def _ended(process) -> int | None:
    """The exit code of a process that has already ended (None: still running)."""
    # its end of the sentinel pipe is closed. (is_alive() could still say True for a moment:
    # the pool's own thread may reap it, and the waitpid that loses that race reads as "not
    # yet".)
    if not wait([process.sentinel], timeout=0):
        return None
    deadline = time.monotonic() + 10
    while process.exitcode is None and time.monotonic() < deadline:  # the reaper's record
        time.sleep(0.01)
    return process.exitcode


def test_a_map_process_started_early_imports_when_idle_and_draws_the_same_files(
        result, drawn_here, tmp_path, caplog):
    """Started before a large run's read, the process imports the map's modules at the
    lowest priority; once they are in, it draws the map the run would."""
    scene = build_scene(result, options=MapOptions())
    with MapProcess(idle=True) as drawer:
        deadline = time.monotonic() + 120
        while not drawer.ready(timeout=1):
            assert time.monotonic() < deadline, "the idle imports never finished"
            time.sleep(0.05)
        (process,) = drawer.pool._processes.values()
        with caplog.at_level(logging.INFO, logger=processes.log.name):
            drawer.draw(scene, MapOptions(), tmp_path)
        assert process.is_alive()  # drawn there, not here
        assert drawer.pool.submit(gc.get_freeze_count).result() > 50_000
    assert "drawing the map in this process" not in caplog.text
    for name in MAP_FILES:
        assert (tmp_path / name).read_bytes() == (drawn_here / name).read_bytes(), name


def test_a_map_process_still_importing_when_the_map_is_due_is_ended_and_the_map_drawn_here(
        result, drawn_here, tmp_path, caplog):
    """At the lowest priority its imports wait for as long as other work keeps the CPUs
    busy: a run does not wait for them, it draws the map itself."""
    scene = build_scene(result, options=MapOptions())
    with MapProcess(idle=True) as drawer:
        (process,) = drawer.pool._processes.values()
        with caplog.at_level(logging.INFO, logger=processes.log.name):
            drawer.draw(scene, MapOptions(), tmp_path)  # its ~1 s of imports just begun
        assert _ended(process) == -signal.SIGTERM
    assert "its own process is still importing" in caplog.text
    for name in MAP_FILES:
        assert (tmp_path / name).read_bytes() == (drawn_here / name).read_bytes(), name


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_idle_imports_run_on_a_thread_of_the_lowest_priority():
    """Only the importing thread: the process's own thread draws at the normal priority."""
    policies = []

    def imports() -> None:
        processes._import_when_idle()
        policies.append(os.sched_getscheduler(0))

    loader = threading.Thread(target=imports)
    loader.start()
    loader.join()
    gc.unfreeze()  # this test process's objects: collected again
    assert policies == [os.SCHED_IDLE]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_large_run_draws_its_map_in_its_own_process(monkeypatch, tmp_path):
    """``geoflow run`` from MAP_PROCESS_ROWS records on: the map is drawn by a MapProcess,
    and every file is the one a run drawing it in its own process writes."""
    drawn = []  # one item per map the run asked a MapProcess for
    draw = MapProcess.draw
    monkeypatch.setattr(MapProcess, "draw", lambda self, *a: drawn.append(a) or draw(self, *a))
    runner = CliRunner()
    here = runner.invoke(cli, ["-q", "run", "--sample", "-o", str(tmp_path / "here")], obj={})
    assert here.exit_code == 0, here.output
    assert drawn == []
    monkeypatch.setattr(pipeline, "MAP_PROCESS_ROWS", 0)
    monkeypatch.setattr(processes, "usable_cpus", lambda: 2)  # a 1-CPU host draws here
    apart = runner.invoke(cli, ["-q", "run", "--sample", "-o", str(tmp_path / "apart")], obj={})
    assert apart.exit_code == 0, apart.output
    assert len(drawn) == 1
    files = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*")
                   if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "apart")
                           for p in (tmp_path / "apart").rglob("*") if p.is_file())
    for name in files:
        if name.name != "manifest.json":  # its timings and memory differ
            assert ((tmp_path / "here" / name).read_bytes()
                    == (tmp_path / "apart" / name).read_bytes()), name


@pytest.mark.parametrize(("rows", "ready", "started", "drawn"), [
    (0, True, [True], [True]),  # the early process draws the map
    (0, False, [True, False], [False]),  # still importing: one of the normal priority does
    (10**9, True, [True], []),  # few records: ended, the map drawn here
])
def test_a_large_input_starts_its_map_process_before_the_read(monkeypatch, tmp_path, rows,
                                                               ready, started, drawn):
    """From MAP_PROCESS_BYTES of input on, the map process starts before the read, importing
    at the lowest priority. Once the records are read it is ended if they are fewer than
    MAP_PROCESS_ROWS (the map drawn here), or if its imports are not done (CPUs kept busy by
    other work): a process importing at the normal priority then draws the map, as after a
    smaller input's read. The files are the same in every case."""
    made, drawers, ended = [], [], []
    init, close, draw = MapProcess.__init__, MapProcess.close, MapProcess.draw
    really_ready = MapProcess.ready

    def starting(self, **kw):
        made.append(kw.get("idle", False))
        init(self, **kw)

    def ready_after_the_read(self, timeout):
        """The imports not done (as beside busy CPUs), or waited for: the sample's read is
        quicker than them, and a process is only ever told to draw once they are done."""
        deadline = time.monotonic() + 120
        while ready and not really_ready(self, timeout=1):
            assert time.monotonic() < deadline, "the idle imports never finished"
        return ready

    monkeypatch.setattr(MapProcess, "__init__", starting)
    monkeypatch.setattr(MapProcess, "ready", ready_after_the_read)
    monkeypatch.setattr(MapProcess, "close", lambda self: ended.append(self.idle) or close(self))
    monkeypatch.setattr(MapProcess, "draw",
                        lambda self, *a: drawers.append(self.idle) or draw(self, *a))
    monkeypatch.setattr(pipeline, "MAP_PROCESS_BYTES", 0)
    monkeypatch.setattr(pipeline, "MAP_PROCESS_ROWS", rows)
    monkeypatch.setattr(processes, "usable_cpus", lambda: 2)
    runner = CliRunner()
    run = runner.invoke(cli, ["-q", "run", "--sample", "-o", str(tmp_path / "run")], obj={})
    assert run.exit_code == 0, run.output
    assert made == started
    assert drawers == drawn
    assert ended[0] is True  # the idle process is ended, before or after the map
    monkeypatch.setattr(pipeline, "MAP_PROCESS_BYTES", 1 << 40)
    monkeypatch.setattr(pipeline, "MAP_PROCESS_ROWS", 10**9)
    here = runner.invoke(cli, ["-q", "run", "--sample", "-o", str(tmp_path / "here")], obj={})
    assert here.exit_code == 0, here.output
    assert made == started  # no process for a small input
    for path in sorted((tmp_path / "here").rglob("*")):
        name = path.relative_to(tmp_path / "here")
        if path.is_file() and name.name != "manifest.json":
            assert path.read_bytes() == (tmp_path / "run" / name).read_bytes(), name


#: A smaller run's imports on a thread (pipeline.preload_map_modules) and its own thread
#: beginning to draw (write_map_files' imports) as soon as ``sys.argv[1]`` is being imported.
_IMPORTS_BESIDE_DRAWING = textwrap.dedent("""
    import sys, time
    from geoflow.pipeline import preload_map_modules

    loading = preload_map_modules()
    deadline = time.monotonic() + 60
    while sys.argv[1] not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.0005)
    import geoflow.render, geoflow.static
    loading.join()
    print("drawn")
""")


@pytest.mark.parametrize("begun", ["matplotlib", "jinja2", "branca", "folium", "geoflow.scene"])
def test_the_map_modules_load_beside_a_drawing_without_deadlock(begun):
    """Python raised _DeadlockError when the thread loading the map's modules had begun on
    folium (which imports branca) as the run's thread imported geoflow.render (which imports
    branca.element first): seven runs in eight. The thread imports in the drawing's order."""
    done = subprocess.run([sys.executable, "-c", _IMPORTS_BESIDE_DRAWING, begun],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["drawn"]


def test_the_map_process_keeps_its_imports_out_of_the_collector(map_process):
    """The map's process freezes what it imported (pandas, folium, matplotlib: ~130,000
    objects), so the collections of its drawing do not walk them again."""
    assert map_process.pool.submit(gc.get_freeze_count).result() > 50_000
