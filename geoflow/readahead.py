"""Read-ahead of a run's input: its bytes and SHA-256, read on a thread while ``geoflow run``
imports its modules.

Those imports (pandas, Arrow, GeoPandas …) take about 0.4 s of one core before the reader
can start, and the other core has nothing to do meanwhile. Reading a 250 MB file (0.16 s)
and hashing it (0.14 s) both let go of the GIL, so they fit in that time: the reader then
takes the bytes and the digest as they are (:func:`take`) instead of reading, and of
hashing beside Arrow's parse. This module imports nothing heavy, so the read starts first.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import Future
from pathlib import Path

__all__ = ["CHUNKED_MIN_BYTES", "READ_AHEAD_MIN_BYTES", "read_ahead", "take"]

#: Files from this size up are read ahead (a smaller one is read in a few milliseconds).
READ_AHEAD_MIN_BYTES = 32 << 20
#: A CSV from this size up is read in chunks (:mod:`geoflow.chunked`), never whole: it is
#: not read ahead either.
CHUNKED_MIN_BYTES = 1 << 30

#: Resolved path → (the file's identity when the read began, its future).
_pending: dict[Path, tuple[tuple[int, ...], Future]] = {}
_lock = threading.Lock()


def _identity(status: os.stat_result) -> tuple[int, ...]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def read_ahead(path: str | Path) -> bool:
    """Start reading and hashing ``path`` on a thread, when it is a regular file of
    :data:`READ_AHEAD_MIN_BYTES` up to :data:`CHUNKED_MIN_BYTES`; whether it started. Any
    error is left to the reader's own read, which reports it."""
    try:
        path = Path(path).resolve()
        status = path.stat()
    except (OSError, RuntimeError):
        return False
    if (not stat.S_ISREG(status.st_mode)
            or not READ_AHEAD_MIN_BYTES <= status.st_size < CHUNKED_MIN_BYTES):
        return False
    future: Future = Future()

    def read() -> None:
        try:
            data = path.read_bytes()
            future.set_result((data, hashlib.sha256(data).hexdigest()))
        except BaseException as exc:  # handed to take(), whose caller reads the file again
            future.set_exception(exc)

    with _lock:
        _pending[path] = (_identity(status), future)
    threading.Thread(target=read, name="geoflow-read-ahead", daemon=True).start()
    return True


def take(path: str | Path) -> tuple[bytes, str] | None:
    """The bytes and SHA-256 (hex) read ahead for ``path``, handed over once (nothing keeps
    them after). None when it was not read ahead, the read failed, or the file changed
    since the read began (device, inode, size or modification time): the caller reads it."""
    try:
        path = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    with _lock:
        entry = _pending.pop(path, None)
    if entry is None:
        return None
    identity, future = entry
    try:
        data, digest = future.result()
        now = path.stat()
    except Exception:  # the read failed, or the file is gone: the caller's read reports it
        return None
    if _identity(now) != identity or len(data) != identity[2]:
        return None
    return data, digest
