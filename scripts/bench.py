"""Benchmark ``geoflow run`` against the floor — pandas reading the same CSV with pyarrow.

For each size (100k, 1M, 10M records of the synthetic sample, written once into ``--data``),
runs in alternation, ``--rounds`` times, two child processes of this one:

- the floor: ``pandas.read_csv(path, engine="pyarrow", dtype_backend="pyarrow")``;
- ``geoflow run PATH -o OUT --force`` (all default outputs, map included).

Each child's wall time and peak resident memory come from ``os.wait4`` (the child alone).
The machine is shared and noisy, so the table gives medians and the median of the paired
ratios (each geoflow run divided by the floor run next to it); the per-stage seconds and
peak memory come from the run's ``manifest.json`` (``timings``, ``memory_peak_mb``).
Below the table, each side's spread and its system time: on a Linux with transparent huge
pages on ``madvise``, the floor (pyarrow's allocator asks for huge pages) took 0.7 s or
1.4-3.4 s on one host, by how long the kernel took to find 2 MB pages, and 0.9-1.3 s on
another whose memory was not fragmented (huge pages cost it more system time than they
saved). So on Linux each round also runs the floor with huge pages off for its process
(``STEADY_FLOOR``: 0.64-1.01 s), pandas under the memory policy geoflow runs with (glibc's
allocator, no huge pages): a steadier and stricter comparison than the floor as issue 13
names it, printed as the median of its paired ratios; and the fastest run against the
fastest floor.
Targets (issue 13): at 1M, run ≤ 6× the floor's wall time (the table's ratio column: pandas
as it comes) and ≤ 1.5× its peak memory; at 10M, peak memory under 4 GB.

Usage::

    python scripts/bench.py --size 100k            # quick
    python scripts/bench.py --size 1m --rounds 3   # the issue's table
    python scripts/bench.py --size 100k 1m 10m --keep /tmp/bench-out
    python scripts/bench.py --size 1m --chunk-mb 64   # the chunked path (geoflow.chunked)

CSVs of 1 GB or more (the 10M file) are read in chunks anyway: 256 MB unless ``--chunk-mb``.

geoflow's bytecode is compiled first (``compileall``), as ``pip install`` compiles an
installed package's: run from a checkout where Python writes none (``PYTHONDONTWRITEBYTECODE``,
set on the machine the figures come from), each run compiled the modules changed since the
last compilation again (31 modules: 0.24 s; 1M runs, six alternated: 6.39 s against 6.27 s
compiled), a cost no installed geoflow pays.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
STAGES = ("read", "geocode", "crossings", "collapse", "aggregate", "flows", "export")
FLOOR = ("import sys, pandas; pandas.read_csv(sys.argv[1], engine='pyarrow', "
         "dtype_backend='pyarrow')")
#: The floor with transparent huge pages off for its process (Linux ``prctl``
#: PR_SET_THP_DISABLE, 41): its time then no longer depends on how fragmented memory is.
STEADY_FLOOR = "import ctypes; ctypes.CDLL(None).prctl(41, 1, 0, 0, 0); " + FLOOR


#: The checkout this script belongs to: its geoflow is the one measured (``python -m``
#: would otherwise take the geoflow of whatever folder the benchmark is started from).
ROOT = Path(__file__).resolve().parents[1]


def _child(argv: list[str]) -> tuple[float, float, float]:
    """Run ``argv``; return (wall seconds, peak resident MB, system seconds) of that child."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
    if process.returncode:
        raise SystemExit(f"{argv[:4]} failed ({process.returncode}):\n{error[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_stime


def _input(data: Path, size: str) -> Path:
    path = data / f"sample-{size}.csv"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        subprocess.run([sys.executable, "-m", "geoflow", "sample", "--rows",
                        str(SIZES[size]), "-o", str(path)], check=True)
    return path


def bench(path: Path, out: Path, rounds: int, extra: tuple[str, ...] = ()) -> dict:
    """Alternate floor and geoflow runs; medians, paired ratios, the last manifest."""
    floors, steady, runs, manifest = [], [], [], {}
    for _ in range(rounds):
        floors.append(_child([sys.executable, "-c", FLOOR, str(path)]))
        if sys.platform.startswith("linux"):
            steady.append(_child([sys.executable, "-c", STEADY_FLOOR, str(path)]))
        runs.append(_child([sys.executable, "-m", "geoflow", "--quiet", "run", str(path),
                            "-o", str(out), "--force", *extra]))
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    largest = max((p.stat().st_size, p.relative_to(out).as_posix())
                  for p in out.rglob("*") if p.is_file())
    return {
        "floor_wall": statistics.median(f[0] for f in floors),
        "floor_mb": statistics.median(f[1] for f in floors),
        "run_wall": statistics.median(r[0] for r in runs),
        "run_mb": statistics.median(r[1] for r in runs),
        "ratio_wall": statistics.median(r[0] / f[0] for r, f in zip(runs, floors, strict=True)),
        "ratio_mb": statistics.median(r[1] / f[1] for r, f in zip(runs, floors, strict=True)),
        "floors": floors,
        "steady": steady,
        "runs": runs,
        "manifest": manifest,
        "largest": largest,
    }


def report(size: str, path: Path, result: dict) -> None:
    manifest = result["manifest"]
    timings, memory = manifest.get("timings", {}), manifest.get("memory_peak_mb", {})
    counts = manifest.get("counts", {})
    print(f"\n{size}: {path.name} ({path.stat().st_size / 1e6:,.0f} MB, "
          f"{counts.get('rows_read', 0):,} rows read, {counts.get('flows', 0):,} flows)")
    print(f"{'':<22}{'wall s':>9}{'x floor':>9}{'peak MB':>10}{'x floor':>9}")
    print(f"{'floor (pandas+arrow)':<22}{result['floor_wall']:>9.2f}{1:>9.2f}"
          f"{result['floor_mb']:>10,.0f}{1:>9.2f}")
    print(f"{'geoflow run':<22}{result['run_wall']:>9.2f}{result['ratio_wall']:>9.2f}"
          f"{result['run_mb']:>10,.0f}{result['ratio_mb']:>9.2f}")
    for stage in STAGES:
        if stage in timings:
            print(f"{'  ' + stage:<22}{timings[stage]:>9.2f}"
                  f"{timings[stage] / result['floor_wall']:>9.2f}"
                  f"{memory.get(stage, float('nan')):>10,.0f}")
    size_b, name = result["largest"]
    print(f"largest output: {name} ({size_b / 1e6:,.1f} MB)")
    # the spread: the floor's wall time swings with the kernel's time (pyarrow's allocator asks
    # for transparent huge pages, slow to find on a fragmented memory), so say how far
    sides = [("floor", result["floors"]), ("floor, no huge pages", result["steady"]),
             ("geoflow", result["runs"])]
    for label, runs in sides:
        if runs:
            walls, system = [r[0] for r in runs], [r[2] for r in runs]
            print(f"{label} runs: {min(walls):.2f}-{max(walls):.2f} s, of which system time "
                  f"{min(system):.2f}-{max(system):.2f} s")
    if result["steady"]:
        paired = statistics.median(r[0] / f[0] for r, f in zip(result["runs"], result["steady"],
                                                                 strict=True))
        print(f"geoflow against the floor with no huge pages: {paired:.2f}x (median of pairs)")
    fastest = min(r[0] for r in result["runs"]) / min(f[0] for f in result["floors"])
    print(f"fastest run against the fastest floor: {fastest:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", choices=list(SIZES), default=["1m"])
    parser.add_argument("--rounds", type=int, default=3, help="alternations (median taken)")
    parser.add_argument("--data", type=Path, default=Path("/work/bench-data"),
                        help="folder holding the sample files (written once)")
    parser.add_argument("--keep", type=Path, help="keep the last run's outputs here")
    parser.add_argument("--chunk-mb", type=float,
                        help="read in chunks of this many MB (geoflow run --chunk-mb)")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    compileall.compile_dir(ROOT / "geoflow", quiet=1)  # as pip does for an installed package
    for size in args.size:
        path = _input(args.data.resolve(), size)
        with tempfile.TemporaryDirectory(prefix="geoflow-bench-") as tmp:
            out = Path(tmp) / "out"
            extra = ("--chunk-mb", str(args.chunk_mb)) if args.chunk_mb else ()
            result = bench(path, out, args.rounds, extra)
            if args.keep:
                target = args.keep / size
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(out, target)
        report(size, path, result)


if __name__ == "__main__":
    main()
