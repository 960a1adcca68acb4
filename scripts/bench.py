"""Benchmark ``geoflow run`` stage by stage against pandas parsing the same CSV.

Writes (once, cached) the synthetic sample with ``--rows`` rows, then in two fresh child
processes: (1) ``pandas.read_csv`` alone, (2) the whole run — read, geocode, crossings,
flows, aggregate, export (all outputs, map included) — and prints a table of seconds per
stage and each process's peak resident memory (``ru_maxrss``). Targets (issue 4): the whole
run within 10× the parse time and under 2 GB.

Usage::

    python scripts/bench.py                 # 1,000,000 rows
    python scripts/bench.py --rows 100000 --keep /tmp/bench-out
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_parse(path: str) -> dict:
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_csv(path, dtype="string", keep_default_na=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": len(frame), "peak_mb": _peak_mb()}


def child_run(path: str, out: str) -> dict:
    from geoflow.pipeline import RunOptions, analyse, prepare_records, write_outputs

    options = RunOptions()
    start = time.perf_counter()
    prepared = prepare_records(path, options=options)
    result = analyse(prepared, options=options)
    clock = time.perf_counter()
    write_outputs(result, out, force=True)
    export = time.perf_counter() - clock
    total = time.perf_counter() - start
    stages = dict(result.manifest["timings"])
    stages["export"] = export
    memory = dict(result.manifest["memory_peak_mb"])
    memory["export"] = _peak_mb()
    return {"stages": stages, "memory": memory, "total": total, "peak_mb": _peak_mb(),
            "counts": result.manifest["counts"]}


def _child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "geoflow-bench"))
    parser.add_argument("--keep", help="write the run's outputs here (default: temp folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_parse(*rest) if kind == "parse" else child_run(*rest)
        print(json.dumps(result))
        return

    from geoflow.sample import sample_path

    start = time.perf_counter()
    path = sample_path(args.cache, rows=args.rows)
    made = time.perf_counter() - start
    size_mb = path.stat().st_size / 1e6
    print(f"input: {path} ({args.rows:,} rows, {size_mb:,.0f} MB; ready in {made:.1f} s)")

    parse = _child("--child", "parse", str(path))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or str(Path(tmp) / "out")
        run = _child("--child", "run", str(path), out)

    print(f"\n{'stage':<14}{'seconds':>10}{'peak MB so far':>16}")
    print(f"{'pandas parse':<14}{parse['seconds']:>10.2f}{parse['peak_mb']:>16,.0f}")
    print("-" * 40)
    for stage in ("read", "geocode", "crossings", "aggregate", "flows", "export"):
        seconds = run["stages"].get(stage, float("nan"))
        print(f"{stage:<14}{seconds:>10.2f}{run['memory'].get(stage, float('nan')):>16,.0f}")
    print("-" * 40)
    ratio = run["total"] / parse["seconds"]
    print(f"{'whole run':<14}{run['total']:>10.2f}{run['peak_mb']:>16,.0f}")
    print(f"\nrun / parse = {ratio:.1f}x (target <= 10x); peak {run['peak_mb']:,.0f} MB "
          f"(target < 2048 MB)")
    counts = run["counts"]
    print(f"rows read {counts['rows_read']:,}, placed {counts['rows_placed']:,}, "
          f"unplaced {counts['rows_unplaced']:,}, flows {counts['flows']:,}, "
          f"dealers {counts['dealers']:,}")


if __name__ == "__main__":
    main()
