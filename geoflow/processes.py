"""Spawned helper processes: a batch's workers (:mod:`geoflow.batch`) and a large run's map
process (:class:`MapProcess`), with what they share: Ctrl-C held back while they start and
ignored in them (the main process alone decides to stop), and an exit when the main process
is gone.

A large run's map and stills are Python work (folium, matplotlib) that holds the GIL, as do
most of the data files' writers; in one process they take turns. :class:`MapProcess` draws
them in a second process, on the second core, from the scene the run built (under 1 MB at
a million records), while this process writes the data files. Started before the read
(``idle=True``), it imports the map's modules at the lowest priority: on what the run leaves
of the CPUs.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
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

__all__ = ["MAP_MODULES", "READY_WAIT", "MapProcess", "end_now", "exit_with_parent",
           "fewer_collections", "hold_ctrl_c", "ignore_ctrl_c", "import_map_modules",
           "spawn_pool", "usable_cpus", "write_map_files"]

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


#: The modules the map and its stills are drawn with (about 1 s of CPU; ``geoflow.pipeline``
#: and the data files' writers are not among them). Their order is the drawing's: a smaller
#: run imports them on a thread while its own thread may begin to draw, and two threads that
#: import one package's modules in different orders can each hold what the other waits for
#: (``folium`` first imports ``branca``, whose ``branca.element`` imports ``branca`` again:
#: begun beside ``geoflow.render``, which imports ``branca.element`` first, Python raised
#: ``_DeadlockError``).
MAP_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg", "geoflow.render",
               "geoflow.static")


def import_map_modules() -> None:
    """Import :data:`MAP_MODULES`. An import that fails here fails again, and is reported,
    where the map is drawn."""
    for name in MAP_MODULES:
        with contextlib.suppress(Exception):  # reported by the map's own import
            importlib.import_module(name)


#: How long a run waits for :meth:`MapProcess.ready`'s answer: a process that has imported
#: everything answers in about a millisecond.
READY_WAIT = 0.25
#: In the map's process: set once its imports are done (and frozen).
_imported = threading.Event()


def _map_init(idle: bool = False) -> None:
    ignore_ctrl_c()
    if not idle:
        _finish_imports()
        return
    threading.Thread(target=_import_when_idle, name="geoflow-idle-imports", daemon=True).start()


def _import_when_idle() -> None:
    """The map process's imports on a thread that runs only when a CPU would otherwise be
    idle (Linux's SCHED_IDLE; elsewhere, as other threads)."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
    _finish_imports()


def _finish_imports() -> None:
    import_map_modules()
    # what it imported (~130,000 objects of pandas, folium, matplotlib) lives to the end: out
    # of the collector's sight, the full collections of its drawing no longer walk it (1M
    # records: 380 collections, 0.22 -> 0.13 s; a run's own process gained 0.02 s and peaked
    # ~15 MB higher, a batch's workers, collecting rarely already, nothing: neither does it)
    gc.freeze()
    _imported.set()


def _imports_done() -> bool:
    """In the map's process: whether its imports are done."""
    return _imported.is_set()


def write_map_files(scene: Any, options: Any, folder: Path) -> None:
    """map.html, map.svg and map.png of ``scene`` into ``folder``."""
    from geoflow.render import render_scene
    from geoflow.static import write_stills

    (folder / "map.html").write_text(render_scene(scene, options=options), encoding="utf-8")
    write_stills(scene, folder)


class MapProcess:
    """One spawned process that imports the map's modules as soon as it starts (about 1 s of
    a core) and then draws a run's map and stills (:meth:`draw`). ``idle=True`` (started
    before the run reads its input) imports them at the lowest priority, on what the run
    leaves of the CPUs; at the normal one they would slow the run's read (Arrow parses on
    every core) and its analysis. As a context manager, ended on leaving (:meth:`close`):
    when an error (or Ctrl-C) leaves, at once rather than after its imports or drawing."""

    def __init__(self, *, idle: bool = False) -> None:
        self.idle = idle
        self._others = set(multiprocessing.active_children())
        self.pool, _ = spawn_pool(1, _map_init, (idle,))

    def draw(self, scene: Any, options: Any, folder: Path) -> None:
        """:func:`write_map_files` in the map process; its error, if any, raised here. A process
        that died (killed, out of memory) is reported and the map drawn here instead, as is
        one still importing at the lowest priority (CPUs kept busy by other work): it could
        be kept waiting for as long as they are."""
        try:
            if self.idle and not self.ready(timeout=READY_WAIT):
                log.info("drawing the map in this process: its own process is still importing")
                self.close()
                write_map_files(scene, options, folder)
                return
            self.pool.submit(write_map_files, scene, options, folder).result()
        except BrokenProcessPool as exc:
            log.warning("drawing the map in this process: its own process ended (%s)", exc)
            write_map_files(scene, options, folder)

    def ready(self, timeout: float) -> bool:
        """Whether the process has imported the map's modules, asked for at most ``timeout``
        seconds: while it imports at the lowest priority, its answer waits for the importing
        thread to let go of the GIL, which takes as long as other work keeps the CPUs busy."""
        try:
            return self.pool.submit(_imports_done).result(timeout=timeout)
        except (TimeoutError, BrokenProcessPool):
            return False

    def close(self) -> None:
        """Stop the process now. Its drawing, if any, is over (:meth:`draw` waits for it): a
        clean exit would only spend about 0.2 s tearing down what it imported, while the
        run waits."""
        end_now(self.pool, self._others)

    def __enter__(self) -> MapProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
