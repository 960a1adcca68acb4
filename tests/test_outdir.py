"""Output folders: user files, in-place folders, symlinks, full disks, stale temporaries,
and a real ``geoflow run`` stopped by SIGINT, SIGTERM and SIGKILL while it writes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from geoflow import export, pipeline
from geoflow.cli import cli
from geoflow.errors import OutputError
from geoflow.export import atomic_output_dir, check_output_dir, user_files

SAMPLE_ROWS = 120


def _geoflow_folder(out: Path, files=("manifest.json", "flows.geojson", "tables/")) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    (out / "tables" / "by_year.csv").write_text("year\n2008\n")
    (out / "flows.geojson").write_text("{}")
    (out / "manifest.json").write_text(json.dumps({"generator": "geoflow",
                                                   "files": list(files)}))
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> Path:
    from geoflow.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("input") / "traces.csv", rows=SAMPLE_ROWS)


def test_a_rerun_refuses_to_delete_files_the_user_added(tmp_path):
    out = _geoflow_folder(tmp_path / "out")
    (out / "my_edits.txt").write_text("mine")
    (out / "photos").mkdir()
    (out / "photos" / "a.jpg").write_bytes(b"jpg")
    (out / "tables" / "notes.csv").write_text("x")
    (out / ".DS_Store").write_bytes(b"")  # put there by an OS, not by the user
    assert user_files(out) == ["my_edits.txt", "photos/"]
    before = _snapshot(out)
    refused = pytest.raises(OutputError, match=r"did not write \(my_edits\.txt, photos/\)")
    with refused, atomic_output_dir(out) as temp:
        (temp / "manifest.json").write_text("{}")
    assert _snapshot(out) == before
    with atomic_output_dir(out, force=True) as temp:  # --force: replaced, as documented
        (temp / "manifest.json").write_text(json.dumps({"generator": "geoflow"}))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_the_listed_batch_folders_are_geoflows_as_a_whole(tmp_path):
    out = _geoflow_folder(tmp_path / "out", files=["index.html", "manifest.json",
                                                   "state/texas-abc123/"])
    (out / "state" / "texas-abc123" / "tables").mkdir(parents=True)
    (out / "state" / "texas-abc123" / "tables" / "by_year.csv").write_text("x")
    (out / "state" / "notes.txt").write_text("mine")
    assert user_files(out) == ["flows.geojson", "state/notes.txt", "tables/"]


def test_the_current_folder_is_written_in_place_keeping_other_files(tmp_path, monkeypatch):
    out = _geoflow_folder(tmp_path / "here", files=["manifest.json", "flows.geojson",
                                                    "tables/"])
    (out / "old_only.csv").write_text("not listed: the user's")
    monkeypatch.chdir(out)
    assert export.writes_in_place(out)
    with pytest.raises(OutputError, match=r"old_only\.csv"), atomic_output_dir("."):
        pass
    with atomic_output_dir(".", force=True) as temp:
        assert temp.parent == out  # the temporary folder is inside: no rename of "."
        (temp / "manifest.json").write_text(json.dumps({"generator": "geoflow",
                                                        "files": ["manifest.json", "a.csv"]}))
        (temp / "a.csv").write_text("new")
    # geoflow's previous outputs (flows.geojson, tables/) went; the user's file stayed
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "manifest.json", "old_only.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # nothing beside it


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


def test_a_mount_point_is_written_in_place(tmp_path):
    mount = tmp_path / "volume"
    if not _mount_tmpfs(mount, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        assert export.writes_in_place(mount)
        for n in (1, 2):  # the second run replaces the first's outputs
            with atomic_output_dir(mount) as temp:
                (temp / "manifest.json").write_text(json.dumps(
                    {"generator": "geoflow", "files": ["manifest.json", f"run{n}.csv"]}))
                (temp / f"run{n}.csv").write_text("x")
        assert sorted(p.name for p in mount.iterdir()) == ["manifest.json", "run2.csv"]
    finally:
        _umount(mount)


def test_a_symlinked_output_folder_is_followed(tmp_path):
    target = _geoflow_folder(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    with atomic_output_dir(link) as temp:
        (temp / "manifest.json").write_text(json.dumps({"generator": "geoflow", "n": 2}))
    assert link.is_symlink() and link.resolve() == target
    assert json.loads((target / "manifest.json").read_text())["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_stale_temporaries_of_a_dead_geoflow_are_removed(tmp_path):
    out = _geoflow_folder(tmp_path / "out")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    host = export._HOST
    stale = tmp_path / f".out.tmp-{host}-{pid}-abcd1234"
    running = tmp_path / f".out.tmp-{host}-{os.getpid()}-efgh5678"  # a run still going
    foreign = tmp_path / ".out.tmp-zzzz"  # not named by us: never touched
    for folder in (stale, running, foreign):
        folder.mkdir()
        (folder / "flows.geojson").write_text("{")
    with atomic_output_dir(out) as temp:
        (temp / "manifest.json").write_text(json.dumps({"generator": "geoflow"}))
    assert not stale.exists() and running.exists() and foreign.exists()


def _full_disk_write(gdf, path, **kwargs):
    """A real ENOSPC: write the layer to /dev/full."""
    with open("/dev/full", "w", encoding="utf-8") as handle:
        handle.write("{" * 100_000)
        handle.flush()


def test_a_full_disk_is_one_line_exit_7_and_out_untouched(tmp_path, small_input, monkeypatch):
    out = tmp_path / "out"
    mount = tmp_path / "small"
    small_disk = _mount_tmpfs(mount, "300k")
    try:
        if small_disk:  # a real full disk
            out = mount / "out"
        else:  # else a real ENOSPC from /dev/full
            monkeypatch.setattr(pipeline, "write_geojson", _full_disk_write)
        _geoflow_folder(out)
        before = _snapshot(out)
        result = CliRunner().invoke(cli, ["-q", "run", str(small_input), "-o", str(out)])
        assert result.exit_code == 7, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "the disk is full" in errors[0], result.output
        assert "Traceback" not in result.output
        assert _snapshot(out) == before
        assert [p.name for p in out.parent.iterdir()] == ["out"]
    finally:
        if small_disk:
            _umount(mount)


def test_a_failing_map_stops_the_run_and_leaves_out_untouched(tmp_path, small_input,
                                                               monkeypatch):
    """The map and its stills are drawn beside the data files (in a thread): their error
    still ends the run, once, and nothing half-written is put in place."""
    from geoflow import static

    def broken(scene, folder, **kwargs):
        (Path(folder) / "map.png").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(static, "write_stills", broken)
    out = _geoflow_folder(tmp_path / "out")
    before = _snapshot(out)
    result = CliRunner().invoke(cli, ["-q", "run", str(small_input), "-o", str(out)])
    assert result.exit_code == 7, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0], result.output
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_unwritable_or_impossible_output_folders_fail_before_any_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(a_file / "out")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output_dir(a_file)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="not writable"):
            check_output_dir(locked / "out")


def test_directory_fifo_and_missing_inputs_exit_3(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo, tmp_path / "missing.csv"):
        result = CliRunner().invoke(cli, ["run", str(path), "-o", str(tmp_path / "o")])
        assert result.exit_code == 3, result.output
        assert result.output.startswith(f"error: {path}: ")


# ------------------------------------------------------------------ signals, real processes

#: Runs the real CLI entry point, with every CSV write announced and slowed down, so the
#: test can signal it while it writes (only the timing is changed).
_SLOW_WRITER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    # a shell starts background jobs with Ctrl-C ignored, and children inherit that: put it
    # back, as in a terminal, so the test means the same wherever the suite runs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import geoflow.pipeline as pipeline
    real, marker = pipeline.write_csv, Path(sys.argv[1])
    def slow(frame, path, **options):
        real(frame, path, **options)
        marker.touch()
        # in short sleeps: a signal the kernel gave another of the process's threads is
        # handled by the main thread only when it next runs Python code (one long sleep
        # went on to its end: the run then looked stuck)
        for _ in range(600):
            time.sleep(0.1)
    pipeline.write_csv = slow
    from geoflow.cli import main
    sys.argv = ["geoflow", *sys.argv[2:]]
    main()
""")


