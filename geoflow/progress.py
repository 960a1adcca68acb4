"""Progress on stderr for stages that take more than a moment and for batches.

A rich progress display is shown only when stderr is a terminal and the user did not ask for
``--quiet``; otherwise every helper here is a no-op (log lines still go through ``logging``).
rich is imported only then: every command imports this module, and rich's display modules
took 0.018 s of each start (of ``geoflow run`` too, before it can begin reading its input).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

__all__ = ["progress_enabled", "stage", "bar", "Advance", "quiet_logger"]


def progress_enabled(*, quiet: bool = False, stream=None) -> bool:
    """True when a live display makes sense: not ``--quiet`` and stderr is a terminal."""
    stream = stream if stream is not None else sys.stderr
    return not quiet and bool(getattr(stream, "isatty", lambda: False)())


#: Seconds of recent progress the time left is estimated from: a batch's entities differ in
#: size, so a longer window than rich's 30 s steadies the estimate.
ESTIMATE_SECONDS = 120.0


def _progress(console: Console | None, *, with_bar: bool,
              clock: Callable[[], float] | None = None) -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list = [SpinnerColumn(), TextColumn("{task.description}")]
    if with_bar:  # a batch of an hour says how long it has left
        columns += [BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left")]
    else:
        columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=True,
                    speed_estimate_period=ESTIMATE_SECONDS, get_time=clock)


@contextmanager
def _logs_above(progress: Progress) -> Iterator[None]:
    """Route log records through the live display so a line never lands inside the bar."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    plain = [h for h in root.handlers if type(h) is logging.StreamHandler]
    handler = RichHandler(console=progress.console, show_time=False, show_level=False,
                          show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(min((h.level for h in plain), default=logging.NOTSET))
    for old in plain:
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for old in plain:
            root.addHandler(old)


@contextmanager
def quiet_logger(name: str, *, level: int = logging.WARNING) -> Iterator[None]:
    """Raise logger ``name`` to ``level`` for a block (per-entity chatter in batches), unless
    it is already set to show debug messages (``--verbose``)."""
    logger = logging.getLogger(name)
    before = logger.level
    if logger.getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def stage(description: str, *, enabled: bool, console: Console | None = None) -> Iterator[None]:
    """Show a spinner with ``description`` while the block runs (when ``enabled``)."""
    if not enabled:
        yield
        return
    with _progress(console, with_bar=False) as progress, _logs_above(progress):
        progress.add_task(description, total=None)
        yield


class Advance:
    """``advance(label)``: one more item finished; ``advance.total(n)``: the number of items,
    when it is known only once the work has begun. Draws nothing without a ``progress``."""

    def __init__(self, description: str, progress: Progress | None = None,
                 task: Any = None) -> None:
        self._description, self._progress, self._task = description, progress, task

    def __call__(self, label: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1,
                                  description=f"{self._description}: {label}")

    def total(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)


@contextmanager
def bar(
    description: str, total: int | None, *, enabled: bool, console: Console | None = None,
    clock: Callable[[], float] | None = None,
) -> Iterator[Advance]:
    """Yield an :class:`Advance`: call it once per finished item of ``total`` (None: not known
    yet, given later by ``advance.total(n)``). The bar shows the time elapsed and the time
    left, estimated from the items finished in the last :data:`ESTIMATE_SECONDS` of
    ``clock`` (default: rich's monotonic clock)."""
    if not enabled:
        yield Advance(description)
        return
    with _progress(console, with_bar=True, clock=clock) as progress, _logs_above(progress):
        yield Advance(description, progress, progress.add_task(description, total=total))
