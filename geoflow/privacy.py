"""Stable pseudonyms for purchaser and possessor names, unique within a data set.

A name becomes ``P-`` + the first 6 hex digits of HMAC-SHA256(key, normalised name). The name is
normalised first (accents removed, case folded, punctuation and runs of spaces collapsed), so
``"Rogelio  BARAJAS"`` and ``"rogelio barajas"`` get the same id, on every run and machine that
uses the same key.

The key is secret, so nobody without it can turn a candidate name (from a voter file, a court
docket) into its pseudonym and so reverse it. :func:`resolve_key` finds it: a key file given on
the command line, ``GEOFLOW_PSEUDONYM_KEY``, the config file, or else the user's own key file
(``pseudonym.key`` in the user config folder, created with 32 random bytes and mode 0600 on
first use). A team that shares one key file gets the same pseudonyms; the manifest records
only the key's fingerprint (:attr:`PseudonymKey.fingerprint`).

Six hex digits are 16.7 million ids: with 600,000 distinct names about 10,000 pairs of people
would share one. So ids are made unique among the distinct normalised names of the data: names
whose 6-digit ids collide get 8 digits (``P-3f9a1c07``), those still colliding 10, and so on.
A name therefore keeps its ``P-xxxxxx`` id from one data set to the next unless another name in
the same data collides with it; no id is ever a prefix of another id of the same data.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from geoflow import digests
from geoflow.aggregate import (
    ascii_text,
    hex_digits,
    plural,
    recode,
    sorted_texts,
    text_codes,
    used_categories,
)
from geoflow.digests import hmac_sha256
from geoflow.errors import ConfigError
from geoflow.io import text_parts
from geoflow.processes import usable_cpus

__all__ = [
    "ID_DIGITS",
    "KEY_ENV",
    "KEY_FILE",
    "MIN_KEY_LENGTH",
    "PseudonymKey",
    "config_dir",
    "user_key_path",
    "user_key",
    "read_key_file",
    "as_key",
    "resolve_key",
    "normalise_names",
    "arrow_text",
    "pseudonym",
    "pseudonymise",
    "hide_names",
    "MIN_CELL",
    "small_cells",
    "Listing",
    "list_purchasers",
    "suppress_cells",
    "suppress",
    "suppression_text",
]

log = logging.getLogger(__name__)

#: Hex digits of an id that collides with no other name of the data.
ID_DIGITS = 6
#: Environment variable holding a pseudonym key (text).
KEY_ENV = "GEOFLOW_PSEUDONYM_KEY"
#: Name of the user's key file in :func:`config_dir`.
KEY_FILE = "pseudonym.key"
#: Shortest key accepted from a file, the environment or the config file (characters): a short
#: key can be guessed, and a guessed key reverses every pseudonym.
MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class PseudonymKey:
    """A secret pseudonym key and where it came from. ``repr`` never shows the secret."""

    secret: bytes = field(repr=False)
    #: where the key came from, for the manifest and messages: ``user key file``,
    #: ``--pseudonym-key-file``, ``GEOFLOW_PSEUDONYM_KEY``, ``config file`` or ``given``
    source: str = "given"

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the key (HMAC of a fixed text): two outputs with the same
        fingerprint used the same key. It reveals nothing about the key itself."""
        return hmac.digest(self.secret, b"geoflow key fingerprint", "sha256").hex()[:16]

    def describe(self) -> dict[str, str]:
        """``{"fingerprint": …, "source": …}`` for a manifest (never the key)."""
        return {"fingerprint": self.fingerprint, "source": self.source}


def config_dir() -> Path:
    """geoflow's folder in the user config folder: ``$XDG_CONFIG_HOME/geoflow`` when that is
    set, else ``%APPDATA%\\geoflow`` (Windows), ``~/Library/Application Support/geoflow``
    (macOS) or ``~/.config/geoflow``."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "geoflow"
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "geoflow"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "geoflow"
    return Path.home() / ".config" / "geoflow"


def user_key_path() -> Path:
    """Where the user's own key lives: ``config_dir() / "pseudonym.key"``."""
    return config_dir() / KEY_FILE