def test_signals_mid_write_leave_out_and_its_folder_as_they_were(tmp_path, small_input):
    cases = {"int": signal.SIGINT, "term": signal.SIGTERM, "kill": signal.SIGKILL}
    procs = {}
    for name in cases:  # run the three at once
        home = tmp_path / name
        out = _geoflow_folder(home / "out")
        marker = home / "writing"
        procs[name] = (home, out, marker, _snapshot(out), subprocess.Popen(
            [sys.executable, "-c", _SLOW_WRITER, str(marker), "-q", "run", str(small_input),
             "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    try:
        deadline = time.monotonic() + 150
        for name, (home, _, marker, _, proc) in procs.items():
            while not marker.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the {name} run never started writing")
                time.sleep(0.05)
            temps = [p.name for p in home.iterdir() if p.name.startswith(".out.tmp-")]
            assert len(temps) == 1  # it is mid-write, in a temporary folder beside OUT
            proc.send_signal(cases[name])
        for name, (home, out, _, before, proc) in procs.items():
            _, stderr = proc.communicate(timeout=60)
            assert _snapshot(out) == before, name  # OUT untouched
            left = sorted(p.name for p in home.iterdir())
            if name == "kill":  # nothing can clean up after SIGKILL …
                assert proc.returncode == -signal.SIGKILL
                assert len([n for n in left if n.startswith(".out.tmp-")]) == 1
                with atomic_output_dir(out) as temp:  # … but the next run does
                    (temp / "manifest.json").write_text(json.dumps({"generator": "geoflow"}))
                assert sorted(p.name for p in home.iterdir()) == ["out", "writing"]
                continue
            assert proc.returncode == (130 if name == "int" else 143), stderr
            assert left == ["out", "writing"], name  # the temporary folder is gone
            assert "Traceback" not in stderr
            assert stderr.strip().splitlines()[-1].startswith("error: interrupted (")
    finally:  # a failure leaves no process or open pipe to trouble later tests
        for *_, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


#: Loaded at start-up by every Python process of the batch below, the spawned workers
#: included: each CSV write is announced (one marker per process) and then stalls.
_STALLING_SITE = textwrap.dedent("""
    import os, signal, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see above)
    import geoflow.pipeline as pipeline
    real = pipeline.write_csv
    def stall(frame, path, **options):
        real(frame, path, **options)
        Path(os.environ["GEOFLOW_TEST_MARKERS"], str(os.getpid())).touch()
        for _ in range(1200):  # 120 s in short sleeps, as _SLOW_WRITER's (see there)
            time.sleep(0.1)
    pipeline.write_csv = stall
""")


def _session_processes(session: int) -> list[int]:
    """Live processes of a session (Linux /proc; the batch's workers inherit its session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_interrupting_a_parallel_batch_stops_it_and_its_workers(tmp_path, small_input):
    """Ctrl-C reaches a terminal's whole process group, ``kill`` the main process only; either
    way the batch stops at once (not after every queued entity), leaving OUT as it was."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_STALLING_SITE)
    cases = {"int": signal.SIGINT, "term": signal.SIGTERM}
    procs = {}
    for name in cases:
        home, markers = tmp_path / name, tmp_path / name / "markers"
        markers.mkdir(parents=True)
        out = _geoflow_folder(home / "out")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GEOFLOW_TEST_MARKERS": str(markers),
               "PYTHONPATH": os.pathsep.join(
                   path for path in (str(site), os.environ.get("PYTHONPATH")) if path)}
        procs[name] = (home, out, markers, _snapshot(out), subprocess.Popen(
            [sys.executable, "-c", "import sys; from geoflow.cli import main; "
             "sys.argv = ['geoflow', *sys.argv[1:]]; main()",
             "-q", "run", str(small_input), "--per", "state", "--jobs", "3", "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True))
    try:
        deadline = time.monotonic() + 240
        for name, (_, _, markers, _, proc) in procs.items():
            # --jobs 3: this process and its two workers each write an entity (and stall)
            while len(list(markers.iterdir())) < 3:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the {name} batch never had two workers writing: "
                                f"{proc.communicate()[1][-2000:]}")
                time.sleep(0.05)
            assert str(proc.pid) in {m.name for m in markers.iterdir()}
            if name == "int":
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            else:
                proc.send_signal(signal.SIGTERM)
        for name, (home, out, _, before, proc) in procs.items():
            # each queued entity would stall two minutes: a batch that finished its queue
            # first would run into this timeout
            _, stderr = proc.communicate(timeout=90)
            assert proc.returncode == (130 if name == "int" else 143), stderr
            assert "Traceback" not in stderr, stderr
            assert stderr.strip().splitlines()[-1].startswith("error: interrupted (")
            assert _snapshot(out) == before, name  # OUT untouched
            assert sorted(p.name for p in home.iterdir()) == ["markers", "out"]  # no temp
            # no worker left behind (each would stall two minutes); multiprocessing's resource
            # tracker, also of the session, leaves by itself once the main process is gone
            gone = time.monotonic() + 15
            while _session_processes(proc.pid) and time.monotonic() < gone:
                time.sleep(0.1)
            assert _session_processes(proc.pid) == [], name
    finally:
        for *_, proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


#: Runs the real CLI entry point; the batch's process kills itself (SIGKILL: nothing can
#: clean up, as after a power cut or a closed session) as it starts its third output set.
_KILLED_BATCH = textwrap.dedent("""
    import os, signal, sys
    import geoflow.batch as batch
    real, calls = batch.write_entity, []
    def write_entity(*args, **kwargs):
        calls.append(kwargs["folder"].name)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        real(*args, **kwargs)
    batch.write_entity = write_entity
    from geoflow.cli import main
    sys.argv = ["geoflow", *sys.argv[1:]]
    main()
""")


#: Loaded at start-up by every Python process of the batch below: a batch worker (spawned with
#: ``--multiprocessing-fork``) announces itself, then takes 3 s more to start.
_SLOW_WORKER_SITE = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see above)
    if "--multiprocessing-fork" in sys.orig_argv:
        Path(os.environ["GEOFLOW_TEST_MARKERS"], str(os.getpid())).touch()
        time.sleep(3)
""")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ctrl_c_while_the_workers_start_ends_the_batch_in_one_line(tmp_path, small_input):
    """``run --per`` starts its workers before it reads; Ctrl-C while they start (before they
    ignore it) ends the command with its one line, exit 130, no worker traceback."""
    site, markers = tmp_path / "site", tmp_path / "markers"
    site.mkdir()
    markers.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_WORKER_SITE)
    env = {**os.environ, "GEOFLOW_TEST_MARKERS": str(markers), "PYTHONPATH": os.pathsep.join(
        path for path in (str(site), os.environ.get("PYTHONPATH")) if path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoflow", "-q", "run", str(small_input), "--per", "state",
         "--jobs", "3", "-o", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(markers.iterdir())) < 2:  # both workers are starting
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the workers never started: {proc.communicate()[1][-2000:]}")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        lines = stderr.strip().splitlines()
        assert lines[-1] == ("error: interrupted (Ctrl-C); no half-written output folder was "
                             "put in place")
        assert not [line for line in lines if "Traceback" in line or "KeyboardInterrupt" in line
                    or "sitecustomize" in line], stderr
        assert not (tmp_path / "out").exists()
        gone = time.monotonic() + 15
        while _session_processes(proc.pid) and time.monotonic() < gone:
            time.sleep(0.1)
        assert _session_processes(proc.pid) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_of_a_killed_parallel_batch_end_with_it(tmp_path, small_input):
    """``kill -9`` of a --jobs 3 batch (as it starts its third output set in its own
    process): its two workers end too, instead of waiting for entities for ever."""
    args = ["-q", "run", str(small_input), "--per", "state", "--jobs", "3", "-o",
            str(tmp_path / "out")]
    killed = subprocess.Popen([sys.executable, "-c", _KILLED_BATCH, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        _, stderr = killed.communicate(timeout=300)  # the workers' pipes close as they end
        assert killed.returncode == -signal.SIGKILL, stderr
        assert "Traceback" not in stderr, stderr
        gone = time.monotonic() + 15
        while _session_processes(killed.pid) and time.monotonic() < gone:
            time.sleep(0.1)
        assert _session_processes(killed.pid) == []
    finally:
        for pid in _session_processes(killed.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_batch_resumes_where_it_stopped_and_ends_as_a_whole_run(
        tmp_path, small_input, monkeypatch):
    from handmade import batch_files

    from geoflow import batch

    home = tmp_path / "killed"
    args = ["run", str(small_input), "--per", "state", "--min-guns", "5", "--jobs", "1", "-o"]
    killed = subprocess.run([sys.executable, "-c", _KILLED_BATCH, "-q", *args,
                             str(home / "out")], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [temp] = [p for p in home.iterdir() if p.name.startswith(".out.tmp-")]
    kept = sorted(p.name for p in (temp / "state").iterdir()
                  if (p / "manifest.json").is_file())
    assert len(kept) == 2 and not (home / "out").exists()
    other = tmp_path / "other"
    shutil.copytree(temp, other / temp.name)  # the same killed batch, beside another OUT

    written = []
    real = batch.write_entity

    def recording(*args, folder, **kwargs):
        written.append(folder.name)
        real(*args, folder=folder, **kwargs)

    monkeypatch.setattr(batch, "write_entity", recording)
    resumed = CliRunner().invoke(cli, ["-q", *args, str(home / "out"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "--resume: 2 output sets kept from the killed batch" in resumed.output
    folders = sorted(p.name for p in (home / "out" / "state").iterdir())
    assert sorted(written + kept) == folders  # each set written once, by one run or the other
    assert sorted(p.name for p in home.iterdir()) == ["out"]  # taken over, nothing left
    whole = CliRunner().invoke(cli, ["-q", *args, str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert batch_files(home / "out") == batch_files(tmp_path / "whole")

    # other options (a title): the killed batch's sets are not theirs, so every set is
    # written and the killed batch's folder is removed, as a run without --resume does
    written.clear()
    fresh = CliRunner().invoke(cli, ["-q", *args, str(other / "out"), "--resume",
                                     "--title", "Another title"])
    assert fresh.exit_code == 0, fresh.output
    assert "no killed batch of the same input, options and entities" in fresh.output
    assert sorted(written) == folders
    assert sorted(p.name for p in other.iterdir()) == ["out"]
    usage = CliRunner().invoke(cli, ["run", str(small_input), "--resume", "-o",
                                     str(tmp_path / "single")])
    assert usage.exit_code == 2 and "--per" in usage.output
