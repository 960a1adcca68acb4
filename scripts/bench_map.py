"""Measure the map: render time and page size for the sample and a large synthetic sample.

Runs the pipeline once per size (not timed here; see scripts/bench.py), then times
``render_map`` with default options (place-level flows) and with ``flow_level="state"``, and
prints the page size against the issue-5 budgets: the sample's map under 2 MB, a
1,000,000-row sample's under 5 MB.

Usage::

    python scripts/bench_map.py                       # 2,922 and 1,000,000 rows
    python scripts/bench_map.py --rows 2922 --rows 100000 --keep /tmp/maps
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from geoflow.pipeline import RunOptions, run_pipeline
from geoflow.render import MapOptions, render_map, select_flows, write_map
from geoflow.sample import sample_path

BUDGET_MB = {2922: 2.0, 1_000_000: 5.0}


def measure(rows: int, *, flow_level: str, keep: Path | None) -> dict:
    result = run_pipeline(sample_path(rows=rows), options=RunOptions(flow_level=flow_level))
    options = MapOptions()
    start = time.perf_counter()
    page = render_map(result, options=options)
    seconds = time.perf_counter() - start
    shown, _, _ = select_flows(result.flows, top_n=options.top_n, min_guns=options.min_guns)
    if keep:
        write_map(page, keep / f"map-{rows}-{flow_level}.html")
    return {"rows": rows, "flow_level": flow_level, "render_s": seconds,
            "mb": len(page.encode("utf-8")) / 1e6, "flows": len(result.flows),
            "drawn": len(shown), "dealers": len(result.dealers),
            "places": len(result.recoveries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append",
                        help="sample rows (repeatable; default 2922 and 1000000)")
    parser.add_argument("--keep", type=Path, help="also write the maps into this folder")
    args = parser.parse_args()
    print(f"{'rows':>9} {'level':>6} {'render s':>9} {'MB':>6} {'budget':>6} {'flows':>8} "
          f"{'drawn':>6} {'dealers':>8} {'places':>7}")
    for rows in args.rows or [2922, 1_000_000]:
        for level in ("place", "state"):
            m = measure(rows, flow_level=level, keep=args.keep)
            budget = BUDGET_MB.get(rows)
            verdict = "" if budget is None else ("ok" if m["mb"] < budget else "OVER")
            print(f"{m['rows']:>9,} {level:>6} {m['render_s']:>9.2f} {m['mb']:>6.2f} "
                  f"{verdict:>6} {m['flows']:>8,} {m['drawn']:>6,} {m['dealers']:>8,} "
                  f"{m['places']:>7,}", flush=True)


if __name__ == "__main__":
    main()