def _checked(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_KEY_LENGTH:
        raise ConfigError(f"pseudonym key from {where} is {len(secret)} characters long; use "
                          f"at least {MIN_KEY_LENGTH} (a short key can be guessed)")
    return secret


def read_key_file(path: str | Path, *, source: str = "--pseudonym-key-file") -> PseudonymKey:
    """The key in ``path`` (its bytes without surrounding whitespace). Raises
    :class:`ConfigError` when it cannot be read or is shorter than :data:`MIN_KEY_LENGTH`."""
    path = Path(path)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read pseudonym key file: {exc.strerror}",
                          path=str(path)) from None
    return PseudonymKey(_checked(secret, f"file {path}"), source)


def user_key() -> PseudonymKey:
    """The user's own key (:func:`user_key_path`), created on first use: 32 random bytes as
    64 hex digits, file mode 0600 in a folder of mode 0700. A key file others can read is
    used but warned about."""
    path = user_key_path()
    source = "user key file"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return read_key_file(path, source=source)
        except OSError as exc:
            raise ConfigError(
                f"cannot create a pseudonym key: {exc.strerror}; set {KEY_ENV} or pass "
                "--pseudonym-key-file", path=str(path)) from None
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        log.warning("created a new pseudonym key in %s (copy this file to colleagues to share "
                    "pseudonyms)", path)
    elif os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users: chmod 600 it", path)
    return read_key_file(path, source=source)


def as_key(key: PseudonymKey | bytes | str | None) -> PseudonymKey:
    """``key`` as a :class:`PseudonymKey` (``None`` → the user's key, :func:`user_key`)."""
    if isinstance(key, PseudonymKey):
        return key
    if key is None:
        return user_key()
    return PseudonymKey(key.encode("utf-8") if isinstance(key, str) else bytes(key))


def resolve_key(*, key_file: str | Path | None = None, config: object = None,
                environ: dict[str, str] | None = None) -> PseudonymKey:
    """The key a command uses, first found of: ``key_file`` (``--pseudonym-key-file``),
    ``$GEOFLOW_PSEUDONYM_KEY``, the config file's ``pseudonym_key_file`` or
    ``pseudonym_key``, the user's key file (created on first use)."""
    environ = os.environ if environ is None else environ
    if key_file is not None:
        return read_key_file(key_file)
    text = environ.get(KEY_ENV, "").strip()
    if text:
        return PseudonymKey(_checked(text.encode("utf-8"), KEY_ENV), KEY_ENV)
    config_file = getattr(config, "pseudonym_key_file", None)
    if config_file is not None:
        return read_key_file(config_file, source="config file")
    config_key = getattr(config, "pseudonym_key", None)
    if config_key:
        where = f"pseudonym_key in {getattr(config, 'path', None) or 'the config file'}"
        return PseudonymKey(_checked(str(config_key).encode("utf-8"), where), "config file")
    return user_key()


#: Names normalised and hashed at a time (bounds the Python strings alive at once).
_BATCH = 200_000


#: :func:`geoflow.digests.hmac_sha256`, looked up here when ids are made (tests replace it).
_hmac_sha256 = hmac_sha256
#: From this many distinct names on, child processes (:mod:`geoflow.digests`, one per CPU)
#: hash shares of them, while this process waits, its GIL free for the geocoding that runs
#: beside the pseudonyms (:func:`geoflow.pipeline.prepare_records`).
PARALLEL_NAMES = 100_000


