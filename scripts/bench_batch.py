"""Time filters and batches: what ``geoflow run --per KIND`` costs beyond one read.

Usage::

    python scripts/bench_batch.py                    # the default sample (2,922 rows)
    python scripts/bench_batch.py --rows 200000      # a larger synthetic sample
    python scripts/bench_batch.py --kind trafficker --no-map
    python scripts/bench_batch.py --jobs 1                # one entity after the other
    python scripts/bench_batch.py --no-stills             # map.html, but no map.svg/map.png
    python scripts/bench_batch.py --jobs 1 --warm         # one warm process: each entity's own cost
    python scripts/bench_batch.py --dir /mnt/share        # output sets on another disk

Prints the time to read + geocode once (the batch's workers starting meanwhile, as
``run --per`` starts them), to filter (one state, one purchaser), to list the
entities, and to analyse and write every entity: wall time and CPU time (this process and its
batch workers) per entity, the steady state (the pace of the last three quarters of the
entities, once each process has paid its first-use costs), peak memory and the load
average (the machine is shared: CPU time is the steadier figure; wall time per entity at N
jobs is at best CPU time / N). With
``--jobs 1`` it also prints each entity's time (median, fastest, slowest, with their guns);
``--warm`` writes the batch once before timing it, so that this process's first-use costs
(fonts measured, shapes loaded, the GeoPackage template) are paid and the figures are the
entities' own. The last line is the median time to create a file where the output sets were
written (``--dir``): each entity creates about 30, so a slow disk shows in every figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# the geoflow of this script's checkout is the one measured (not whichever is installed)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_no_map(result, folder) -> None:
    """Per-entity writer without map.html (module level: batch workers unpickle it); the
    GeoPackage from the batch's schema template, as ``run --per`` writes it."""
    from geoflow.pipeline import write_outputs

    write_outputs(result, folder, write_map=False, reuse_schema=True)


def write_no_stills(result, folder) -> None:
    """Per-entity writer with map.html but without map.svg/map.png."""
    from geoflow.pipeline import write_outputs
    from geoflow.render import render_map

    write_outputs(result, folder, write_map=False, reuse_schema=True)
    (Path(folder) / "map.html").write_text(render_map(result), encoding="utf-8")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the batch's workers)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def entity_times(done: list[tuple[str, float]], start: float, entities) -> list[tuple]:
    """Rows for each entity's own time in a one-process batch (from the end of the one
    before; the first from the batch's start, its listing included)."""
    import numpy as np

    labels = [label for label, _ in done]
    seconds = np.diff([start, *(at for _, at in done)])
    guns = dict(zip(entities["label"].astype(str), entities["guns"], strict=False))

    def one(at: int) -> str:
        return f"{seconds[at] * 1000:.0f} ms ({labels[at]}, {guns.get(labels[at], 0):,} guns)"

    order = np.argsort(seconds, kind="stable")
    return [("  each entity: median", f"{np.median(seconds) * 1000:.0f} ms"),
            ("  each entity: fastest", one(int(order[0]))),
            ("  each entity: slowest", one(int(order[-1])))]


def steady_state(out: Path, kind: str) -> float | None:
    """Seconds an entity once every process has warmed up: the pace at which the last three
    quarters of the output sets were finished (each set's manifest.json is written last, by
    whichever process wrote the set). Each process's first entities pay its first-use costs
    (fonts, shapes, the GeoPackage template); this is what one more entity costs."""
    import numpy as np

    done = np.sort([p.stat().st_mtime_ns for p in (out / kind).glob("*/manifest.json")])
    skip = len(done) // 4
    if len(done) - skip < 3:
        return None
    return float(done[-1] - done[skip]) / 1e9 / (len(done) - 1 - skip)


