"""Time the stills: the sample's map.svg + map.png (what ``geoflow run`` adds), the other
formats and sizes of ``geoflow static``, and the stills of every entity of a batch.

Usage::

    python scripts/bench_static.py                       # sample, batch per state
    python scripts/bench_static.py --kind trafficker --min-guns 10

Each figure is wall time and CPU time of this process (on a shared machine the CPU time is the
steadier of the two). "cold" includes importing matplotlib and projecting the base map once;
batch entities after the first reuse both, as a batch worker does (and its per-process caches:
text already laid out, the renderer). A batch entity's stills are timed apart from its scene,
which map.html shares, and split into drawing the figure, map.svg and map.png (what
``write_stills`` does). Compare versions in alternate runs: the machine is shared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


class Clock:
    """Wall and CPU seconds of one block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:6.3f} s wall {self.cpu:6.3f} s CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="state",
                        choices=["state", "mx-state", "trafficker", "dealer"])
    parser.add_argument("--min-guns", type=int, default=1)
    args = parser.parse_args()

    from geoflow.pipeline import analyse, prepare_records
    from geoflow.sample import sample_path
    from geoflow.scene import build_scene
    from geoflow.select import entity_keys, list_entities

    prepared = prepare_records(sample_path())
    result = analyse(prepared)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with Clock() as cold:
            from geoflow.static import (
                RUN_STILLS,
                base_map,
                draw_scene,
                figure_bytes,
                save_figure,
                write_stills,
            )

            base_map()
            write_stills(build_scene(result), out)
        print(f"sample map.svg + map.png, cold (imports, base map):    {cold}")
        with Clock() as warm:
            write_stills(build_scene(result), out)
        print(f"sample map.svg + map.png, warm (scene, draw, 2 files): {warm}")
        scene = build_scene(result)
        with Clock() as drawing:
            fig = draw_scene(scene, size="social")
        print(f"  social: draw {drawing}")
        for fmt in ("svg", "png", "pdf"):
            with Clock() as saving:
                figure_bytes(fig, fmt)
            print(f"  social: {fmt}  {saving}")

        records = prepared.records
        entities = list_entities(records, args.kind, min_guns=args.min_guns, show_names=False)
        keys = entity_keys(records, args.kind)
        times: list[dict[str, Clock]] = []
        for key in entities["key"]:
            subset = records[(keys == key).to_numpy(dtype=bool)]
            entity = analyse(prepared, records=subset)
            clocks: dict[str, Clock] = {}
            with Clock() as clocks["scene"]:
                scene = build_scene(entity)
            with Clock() as clocks["draw"]:  # write_stills, step by step
                fig = draw_scene(scene, size="wide")
            for name in RUN_STILLS:
                with Clock() as clocks[name]:
                    save_figure(fig, out / name)
            times.append(clocks)
        rest = times[1:] or times
        first = sum(times[0][part].cpu for part in ("draw", *RUN_STILLS))
        print(f"batch --per {args.kind}: {len(times)} entities; stills of the first "
              f"{first:.3f} s CPU (+ scene {times[0]['scene']})")
        for what in ("wall", "cpu"):
            for label, parts in (("stills (draw, map.svg, map.png)", ("draw", *RUN_STILLS)),
                                 ("  draw", ("draw",)), *((f"  {n}", (n,)) for n in RUN_STILLS),
                                 ("scene (shared with map.html)", ("scene",))):
                values = [sum(getattr(t[part], what) for part in parts) for t in rest]
                print(f"  after the first, {label} ({what}): mean "
                      f"{statistics.mean(values):.3f} s, median "
                      f"{statistics.median(values):.3f} s, max {max(values):.3f} s")


if __name__ == "__main__":
    main()
