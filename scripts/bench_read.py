"""Time geoflow.io.read_traces against pandas' own CSV parser on an N-row trace file.

Usage::

    python scripts/bench_read.py --rows 1000000
    python scripts/bench_read.py --rows 200000 --broken 0.01 --encoding cp1252

The file comes from the synthetic sample generator (``geoflow.sample.write_sample``) when it
is available, otherwise from a simple generator here. ``--broken`` replaces a share of rows
with bad ones (wrong field count, bad coordinate, nothing usable) to time the reject paths.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from geoflow.io import read_traces


def _synthetic(rows: int, seed: int) -> pd.DataFrame:
    """A plain trace table with accented Mexican place names and US month-first dates."""
    rng = np.random.default_rng(seed)
    cities = np.array(["Ciudad Juárez", "Nuevo Laredo", "Culiacán", "Querétaro", "Mérida"])
    days = pd.Timestamp("2007-01-01") + pd.to_timedelta(rng.integers(0, 1400, rows), unit="D")
    return pd.DataFrame({
        "Trace Number": np.char.add("T", np.arange(rows).astype(str)),
        "Serial Number": np.char.add("SN", rng.integers(0, 10**8, rows).astype(str)),
        "FFL Name": np.char.add("Store ", rng.integers(0, 500, rows).astype(str)),
        "FFL City": "HOUSTON",
        "FFL State": "TX",
        "Purchaser Name": np.char.add("Buyer ", rng.integers(0, 20000, rows).astype(str)),
        "Purchase Date": days.strftime("%m/%d/%Y"),
        "Recovery Date": (days + pd.Timedelta(days=400)).strftime("%Y-%m-%d"),
        "Recovery City": cities[rng.integers(0, cities.size, rows)],
        "Recovery State": "CHIH",
        "Recovery Lat": rng.uniform(15, 32, rows).round(4),
        "Recovery Lon": rng.uniform(-117, -87, rows).round(4),
    })


def _write(path: Path, rows: int, seed: int, *, encoding: str, broken: float) -> str:
    try:
        from geoflow.sample import make_sample

        frame, kind = make_sample(rows=rows, seed=seed), "geoflow.sample"
    except ImportError:
        frame, kind = _synthetic(rows, seed), "synthetic"
    text = frame.to_csv(index=False, lineterminator="\n")
    if broken:
        lines = np.array(text.split("\n"), dtype=object)
        rng = np.random.default_rng(seed)
        pick = rng.choice(np.arange(1, rows + 1), int(rows * broken), replace=False)
        lines[pick] = lines[pick] + ",extra field"
        text = "\n".join(lines)
    path.write_bytes(text.encode(encoding, errors="replace"))
    return kind


def _time(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--broken", type=float, default=0.0, help="share of broken rows")
    parser.add_argument("--input", type=Path, help="time this CSV instead of generating one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.input or Path(folder) / "traces.csv"
        start = time.perf_counter()
        kind = "--input" if args.input else _write(
            path, args.rows, args.seed, encoding=args.encoding, broken=args.broken)
        made = time.perf_counter() - start
        size = path.stat().st_size / 1e6
        print(f"{args.rows:,} rows from {kind}, {size:.0f} MB {args.encoding}, "
              f"made in {made:.1f} s")
        # pandas alone skips broken rows silently (it would stop at the first otherwise)
        plain = _time(lambda: pd.read_csv(path, encoding=args.encoding, on_bad_lines="skip"),
                      args.repeat)
        as_text = _time(
            lambda: pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="skip",
                                encoding=args.encoding), args.repeat)
        result = None

        def ours() -> None:
            nonlocal result
            result = read_traces(path)

        geoflow = _time(ours, args.repeat)
    print(f"pd.read_csv (default dtypes) {plain:6.2f} s")
    print(f"pd.read_csv (dtype=str)      {as_text:6.2f} s")
    print(f"geoflow.io.read_traces       {geoflow:6.2f} s  "
          f"= {geoflow / plain:.1f}x default, {geoflow / as_text:.1f}x dtype=str, "
          f"{args.rows / geoflow:,.0f} rows/s")
    print(f"rows read {result.rows_read:,}, valid {result.rows_valid:,}, "
          f"rejected {result.rows_rejected:,}, encoding {result.source['encoding']}")


if __name__ == "__main__":
    main()