def create_seconds(folder: Path, count: int = 200) -> float:
    """Median seconds to create (and close) an empty file in ``folder``: an entity writes
    about 30 files, and a disk where this takes 0.2-0.5 ms (a temporary folder left holding
    half a million files, a network share) adds 5-15 ms to each of them."""
    import statistics

    folder.mkdir()
    seconds = []
    for i in range(count):
        clock = time.perf_counter()
        os.close(os.open(folder / f"{i}.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        seconds.append(time.perf_counter() - clock)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2922)
    parser.add_argument("--kind", default="state",
                        choices=["state", "mx-state", "trafficker", "dealer"])
    parser.add_argument("--min-guns", type=int, default=None)
    parser.add_argument("--no-map", action="store_true",
                        help="skip map.html, map.svg and map.png per entity")
    parser.add_argument("--no-stills", action="store_true",
                        help="skip map.svg and map.png per entity (keep map.html)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes (default: the CPUs available, fewer if memory is short)")
    parser.add_argument("--warm", action="store_true",
                        help="with --jobs 1: write the batch once untimed first (a warm process)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder for the sample and the output sets (default: the system's "
                             "temporary folder); the disk's file creation time is printed")
    args = parser.parse_args()
    from geoflow.cli import set_numpy_environment  # imports no numpy

    set_numpy_environment()  # numpy as `geoflow run --per` starts it
    from geoflow.batch import Workers, default_jobs, entity_table, run_batch
    from geoflow.pipeline import prepare_records
    from geoflow.sample import write_sample
    from geoflow.select import filter_records

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        source = write_sample(Path(tmp) / "sample.csv", rows=args.rows)
        jobs = default_jobs(source, asked=args.jobs)  # as `run --per` chooses them
        clock = time.perf_counter()
        start = clock
        # as `run --per` does: the workers start first, their imports overlap the read
        workers = Workers(jobs - 1) if jobs > 1 else None
        prepared = prepare_records(source)
        t_prepare = time.perf_counter() - clock
        records = prepared.records

        clock = time.perf_counter()
        filter_records(records, us_states=["TX"])
        t_state = time.perf_counter() - clock
        top = records["purchaser_id"].value_counts().index[0]
        clock = time.perf_counter()
        filter_records(records, traffickers=[top])
        t_trafficker = time.perf_counter() - clock

        clock = time.perf_counter()
        table, _ = entity_table(records, args.kind, min_guns=args.min_guns)
        t_list = time.perf_counter() - clock

        write = write_no_map if args.no_map else write_no_stills if args.no_stills else None
        warming = time.perf_counter()
        if args.warm and jobs == 1:
            run_batch(prepared, kind=args.kind, out_dir=Path(tmp) / "warm",
                      min_guns=args.min_guns, write=write, jobs=1)
        start += time.perf_counter() - warming  # the untimed batch is not in the whole
        done: list[tuple[str, float]] = []  # (label, time) as each entity is written
        load = os.getloadavg()
        clock, cpu = time.perf_counter(), cpu_seconds()
        batch = run_batch(prepared, kind=args.kind, out_dir=Path(tmp) / "out",
                          min_guns=args.min_guns, write=write, jobs=jobs, workers=workers,
                          progress=lambda label: done.append((label, time.perf_counter())))
        t_batch, c_batch = time.perf_counter() - clock, cpu_seconds() - cpu
        steady = steady_state(Path(tmp) / "out", args.kind)
        t_total = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (Path(tmp) / "out").rglob("*") if p.is_file())
        create = create_seconds(Path(tmp) / "creates")

    n = max(len(batch.entities), 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("records", f"{len(records):,}"),
        ("read + geocode + crossings (once)", f"{t_prepare:.2f} s"),
        ("filter --state TX", f"{t_state * 1000:.1f} ms"),
        ("filter --trafficker <top id>", f"{t_trafficker * 1000:.1f} ms"),
        (f"list {args.kind} entities", f"{t_list * 1000:.1f} ms ({len(table):,} entities)"),
        (f"batch --per {args.kind} (analyse + write"
         f"{'' if args.no_map else ' + map.html' if args.no_stills else ' + map + stills'}, "
         f"{jobs} jobs)",
         f"{t_batch:.2f} s wall, {t_batch / n:.3f} s per entity"),
        *([("  steady state (last 3/4 of the entities)", f"{steady:.3f} s per entity")]
          if steady is not None else []),
        ("  CPU (this process + workers, their start included)",
         f"{c_batch:.2f} s, {c_batch / n:.3f} s per entity"),
        *(entity_times(done, clock, batch.entities) if jobs == 1 and done else []),
        ("whole batch (workers started, read once, batch)", f"{t_total:.2f} s wall"),
        ("load average before / after", " / ".join(
            f"{a:.2f}" for a in (load[0], os.getloadavg()[0]))),
        ("batch output size", f"{size / 1e6:.1f} MB"),
        ("file creation in the output's folder (median)", f"{create * 1000:.3f} ms"),
        ("peak memory (max RSS)", f"{peak:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
