"""HMAC-SHA256 of many short messages (pseudonyms: one per distinct name), here or in a child.

Standard library only, so that run as a script (``python -I -S digests.py``) it is a worker
that starts in a few hundredths of a second: :mod:`geoflow.privacy` hands such children a
share of a large data set's names (hashlib holds the GIL for short messages, so threads do
not help). The protocol, on the child's stdin and stdout, little-endian:

- once: the key's length (``u32``) and the key;
- per request: the message count ``n`` (``u64``), ``n`` lengths (``u32``), the messages end
  to end; the reply is the ``n`` digests, 32 bytes each, in order;
- the parent closes stdin to end the child.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Callable, Sequence

DIGEST_BYTES = 32


def hmac_sha256(secret: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 (RFC 2104) of a message under ``secret``: the same 32 bytes as
    ``hmac.digest(secret, message, "sha256")``, with the padded key hashed once rather than
    once per message (2.5× faster over millions of names)."""
    block = 64  # SHA-256's block size
    if len(secret) > block:
        secret = hashlib.sha256(secret).digest()
    secret = secret.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in secret))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in secret))

    def digest(message: bytes) -> bytes:
        first = inner.copy()
        first.update(message)
        second = outer.copy()
        second.update(first.digest())
        return second.digest()

    return digest


def digests_of(digest: Callable[[bytes], bytes], lengths: Sequence[int], data: bytes) -> bytes:
    """The digests of the messages ``data`` holds end to end, ``lengths`` bytes each."""
    view, out, at = memoryview(data), [], 0
    for length in lengths:
        out.append(digest(view[at:at + length]))
        at += length
    return b"".join(out)


def _read(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"expected {size} bytes, got {len(data)}")
    return data


def serve(requests, replies) -> None:
    """Answer requests (the protocol above) until ``requests`` ends."""
    (size,) = struct.unpack("<I", _read(requests, 4))
    digest = hmac_sha256(_read(requests, size))
    while header := requests.read(8):
        (count,) = struct.unpack("<Q", header)
        lengths = array("I")
        lengths.frombytes(_read(requests, 4 * count))
        if sys.byteorder == "big":
            lengths.byteswap()
        replies.write(digests_of(digest, lengths, _read(requests, sum(lengths))))
        replies.flush()


if __name__ == "__main__":
    import signal

    # Ctrl-C reaches the whole process group: end quietly (no traceback); the parent stops
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    serve(sys.stdin.buffer, sys.stdout.buffer)
