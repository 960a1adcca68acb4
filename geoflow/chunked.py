"""Chunked preparation of large CSV inputs: bounded memory through partial aggregates.

A CSV over :data:`CHUNKED_MIN_BYTES` (or any, with ``--chunk-mb``) is cut at record
boundaries into chunks of about :data:`CHUNK_BYTES`; each chunk goes through the usual
read → geocode → crossings → ``placed`` steps and is then *collapsed*
(:func:`collapse`): its placed records become one row per distinct combination of the
columns the analysis reads (dealer, place, port, route, purchaser, dates …), with
``guns`` summed, the records counted in :data:`RECORDS_COLUMN` and the first source line
kept. Unplaced records stay one row each (``unplaced.csv`` lists them).

The partial aggregates combine associatively (:func:`combine`: concatenate, group again,
sum), so chunks could as well be reduced in any order or in parallel by an engine such as
Dask. The combined rows are a weighted version of the records that
:func:`geoflow.pipeline.analyse` reads like a count table: every table, layer and finding
is a sum of weights, and rows keep first-seen order, so the outputs equal the in-memory
path's (``tests/test_chunked.py`` checks it file by file).

What is not collapsed: pseudonyms are made once, after combining, from every distinct
name (ids are unique among the names of the whole input); records repeated across chunks
are found through 64-bit hashes of their keys (:class:`geoflow.io.SeenRecords`).

Memory grows with the distinct combinations, not with the text of the records: trace
numbers, serial numbers, makes, models and possessor names are never held for the whole
file. Limits: CSV only (XLSX and Parquet are read whole), an encoding detected per chunk
(a file mixing encodings across chunks lists each), and a quote left open near the end of
the file makes the rest of the file one chunk, as the whole-file reader would read it.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from geoflow.aggregate import (
    RECORDS_COLUMN,
    first_rows,
    first_seen_codes,
    from_codes,
    recode,
    sorted_texts,
    unplace_duplicates,
)
from geoflow.geocode import PlaceMemo
from geoflow.io import (
    SeenRecords,
    lines_above_header,
    read_traces,
    sorted_positions,
    warning_key,
)
from geoflow.privacy import arrow_text
from geoflow.readahead import CHUNKED_MIN_BYTES  # CSV inputs from this size up

__all__ = [
    "CHUNK_BYTES",
    "CHUNKED_MIN_BYTES",
    "RECORDS_COLUMN",
    "NameTable",
    "Partial",
    "csv_chunks",
    "collapse",
    "combine",
    "prepare_chunked",
    "wants_chunks",
]

#: Bytes of CSV text per chunk (about 1,000,000 sample records).
CHUNK_BYTES = 256 << 20
#: Record columns no analysis reads and that are (nearly) unique per record: dropped from
#: placed records before collapsing (unplaced records keep them for ``unplaced.csv``).
DROPPED = ("trace_id", "serial_number", "manufacturer", "model", "caliber", "dealer_address",
           "possessor_name", "possessor_id")
_LINES_IN_TEXT = re.compile(r"(lines? )(\d+)(?:-(\d+))?")
_BINARY_STARTS = (b"PK\x03\x04", b"PAR1", codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def wants_chunks(path: str | Path, chunk_mb: float | None) -> bool:
    """Whether to read ``path`` in chunks: asked for (``chunk_mb``), or a CSV (not XLSX,
    Parquet or UTF-16) of at least :data:`CHUNKED_MIN_BYTES`."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() in (".xlsx", ".xlsm", ".parquet", ".pq"):
        return False
    with path.open("rb") as handle:
        if handle.read(4).startswith(_BINARY_STARTS):
            return False
    return chunk_mb is not None or path.stat().st_size >= CHUNKED_MIN_BYTES


# --------------------------------------------------------------------------------------------
# cutting the file


