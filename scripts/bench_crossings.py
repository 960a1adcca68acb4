"""Time crossing assignment on a large synthetic frame (not a test; prints figures).

Builds ``--rows`` records drawn from ``--dealers`` distinct dealer points in the US and
``--sites`` distinct recovery points in Mexico, with a known crossing written several ways
on ``--known`` of the rows, then times :func:`geoflow.crossings.assign_crossings`.

Example::

    python scripts/bench_crossings.py --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import pandas as pd

from geoflow.crossings import assign_crossings, load_ports

__all__ = ["make_records", "main"]


def make_records(
    *, rows: int, dealers: int, sites: int, known: float, seed: int = 1
) -> pd.DataFrame:
    """Random records: dealer and recovery coordinates from small pools, some crossings."""
    rng = np.random.default_rng(seed)
    dealer_pool = np.column_stack([rng.uniform(-122, -75, dealers), rng.uniform(26, 47, dealers)])
    site_pool = np.column_stack([rng.uniform(-115, -87, sites), rng.uniform(15, 32, sites)])
    d = dealer_pool[rng.integers(0, dealers, rows)]
    r = site_pool[rng.integers(0, sites, rows)]
    written = np.array(["LAREDO, TX", "Laredo", "NVO. LAREDO, TAMPS.", "2402", "Nogales AZ",
                        "Reynosa", "Atlantis"], dtype=object)  # fmt: skip
    crossing = np.where(rng.random(rows) < known, written[rng.integers(0, 7, rows)], None)
    return pd.DataFrame(
        {
            "dealer_lon": d[:, 0], "dealer_lat": d[:, 1],
            "recovery_lon": r[:, 0], "recovery_lat": r[:, 1],
            "crossing": pd.array(crossing, dtype="string"),
        }
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse options, build the frame, time assign_crossings and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dealers", type=int, default=3_000)
    parser.add_argument("--sites", type=int, default=2_000)
    parser.add_argument("--known", type=float, default=0.1)
    args = parser.parse_args(argv)
    records = make_records(
        rows=args.rows, dealers=args.dealers, sites=args.sites, known=args.known
    )
    load_ports()  # read the shipped table once, outside the timing
    start = time.perf_counter()
    out = assign_crossings(records)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kinds = out["route_kind"].value_counts(dropna=False).to_dict()
    print(
        f"assign_crossings: {len(records):,} rows, {args.dealers:,} dealers × "
        f"{args.sites:,} sites: {seconds:.2f} s; peak RSS {peak_mb:.0f} MB; {kinds}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
