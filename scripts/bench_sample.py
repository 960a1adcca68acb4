"""Time the synthetic sample generator: build and write N rows (default 1,000,000).

    python scripts/bench_sample.py [ROWS] [OUT.csv]

Prints wall-clock and CPU seconds and the file size; the output goes to a temporary folder
unless OUT.csv is given.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from geoflow.sample import make_sample, write_sample


def timed(label: str, func):
    wall, cpu = time.perf_counter(), time.process_time()
    result = func()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:<28} {wall:7.2f} s wall {cpu:7.2f} s cpu")
    return result


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tmp) / "sample.csv"
        timed(f"write_sample({rows:,})", lambda: write_sample(out, rows=rows))
        print(f"{'file size':<28} {out.stat().st_size / 1e6:7.1f} MB")
        timed(f"make_sample({rows:,}) frame", lambda: make_sample(rows=rows))


if __name__ == "__main__":
    main()