def _breaks_outside_quotes(a: np.ndarray, *, quoted: bool = False) -> np.ndarray:
    """Offsets of the line breaks of ``a`` (uint8, starting outside quotes, or inside with
    ``quoted``) that end a record: an LF, or a CR followed by another byte than LF, with an
    even number of ``"`` before it. A CR at the very end is left out (its LF may follow in
    the next block)."""
    quotes = np.flatnonzero(a == 34)
    lf = np.flatnonzero(a == 10)
    cr = np.flatnonzero(a == 13)
    cr = cr[cr + 1 < a.size]
    cr = cr[a[cr + 1] != 10]
    breaks = np.union1d(lf, cr) if cr.size else lf
    parity = (np.searchsorted(quotes, breaks) + quoted) % 2  # quotes before each break
    return breaks[parity == 0]


def _last_break(a: np.ndarray, tail: int = 1 << 20) -> int:
    """``_breaks_outside_quotes(a)[-1]``, or −1 when ``a`` holds no record end: only the end
    of ``a`` is searched, longer ends until one is found; the quotes before it are counted,
    not located (a chunk of sample records: 40 million quotes)."""
    while True:
        start = max(a.size - tail, 0)
        quoted = bool(np.count_nonzero(a[:start] == 34) % 2)
        ends = _breaks_outside_quotes(a[start:], quoted=quoted)
        if len(ends):
            return start + int(ends[-1])
        if start == 0:
            return -1
        tail *= 16


def _line_count(a: np.ndarray) -> int:
    """Physical line breaks in ``a``, counted as the reader counts them (CRLF once)."""
    lf = int(np.count_nonzero(a == 10))
    cr = np.flatnonzero(a == 13)
    lone = cr[(cr + 1 >= a.size) | (a[np.minimum(cr + 1, a.size - 1)] != 10)]
    return lf + int(lone.size)


@dataclass(frozen=True)
class Chunk:
    """Bytes the reader can read as a file, and what to add to its line numbers."""

    data: bytes
    line_offset: int  # file line = chunk line + line_offset (lines after the header)
    first: bool


def csv_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES,
               digest: hashlib._Hash | None = None, *, skip_lines: int = 0
               ) -> Iterator[Chunk]:
    """Cut a CSV into chunks of whole records of about ``chunk_bytes``: the first as the file
    begins, every later one the file's header record followed by its records. The header is
    the first record below ``skip_lines`` lines (a title above it:
    :func:`~geoflow.io.lines_above_header`). ``digest`` is updated with every byte of the
    file, in order, in a thread beside the chunks' work (hashlib lets go of the GIL: 2.5 s
    less at 10M records); complete once the last chunk is taken."""
    header: bytes | None = None
    header_lines = 0
    lines_before = 0  # line breaks of the file before the pending bytes
    pending = b""
    with Path(path).open("rb") as handle, ThreadPoolExecutor(1) as hashing:
        while True:  # the file's bytes are held once, in the chunk being read (and pending)
            block = handle.read(chunk_bytes)
            if digest is not None:  # one thread: the blocks are hashed in order
                hashing.submit(digest.update, block)
            last = not block
            buf = pending + block if pending else block
            del block
            if not buf:
                return
            if not last:
                # the quotes of a title above the header are not the table's: counted after it
                start = _line_start(buf, skip_lines) if header is None else 0
                end = _last_break(np.frombuffer(buf, dtype=np.uint8)[start:])
                end = start + end if end >= 0 else -1
                if header is None:  # the first chunk holds the header and a record at least
                    header_end = _header_end(buf, skip_lines)
                    end = end if header_end and end >= header_end else -1
                if end < 0:  # no record ends in it yet: read on
                    pending = buf
                    continue
                cut = end + 1
            else:  # end of file: the rest is the last chunk
                cut = len(buf)
            body, pending = buf[:cut], buf[cut:]
            del buf
            body_lines = _line_count(np.frombuffer(body, dtype=np.uint8))
            if header is not None and (not body or body.isspace()):  # blank lines only
                lines_before += body_lines
                if last:
                    return
                continue
            if header is None:
                header_start = _line_start(body, skip_lines)
                header_end = _header_end(body, skip_lines)
                header = body[header_start:header_end] if header_end else body[header_start:]
                header = header.removeprefix(codecs.BOM_UTF8)
                header_lines = _line_count(np.frombuffer(header, dtype=np.uint8))
                yield Chunk(body, 0, True)
            else:
                body = header + body  # rebound: the chunk's bytes are the only copy
                yield Chunk(body, lines_before - header_lines, False)
            del body
            lines_before += body_lines
            if last:
                return


