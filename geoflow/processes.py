"""Spawned helper processes: a batch's workers (:mod:`geoflow.batch`) and a large run's map
process (:class:`MapProcess`), with what they share: Ctrl-C held back while they start and
ignored in them (the main process alone decides to stop), and an exit when the main process
is gone.

A large run's map and stills are Python work (folium, matplotlib) that holds the GIL, as do
most of the data files' writers; in one process they take turns. :class:`MapProcess` draws
them in a second process, on the second core, from the scene the run built (under 1 MB at
a million records), while this process writes the data files.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

__all__ = ["MapProcess", "end_now", "exit_with_parent", "fewer_collections", "hold_ctrl_c",
           "ignore_ctrl_c", "spawn_pool", "usable_cpus", "write_map_files"]

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return max(counter() or 1, 1)
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


#: The garbage collector's first threshold while a batch writes its entities (Python's
#: default: 700). An output set leaves some 10,000 more container objects (pandas frames,
#: matplotlib artists, folium elements) allocated than freed, nearly all freed later by
#: their reference counts; at 700 the collector ran ~15 times an entity, 5-6 ms of its
#: ~220. The sample's 31 states at 2 jobs: 3-4 % less time (docs/internals.md).
BATCH_GC_THRESHOLD = 20_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage less often in a block that makes many short-lived objects (a batch's
    entity): the collector's first threshold is :data:`BATCH_GC_THRESHOLD` inside it,
    restored on leaving."""
    before = gc.get_threshold()
    gc.set_threshold(BATCH_GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def hold_ctrl_c(how: int, mask: Any = None) -> Any:
    """``signal.pthread_sigmask`` of SIGINT (or of ``mask``) for this thread, where POSIX
    has it (a spawned process inherits the mask); the previous mask."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        return None
    return signal.pthread_sigmask(how, {signal.SIGINT} if mask is None else mask)


def exit_with_parent() -> None:
    """End this helper when the main process ends without stopping it (``kill -9``, a power
    cut, a closed session): it would otherwise wait for work for ever, holding memory, or
    write into a folder another run has taken over."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()  # returns when the parent is gone
        os._exit(1)


def ignore_ctrl_c() -> None:
    """A helper's start: Ctrl-C reaches the whole process group, and the main process alone
    decides to stop, then stops its helpers (a helper's own KeyboardInterrupt would only print
    a traceback). Held back since the spawn, it is ignored from now on; and the helper ends
    with the main process (:func:`exit_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hold_ctrl_c(signal.SIG_UNBLOCK)
    threading.Thread(target=exit_with_parent, name="geoflow-parent-watch", daemon=True).start()


def spawn_pool(count: int, initializer: Callable[..., None], initargs: tuple = ()
               ) -> tuple[ProcessPoolExecutor, list[Future]]:
    """``(pool, started)``: ``count`` spawned processes (forking after Arrow's threads
    started can deadlock), started now, and one future per process, done once it has run
    ``initializer`` (which calls :func:`ignore_ctrl_c`: Ctrl-C is held back until then, as
    one pressed while they start would print their traceback)."""
    pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)
    held = hold_ctrl_c(signal.SIG_BLOCK)
    try:
        started = [pool.submit(_started) for _ in range(count)]  # spawns them
    finally:
        hold_ctrl_c(signal.SIG_SETMASK, held)
    return pool, started


def end_now(pool: ProcessPoolExecutor, others: set) -> None:
    """End ``pool``'s processes now: queued work dropped, running work ended (this process's
    children from before the pool, ``others``, are left alone)."""
    pool.shutdown(wait=False, cancel_futures=True)
    children = [child for child in multiprocessing.active_children() if child not in others]
    for child in children:
        child.terminate()
    for child in children:
        child.join()
    pool.shutdown(wait=True)


def _started() -> None:
    """A helper's first task: done once it has started."""


def _map_init() -> None:
    from geoflow.pipeline import import_map_modules

    ignore_ctrl_c()
    import_map_modules()
    # what it imported (~130,000 objects of pandas, folium, matplotlib) lives to the end: out
    # of the collector's sight, the full collections of its drawing no longer walk it (1M
    # records: 380 collections, 0.22 -> 0.13 s; a run's own process gained 0.02 s and peaked
    # ~15 MB higher, a batch's workers, collecting rarely already, nothing: neither does it)
    gc.freeze()


def write_map_files(scene: Any, options: Any, folder: Path) -> None:
    """map.html, map.svg and map.png of ``scene`` into ``folder``."""
    from geoflow.render import render_scene
    from geoflow.static import write_stills

    (folder / "map.html").write_text(render_scene(scene, options=options), encoding="utf-8")
    write_stills(scene, folder)


class MapProcess:
    """One spawned process that imports the map's modules as soon as it starts (about 2 s of
    a core, beside the analysis) and then draws a run's map and stills (:meth:`draw`). As a
    context manager, ended on leaving (:meth:`close`): when an error (or Ctrl-C) leaves, at
    once rather than after its imports or drawing."""

    def __init__(self) -> None:
        self._others = set(multiprocessing.active_children())
        self.pool, _ = spawn_pool(1, _map_init)

    def draw(self, scene: Any, options: Any, folder: Path) -> None:
        """:func:`write_map_files` in the map process; its error, if any, raised here. A process
        that died (killed, out of memory) is reported and the map drawn here instead."""
        try:
            self.pool.submit(write_map_files, scene, options, folder).result()
        except BrokenProcessPool as exc:
            log.warning("drawing the map in this process: its own process ended (%s)", exc)
            write_map_files(scene, options, folder)

    def close(self) -> None:
        """Stop the process now. Its drawing, if any, is over (:meth:`draw` waits for it): a
        clean exit would only spend about 0.2 s tearing down what it imported, while the
        run waits."""
        end_now(self.pool, self._others)

    def __enter__(self) -> MapProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