class _Hashers:
    """HMAC-SHA256 of names, shared with child processes that run :mod:`geoflow.digests`
    (a bare Python: started in a few hundredths of a second, whatever this process imported).
    A child that cannot start or fails is reported and its share hashed here instead."""

    def __init__(self, secret: bytes, children: int) -> None:
        self.digest = _hmac_sha256(secret)
        self.children: list[subprocess.Popen] = []
        try:
            for _ in range(children):
                # a fixed command: this Python and geoflow's own module file
                child = subprocess.Popen(  # noqa: S603
                    [sys.executable, "-I", "-S", digests.__file__],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                self.children.append(child)
                child.stdin.write(struct.pack("<I", len(secret)) + secret)
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        log.warning("hashing the names in this process alone: a helper process failed (%s)",
                    exc)
        self.close()

    def close(self) -> None:
        children, self.children = self.children, []
        for child in children:
            for stream in (child.stdin, child.stdout):
                with contextlib.suppress(OSError):  # a child gone: nothing to flush
                    stream.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def here(self, names: pd.Series) -> bytes:
        """The digests of ``names`` end to end, made in this process."""
        offsets, data = _utf8_parts(names)
        return self._range(offsets, data, 0, len(names))

    def _range(self, offsets: np.ndarray, data: np.ndarray, lo: int, hi: int) -> bytes:
        """The digests of names ``lo:hi`` of :func:`_utf8_parts`, made in this process (the
        children's own loop: :func:`geoflow.digests.digests_of`)."""
        return digests.digests_of(self.digest, np.diff(offsets[lo:hi + 1]).tolist(),
                                  data[offsets[lo]:offsets[hi]])

    def __call__(self, names: pd.Series) -> np.ndarray:
        """The 32-byte digest of each name (uint8, n × 32)."""
        offsets, data = _utf8_parts(names)
        if self.children:
            try:
                return _as_digests(self._shared(offsets, data))
            except (OSError, EOFError) as exc:
                self._give_up(exc)
        return _as_digests(self._range(offsets, data, 0, len(offsets) - 1))

    def _shared(self, offsets: np.ndarray, data: np.ndarray) -> bytes:
        bounds = np.linspace(0, len(offsets) - 1, len(self.children) + 1).astype(np.int64)
        spans = list(zip(self.children, bounds[:-1], bounds[1:], strict=True))
        for child, lo, hi in spans:
            lengths = np.diff(offsets[lo:hi + 1]).astype("<u4")
            child.stdin.write(struct.pack("<Q", hi - lo) + lengths.tobytes())
            child.stdin.write(data[offsets[lo]:offsets[hi]])
            child.stdin.flush()
        shares = []
        for child, lo, hi in spans:
            size = int(hi - lo) * digests.DIGEST_BYTES
            share = child.stdout.read(size)
            if len(share) != size:
                raise EOFError(f"a helper process answered {len(share)} of {size} bytes")
            shares.append(share)
        return b"".join(shares)


def _utf8_parts(names: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)``: the UTF-8 bytes of ``names`` end to end and where each starts
    (:func:`geoflow.io.text_parts`)."""
    return text_parts(arrow_text(names).cast(pa.large_string()))


def _as_digests(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, digests.DIGEST_BYTES)


def _helper_count(names: int) -> int:
    """Child processes for hashing ``names`` distinct names: one per usable CPU (hashlib holds
    the GIL for short messages: hashed here, they would hold up the geocoding beside them)."""
    return 0 if names < PARALLEL_NAMES else usable_cpus()


def _hex(digests: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` hex digits of each digest as one bytes value (``S{width}``)."""
    return np.ascontiguousarray(hex_digits(digests, width)).view(f"S{width}").ravel()


def _batches(names: pd.Series) -> Iterator[pd.Series]:
    """``names``, :data:`_BATCH` at a time (bounds the Python strings alive at once)."""
    return (names.iloc[start:start + _BATCH] for start in range(0, len(names), _BATCH))


def _in_batches(names: pd.Series, work: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """``work`` applied to :data:`_BATCH` names at a time, the results concatenated."""
    if len(names) <= _BATCH:
        return work(names)
    return pd.concat([work(batch) for batch in _batches(names)])


def arrow_text(values: pd.Series) -> pa.Array:
    """``values`` as one Arrow string array (no Python string per value). A pandas Arrow
    column is often many chunks: they are combined in Arrow (``pa.chunked_array([...])``
    around a chunked array would go through Python objects, seconds per million)."""
    text = pa.array(values.astype("string").array)
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


#: A name already in normal form: lower-case letters and digits, single spaces inside.
_CLEAN_NAME = r"^[a-z0-9]+( [a-z0-9]+)*$"


def normalise_names(names: pd.Series) -> pd.Series:
    """Accent-, case- and spacing-insensitive form of each name (NA stays NA).

    >>> normalise_names(pd.Series(["  José  DE LA-Rosa "])).tolist()
    ['jose de la rosa']
    """
    text = arrow_text(names)
    # ASCII (nearly every name): no Unicode to decompose, casefold is lower-casing, and the
    # clean ones ("jose de la rosa") need no regex rewrite; all in Arrow, no Python string
    lower = pc.ascii_lower(text)
    clean = pc.fill_null(pc.match_substring_regex(lower, _CLEAN_NAME), True)
    if pc.all(clean).as_py():
        out = pd.Series(pd.array(lower, dtype="string"), index=names.index)
    else:
        dirty = pc.invert(clean)
        rewritten = pc.utf8_trim(pc.replace_substring_regex(lower.filter(dirty),
                                                            r"[^0-9a-z]+", " "), " ")
        fixed = pc.replace_with_mask(lower, dirty, rewritten)
        out = pd.Series(pd.array(fixed, dtype="string"), index=names.index)
        others = np.flatnonzero(~pc.fill_null(pc.string_is_ascii(text), True).to_numpy(
            zero_copy_only=False))
        if len(others):  # the rest as match_key does it (Python's Unicode tables)
            rest = names.iloc[others].astype("string").str.normalize("NFKD")
            rest = rest.str.encode("ascii", errors="ignore").str.decode("ascii")
            rest = rest.astype("string").str.casefold()
            out.iloc[others] = rest.str.replace(r"[^0-9a-z]+", " ", regex=True).str.strip()
    return out.mask(out == "")


def _unique_ids(normal: pd.Series, key: PseudonymKey | bytes | str | None
                ) -> tuple[pd.Series, np.ndarray | None]:
    """``(ids, order)``: the id of each *distinct* normalised name (no NA, no repeats), 6 hex
    digits, 2 more at a time for names whose ids still collide; and the positions that sort
    the ids as text (None for ids past 16 digits: sort their text).

    No id is the start of another (two names sharing an id's digits would both have been
    given more), so the ids sort as their digests' first 8 bytes do: a sort of numbers, not
    of text (1M records: 0.8 s less)."""
    # one HMAC per distinct name: the only per-item Python work, shared with child processes
    # for large data (_Hashers). Only the first 8 bytes of each digest are kept (16 hex
    # digits; 24 bytes less a name, 240 MB at 10M); names still colliding past 16 digits
    # (never seen in practice) are hashed again in full
    hashers = _Hashers(as_key(key).secret, _helper_count(len(normal)))
    try:
        heads = np.empty(len(normal), dtype=">u8")
        for start, batch in zip(range(0, len(normal), _BATCH), _batches(normal), strict=True):
            heads[start:start + len(batch)] = np.ascontiguousarray(
                hashers(batch)[:, :8]).view(">u8").ravel()
    finally:
        hashers.close()

    def full(rows: np.ndarray) -> np.ndarray:  # rare: hashed here
        return _as_digests(hashers.here(normal.iloc[rows]))

    head = heads.astype(np.uint64)  # the first 16 hex digits as one number
    digits = np.full(len(heads), ID_DIGITS, dtype=np.int64)
    clashing = np.arange(len(heads))
    width = ID_DIGITS
    while len(clashing) and width < 64:  # each round keeps only the names still colliding
        prefix = (head[clashing] >> np.uint64(64 - 4 * width) if width <= 16
                  else _hex(full(clashing), width))
        clashing = clashing[pd.Series(prefix).duplicated(keep=False).to_numpy()]
        width += 2
        digits[clashing] = width
    octets = heads.view(np.uint8).reshape(-1, 8)
    longer = np.flatnonzero(digits > 16)
    # no two names share a head unless some ids are longer than 16 digits: the heads sort
    # the same in any sort (introsort: 0.04 s for 753,000 names, a stable one 0.14)
    order = None if len(longer) else np.argsort(head)
    if len(longer):  # past 16 digits: those names' whole digests
        octets = np.concatenate([octets, np.zeros((len(heads), 24), np.uint8)], axis=1)
        octets[longer] = full(longer)
    ids = pd.Series(pd.array(_id_text(octets, digits), dtype="string"), index=normal.index)
    return ids, order


def _id_text(digests: np.ndarray, digits: np.ndarray) -> pa.Array:
    """``P-`` and the first ``digits`` hex digits of each digest (Arrow text from bytes)."""
    width = int(digits.max(initial=ID_DIGITS))
    return ascii_text(b"P-", hex_digits(digests, width), digits)


def _id_lookup(distinct_raw: pd.Series, key: PseudonymKey | bytes | str | None
               ) -> tuple[np.ndarray, pd.api.extensions.ExtensionArray, np.ndarray | None]:
    """``(at, ids, order)``: the distinct ids of the distinct raw names (one per distinct
    normalised name), for each raw name the position of its id (−1 for NA or a blank name),
    and the positions that sort the ids (:func:`_unique_ids`)."""
    normal = _in_batches(distinct_raw, normalise_names)
    at, uniques = pd.factorize(normal, use_na_sentinel=True)  # distinct normalised names
    ids, order = _unique_ids(pd.Series(uniques, dtype="string"), key)
    return at, ids.array, order


def pseudonym(names: pd.Series, *, key: PseudonymKey | bytes | str | None = None) -> pd.Series:
    """Return the id (``P-xxxxxx``, longer when needed) of each name; NA or blank stays NA.

    Ids are unique among the distinct normalised names of ``names``; each distinct name is
    hashed once, so the cost grows with distinct names, not rows. ``key`` defaults to the
    user's key (:func:`user_key`).

    >>> pseudonym(pd.Series(["Rogelio Barajas", "ROGELIO  BARAJAS", None])).nunique()
    1
    """
    codes, uniques = pd.factorize(names.astype("string"), use_na_sentinel=True)
    at, ids, _ = _id_lookup(pd.Series(uniques, dtype="string"), key)
    return pd.Series(ids.take(recode(codes, at), allow_fill=True), index=names.index,
                     dtype="string", name=names.name)


def pseudonymise(
    records: pd.DataFrame, *, key: PseudonymKey | bytes | str | None = None,
) -> pd.DataFrame:
    """Return ``records`` with ``purchaser_id`` and ``possessor_id`` added (names kept).

    Both columns share one id space: a person has the same id as purchaser and possessor,
    and no two distinct names of the data share an id in either column. The ids are
    categoricals (sorted ids; no id text per record). A categorical name column adds its
    categories to the id space, used or not (a chunked read keeps the names of every
    possessor there: :mod:`geoflow.chunked`).
    """
    out = records.copy(deep=False)  # copy-on-write: the caller's frame is never changed

    def names(role: str) -> tuple[np.ndarray, pd.Index]:
        """The role's name codes (−1: NA) and the distinct names."""
        source = out.get(f"{role}_name")
        if source is None:  # no such column (a chunked read drops possessors): all NA
            return np.full(len(out), -1, dtype=np.intp), pd.Index([], dtype="string")
        codes, distinct = text_codes(source)
        return codes, pd.Index(distinct, dtype="string")

    roles = ("purchaser", "possessor")
    with ThreadPoolExecutor(2) as pool:  # Arrow's hashing lets go of the GIL
        factorized = dict(zip(roles, pool.map(names, roles), strict=True))
    # the distinct names of both columns together (a name in both is normalised and hashed
    # once, after normalisation), then split back by position
    uniques = pd.concat([pd.Series(u, dtype="string") for _, u in factorized.values()],
                        ignore_index=True)
    at, ids, order = _id_lookup(uniques, key)
    # the ids in sorted order, and each distinct name's place in it (−1: no id)
    rank, ranked = sorted_texts(pa.array(ids), order)
    at = recode(at, rank)
    start = 0
    for role, (codes, distinct) in factorized.items():
        own = at[start:start + len(distinct)]
        start += len(distinct)
        # ids as a categorical over the role's ids, sorted: no id text per record
        taken = used_categories(recode(codes, own), ranked)
        out[f"{role}_id"] = pd.Series(taken, index=out.index)
    return out


def hide_names(records: pd.DataFrame, *, key: PseudonymKey | bytes | str | None = None
               ) -> pd.DataFrame:
    """``records`` with ``purchaser_name`` and ``possessor_name`` replaced, in place, by
    ``purchaser_id`` and ``possessor_id`` (for outputs of record rows, e.g. ``geoflow
    geocode``); a frame without name columns comes back unchanged."""
    if "purchaser_name" not in records and "possessor_name" not in records:
        return records
    ids = pseudonymise(records, key=key)
    out = records.copy(deep=False)
    for role in ("purchaser", "possessor"):
        column = f"{role}_name"
        if column in out:
            at = out.columns.get_loc(column)
            out = out.drop(columns=[column, f"{role}_id"], errors="ignore")
            out.insert(at, f"{role}_id", ids[f"{role}_id"])
    return out


# --------------------------------------------------------------------------- small counts

#: Default ``--min-cell``: a cell tied to fewer guns or purchasers shows no purchaser and only
#: years; purchaser tables list purchasers tied to at least this many guns.
MIN_CELL = 3
#: Date columns of published layers and tables cut to their year in a small cell.
DATE_COLUMNS = ("first_purchase", "last_purchase", "first_recovery", "last_recovery")
#: Layers and tables with one row per place or store (cells); totals (states, ports, years,
#: state pairs) are never suppressed.
CELL_OUTPUTS = ("flows", "flows_overview", "dealers", "recoveries", "by_dealer")


def small_cells(frame: pd.DataFrame, min_cell: int) -> np.ndarray:
    """Boolean array: rows tied to fewer than ``min_cell`` guns, or to fewer than
    ``min_cell`` distinct purchasers but at least one. A row none of whose guns has a known
    purchaser (every row of a count table such as ATF's by-state tables) names no one, and
    its guns alone decide."""
    if min_cell <= 1:
        return np.zeros(len(frame), dtype=bool)
    guns = frame["guns"].to_numpy(dtype=np.int64)
    purchasers = frame["purchasers"].to_numpy(dtype=np.int64)
    return (guns < min_cell) | ((purchasers > 0) & (purchasers < min_cell))


def _listed(values: pd.Series, allowed: pd.Index) -> np.ndarray:
    """Boolean array: ``values.isin(allowed)`` for text, NA never listed, in one Arrow kernel
    (pandas' Arrow-string ``isin`` builds its value set one Python scalar at a time: seconds
    for the ~100,000 purchasers of a million records)."""
    data = pa.array(values.astype("string").array)  # Arrow-backed text is taken as it is
    if isinstance(data, pa.ChunkedArray):
        data = data.combine_chunks()
    listed = pd.Index(allowed).dropna().astype(str).to_numpy(dtype=object)
    found = pc.is_in(data, value_set=pa.array(listed, type=data.type))
    return found.to_numpy(zero_copy_only=False) & data.is_valid().to_numpy(zero_copy_only=False)


def suppress_cells(frame: pd.DataFrame, *, min_cell: int,
                   named: pd.Index | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` (a layer or table with ``guns`` and ``purchasers``) where small cells
    (:func:`small_cells`) carry no ``top_purchaser``, dates cut to their year and no
    ``median_time_to_crime_days`` (a day count between two dates of one gun gives them away).
    A ``top_purchaser`` not in ``named`` (purchasers listed in ``by_purchaser``) is dropped
    in every row. Returns the frame and ``{"rows": …, "guns": …}`` of the small cells."""
    small = small_cells(frame, min_cell)
    counts = {"rows": int(small.sum()),
              "guns": int(frame["guns"].to_numpy(dtype=np.int64)[small].sum())}
    if min_cell <= 1:
        return frame, counts
    out = frame.copy(deep=False)  # copy-on-write: only the columns changed below are new
    # each column changed on its array and put back in its place: no index alignment or
    # GeoDataFrame item setting per column (a batch entity's four outputs: ~4 ms)
    if "top_purchaser" in out:
        top = out["top_purchaser"].astype("string")
        hidden = small | (~_listed(top, named) if named is not None else False)
        _replace(out, "top_purchaser", _with_na(top.array, hidden))
    for column in DATE_COLUMNS:
        if column in out:
            dates = out[column].astype("string").array
            if small.any():  # small cells show the year alone
                dates = dates.copy()
                dates[small] = pd.Series(dates[small]).str.slice(0, 4).array
            _replace(out, column, dates)
    if "median_time_to_crime_days" in out:
        median = out["median_time_to_crime_days"]
        _replace(out, "median_time_to_crime_days", median.mask(small).array)
    return out, counts


def _with_na(values: pd.api.extensions.ExtensionArray, where: np.ndarray
             ) -> pd.api.extensions.ExtensionArray:
    """A copy of ``values`` with NA ``where`` it is true (``values`` itself when nowhere)."""
    if not where.any():
        return values
    values = values.copy()
    values[where] = pd.NA
    return values


def _replace(frame: pd.DataFrame, column: str, values: object) -> None:
    """``frame[column] = values``, in the column's place (its first, if the name repeats)."""
    frame.isetitem(int(np.flatnonzero(frame.columns == column)[0]), values)


@dataclass(frozen=True)
class Listing:
    """What :func:`list_purchasers` left out: the purchasers still listed (``named``) and the
    count of those not listed (``not_listed``: ``purchasers``, ``guns``)."""

    named: pd.Index
    not_listed: dict[str, int]


def list_purchasers(tables: dict[str, pd.DataFrame], *, min_cell: int = MIN_CELL
                    ) -> tuple[dict[str, pd.DataFrame], Listing]:
    """``tables`` with ``by_purchaser`` and ``by_trafficker`` listing only purchasers tied to
    ``min_cell`` or more guns, and the :class:`Listing` :func:`suppress` reports (with the
    purchasers :func:`~geoflow.aggregate.by_purchaser` only counted). Called once the
    findings are made, it frees the table of every purchaser before the flows are built."""
    purchasers = tables["by_purchaser"]
    left_out = purchasers.attrs.get("left_out", {"min_guns": 0, "purchasers": 0, "guns": 0})
    if left_out["min_guns"] > max(min_cell, 0):
        raise ValueError(f"by_purchaser left out purchasers under {left_out['min_guns']} guns,"
                         f" but --min-cell {min_cell} lists them")
    guns = purchasers["guns"].to_numpy(dtype=np.int64)
    listed = guns >= min_cell
    tables = dict(tables)
    tables["by_purchaser"] = purchasers[listed].reset_index(drop=True)
    traffickers = tables["by_trafficker"]
    tables["by_trafficker"] = traffickers[
        traffickers["guns"].to_numpy(dtype=np.int64) >= min_cell].reset_index(drop=True)
    listing = Listing(named=pd.Index(tables["by_purchaser"]["purchaser"].dropna()),
                      not_listed={"purchasers": int((~listed).sum()) + left_out["purchasers"],
                                  "guns": int(guns[~listed].sum()) + left_out["guns"]})
    return tables, listing


def suppress(layers: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame], *,
             min_cell: int = MIN_CELL, listing: Listing | None = None,
             done: Mapping[str, tuple[pd.DataFrame, dict[str, int]]] | None = None,
             ) -> tuple[dict, dict, dict]:
    """Apply the small-count rule to a run's layers and tables: ``(layers, tables, summary)``.

    - Cells (:data:`CELL_OUTPUTS`; ``flows_overview`` is the state-level flows.geojson of a
      very large run) under ``min_cell`` guns or purchasers: no purchaser, dates
      as years (:func:`suppress_cells`); a top purchaser is shown only when listed below.
    - ``by_purchaser`` and ``by_trafficker`` list only purchasers tied to ``min_cell`` or
      more guns (:func:`list_purchasers`; ``listing`` when the tables were cut already).
    - Totals (``by_us_state``, ``by_mx_state``, ``state_matrix``, ``by_crossing``,
      ``by_year``, crossings, states) are unchanged.

    ``done``: cells already through :func:`suppress_cells` (with this ``min_cell`` and
    ``listing.named``), name → what it returned, taken as they are (a large run suppresses
    its flows while its point layers are still being built).

    ``summary`` (for the manifest and the map legend): ``min_cell``, ``enabled``, ``cells``
    (output → rows and guns in small cells), ``small_flows`` (flows of fewer than
    ``min_cell`` guns: ``flows``, ``guns``), ``purchasers_not_listed`` (``purchasers``,
    ``guns``) and ``text`` (sentences saying so).
    """
    if listing is None:
        tables, listing = list_purchasers(tables, min_cell=min_cell)
    layers, tables = dict(layers), dict(tables)
    cells: dict[str, dict[str, int]] = {}
    for name in CELL_OUTPUTS:
        source = layers if name in layers else tables
        if done and name in done:
            source[name], cells[name] = done[name]
        elif name in source:
            source[name], cells[name] = suppress_cells(source[name], min_cell=min_cell,
                                                       named=listing.named)
    flow_guns = (layers["flows"]["guns"].to_numpy(dtype=np.int64) if "flows" in layers
                 else np.zeros(0, dtype=np.int64))
    small_flow = flow_guns < min_cell
    summary = {
        "min_cell": int(min_cell),
        "enabled": min_cell > 1,
        "cells": cells,
        "small_flows": {"flows": int(small_flow.sum()), "guns": int(flow_guns[small_flow].sum())},
        "purchasers_not_listed": dict(listing.not_listed),
    }
    summary["text"] = suppression_text(summary)
    return layers, tables, summary


def suppression_text(summary: dict) -> list[str]:
    """Sentences for a legend or findings.md saying what the small-count rule withheld."""
    k = summary["min_cell"]
    if not summary["enabled"]:
        return ["Small-count suppression is off (--min-cell 1): every purchaser and exact date "
                "is published."]
    out = []
    flows = summary["cells"].get("flows", {}).get("rows", 0)
    if flows:
        verb = "shows" if flows == 1 else "show"
        out.append(f"{plural(flows, 'flow')} tied to fewer than {k} guns or {k} purchasers "
                   f"{verb} no purchaser and only years.")
    hidden = summary["purchasers_not_listed"]
    if hidden["purchasers"]:
        verb = "is" if hidden["purchasers"] == 1 else "are"
        out.append(f"{plural(hidden['purchasers'], 'purchaser')} tied to fewer than {k} guns "
                   f"({plural(hidden['guns'], 'gun')}) {verb} counted in the totals but not "
                   "listed.")
    return out