def _line_start(buf: bytes, lines: int) -> int:
    """Offset of the start of line ``lines`` + 1 of ``buf`` (0: the first line); the end of
    ``buf`` when it has fewer lines."""
    at = 0
    for _ in range(lines):
        at = buf.find(b"\n", at) + 1
        if not at:
            return len(buf)
    return at


def _header_end(buf: bytes, skip_lines: int = 0, head: int = 1 << 16) -> int:
    """Offset after the line break ending the first non-blank record below ``skip_lines``
    lines (0: none complete), looked for in the first ``head`` bytes, then in 16 times as
    many until found or ``buf`` is searched whole (a quarter-gigabyte chunk's breaks all
    took 0.7 s)."""
    first = _line_start(buf, skip_lines)
    while True:
        part = np.frombuffer(buf, dtype=np.uint8, count=min(first + head, len(buf)))[first:]
        start = first
        for end in _breaks_outside_quotes(part) + first:  # blank lines before it: a few
            if buf[start:end].removeprefix(codecs.BOM_UTF8).strip(b" \t\r\n"):
                return int(end) + 1
            start = int(end) + 1
        if first + part.size == len(buf):
            return 0
        head *= 16


# --------------------------------------------------------------------------------------------
# reading one chunk


def _shift_text(text: pd.Series, offset: int) -> pd.Series:
    """Line numbers written in reasons ("lines 5-9 were read as one row") moved by offset."""
    if not offset or text.empty:
        return text

    def move(match: re.Match) -> str:
        first = f"{match.group(1)}{int(match.group(2)) + offset}"
        return first + (f"-{int(match.group(3)) + offset}" if match.group(3) else "")

    return text.astype("string").str.replace(_LINES_IN_TEXT, move, regex=True).astype(
        text.dtype)


def _shifted(read, chunk: Chunk):
    """A chunk's :class:`~geoflow.io.ReadResult` in file lines, without the header's
    warnings (line 1) after the first chunk (the first chunk reported them)."""
    if chunk.first:
        return read
    offset = chunk.line_offset
    warnings, counts = read.warnings, dict(read.warning_counts)
    header = warnings["line"].to_numpy() <= 1
    for column, reason in warnings.loc[header, ["column", "reason"]].itertuples(index=False):
        name = warning_key(column, reason)
        counts[name] = counts.get(name, 0) - 1
        if counts[name] <= 0:
            del counts[name]
    warnings = warnings.loc[~header]
    warnings = warnings.assign(line=warnings["line"] + offset,
                               reason=_shift_text(warnings["reason"], offset))
    rejects = read.rejects.assign(line=read.rejects["line"] + offset,
                                  reason=_shift_text(read.rejects["reason"], offset))
    records = read.records.assign(source_line=read.records["source_line"] + offset)
    return replace(read, records=records, rejects=rejects, warnings=warnings,
                   warning_counts=counts)


# --------------------------------------------------------------------------------------------
# partial aggregates


@dataclass(frozen=True)
class Partial:
    """What one or more chunks leave: collapsed records, rejects, the geocode report, the
    reader's warnings and counts, rows read, encodings and the reader's dtypes."""

    records: pd.DataFrame
    rejects: pd.DataFrame
    report: pd.DataFrame
    warnings: pd.DataFrame
    warning_counts: dict
    rows_read: int
    encodings: tuple[str, ...]
    dtypes: dict  # the reader's dtype of each column (categoricals hold them as codes)


