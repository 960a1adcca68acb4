"""Measure the offline geocoder: index load time and distinct strings per second.

    python scripts/bench_geocode.py [--n 50000] [--seed 1]

Targets (issue 14): the gazetteer loads in under 0.5 s; 50,000 distinct strings geocode in
under 3 s warm (the second call in a process: gazetteer and fuzzy pools already built).

Builds ``n`` distinct messy place strings from the shipped gazetteer (US and Mexican places
written ATF- or Mexican-style, with abbreviations, a trailing ZIP, typos, bare states and
unknown names), then times ``geocode`` on them. Prints the figures and the share per level.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from geoflow.geocode import CONFIDENT_SCORE, geocode, load_gazetteer
from geoflow.places import MX_STATES


def messy_strings(n: int, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    gaz = load_gazetteer()
    places = gaz.places.sample(n=2 * n, random_state=seed, replace=True)
    name = places["name"].astype(str).str.upper()
    state = places["admin1"].str[3:]
    mx = places["admin1"].str.startswith("MX-")
    mx_abbr = state.map({iso: extra[0] for iso, (_, _, extra) in MX_STATES.items()})
    state = state.where(~mx, mx_abbr.fillna(state) + ".")
    style = rng.integers(0, 6, len(places))
    text = name + ", " + state
    text = text.where(style != 1, name + " " + state.str.rstrip("."))
    text = text.where(style != 2, name.str.replace("SAINT ", "ST ").str.replace("CIUDAD ", "CD. ")
                      + ", " + state)
    typo = name.str.slice(0, -2) + name.str.slice(-1)  # drop the second-to-last letter
    text = text.where(style != 3, typo + ", " + state)
    text = text.where(style != 4, "XQ" + name.str.slice(0, 6) + "ZZ, " + state)  # unknown place
    zips = gaz.zips.index.to_numpy()
    with_zip = (style == 5) & ~mx.to_numpy()
    text = text.where(~with_zip, text + " " + rng.choice(zips, len(text)))
    text = pd.Series(text.to_numpy()) + pd.Series(np.arange(len(text)) % 7).map(
        {0: "", 1: " ", 2: ".", 3: "", 4: " ", 5: "", 6: ""})
    return text.drop_duplicates().head(n).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    load_gazetteer()
    print(f"gazetteer load + index, first in this process: {time.perf_counter() - start:.2f} s")
    loads, cpu_loads = [], []
    for _ in range(3):
        load_gazetteer.cache_clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        load_gazetteer()
        loads.append(time.perf_counter() - start)
        cpu_loads.append(time.process_time() - start_cpu)
    print(f"gazetteer load + index, median of 3 more: {np.median(loads):.2f} s, CPU "
          f"{np.median(cpu_loads):.2f} s (target < 0.5 s)")
    queries = messy_strings(args.n, args.seed)
    start = time.perf_counter()
    result = geocode(queries)
    elapsed = time.perf_counter() - start
    print(f"{len(queries):,} distinct strings geocoded in {elapsed:.2f} s, cold "
          f"(fuzzy pools built on first use)")
    warm, cpu = [], []
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.process_time()
        geocode(queries)
        warm.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    elapsed = min(warm)
    print(f"{len(queries):,} distinct strings geocoded in {elapsed:.2f} s warm, best of 3 "
          f"({len(queries) / elapsed:,.0f}/s; target < 3 s); CPU time {min(cpu):.2f} s "
          f"(all threads; on a busy machine closer to the idle wall time)")
    print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print(result["level"].replace("", "(unmatched)").value_counts().to_string())
    fuzzy = result["note"].str.contains("fuzzy").sum()
    ambiguous = (result["candidates"] != "").sum()
    confident = (result["score"] >= CONFIDENT_SCORE).sum()
    print(f"fuzzy matches: {fuzzy:,}; ambiguous: {ambiguous:,}; confident: {confident:,}")
    repeated = pd.concat([queries] * 4, ignore_index=True)
    start = time.perf_counter()
    geocode(repeated)
    print(f"{len(repeated):,} strings ({len(queries):,} distinct) in "
          f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