class NameTable:
    """The distinct purchaser and possessor names of every chunk so far, each held once in
    Arrow arrays (no Python string per name); chunks keep ``purchaser_name`` as int32 codes
    into it (-1: no name). Pseudonyms are made from it once every chunk is read, so ids are
    unique among the names of the whole file."""

    def __init__(self) -> None:
        self._parts: list[pa.Array] = []  # each chunk's new names, in first-seen order
        self.size = 0
        # the names' 64-bit hashes, sorted, and each one's code: a chunk's names are looked
        # up in them (Arrow's index_in built a hash table of every name so far, each chunk:
        # 25 s at 10M records)
        self._hashes = np.empty(0, dtype=np.uint64)
        self._codes = np.empty(0, dtype=np.int32)

    def codes(self, values: pd.Series) -> np.ndarray:
        """Codes of ``values`` (names new to the table are added)."""
        text = arrow_text(values)
        encoded = pc.dictionary_encode(text.cast(pa.large_string()))
        uniques = encoded.dictionary
        hashes = pd.util.hash_array(uniques.to_numpy(zero_copy_only=False), categorize=False)
        at = self._known(uniques, hashes)
        new = at < 0
        at[new] = self.size + np.arange(int(new.sum()))
        self._parts.append(uniques.filter(pa.array(new)))
        self.size += int(new.sum())
        self._remember(hashes[new], at[new])
        indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        return recode(indices, at).astype(np.int32)

    def _known(self, uniques: pa.Array, hashes: np.ndarray) -> np.ndarray:
        """The code of each of the distinct ``uniques`` already in the table, else −1. A
        name whose hash is known is compared as text (two names share a hash with odds of
        n² / 2⁶⁵), and one that differs is looked up by its text."""
        at = np.full(len(uniques), -1, dtype=np.int64)
        if not self.size or not len(uniques):
            return at
        near = sorted_positions(self._hashes, hashes)
        rows = np.flatnonzero(near >= 0)
        codes = self._codes[near[rows]].astype(np.int64)
        known = pa.chunked_array(self._parts, pa.large_string())
        same = pc.equal(uniques.take(rows), known.take(codes)).to_numpy(zero_copy_only=False)
        at[rows[same]] = codes[same]
        other = rows[~same]  # a shared hash: the text decides
        if len(other):
            found = pc.index_in(uniques.take(other), value_set=known)
            at[other] = pc.fill_null(found, -1).to_numpy(zero_copy_only=False)
        return at

    def _remember(self, hashes: np.ndarray, codes: np.ndarray) -> None:
        new = np.argsort(hashes)
        merged = np.concatenate([self._hashes, hashes[new]])
        merged_codes = np.concatenate([self._codes, codes[new].astype(np.int32)])
        order = np.argsort(merged, kind="stable")  # two sorted runs: merged in one pass
        self._hashes, self._codes = merged[order], merged_codes[order]

    def forget_hashes(self) -> None:
        """Every chunk is read: the lookup's memory goes (12 bytes a name)."""
        self._hashes = np.empty(0, dtype=np.uint64)
        self._codes = np.empty(0, dtype=np.int32)

    @property
    def names(self) -> pd.Series:
        """Every name, in first-seen order (code order)."""
        names = pa.chunked_array(self._parts, pa.large_string()).combine_chunks()
        return pd.Series(pd.array(names, dtype="string"))

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        """Names from codes, as a categorical over the table's names (sorted)."""
        rank, names = sorted_texts(pa.chunked_array(self._parts, pa.large_string())
                                   .combine_chunks())
        return from_codes(recode(np.asarray(codes), rank), names)


#: Columns a collapsed row sums or keeps the least of, rather than grouping by.
_MEASURES = ("guns", "source_line", RECORDS_COLUMN)
#: Columns unplaced.csv reads (pipeline.UNPLACED_COLUMNS) among those collapsing drops.
_UNPLACED_KEEP = ("trace_id",)
#: The column a chunk holds as codes into its :class:`NameTable`.
_NAMES = "purchaser_name"


def _as_codes(records: pd.DataFrame) -> pd.DataFrame:
    """Every column but the measures and booleans as a categorical: a row costs a small
    integer per column (dates, coordinates and scores have few distinct values per chunk).
    :func:`_restore` gives numbers and dates their dtypes back. Columns are coded on two
    threads (the hashing of text and numbers lets go of the GIL)."""
    columns = [c for c in records.columns
               if c not in _MEASURES and c != _NAMES and records[c].dtype != bool
               and not isinstance(records[c].dtype, pd.CategoricalDtype)]
    with ThreadPoolExecutor(2) as pool:
        coded = pool.map(lambda c: records[c].astype("category"), columns)
        return records.assign(**dict(zip(columns, coded, strict=True)))


def _restore(records: pd.DataFrame, dtypes: dict) -> pd.DataFrame:
    """Numeric, boolean and date columns back to their dtypes of the reader (``dtypes``);
    text stays categorical."""
    return records.astype({
        c: dtype for c, dtype in dtypes.items()
        if c in records.columns and isinstance(records[c].dtype, pd.CategoricalDtype)
        and (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
             or pd.api.types.is_datetime64_any_dtype(dtype))})


def _group(frame: pd.DataFrame, records_from: str) -> pd.DataFrame:
    """Rows of ``frame`` with equal keys (every column but the measures) as one, in order of
    first appearance: guns and records summed, the first source line kept. The keys are
    numbered one column at a time (:func:`~geoflow.aggregate.first_seen_codes`, which stops
    following the rows that are apart after a few keys) and the measures summed by bincount:
    pandas' grouper over some thirty keys took 9 times as long (a chunk of a million sample
    records: 2.9 s, now 0.3 s)."""
    keys = [c for c in frame.columns if c not in _MEASURES]
    group = first_seen_codes([frame[c] for c in keys])
    n = int(group.max()) + 1 if len(group) else 0
    first = first_rows(group, n)
    lines = frame["source_line"].to_numpy()
    if (lines[1:] >= lines[:-1]).all():  # in line order (as read): the first is the least
        line = lines[first]
    else:
        line = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(line, group, lines.astype(np.int64))
    records = (np.bincount(group, minlength=n) if records_from == "guns"
               else _summed(group, frame[records_from].to_numpy(), n))
    measures = {"guns": _summed(group, frame["guns"].to_numpy(), n),
                "source_line": line, RECORDS_COLUMN: records}
    out = frame[keys].iloc[first].reset_index(drop=True)
    for column, values in measures.items():
        out[column] = values.astype(np.int64, copy=False)
    return out[list(frame.columns)]


def _summed(group: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Integer ``values`` summed per group 0..n-1, by a float bincount (exact below 2**53;
    ``np.add.at`` took 100 ms a million-row chunk, the bincount 12 ms)."""
    sums = np.bincount(group, weights=values.astype(np.float64), minlength=n)
    if len(sums) and np.abs(sums).max() >= 2.0 ** 53:  # beyond float64's integers
        exact = np.zeros(n, dtype=np.int64)
        np.add.at(exact, group, values.astype(np.int64))
        return exact
    return np.rint(sums).astype(np.int64)


def collapse(records: pd.DataFrame) -> pd.DataFrame:
    """Placed records as one row per distinct combination of the analysed columns, with
    ``guns`` summed, :data:`RECORDS_COLUMN` counted and ``source_line`` the first line;
    unplaced records unchanged (one record each), all in first-line order, every column
    but the measures as codes (:func:`_as_codes`)."""
    placed = records["placed"].to_numpy(dtype=bool)
    loose = records.loc[~placed, list(_UNPLACED_KEEP)]  # trace ids of unplaced records only
    records = records.drop(columns=[c for c in (*DROPPED, *_UNPLACED_KEEP)
                                    if c in records.columns])
    records = _as_codes(records.assign(**{RECORDS_COLUMN: np.int64(1)}))
    kept = _group(records.loc[placed], "guns")
    out = pd.concat([kept, records.loc[~placed].join(loose)], ignore_index=True)
    out = _as_codes(out)  # trace_id, empty in the collapsed rows
    return out.sort_values("source_line", kind="stable").reset_index(drop=True)


def combine(parts: list[Partial], *, consume: bool = False) -> Partial:
    """One partial aggregate from several, in the order given (associative: any grouping of
    consecutive parts gives the same rows). Placed rows whose keys repeat across parts are
    summed into one; the others are only concatenated, so memory stays near the parts'.
    ``consume`` empties the parts' record frames column by column as they are copied."""
    if len(parts) == 1:
        return parts[0]
    from geoflow.io import _capped

    records = _concat([p.records if consume else p.records.copy(deep=False) for p in parts])
    placed = records["placed"].to_numpy(dtype=bool)
    keys = [c for c in records.columns if c not in _MEASURES and c not in _UNPLACED_KEEP]
    # rows of equal keys, numbered over every row (``placed`` is a key: a placed row never
    # shares an unplaced one's number)
    group = first_seen_codes([records[c] for c in keys])
    repeated = placed & (np.bincount(group)[group] > 1)
    if repeated.any():  # placed rows of equal keys: merged
        records = _merge_repeats(records, repeated)
    counts: dict[str, int] = {}
    for part in parts:
        for name, number in part.warning_counts.items():
            counts[name] = counts.get(name, 0) + number
    return Partial(
        records=records,
        rejects=pd.concat([p.rejects for p in parts], ignore_index=True),
        report=_combine_reports([p.report for p in parts]),
        warnings=_capped([p.warnings for p in parts]),
        warning_counts=counts,
        rows_read=sum(p.rows_read for p in parts),
        encodings=tuple(dict.fromkeys(e for p in parts for e in p.encodings)),
        dtypes=parts[0].dtypes,
    )


def _merge_repeats(records: pd.DataFrame, repeated: np.ndarray) -> pd.DataFrame:
    """``records`` (in first-line order) with the ``repeated`` rows of equal keys merged into
    the first of them (guns and records summed): no sort, and no copy of the rows that do
    not repeat beyond the one that drops the merged rows."""
    at = np.flatnonzero(repeated)
    summed = _group(records.iloc[at], RECORDS_COLUMN).sort_values("source_line")
    lines = records["source_line"].to_numpy()
    first = at[np.isin(lines[at], summed["source_line"].to_numpy())]  # ascending, like summed
    for measure in ("guns", RECORDS_COLUMN):
        values = records[measure].to_numpy().copy()
        values[first] = summed[measure].to_numpy()
        records[measure] = values
    keep = np.ones(len(records), dtype=bool)
    keep[at] = False
    keep[first] = True
    return records.loc[keep].reset_index(drop=True)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate record frames, categoricals over the union of their (sorted) categories,
    one column at a time, each dropped from the frames once copied: memory holds about
    one copy of the records, never two."""
    columns = {}
    for column in list(frames[0].columns):
        values = [f.pop(column) for f in frames]
        if isinstance(values[0].dtype, pd.CategoricalDtype):
            columns[column] = pd.Categorical(pd.api.types.union_categoricals(
                values, sort_categories=True, ignore_order=True))
        else:
            columns[column] = np.concatenate([v.to_numpy() for v in values])
        del values
    return pd.DataFrame(columns)


def _ordered_warnings(warnings: pd.DataFrame, header_map: dict) -> pd.DataFrame:
    """Chunks' warnings in the whole-file reader's order, then capped like it: the header's
    (line 1, the first chunk's alone, in its order: column-map notes, headers not used, a
    title above it …), bad bytes, repeated headers, dates read day-first, then per input
    column (coordinates, dates, year in :mod:`geoflow.schema` order) by line."""
    from geoflow import schema
    from geoflow.io import BAD_BYTES_REASON, DAY_FIRST_DETECTED, _capped

    columns = [*schema.COORDINATE_COLUMNS, *schema.DATE_COLUMNS, schema.YEAR_COLUMN]
    order = {raw: 4 + columns.index(c) for raw, c in header_map.items() if c in columns}
    reason = warnings["reason"].astype("string")
    rank = warnings["column"].map(order).fillna(4 + len(columns)).astype("int64")
    rank = rank.mask(reason == DAY_FIRST_DETECTED, 3)
    rank = rank.mask(reason.str.startswith("repeated header"), 2)
    rank = rank.mask(reason == BAD_BYTES_REASON, 1)
    rank = rank.mask((warnings["line"] == 1) & (rank > 3), 0)
    order_by = pd.DataFrame({"rank": rank.to_numpy(), "line": warnings["line"].to_numpy()})
    positions = order_by.sort_values(["rank", "line"], kind="stable").index.to_numpy()
    return _capped([warnings.iloc[positions]])


def _combine_reports(reports: list[pd.DataFrame]) -> pd.DataFrame:
    """Geocode reports of chunks as one: records summed, the first five source lines."""
    from geoflow.geocode import _report_order

    keys = ["role", "query", "level"]
    long = pd.concat(reports, ignore_index=True)
    grouped = long.groupby(keys, sort=False, dropna=False)
    first = grouped.first()
    lines = grouped["first_lines"].agg(
        lambda parts: " ".join(" ".join(parts).split()[:5]))  # per distinct place
    first = first.assign(records=grouped["records"].sum(), first_lines=lines).reset_index()
    return _report_order(first[reports[0].columns])


# --------------------------------------------------------------------------------------------
# the whole input


def prepare_chunk(chunk: Chunk, path: Path, *, options, seen: SeenRecords, names: NameTable,
                  ports, timings: dict[str, float], memory: dict[str, float],
                  places: PlaceMemo | None = None) -> tuple[Partial, dict]:
    """Read, geocode, route and collapse one chunk (pseudonyms come after combining); also
    the chunk's reader ``source`` (format, delimiter, header map …). Each stage's seconds
    are added to ``timings`` and its peak memory noted in ``memory``; ``places``: the
    places earlier chunks geocoded (each distinct place is geocoded once per input)."""
    from geoflow.counts import to_border
    from geoflow.crossings import assign_crossings
    from geoflow.flows import dealer_ids
    from geoflow.geocode import geocode_traces
    from geoflow.pipeline import _stage, place_records

    spent: dict[str, float] = {}
    with _stage("read", spent, memory):
        read = _shifted(read_traces(path, column_map=options.column_map,
                                    dayfirst=options.dayfirst, today=options.today,
                                    sheet=options.sheet, data=chunk.data, seen=seen), chunk)
    with _stage("geocode", spent, memory):
        records, report = geocode_traces(read.records, geocoder=options.geocoder,
                                         overrides=options.overrides, memo=places)
    with _stage("crossings", spent, memory):
        records = assign_crossings(records, ports)
        if read.source.get("count_column"):
            records = to_border(records, ports)
        records["dealer_id"] = dealer_ids(records)
        records = unplace_duplicates(place_records(records))
    with _stage("collapse", spent, memory):
        if "possessor_name" in records.columns:  # in the id space, not in the rows
            names.codes(records["possessor_name"])
        dtypes = dict(records.dtypes)
        if _NAMES in records.columns:
            records[_NAMES] = names.codes(records[_NAMES])
        records = collapse(records)
    for stage, seconds in spent.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    return Partial(
        records=records, rejects=read.rejects, report=report,
        warnings=read.warnings, warning_counts=dict(read.warning_counts),
        rows_read=int(read.source["rows_read"]),
        encodings=(str(read.source.get("encoding")),),
        dtypes=dtypes,
    ), read.source


def _file_encodings(encodings: tuple[str, ...]) -> list[str]:
    """The chunks' encodings as the file's: a byte-order mark begins the file, not each
    chunk, so UTF-8 chunks after a first ``utf-8-sig`` one are that encoding."""
    if encodings[:1] != ("utf-8-sig",):
        return list(encodings)
    return list(dict.fromkeys("utf-8-sig" if e == "utf-8" else e for e in encodings))


def prepare_chunked(source: str | Path, *, options, chunk_bytes: int = CHUNK_BYTES):
    """:func:`geoflow.pipeline.prepare_records` for a large CSV, chunk by chunk (see the
    module docstring); returns a :class:`~geoflow.pipeline.PreparedRecords` whose records
    are collapsed rows weighted by ``guns`` and :data:`RECORDS_COLUMN`."""
    from geoflow.crossings import load_ports
    from geoflow.pipeline import PreparedRecords, _compact, _stage, page_large_allocations
    from geoflow.privacy import pseudonymise

    page_large_allocations()  # a large input: freed arrays leave no resident heap behind
    path = Path(source)
    digest = hashlib.sha256()
    seen, names, places = SeenRecords(), NameTable(), PlaceMemo()
    ports = load_ports()
    timings: dict[str, float] = {}
    memory: dict[str, float] = {}
    parts: list[Partial] = []
    first_source: dict = {}
    read_options = options  # dayfirst None: the first chunk's dates decide, for every chunk
    with path.open("rb") as handle:  # a title above the header: skipped as read_traces does
        skip = lines_above_header(handle.read(1 << 16), options.column_map)
    for chunk in csv_chunks(path, chunk_bytes, digest, skip_lines=skip):
        part, read_source = prepare_chunk(chunk, path, options=read_options, seen=seen,
                                          names=names, ports=ports, timings=timings,
                                          memory=memory, places=places)
        first_source = first_source or read_source
        if read_options.dayfirst is None:
            read_options = replace(read_options, dayfirst=bool(read_source.get("dayfirst")))
        parts.append(part)
    if not parts:  # an empty file: the reader's own message
        read_traces(path, column_map=options.column_map)
        raise AssertionError("unreachable: an empty file is an InputError")
    del seen, places
    names.forget_hashes()
    chunks = len(parts)
    spent: dict[str, float] = {}
    with _stage("collapse", spent, memory):
        combined = combine(parts, consume=True)
        del parts
        records = _restore(combined.records, combined.dtypes)
        if _NAMES in records.columns:
            records[_NAMES] = names.categorical(records[_NAMES].to_numpy())
        combined = replace(combined, records=records.iloc[0:0])
    timings["collapse"] = timings.get("collapse", 0.0) + spent["collapse"]
    with _stage("pseudonyms", spent, memory):
        # the categorical's categories are every name, possessors' too: one id space
        records = _compact(pseudonymise(records, key=options.pseudonym_key))
    timings["crossings"] = timings.get("crossings", 0.0) + spent["pseudonyms"]
    warnings = _ordered_warnings(combined.warnings, first_source.get("header_map", {}))
    rejects = combined.rejects.sort_values(["line", "column"], kind="stable").reset_index(
        drop=True)
    rows_valid = int(records[RECORDS_COLUMN].sum())
    read_source = {
        **first_source,
        "path": str(path),
        "sha256": digest.hexdigest(),
        "encoding": "; ".join(_file_encodings(combined.encodings)),
        "rows_read": combined.rows_read,
        "rows_valid": rows_valid,
        "rows_rejected": int(rejects["line"].nunique()),
        "chunks": chunks,
    }
    return PreparedRecords(
        records=records, rejects=rejects, geocode_report=combined.report, source=read_source,
        timings=timings, options=options, memory=memory,
        warnings=warnings, warning_counts=combined.warning_counts)
