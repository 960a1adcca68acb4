"""Read trace records from CSV, XLSX or Parquet into the canonical frame of docs/internals.md.

:func:`read_traces` is the only function that touches the disk; :func:`standardise_traces`
is the pure middle (raw text frame in, canonical records + rejects + warnings out).

CSV files are split into records without a Python loop over rows: one numpy pass over the
bytes finds record ends (newlines outside double quotes), physical line numbers and the
number of fields in every record; records with the wrong number of fields and blank lines
are cut out and pandas' C parser reads the rest. Files whose quoting that pass cannot follow
(a stray ``"`` inside an unquoted field) are read with the :mod:`csv` module instead.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import logging
import re
import threading
import zipfile
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from geoflow import readahead, schema
from geoflow.errors import InputError, SchemaError

__all__ = [
    "parse_counts",
    "ReadResult",
    "read_traces",
    "lines_above_header",
    "PlainTable",
    "read_table",
    "load_column_map",
    "standardise_traces",
    "SeenRecords",
    "detect_encoding",
    "sniff_delimiter",
    "DELIMITERS",
    "WARNINGS_CAP",
    "PLACEHOLDERS",
    "MAX_ROW_BYTES",
    "EARLIEST_DATE",
    "BAD_BYTES_REASON",
]

log = logging.getLogger(__name__)

#: Delimiters tried by :func:`sniff_delimiter`, in order of preference on a tie.
DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
#: At most this many warnings are listed per (column, reason); ``warning_counts`` has all.
WARNINGS_CAP = 50
_RAW_CHARS = 200
#: Dates before this are implausible for a trace (1900-01-01 and 1899-12-30 are spreadsheet
#: placeholders): read as unknown, with a warning.
EARLIEST_DATE = "1901-01-01"
#: Day 0 of a spreadsheet's serial day numbers (Excel's 1900 date system, as LibreOffice and
#: Google Sheets count too): a date cell saved as a number, 43831, is 2020-01-01.
SERIAL_DATE_EPOCH = "1899-12-30"
#: The reader's warning on each date read from a serial day number.
SERIAL_DATE = ("read as a spreadsheet serial day number (Excel's 1900 date system: 43831 is "
               "2020-01-01)")
#: A row (record) longer than this many bytes is rejected, the rest of the file read.
MAX_ROW_BYTES = 4_000_000
#: Bytes :func:`_scan_records` looks at in one vectorised step.
_SCAN_CHUNK = 1 << 24
_REJECT_COLUMNS = ["line", "column", "reason", "raw"]
_WARNING_COLUMNS = ["line", "column", "value", "reason"]
_LATIN1_FALLBACK = "cp1252/latin-1"
#: Warning reason for bytes of a UTF-8 file that are not valid UTF-8.
BAD_BYTES_REASON = "bytes not valid UTF-8, read as cp1252"
_EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".tab": "csv", ".txt": "csv",
    ".xlsx": "xlsx", ".xlsm": "xlsx", ".parquet": "parquet", ".pq": "parquet",
}
_LATITUDE = {"dealer_lat", "recovery_lat"}
#: Cell values that mean "no data" (after stripping, any case): read as missing, like "".
PLACEHOLDERS: frozenset[str] = frozenset({
    "N/A", "NA", "NULL", "NONE", "UNKNOWN", "DESCONOCIDO", "SIN DATO", "S/D", "-", "?",
})
_PLACEHOLDER_CHARS = max(map(len, PLACEHOLDERS))
_CLEAN_CELLS = 1 << 20  # cells cleaned in one batch of Arrow kernel calls
_CLEAN_SPLIT_CELLS = 1 << 18  # from this many cells, a batch is cleaned on two threads
_UNNAMED = re.compile(r"column \d+")  # the name a blank header gets (_unique_headers)


def _latin1_for_undefined(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: decode the bytes cp1252 leaves undefined as Latin-1."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error("geoflow-latin1", _latin1_for_undefined)

#: More invalid UTF-8 sequences than this and a file is read as cp1252 without counting on.
_MAX_BAD_SEQUENCES = 100_000
_BAD_BYTES = threading.local()  # .ranges: byte ranges found by the decode in progress


class _TooManyBadBytes(Exception):
    pass


def _cp1252_for_invalid_utf8(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: read bytes that are not valid UTF-8 as cp1252 (Latin-1 for the
    five it leaves undefined) and note their offsets for a warning."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    found = getattr(_BAD_BYTES, "ranges", None)
    if found is not None:
        found.append((exc.start, exc.end))
        if len(found) > _MAX_BAD_SEQUENCES:
            raise _TooManyBadBytes
    piece = exc.object[exc.start : exc.end]
    return piece.decode("cp1252", errors="geoflow-latin1"), exc.end


codecs.register_error("geoflow-cp1252", _cp1252_for_invalid_utf8)


@dataclass(frozen=True)
class ReadResult:
    """What :func:`read_traces` returns (see docs/internals.md, "io → everything").

    ``records`` holds one row per valid input row; ``rejects`` one row per problem that made a
    row unreadable (``line``, ``column``, ``reason``, ``raw``); ``warnings`` lists values that
    were kept but could not be used (unparseable dates …), at most :data:`WARNINGS_CAP` per
    column and reason, while ``warning_counts`` counts all of them.
    """

    records: pd.DataFrame
    rejects: pd.DataFrame
    source: dict[str, Any]
    warnings: pd.DataFrame
    warning_counts: dict[str, int]

    @property
    def rows_read(self) -> int:
        """Data rows in the input (blank lines and the header not counted)."""
        return int(self.source["rows_read"])

    @property
    def rows_valid(self) -> int:
        """Rows that became records."""
        return len(self.records)

    @property
    def rows_rejected(self) -> int:
        """Distinct input rows rejected (a row can have several reject reasons)."""
        return int(self.rejects["line"].nunique())


@dataclass(frozen=True)
class _Table:
    """A raw table as read from disk: text cells, one source line per row, early rejects."""

    frame: pd.DataFrame | None  # columns: raw (unique) header names; None once handed on
    lines: np.ndarray  # source line of each row of frame
    rejects: pd.DataFrame  # field-count rejects (line, column, reason, raw)
    rows_read: int
    raw_of: Callable[[np.ndarray], list[str]]  # frame row positions → raw text
    meta: dict[str, Any]
    warnings: pd.DataFrame = field(default_factory=lambda: _empty_warnings())


# --------------------------------------------------------------------------------------------
# public entry points


def read_traces(
    path: str | Path,
    *,
    column_map: dict[str, str] | None = None,
    dayfirst: bool | None = False,
    encoding: str | None = None,
    today: date | str | None = None,
    sheet: str | int | None = None,
    data: bytes | None = None,
    seen: SeenRecords | None = None,
    categorical: Collection[str] = (),
) -> ReadResult:
    """Read a trace file (CSV, XLSX or Parquet) into canonical records plus rejects.

    Parameters
    ----------
    path
        The input file. The format comes from the content (XLSX and Parquet signatures),
        then the extension; anything else is read as delimited text.
    column_map
        Input header → canonical column, winning over the alias table
        (see :func:`load_column_map`).
    dayfirst
        Read ``14/09/2008`` as 14 September (Mexican exports); default is US month-first.
        None: decided from the dates (:func:`reads_day_first`), with a warning when they are
        read day-first (the decision is in ``source["dayfirst"]``).
    encoding
        Text encoding of a CSV; detected when omitted (BOM, UTF-8, cp1252, Latin-1).
    today
        Dates after this day are flagged as in the future (default: today).
    sheet
        XLSX sheet name or 0-based index (default: the first sheet).
    data
        The file's bytes when the caller has them (a chunk of a large CSV with its header:
        :mod:`geoflow.chunked`); ``path`` then only names the file in messages, and
        ``source["sha256"]`` is None (the caller hashes the whole file).
    seen
        Records of earlier chunks: a record repeating one of them is flagged
        ``flag_duplicate`` like a repeat within the chunk (:class:`SeenRecords`).
    categorical
        Canonical text columns (dealers, places, dates, makes …) to return as categoricals,
        their categories sorted, when at most :data:`~geoflow.schema.COMPACT_RATIO` of the
        values are distinct (else as text, like the others). Each distinct text is cleaned
        once rather than each cell (:func:`standardise_traces`).

    Raises
    ------
    InputError
        The file is missing, unreadable, undecodable, empty or of an unknown format.
    SchemaError
        No recognisable trace columns, or ``column_map`` names an unknown canonical column.

    Examples
    --------
    >>> result = read_traces("traces.csv", dayfirst=True)  # doctest: +SKIP
    >>> result.source["rows_read"] == len(result.records) + result.rows_rejected  # doctest: +SKIP
    True
    """
    path = Path(path)
    user_map = schema.validate_column_map(column_map)
    from_caller = data is not None
    # ``geoflow run`` may have read (and hashed) a large file while it imported its modules
    ahead = None if from_caller else readahead.take(path)
    if not from_caller:
        data = _read_bytes(path) if ahead is None else ahead[0]
    fmt = _detect_format(path, data)
    if sheet is not None and fmt != "xlsx":
        raise InputError(f"a sheet ({sheet!r}) was given but this is a {fmt.upper()} file, "
                         "not XLSX",
                         path=str(path))
    # the file's sha256 on a second thread while it is parsed (hashlib lets go of the GIL:
    # 0.3 s per 250 MB); a chunk's caller hashes the whole file (geoflow.chunked), not each
    # chunk again
    with ThreadPoolExecutor(1) as pool:
        digest = None if from_caller or ahead is not None else pool.submit(hashlib.sha256, data)
        if fmt == "csv":
            # a chunk after a large CSV's first starts with its header: no lines above it
            above, title = _title_lines(data, encoding, _header_test(user_map))
            table = _read_csv(_from_line(data, above), path, encoding=encoding)
            table = _below_title(table, above, title)
        elif fmt == "xlsx":
            table = _read_xlsx(data, path, sheet=sheet, is_header=_header_test(user_map))
        else:
            table = _read_parquet(data, path)
        sha256 = (ahead[1] if ahead is not None
                  else None if digest is None else digest.result().hexdigest())
    del data, ahead  # the file's bytes are parsed: not held while the records are cleaned

    table = replace(table, frame=_drop_empty_unnamed(table.frame))
    headers = [str(c) for c in table.frame.columns]
    header_map = schema.map_headers(headers, user_map)
    _require_trace_columns(header_map, path)
    frame, header_map, years = year_columns(table.frame, header_map)
    table = replace(table, frame=frame)
    del frame
    repeated = set(table.warnings.loc[table.warnings["reason"].str.startswith(
        "repeated header"), "column"]) if len(table.warnings) else set()
    map_warnings = pd.concat([_unused_map_entries(user_map, headers),
                              _unknown_headers(header_map, repeated | set(years)),
                              _years_warning(years, header_map)], ignore_index=True)
    raw_names = {canonical: raw for raw, canonical in header_map.items()}
    # hand the raw frame over with no name here keeping it (table.frame neither), so
    # standardise_traces frees each raw column as soon as it is cleaned
    raw = [table.frame.rename(columns=header_map)]
    table = replace(table, frame=None)
    day_order = _empty_warnings()  # the warning when the dates decided to read day-first
    if dayfirst is None:
        dayfirst, example = reads_day_first(raw[0])
        if dayfirst:
            day_order = pd.DataFrame({"line": [1], "column": [""], "value": [example],
                                      "reason": [DAY_FIRST_DETECTED]})
    records, rejects, warnings, counts = standardise_traces(
        raw.pop(), lines=table.lines, raw_names=raw_names, dayfirst=dayfirst, today=today,
        seen=seen, categorical=categorical,
    )
    if len(rejects):
        rows = rejects.pop("row").to_numpy()
        rejects.insert(3, "raw", table.raw_of(rows))
    else:
        rejects = rejects.drop(columns="row").assign(raw=pd.Series(dtype="str"))
    rejects = (
        pd.concat([table.rejects, rejects], ignore_index=True)
        .sort_values(["line", "column"], kind="stable")
        .reset_index(drop=True)
    )
    early = pd.concat([map_warnings, table.warnings, day_order], ignore_index=True)
    warnings = _capped([early, warnings])
    for name, number in warning_counts(early).items():
        counts[name] = counts.get(name, 0) + number
    source = {
        "path": str(path),
        "sha256": sha256,
        "format": fmt,
        **table.meta,
        "rows_read": table.rows_read,
        "dayfirst": bool(dayfirst),
        "rows_valid": len(records),
        "rows_rejected": int(rejects["line"].nunique()),
        "header_map": header_map,
        # the input header read as the count column (a count table), else None
        "count_column": raw_names.get(schema.COUNT_COLUMN),
        # a count table's year columns summed into its count (io.year_columns)
        **({"year_columns": list(years)} if len(years) > 1 else {}),
    }
    log.debug(
        "%s: %s rows read, %s valid, %s rejected", Path(path).name,
        *(f"{source[k]:,}" for k in ("rows_read", "rows_valid", "rows_rejected")),
    )
    return ReadResult(records, rejects, source, warnings, counts)


@dataclass(frozen=True)
class PlainTable:
    """A table of any columns (:func:`read_table`): text cells under the file's headers
    (repeated ones made unique), each row's source line, the rows rejected (``line``,
    ``column``, ``reason``, ``raw``) and the reader's warnings."""

    frame: pd.DataFrame
    lines: np.ndarray
    rejects: pd.DataFrame
    warnings: pd.DataFrame


def read_table(path: str | Path, column: str | None = None) -> PlainTable:
    """Any table (CSV in any encoding and delimiter, XLSX, Parquet) as text, read as a trace
    file is (``geoflow geocode --column``): a row with too many or too few fields is
    rejected with its line, not the whole file; bad bytes and repeated headers are warned.
    With ``column`` (the header wanted), lines above the row that names it are a title
    (skipped with a warning), and a workbook is read from its first sheet that names it.

    Raises :class:`~geoflow.errors.InputError` for a missing, empty or unreadable file."""
    path = Path(path)
    data = _read_bytes(path)
    fmt = _detect_format(path, data)
    is_header = _header_test(None, column)
    if fmt == "csv":
        above, title = _title_lines(data, None, is_header) if column is not None else (0, "")
        table = _below_title(_read_csv(_from_line(data, above), path, encoding=None), above,
                             title)
    elif fmt == "xlsx":
        table = _read_xlsx(data, path, sheet=None, is_header=is_header, column=column)
    else:
        table = _read_parquet(data, path)
    frame = _drop_empty_unnamed(table.frame).astype("string").reset_index(drop=True)
    return PlainTable(frame, np.asarray(table.lines), table.rejects, table.warnings)


def load_column_map(path: str | Path) -> dict[str, str]:
    """Load a user column map: JSON ``{"input header": "canonical_column"}`` or a CSV.

    The CSV has two columns, input header then canonical column; a first row naming the
    columns (``header,canonical`` or ``from,to``) is skipped. Unknown canonical columns raise
    :class:`~geoflow.errors.SchemaError` naming the file (and line for CSV).
    """
    path = Path(path)
    _, text, _ = _decode(_read_bytes(path), path, None)
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"column map is not valid JSON: {exc}", path=str(path)) from exc
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise SchemaError(
                'column map must be a JSON object of "input header": "canonical column"',
                path=str(path),
            )
        return schema.validate_column_map(mapping, path=str(path))
    delimiter = sniff_delimiter(text)
    mapping: dict[str, str] = {}
    header_words = {"canonical", "canonical_column", "column", "to", "target", "geoflow"}
    for number, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != 2 or not cells[0]:
            raise SchemaError(
                f"line {number}: expected 2 columns (input header, canonical column), "
                f"found {len(cells)}",
                path=str(path),
            )
        if not mapping and schema.normalise_header(cells[1]) in header_words:
            continue
        mapping.update(schema.validate_column_map({cells[0]: cells[1]}, path=f"{path}:{number}"))
    return mapping


def detect_encoding(data: bytes) -> str:
    """Name the encoding of ``data``: a BOM, else UTF-8 if valid, else cp1252.

    ``"cp1252/latin-1"`` means cp1252 with the five bytes it leaves undefined read as Latin-1.

    >>> detect_encoding("Ciudad Juárez".encode("cp1252"))
    'cp1252'
    """
    return _detect(data)[0]


def _detect(data: bytes) -> tuple[str, str]:
    """(encoding name, decoded text) by the rules of :func:`detect_encoding`."""
    name, text, _ = _detect_mixed(data)
    return name, text


def _detect_mixed(data: bytes) -> tuple[str, str, list[tuple[int, int]]]:
    """(encoding, text, bad byte ranges): a UTF-8 file with a few invalid bytes stays UTF-8,
    those bytes alone read as cp1252 and returned as ``(start, end)`` byte offsets.

    The file as a whole is read as cp1252 when it holds no valid multi-byte UTF-8 character
    at all, or fewer of them than invalid sequences (then it is clearly not UTF-8). A UTF-8
    byte-order mark (Excel's "CSV UTF-8") names the encoding ``utf-8-sig``; its few invalid
    bytes are read the same way (byte offsets in ``data``, the mark included)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", data.decode("utf-16"), []
    marked = data.startswith(codecs.BOM_UTF8)
    name, skip = ("utf-8-sig", len(codecs.BOM_UTF8)) if marked else ("utf-8", 0)
    body = data[skip:] if marked else data
    try:
        return name, body.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    bad: list[tuple[int, int]] = []
    _BAD_BYTES.ranges = bad
    try:
        text = body.decode("utf-8", errors="geoflow-cp1252")
    except _TooManyBadBytes:
        text = None
    finally:
        del _BAD_BYTES.ranges
    if text is not None:
        a = np.frombuffer(body, dtype=np.uint8)
        leads = int(np.count_nonzero((a >= 0xC2) & (a <= 0xF4)))
        bad_leads = sum(0xC2 <= body[start] <= 0xF4 for start, _ in bad)
        if leads - bad_leads >= len(bad):
            return name, text, [(start + skip, end + skip) for start, end in bad]
    try:
        return "cp1252", body.decode("cp1252"), []
    except UnicodeDecodeError:
        return _LATIN1_FALLBACK, body.decode("cp1252", errors="geoflow-latin1"), []


def sniff_delimiter(text: str) -> str:
    """Pick the delimiter among :data:`DELIMITERS` from the first lines of ``text`` (after
    any blank lines).

    The winner splits the header into the most fields while splitting the following lines
    into the same number; a file with a single column reads as comma-separated.

    >>> sniff_delimiter("Armería;Municipio;Estado\\nGAT Guns;Juárez;CHIH\\n")
    ';'
    """
    text = text.lstrip("\r\n")  # blank lines before the header say nothing
    sample = text[:65536]
    cut = max(sample.rfind("\n"), sample.rfind("\r"))
    if len(text) > len(sample) and cut > 0:
        sample = sample[:cut]
    best, best_score = ",", (0.0, 0)
    for delimiter in DELIMITERS:
        rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if r]
        rows = [r for r in rows if any(c.strip() for c in r)][:50]
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        score = (sum(len(r) == width for r in rows) / len(rows), width)
        if score > best_score:
            best, best_score = delimiter, score
    return best


# --------------------------------------------------------------------------------------------
# the pure middle


def standardise_traces(
    frame: pd.DataFrame,
    *,
    lines: np.ndarray | None = None,
    raw_names: dict[str, str] | None = None,
    dayfirst: bool = False,
    today: date | str | None = None,
    seen: SeenRecords | None = None,
    categorical: Collection[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Turn a frame with canonical column names and text cells into canonical records.

    Returns ``(records, rejects, warnings, warning_counts)``. ``rejects`` has columns ``row``
    (position in ``frame``), ``line``, ``column`` and ``reason``: rows with nothing usable
    (none of :data:`geoflow.schema.USABLE_COLUMNS`) and rows with an out-of-range coordinate.
    An unparseable coordinate (text) becomes NaN with a warning: the row can still be
    placed from its city. ``lines`` gives each row's source line (default: position + 2);
    ``raw_names`` maps canonical names back to the input headers used in messages; ``seen``
    holds the records of earlier chunks (see :func:`read_traces`). ``categorical``: text
    columns returned as categoricals when few of their values are distinct (see
    :func:`read_traces`); ``recovery_country`` is not (its empty cells are filled below).
    """
    lines = np.arange(len(frame)) + 2 if lines is None else np.asarray(lines)
    raw_names = raw_names or {}
    categorical = set(categorical) - {"recovery_country"}
    frame = _clean_columns(frame, categorical=categorical)
    unnamed_empty = [c for c in frame.columns
                     if _UNNAMED.fullmatch(raw_names.get(c, "")) and frame[c].isna().all()]
    frame = frame.drop(columns=unnamed_empty)
    produced = set(schema.DERIVED_COLUMNS)
    frame = frame.rename(columns={c: f"{c}_input" for c in frame.columns if c in produced})
    for column in schema.CANONICAL_COLUMNS:
        if column not in frame.columns:  # all empty: Arrow nulls, no value per row to convert
            frame[column] = pd.Series(pd.array(pa.nulls(len(frame), pa.large_string()),
                                               dtype="str"), index=frame.index)

    def label(column: str) -> str:
        return raw_names.get(column, column)

    problems: list[pd.DataFrame] = []
    usable = frame[list(schema.USABLE_COLUMNS)].notna().any(axis=1)
    problems.append(_problem_rows(~usable, lines, "", "nothing usable: no dealer, purchaser, "
                                  "recovery information or serial number"))
    coordinates = {}
    unparseable_coordinates: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # rows, values
    for column in schema.COORDINATE_COLUMNS:
        values = frame[column]
        if values.isna().all():
            coordinates[column] = pd.Series(np.nan, index=frame.index)
            continue
        numbers = pd.to_numeric(values.str.replace(",", ".", regex=False), errors="coerce")
        limit = 90 if column in _LATITUDE else 180
        unparseable = values.notna() & numbers.isna()
        out_of_range = numbers.abs() > limit
        if unparseable.any():
            rows = np.flatnonzero(unparseable.to_numpy(dtype=bool))
            unparseable_coordinates[column] = (rows, values.to_numpy(dtype=object)[rows])
        if out_of_range.any():
            problems.append(_problem_rows(out_of_range, lines, label(column),
                                          f"coordinate outside -{limit}..{limit}: "
                                          + values[out_of_range]))
        coordinates[column] = numbers.astype("float64")
    count_table = schema.COUNT_COLUMN in frame.columns
    if count_table:  # a count table: each row stands for its count of guns
        guns, bad = parse_counts(frame[schema.COUNT_COLUMN])
        shown = frame[schema.COUNT_COLUMN].astype("str").fillna("(empty)")
        problems.append(_problem_rows(bad, lines, label(schema.COUNT_COLUMN),
                                      "count is not a non-negative integer: " + shown[bad]))
        problems.append(_problem_rows(_totals_rows(frame), lines, "",
                                      "a totals row (its guns are the other rows' sum)"))
    rejects = pd.concat(problems, ignore_index=True).sort_values(["row", "column"], kind="stable")
    if count_table:  # guns of each rejected row where its count is readable (for accounting)
        rejects["guns"] = pd.array(guns, dtype="Int64")[rejects["row"].to_numpy()]
    keep = np.ones(len(frame), dtype=bool)
    keep[rejects["row"].to_numpy()] = False

    records = frame.assign(**coordinates, **{schema.COUNT_COLUMN: np.ones(len(frame), np.int64)
                                             if not count_table
                                             else np.nan_to_num(guns, nan=0).astype(np.int64)})
    del frame, coordinates
    if not keep.all():  # copy the table only when a row really goes
        records = records.loc[keep].reset_index(drop=True)
    kept_lines = lines[keep]
    records["recovery_country"] = records["recovery_country"].fillna("MX")
    given = records["trace_id"].notna()
    if not given.all():
        # a count table's rows differ by their count, year … too: hash every column
        columns = [c for c in (records.columns if count_table else schema.CANONICAL_COLUMNS)
                   if c != "trace_id"]
        records.loc[~given, "trace_id"] = _hash_ids(records.loc[~given, columns])

    warning_frames: list[pd.DataFrame] = []
    counts: dict[str, int] = {}
    for column, (rows, values) in unparseable_coordinates.items():
        kept = keep[rows]  # a row rejected for another reason is reported as a reject only
        if kept.any():
            warning_frames.append(pd.DataFrame({
                "line": lines[rows[kept]], "column": label(column),
                "value": values[kept].astype(str), "reason": "unparseable coordinate",
            }))
            counts[f"{label(column)}: unparseable coordinate"] = int(kept.sum())
    limit = pd.Timestamp(today or date.today()).normalize() + pd.Timedelta(days=1)
    future = np.zeros(len(records), dtype=bool)
    for column in schema.DATE_COLUMNS:
        parsed, bad, reason, late, serial = _parse_dates(records[column], dayfirst=dayfirst,
                                                         limit=limit)
        if late is not None:
            future |= late
        if serial is not None and serial.any():
            warning_frames.append(pd.DataFrame({
                "line": kept_lines[serial], "column": label(column),
                "value": records.loc[serial, column].astype("str").to_numpy(),
                "reason": SERIAL_DATE,
            }))
            counts[f"{label(column)}: {SERIAL_DATE}"] = int(serial.sum())
        if bad.any():
            warning_frames.append(pd.DataFrame({
                "line": kept_lines[bad], "column": label(column),
                "value": records.loc[bad, column].astype("str").to_numpy(),
                "reason": reason[bad],
            }))
            for key, number in warning_frames[-1]["reason"].value_counts().items():
                counts[f"{label(column)}: {key}"] = int(number)
        records[column] = parsed

    if schema.YEAR_COLUMN in records.columns:
        text = records[schema.YEAR_COLUMN].astype("str")
        years = pd.to_numeric(text.str.replace(r"\.0*$", "", regex=True), errors="coerce")
        years = years.where(years.between(1800, 2200) & (years % 1 == 0))
        bad = (text.notna() & years.isna()).to_numpy(dtype=bool)
        if bad.any():
            warning_frames.append(pd.DataFrame({
                "line": kept_lines[bad], "column": label(schema.YEAR_COLUMN),
                "value": text[bad].to_numpy(), "reason": "unparseable year"}))
            counts[f"{label(schema.YEAR_COLUMN)}: unparseable year"] = int(bad.sum())
        records[schema.YEAR_COLUMN] = years.astype("Int64")

    before = records["recovery_date"] - records["purchase_date"]
    records["source_line"] = kept_lines.astype("int64")
    records["time_to_crime_days"] = (before / pd.Timedelta(days=1)).astype("float64")
    records["flag_recovery_before_purchase"] = (records["time_to_crime_days"] < 0).to_numpy()
    records["flag_future_date"] = future
    records["flag_duplicate"] = _duplicates(records, given, seen)

    derived = ["source_line", "time_to_crime_days", *schema.FLAG_COLUMNS, schema.COUNT_COLUMN]
    extra = [c for c in records.columns if c not in schema.CANONICAL_COLUMNS and c not in derived]
    records = _few_distinct(records[[*schema.CANONICAL_COLUMNS, *extra, *derived]],
                            categorical)
    warnings = _capped(warning_frames)
    return records, rejects.reset_index(drop=True), warnings, counts


def _clean_columns(frame: pd.DataFrame, *, categorical: Collection[str] = ()) -> pd.DataFrame:
    """Every column through :func:`_clean_text`, as a new frame with a fresh RangeIndex;
    Arrow-backed ``categorical`` columns as categoricals (:func:`_clean_categories`), on two
    threads of their own meanwhile.

    A few columns at a time, each raw column let go once cleaned: when the caller keeps no
    reference (read_traces), raw and cleaned text never both exist for the whole table.
    Arrow-backed text columns of few rows are cleaned together, up to :data:`_CLEAN_CELLS`
    cells per batch of kernel calls, so a file of thousands of columns costs about as much
    as one of a few long ones (popping columns one by one was O(columns) each: minutes)."""
    index = pd.RangeIndex(len(frame))
    names = list(frame.columns)
    raw = dict(enumerate(frame._ixs(i, axis=1) for i in range(len(names))))
    del frame
    text: dict[int, pd.Series] = {}
    coded = [i for i in raw if names[i] in categorical and len(index)
             and getattr(raw[i].dtype, "storage", None) == "pyarrow"]
    with ThreadPoolExecutor(2) as pool:
        encoded = pool.map(_clean_categories, [raw.pop(i) for i in coded])
        batch: list[int] = []
        for i in list(raw):
            if getattr(raw[i].dtype, "storage", None) != "pyarrow":
                text[i] = _clean_text(raw.pop(i))
                continue
            batch.append(i)
            if len(batch) * len(index) >= _CLEAN_CELLS:
                text.update(_clean_arrow_batch([raw.pop(j) for j in batch], batch))
                batch = []
        if batch:
            text.update(_clean_arrow_batch([raw.pop(j) for j in batch], batch))
        text.update(zip(coded, encoded, strict=True))
    arrays = [text.pop(i) for i in range(len(names))]
    return pd.DataFrame(dict(zip(range(len(names)), arrays, strict=True)), index=index,
                        copy=False).set_axis(names, axis=1)


def _clean_arrow_batch(columns: list[pd.Series], keys: list[int]) -> dict[int, pd.Series]:
    """:func:`_clean_arrow_text` of several Arrow-backed columns in one set of kernel calls."""
    if len(columns) == 1:
        return {keys[0]: _clean_arrow_text(columns[0].reset_index(drop=True))}
    dtype = columns[0].dtype
    arrays = [_large_text(c) for c in columns]
    index = pd.RangeIndex(len(columns[0]))
    del columns
    ends = np.cumsum([array.num_chunks for array in arrays])
    joined = pa.chunked_array([chunk for array in arrays for chunk in array.chunks],
                              type=pa.large_string())
    del arrays
    # element-wise kernels keep the chunk layout: column n is chunks ends[n-1]:ends[n]
    chunks = _clean_arrow_array(joined).chunks
    del joined
    return {key: pd.Series(pd.array(pa.chunked_array(chunks[start:stop], pa.large_string()),
                                    dtype=dtype), index=index, copy=False)
            for key, start, stop in zip(keys, [0, *ends[:-1]], ends, strict=True)}


def _drop_empty_unnamed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without blank-headed columns (``column N``) that hold no value at all, such
    as the thousands of trailing ones of a CSV saved from a formatted spreadsheet: dropped
    before any per-column work."""
    empty = [c for c in frame.columns
             if _UNNAMED.fullmatch(str(c)) and not frame[c].notna().any()]
    return frame.drop(columns=empty) if empty else frame


def _clean_text(values: pd.Series) -> pd.Series:
    """Strip text, empty or a :data:`PLACEHOLDERS` value (``N/A``, ``null``, ``s/d`` …) → NA;
    datetime columns (Parquet) are kept as they are."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return values
    if getattr(values.dtype, "storage", None) == "pyarrow":
        return _clean_arrow_text(values)
    text = values.astype("str")
    stripped = text.str.strip()
    # stripping never lengthens a value: equal total lengths mean nothing changed, and the
    # column is kept as it is (no second copy of the text stays alive)
    if stripped.str.len().sum() != text.str.len().sum():
        text = stripped
    del stripped
    empty = (text == "").to_numpy(dtype=bool, copy=True)
    # only short cells can be placeholders: the upper-cased copy is of those alone
    short = (text.str.len() <= _PLACEHOLDER_CHARS).to_numpy(dtype=bool, na_value=False)
    if short.any():
        empty[short] |= text[short].str.upper().isin(PLACEHOLDERS).to_numpy(dtype=bool)
    return text.mask(empty) if empty.any() else text


#: What Python's ``str.strip()`` removes, for the same result in Arrow.
_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
#: The letters besides a and A that Arrow's ``utf8_upper`` turns into an ASCII letter of a
#: placeholder (checked over every code point by the tests).
_UPPER_FROM = {"I": "ı", "S": "ſ"}


def _spellings(word: str) -> list[str]:
    """Every text whose ``utf8_upper`` is ``word`` (a placeholder, upper case)."""
    choices = [char + char.lower() * char.isalpha() + _UPPER_FROM.get(char, "")
               for char in word]
    return ["".join(letters) for letters in itertools.product(*choices)]


#: The empty text and every spelling of a placeholder (about 5,000): one ``is_in`` finds the
#: cells to blank without an upper-cased copy of the column.
_MISSING_TEXT = pa.array(sorted({"", *(s for word in PLACEHOLDERS for s in _spellings(word))}),
                         type=pa.large_string())


def _large_text(values: pd.Series) -> pa.ChunkedArray:
    """An Arrow-backed text column's values as Arrow ``large_string`` chunks (no copy)."""
    return pa.chunked_array(pa.array(values.array)).cast(pa.large_string())


def _clean_arrow_text(values: pd.Series) -> pd.Series:
    """:func:`_clean_text` for an Arrow-backed string column, in a few Arrow kernels (a
    column costs microseconds, so a file of thousands of columns reads in seconds)."""
    array = _large_text(values)
    return pd.Series(pd.array(_clean_arrow_array(array), dtype=values.dtype),
                     index=values.index, name=values.name)


def _clean_categories(values: pd.Series) -> pd.Series:
    """:func:`_clean_arrow_text` of an Arrow-backed column as a categorical (categories
    sorted, as ``pd.factorize(..., sort=True)`` gives them): its distinct texts are found in
    one pass (Arrow's ``dictionary_encode``) and cleaned once each, instead of every cell
    being trimmed and looked up, and then hashed again to make the categorical (a million
    records' nine key columns, on one thread: 0.29-0.50 -> 0.15 s)."""
    encoded = pc.dictionary_encode(_large_text(values), null_encoding="encode").combine_chunks()
    cleaned = _clean_chunks(pa.chunked_array([encoded.dictionary]))
    # distinct texts that clean alike (" Laredo", "Laredo") become one category
    at, categories = pd.factorize(pd.Series(pd.array(cleaned, dtype=values.dtype)), sort=True)
    codes = at[encoded.indices.to_numpy(zero_copy_only=False)]
    return pd.Series(pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(categories)),
                     index=values.index, name=values.name)


def _few_distinct(records: pd.DataFrame, columns: Collection[str]) -> pd.DataFrame:
    """``records`` with each categorical of ``columns`` kept as one only when at most
    :data:`~geoflow.schema.COMPACT_RATIO` of its values are distinct (otherwise text again,
    as a column of many distinct values is read), without the categories no row kept uses
    (those of rejected rows)."""
    changes = {}
    for column in columns:
        values = records.get(column)
        if values is None or not isinstance(values.dtype, pd.CategoricalDtype):
            continue
        codes = values.cat.codes.to_numpy()
        used = np.bincount(codes[codes >= 0], minlength=len(values.cat.categories)) > 0
        if used.sum() > schema.COMPACT_RATIO * len(values):
            changes[column] = values.astype("str")
        elif not used.all():
            changes[column] = values.cat.remove_unused_categories()
    return records.assign(**changes) if changes else records


def _clean_arrow_array(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """Stripped text, empty and placeholder cells null (the rules of :func:`_clean_text`),
    chunk for chunk. From :data:`_CLEAN_SPLIT_CELLS` cells on, the chunks are cleaned in
    two halves on two threads (Arrow's kernels let go of the GIL): one column's halves at
    a time, so the work's memory is one column's, as before."""
    chunks = np.cumsum([len(chunk) for chunk in array.chunks])
    half = int(np.searchsorted(chunks, len(array) / 2))  # the chunk boundary near the middle
    if len(array) < _CLEAN_SPLIT_CELLS or half >= array.num_chunks - 1:  # one chunk
        return _clean_chunks(array)
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(_clean_chunks, pa.chunked_array(array.chunks[half + 1:], array.type))
        first = _clean_chunks(pa.chunked_array(array.chunks[:half + 1], array.type))
        return pa.chunked_array([*first.chunks, *second.result().chunks], array.type)


def _clean_chunks(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """:func:`_clean_arrow_array` on one thread."""
    stripped = pc.utf8_trim(array, _WHITESPACE)
    # stripping never lengthens a value: equal total lengths mean nothing changed, and the
    # column is kept as it is (no second copy of the text stays alive)
    if _text_bytes(stripped) != _text_bytes(array):
        array = stripped
    del stripped
    missing = pc.is_in(array, _MISSING_TEXT)  # empty, or a placeholder in any case
    if pc.any(missing).as_py():
        array = pc.if_else(missing, pa.scalar(None, pa.large_string()), array)
    return array


def _text_bytes(array: pa.ChunkedArray) -> int:
    """The bytes ``array``'s values (large_string) span, read from its offsets rather than
    from a length per value (1M records: 40 arrays of 8 MB fewer, 0.1 s of CPU). A null
    value may span bytes too: totals equal only when trimming changed nothing."""
    total = 0
    for chunk in array.chunks:
        if len(chunk):
            offsets, _ = text_parts(chunk)
            total += int(offsets[-1] - offsets[0])
    return total


def text_parts(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a ``large_string`` array, straight from Arrow's buffers (no
    Python string): value ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (one more offset than
    values; ``data``, the whole buffer as uint8, is empty when no value has a byte)."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[
        text.offset:text.offset + len(text) + 1]
    buffer = text.buffers()[2]  # None when every text is empty
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.empty(0, np.uint8)
    return offsets, data


def _problem_rows(mask: pd.Series, lines: np.ndarray, column: str, reason: Any) -> pd.DataFrame:
    """Reject rows (``row``, ``line``, ``column``, ``reason``) where ``mask`` is true."""
    mask = np.asarray(mask, dtype=bool)
    reasons = reason.to_numpy() if isinstance(reason, pd.Series) else reason
    return pd.DataFrame({
        "row": np.flatnonzero(mask), "line": lines[mask].astype("int64"),
        "column": column, "reason": reasons,
    }).astype({"column": "str", "reason": "str"})


def _date_formats(dayfirst: bool) -> list[tuple[str, str]]:
    """(regex, strptime format) pairs tried in order; each cell matches at most one regex."""
    dm = "%d/%m" if dayfirst else "%m/%d"
    dash = "%d-%m" if dayfirst else "%m-%d"
    return [
        (r"^\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$", "ISO8601"),
        (r"^\d{4}/\d{1,2}/\d{1,2}$", "%Y/%m/%d"),
        (r"^\d{1,2}/\d{1,2}/\d{4}$", f"{dm}/%Y"),
        (r"^\d{1,2}/\d{1,2}/\d{2}$", f"{dm}/%y"),
        (r"^\d{1,2}-\d{1,2}-\d{4}$", f"{dash}-%Y"),
        (r"^\d{1,2}\.\d{1,2}\.\d{4}$", "%d.%m.%Y"),
        (r"^\d{1,2}-[A-Za-z]{3}-\d{4}$", "%d-%b-%Y"),
        (r"^\d{1,2}-[A-Za-z]{3}-\d{2}$", "%d-%b-%y"),
        (r"^\d{8}$", "%Y%m%d"),
    ]


#: A d/m/y or m/d/y date: its first two numbers (which is the day is what the order says).
_DAY_MONTH = r"^\s*(\d{1,2})[/-](\d{1,2})[/-]\d{2,4}\s*$"
#: The reader's warning when it read a file's dates day-first (``dayfirst=None``).
DAY_FIRST_DETECTED = ("dates read day-first (as Mexican records write them): some cannot be "
                      "month-first and none can only be (--dayfirst or --monthfirst decide)")
#: Dates (distinct d/m/y texts) that must be day-first, at least, and their share at least,
#: for :func:`reads_day_first` to read a file day-first: one typo does not turn a US file.
DAY_FIRST_EVIDENCE = (2, 0.1)


def reads_day_first(frame: pd.DataFrame) -> tuple[bool, str]:
    """Whether the d/m/y dates of ``frame``'s date columns (text) are day-first, and a date
    that shows it: some distinct ones have a first number over 12 (``13/02/2019``:
    :data:`DAY_FIRST_EVIDENCE` of them, at least), none a second one (``02/13/2019``)."""
    columns = [c for c in schema.DATE_COLUMNS if c in frame.columns]
    if not columns:
        return False, ""
    texts = pd.concat([pd.Series(frame[c].dropna().unique(), dtype="str") for c in columns],
                      ignore_index=True).drop_duplicates()
    parts = texts.str.extract(_DAY_MONTH).astype("float64")
    given = parts[0].notna().to_numpy()
    day = (parts[0].between(13, 31) & parts[1].between(1, 12)).to_numpy()
    month = (parts[1].between(13, 31) & parts[0].between(1, 12)).to_numpy()
    least, share = DAY_FIRST_EVIDENCE
    if month.any() or day.sum() < max(least, share * given.sum()):
        return False, ""
    return True, str(texts[day].iloc[0])


def _parse_dates(values: pd.Series, *, dayfirst: bool, limit: pd.Timestamp
                 ) -> tuple[pd.Series, np.ndarray, np.ndarray | None, np.ndarray | None,
                            np.ndarray | None]:
    """Parse a date column; return (datetime64[ns] series, bad mask, reason per row, future
    mask, mask of dates read from a spreadsheet's serial day number). The last three are
    None when no row has one (the common column: no per-row array of reasons to build).

    Each distinct string is parsed once, with explicit formats tried in order (vectorised),
    never ``dateutil`` guessing per cell. One rule for dates that cannot be right: a date on
    or after ``limit`` (the day after today: ``future``) or before :data:`EARLIEST_DATE`
    (1900-01-01 and the like are spreadsheet placeholders) is NaT with a warning, like an
    unparseable one, so no table, layer or finding uses it.
    """
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values.dt.tz_localize(None) if values.dt.tz is not None else values
        parsed, reason, late = _plausible(parsed.astype("datetime64[us]"), limit)
        reason = np.where(values.notna() & parsed.isna(), reason, "")
        return (parsed, (values.notna() & parsed.isna()).to_numpy(), reason, late,
                np.zeros(len(values), dtype=bool))
    codes, uniques = pd.factorize(values)
    distinct, reasons, lates, serials = _parse_date_strings(
        pd.Series(uniques, dtype="str"), dayfirst=dayfirst, limit=limit)

    def per_record(per_distinct: np.ndarray, missing: object) -> np.ndarray:
        """Each record's value, by its code; an empty cell (−1) takes ``missing``, put last."""
        return np.append(per_distinct, np.array([missing], dtype=per_distinct.dtype))[codes]

    def where_any(per_distinct: np.ndarray, missing: object) -> np.ndarray | None:
        return per_record(per_distinct, missing) if per_distinct.any() else None

    parsed = per_record(distinct.astype("datetime64[ns]"), np.datetime64("NaT"))
    failed = np.isnat(distinct)  # a distinct text that gave no date
    return (pd.Series(parsed, index=values.index), per_record(failed, False),
            per_record(reasons, "") if failed.any() else None, where_any(lates, False),
            where_any(serials, False))


def _plausible(parsed: pd.Series, limit: pd.Timestamp
               ) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(datetime64[ns] with future and too-early dates NaT, reason for those, future mask)
    from datetime64[us] values (which hold any year: 9999-12-31 is future, not garbage)."""
    late = (parsed >= limit).to_numpy(dtype=bool, na_value=False)
    early = (parsed < pd.Timestamp(EARLIEST_DATE)).to_numpy(dtype=bool, na_value=False)
    reason = np.where(late, f"date in the future (after {(limit - pd.Timedelta(days=1)).date()})"
                      ": treated as unknown", np.where(
                          early, f"implausible date (before {EARLIEST_DATE}): treated as "
                          "unknown", "unparseable date")).astype(object)
    kept = parsed.where(~(late | early)).astype("datetime64[ns]")
    return kept, reason, late


def _parse_date_strings(values: pd.Series, *, dayfirst: bool, limit: pd.Timestamp
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse distinct date strings; return datetime64[ns] values, a reason when NaT, which
    are in the future and which were read from a serial day number (see
    :func:`_parse_dates`)."""
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    for pattern, fmt in _date_formats(dayfirst):
        todo = values.str.match(pattern).fillna(False).to_numpy(dtype=bool) & parsed.isna()
        if todo.any():
            parsed[todo] = pd.to_datetime(values[todo], format=fmt, errors="coerce")
    # a spreadsheet's date cell saved as a number (its serial day: SERIAL_DATE_EPOCH + days,
    # a fraction being the time of day); five digits are no other date format
    serial = (values.str.fullmatch(r"\d{5}(?:\.\d+)?").fillna(False).to_numpy(dtype=bool)
              & parsed.isna().to_numpy())
    if serial.any():
        days = np.floor(pd.to_numeric(values[serial]).to_numpy(dtype=float))
        parsed[serial] = pd.Timestamp(SERIAL_DATE_EPOCH) + pd.to_timedelta(days, unit="D")
    parsed, reason, late = _plausible(parsed, limit)
    serial &= parsed.notna().to_numpy()
    failed = parsed.isna().to_numpy()
    if failed.any():  # a day and month the other way round, among the dates not read
        parts = values[failed].str.extract(_DAY_MONTH).astype("float64")
        first, second = (1, 0) if dayfirst else (0, 1)
        swapped = np.zeros(len(values), dtype=bool)
        swapped[failed] = ((parts[first] > 12) & (parts[second] <= 12)).to_numpy()
        reason[swapped] = (
            "unparseable date (looks month-first: drop dayfirst)" if dayfirst
            else "unparseable date (looks day-first: use dayfirst)"
        )
    reason[~failed] = ""
    return parsed.to_numpy(), reason, late, serial


#: Cell texts (normalised) that mark a published table's totals row.
_TOTAL_WORDS = frozenset({"total", "totals", "grand total", "total general", "suma", "sum",
                          "all states", "todos", "todos los estados", "total nacional"})


def _totals_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows of a count table whose place, dealer or year cell reads ``Total`` (``Grand
    Total``, ``Total general`` …): counting them would count their guns twice."""
    columns = [c for c in ("dealer_state", "dealer_name", "recovery_state", "recovery_city",
                           "recovery_country", "crossing", schema.YEAR_COLUMN)
               if c in frame.columns]
    total = np.zeros(len(frame), dtype=bool)
    for column in columns:
        text = frame[column].astype("str").str.casefold().str.strip(" :.*")
        total |= text.isin(_TOTAL_WORDS).to_numpy(dtype=bool)
    return total


def parse_counts(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Count cells → (float array of counts, NaN where unreadable; boolean array of bad
    cells). A count is a non-negative whole number: ``12``, ``12.0`` (a spreadsheet's
    number), ``1,234`` or ``1 234`` (thousands separators); anything else — empty, negative,
    fractional, text — is bad.

    >>> parse_counts(pd.Series(["3", "1,234", "-1", "2.5", None]))[1].tolist()
    [False, False, True, True, True]
    """
    text = values.astype("str").str.strip()
    grouped = text.str.fullmatch(r"\d{1,3}(?:[,\u00a0 ]\d{3})+").fillna(False)
    text = text.mask(grouped, text.str.replace(r"[,\u00a0 ]", "", regex=True))
    whole = text.str.fullmatch(r"\d+(?:\.0*)?").fillna(False).to_numpy(dtype=bool)
    numbers = pd.to_numeric(text.where(whole), errors="coerce").to_numpy(dtype=float)
    return numbers, ~whole


def _hash_ids(records: pd.DataFrame) -> pd.Series:
    """Stable generated trace ids: ``T-`` + 10 hex digits of a hash of the cells of
    ``records`` (the caller picks the columns: the canonical ones; every one for a count
    table, whose rows differ by count and year too)."""
    hashes = pd.util.hash_pandas_object(records, index=False).to_numpy(np.uint64)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    shifts = np.arange(60, 20, -4, dtype=np.uint64)
    nibbles = ((hashes[:, None] >> shifts) & np.uint64(15)).astype(np.intp)
    chars = np.ascontiguousarray(digits[nibbles]).view("S10").ravel().astype(str)
    return pd.Series(np.char.add("T-", chars), index=records.index, dtype="str")


class SeenRecords:
    """Hashes (64-bit) of the duplicate keys of the records read so far, kept sorted, for
    reading a file in chunks: memory grows by 8 bytes per record, not by its text.

    Two distinct keys share a hash with odds of about n² / 2⁶⁵ (3 in a million at 10 million
    records); within one chunk repeats are found by exact comparison.
    """

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)

    def repeats(self, keys: np.ndarray) -> np.ndarray:
        """Which ``keys`` were seen in an earlier call; then remember them all."""
        # keys are nearly all distinct: hashed as they are (pandas would factorise them
        # first, 7 times slower); the distinct hashes from a sort (numpy 2's unique hashes
        # them again: 0.86 s for a million, the sort 0.01 s)
        hashes = pd.util.hash_array(keys, categorize=False)
        found = sorted_positions(self.hashes, hashes) >= 0
        ordered = np.sort(hashes)
        distinct = ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered
        self.hashes = np.sort(np.concatenate([self.hashes, distinct]), kind="stable")
        return found


def sorted_positions(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each of ``values`` in the sorted array ``table`` (−1: not there; the
    first of equal entries). Searched in sorted order: the search then walks the table
    once, where in the values' own order it jumps about it (15 times slower for a million
    values in a table of 9 million)."""
    out = np.full(len(values), -1, dtype=np.int64)
    if not len(table) or not len(values):
        return out
    order = np.argsort(values)
    ordered = values[order]
    near = np.minimum(np.searchsorted(table, ordered), len(table) - 1)
    out[order] = np.where(table[near] == ordered, near, -1)
    return out


def _duplicates(records: pd.DataFrame, given: pd.Series, seen: SeenRecords | None = None
                ) -> np.ndarray:
    """Flag every occurrence of a trace record after its first (file order).

    Same trace_id (case-insensitive) when the input has one; otherwise same serial number
    (ignoring case, spaces and dashes) + purchase date + dealer name; rows with neither a
    trace_id nor a serial number are duplicates only when all their cells are identical
    (same generated trace_id). With ``seen``, a record repeating one of an earlier chunk is
    flagged too.
    """
    flag = np.zeros(len(records), dtype=bool)
    given = given.to_numpy(dtype=bool)
    # the keys a later chunk is checked against, as Python texts (what hash_array hashes)
    keys = np.full(len(records), "", dtype=object) if seen is not None else None
    upper = records.loc[given, "trace_id"].str.upper()
    flag[given] = _repeated(upper)
    by_serial = ~given & records["serial_number"].notna().to_numpy()
    if by_serial.any():
        rows = records.loc[by_serial, ["serial_number", "purchase_date", "dealer_name"]]
        key = pd.DataFrame({
            "serial": rows["serial_number"].str.upper().str.replace(r"[\s-]+", "", regex=True),
            "date": rows["purchase_date"],
            "dealer": rows["dealer_name"].astype("str").str.casefold(),
        })
        flag[by_serial] = key.duplicated(keep="first").to_numpy()
        if keys is not None:
            keys[by_serial] = ("s\x1f" + key["serial"] + "\x1f"
                               + key["date"].astype("string").fillna("\x00") + "\x1f"
                               + key["dealer"].fillna("\x00")).to_numpy(dtype=object)
    by_content = ~given & ~by_serial
    flag[by_content] = _repeated(records.loc[by_content, "trace_id"])
    if keys is not None:
        keys[given] = ("g\x1f" + upper).to_numpy(dtype=object)
        keys[by_content] = ("c\x1f" + records.loc[by_content, "trace_id"]).to_numpy(dtype=object)
        flag |= seen.repeats(keys)
    return flag


def _repeated(values: pd.Series) -> np.ndarray:
    """``values.duplicated(keep="first")`` as an array; when no value repeats (as trace ids
    do not), told by :func:`distinct_by_hash` (a million ids: 0.07 s; Arrow's ``unique``,
    0.17 s; pandas, 0.3 s)."""
    if distinct_by_hash(pa.array(values.array)):
        return np.zeros(len(values), dtype=bool)
    return values.duplicated(keep="first").to_numpy()


#: Texts longer than this (bytes) are not hashed by :func:`distinct_by_hash`.
_HASHED_BYTES = 64


def distinct_by_hash(text: pa.Array | pa.ChunkedArray) -> bool:
    """True when no two of ``text``'s values are equal, told from a 64-bit hash of each (a
    sort of numbers, not a hash table of texts); False when some hashes repeat (equal
    values, or rarely two that collide), a value is null, or one is longer than
    :data:`_HASHED_BYTES`: the caller then compares the texts.

    A chunked array (the reader's: a chunk per block parsed) is hashed a chunk at a time,
    with no joined copy of its texts: small working arrays, reused from chunk to chunk,
    instead of whole-column ones on memory fresh from the OS (a million trace ids in a
    run, the first call: 0.17 -> 0.03-0.04 s)."""
    n = len(text)
    if n < 2:
        return text.null_count == 0
    if text.null_count:
        return False
    longest = pc.max(pc.binary_length(text)).as_py()
    if longest > _HASHED_BYTES:
        return False
    words = max(-(-longest // 8), 1)  # the same for every chunk: equal texts hash equal
    hashes = np.empty(n, dtype=np.uint64)
    done = 0
    for chunk in text.chunks if isinstance(text, pa.ChunkedArray) else [text]:
        if len(chunk):
            offsets, data = text_parts(chunk.cast(pa.large_string()))
            _hash_texts(offsets, data, words, hashes[done:done + len(chunk)])
            done += len(chunk)
    hashes.sort()
    return not (hashes[1:] == hashes[:-1]).any()


def _hash_texts(offsets: np.ndarray, data: np.ndarray, words: int, out: np.ndarray) -> None:
    """Into ``out``, a 64-bit hash of each text of ``offsets`` and ``data``
    (:func:`text_parts`): its length, then each of its ``words`` 8-byte words, zero-padded,
    mixed in (multiply, xor-shift)."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    data = data[offsets[0]:offsets[-1]]
    padded = np.zeros((n, 8 * words), dtype=np.uint8)  # each text, zero-padded to whole words
    longest = int(lengths.max())
    if (lengths == longest).all():
        padded[:, :longest] = data.reshape(n, longest)
    else:
        rows = np.repeat(np.arange(n), lengths)
        padded[rows, np.arange(len(data)) - np.repeat(offsets[:-1] - offsets[0], lengths)] = data
    np.multiply(lengths.astype(np.uint64), np.uint64(0x9E3779B97F4A7C15), out=out)
    for word in padded.view("<u8").T:
        out ^= word
        out *= np.uint64(0xBF58476D1CE4E5B9)
        out ^= out >> np.uint64(31)


def warning_counts(warnings: pd.DataFrame) -> dict[str, int]:
    """How many of each kind (:func:`warning_key`) a warnings frame lists."""
    return {warning_key(str(column), str(reason)): int(number) for (column, reason), number
            in warnings.groupby(["column", "reason"], sort=False).size().items()}


def warning_key(column: str, reason: str) -> str:
    """The key of a warning in ``warning_counts``: ``"column: reason"``, or the reason alone
    for a warning about the file (no column) or the column map."""
    return reason if column == "" or reason.startswith("column map") else f"{column}: {reason}"


def _capped(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate warning frames keeping at most WARNINGS_CAP per (column, reason)."""
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "line" else "str")
                             for c in _WARNING_COLUMNS})
    warnings = pd.concat(frames, ignore_index=True)
    keep = warnings.groupby(["column", "reason"], sort=False).cumcount() < WARNINGS_CAP
    return warnings.loc[keep].reset_index(drop=True).astype({"line": "int64"})


# --------------------------------------------------------------------------------------------
# disk: bytes, formats, encodings


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InputError("file not found", path=str(path))
    if not path.is_file():
        raise InputError("not a file", path=str(path))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}", path=str(path)) from exc


#: Signatures of binary files people pick by mistake, so the message says what the file is.
_BINARY_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"), (b"%PDF-", "a PDF document"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "a program (ELF executable)"),
)


def _detect_format(path: Path, data: bytes) -> str:
    """``xlsx``/``parquet`` by signature, else by extension, else delimited text."""
    if data.startswith(b"PK\x03\x04"):
        return "xlsx"
    if data.startswith(b"PAR1"):
        return "parquet"
    for signature, kind in _BINARY_SIGNATURES:
        if data.startswith(signature):
            hint = "decompress it first" if "compressed" in kind else (
                "give a CSV, XLSX or Parquet file")
            raise InputError(f"this is {kind}, not a trace table: {hint}", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".xls" or data.startswith(b"\xd0\xcf\x11\xe0"):
        raise InputError("old Excel .xls files are not supported: save it as .xlsx or .csv",
                         path=str(path))
    fmt = _EXTENSIONS.get(suffix, "csv")
    if fmt != "csv":
        raise InputError(f"the file does not look like {fmt.upper()} (wrong signature)",
                         path=str(path))
    return fmt


def _decode(data: bytes, path: Path, encoding: str | None
            ) -> tuple[str, str, list[tuple[int, int]]]:
    """Return (encoding name, text, bad byte ranges); an explicit ``encoding`` must decode
    the whole file. Bad ranges are bytes of a UTF-8 file read as cp1252 (see
    :func:`_detect_mixed`)."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError as exc:
            raise InputError(f"unknown encoding {encoding!r}", path=str(path)) from exc
    try:
        if encoding is None:
            return _detect_mixed(data)
        return encoding, data.decode(encoding).removeprefix("\ufeff"), []
    except UnicodeDecodeError as exc:
        line = int(_line_of(data, np.array([exc.start]))[0])
        hint = "omit the encoding to detect it" if encoding else "pass the right encoding"
        raise InputError(
            f"cannot decode line {line} as {exc.encoding} (byte {exc.start}: {exc.reason}); "
            f"{hint}",
            path=str(path),
        ) from exc


def _line_breaks(a: np.ndarray) -> np.ndarray:
    """Byte offsets of the physical line breaks of ``a`` (uint8): every LF, and every CR not
    followed by LF (classic Mac); a CRLF counts once, at its LF."""
    lf = np.flatnonzero(a == 10)
    cr = np.flatnonzero(a == 13)
    if cr.size:
        lone = a[np.minimum(cr + 1, a.size - 1)] != 10
        lone[cr == a.size - 1] = True
        cr = cr[lone]
        return np.union1d(lf, cr) if cr.size else lf
    return lf


def _line_of(data: bytes, offsets: np.ndarray) -> np.ndarray:
    """Physical line number (1-based) of each byte offset of ``data``."""
    breaks = _line_breaks(np.frombuffer(data, dtype=np.uint8))
    return np.searchsorted(breaks, offsets, side="left") + 1


def _bad_byte_warnings(data: bytes, bad: list[tuple[int, int]]) -> pd.DataFrame:
    """One warning per line holding bytes that are not valid UTF-8 (read as cp1252)."""
    if not bad:
        return _empty_warnings()
    starts = np.array([start for start, _ in bad], dtype=np.int64)
    lines = _line_of(data, starts)
    first = np.unique(lines, return_index=True)[1]
    values = []
    for i in first:  # one per line with bad bytes (capped later with the other warnings)
        start, end = bad[i]
        snippet = data[max(start - 12, 0) : end + 12].decode("utf-8", "geoflow-cp1252")
        values.append(" ".join(snippet.split()))
    return pd.DataFrame({
        "line": lines[first].astype("int64"), "column": "", "value": values,
        "reason": BAD_BYTES_REASON,
    }).astype({"column": "str", "value": "str", "reason": "str"})


def _empty_warnings() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "line" else "str")
                         for c in _WARNING_COLUMNS})


# --------------------------------------------------------------------------------------------
# CSV


@dataclass(frozen=True)
class _Records:
    """Record boundaries of a delimited text: one entry per record (header included)."""

    starts: np.ndarray  # byte offset of the first byte
    stops: np.ndarray  # byte offset after the last content byte (no line break)
    lines: np.ndarray  # physical line number of the first byte
    last_lines: np.ndarray  # physical line number of the last byte
    fields: np.ndarray  # number of fields (-1: rejected for a reason in notes)
    blank: np.ndarray  # only spaces / tabs
    notes: dict[int, str] = field(default_factory=dict)  # record → reject reason override
    multiline: bool = False  # some quoted field holds a line break
    by_lines: bool = False  # the lines taken as records, quotes unvisited (_line_records)
    glued: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # see _glue


def _scan_records(buf: bytes, delimiter: str) -> _Records | None:
    """Split UTF-8 bytes into records with numpy; ``None`` when the quoting defeats it.

    A byte is inside quotes when an odd number of ``"`` precede it (RFC 4180's ``""`` keeps
    the parity). A line break outside quotes ends a record: LF, CRLF or a lone CR (classic
    Mac), mixed freely; a record's fields are its delimiters outside quotes + 1. Only the
    positions of quotes, delimiters and line breaks are visited after one vectorised pass
    over the bytes, :data:`_SCAN_CHUNK` bytes at a time (the quote parity and the open
    record's delimiter count carry over), so the scratch memory stays small however large
    the file.
    """
    a = np.frombuffer(buf, dtype=np.uint8)
    size = a.size
    sep = ord(delimiter)
    newline_parts, end_parts, count_parts = [], [], []
    parity = 0  # 1 when the chunk starts inside quotes
    open_count = 0  # delimiters outside quotes in the record still open at the chunk start
    for lo in range(0, size, _SCAN_CHUNK):
        chunk = a[lo : lo + _SCAN_CHUNK]
        positions = np.flatnonzero(
            (chunk == 10) | (chunk == 13) | (chunk == sep) | (chunk == 34)) + lo
        kind = a[positions]
        cr = np.flatnonzero(kind == 13)
        if cr.size:  # a CR followed by LF is part of that line break: drop it
            crlf = (positions[cr] + 1 < size) & (a[np.minimum(positions[cr] + 1, size - 1)] == 10)
            if crlf.any():
                keep = np.ones(positions.size, dtype=bool)
                keep[cr[crlf]] = False
                positions, kind = positions[keep], kind[keep]
        state = np.bitwise_xor.accumulate((kind == 34).view(np.uint8)) ^ parity
        if state.size:
            parity = int(state[-1])
        outside = state == 0
        newline = (kind == 10) | (kind == 13)
        ends = positions[newline & outside]
        separators = positions[(kind == sep) & outside]
        counts = np.bincount(np.searchsorted(ends, separators), minlength=ends.size + 1)
        counts[0] += open_count
        open_count = int(counts[-1])
        newline_parts.append(positions[newline])
        end_parts.append(ends)
        count_parts.append(counts[:-1])
    if parity:
        return None
    newlines = np.concatenate(newline_parts)
    ends = np.concatenate(end_parts)
    separators = np.concatenate(count_parts)  # delimiters outside quotes per record
    multiline = ends.size < newlines.size
    if size and (ends.size == 0 or ends[-1] != size - 1):
        ends = np.append(ends, size)
        separators = np.append(separators, open_count)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    stops = ends.copy()
    crlf = (stops > starts) & (stops < size) & (a[np.minimum(stops, size - 1)] == 10) & (
        a[np.maximum(stops - 1, 0)] == 13)
    stops[crlf] -= 1
    fields = separators.astype(np.int64) + 1
    blank = (fields == 1) & (stops == starts)
    candidates = np.flatnonzero(
        (fields == 1) & (stops > starts) & np.isin(a[np.minimum(starts, size - 1)], (9, 32))
    )
    for i in candidates:  # only records that start with white space and have one field
        blank[i] = not buf[starts[i] : stops[i]].strip(b" \t")
    lines = np.searchsorted(newlines, starts) + 1
    last_lines = np.searchsorted(newlines, stops) + 1
    return _Records(starts, stops, lines, last_lines, fields, blank, multiline=multiline)


def _count_bytes(a: np.ndarray, byte: int) -> int:
    """How many times ``byte`` occurs in ``a`` (uint8), counted a chunk at a time (numpy's
    compare and count: 250 MB in 0.07 s, ``bytes.count`` took 0.16-0.28 s)."""
    return sum(int(np.count_nonzero(a[lo : lo + _SCAN_CHUNK] == byte))
               for lo in range(0, a.size, _SCAN_CHUNK))


def _line_records(buf: bytes, delimiter: str) -> _Records | None:
    """Records of a file where, it seems, each physical line is one record: the header's
    fields on the first line, LF or CRLF line ends throughout (no lone CR or LF), an even
    number of quotes, no row over :data:`MAX_ROW_BYTES`; ``None`` otherwise.

    Only the line breaks are looked at (:func:`_scan_records` visits every quote and
    delimiter: 3 s per 250 MB). The parse checks the rest (``by_lines``): it fails on a row
    of another width (a blank line included), on a value holding a line break (a quoted
    one spanning lines) and must give one row per line, else :func:`_csv_fast` returns
    ``None`` and the full scan decides.
    """
    a = np.frombuffer(buf, dtype=np.uint8)
    if _count_bytes(a, 34) % 2:
        return None  # a quote left open at the end
    breaks = np.concatenate([np.flatnonzero(a[lo : lo + _SCAN_CHUNK] == 10) + lo
                             for lo in range(0, a.size, _SCAN_CHUNK)] or [np.zeros(0, int)])
    if breaks.size == 0:
        return None
    cr = _count_bytes(a, 13)
    if cr and (cr != breaks.size or np.count_nonzero(a[breaks[breaks > 0] - 1] == 13) != cr):
        return None  # a lone CR or LF: not every line ends alike
    stops = breaks if breaks[-1] == a.size - 1 else np.append(breaks, a.size)
    starts = np.concatenate(([0], breaks[: stops.size - 1] + 1))
    if cr:  # CRLF: the CR is not content
        stops = stops - (a[np.maximum(stops - 1, 0)] == 13)
    header = buf[: stops[0]].decode("utf-8")
    width = len(next(csv.reader([header], delimiter=delimiter), []))
    if (width < 2 or header.count('"') % 2 or not header.strip(" \t")
            or int((stops - starts).max()) > MAX_ROW_BYTES):
        return None
    lines = np.arange(1, starts.size + 1, dtype=np.int64)
    return _Records(starts.astype(np.int64), stops.astype(np.int64), lines, lines,
                    np.full(starts.size, width, dtype=np.int64),
                    np.zeros(starts.size, dtype=bool), by_lines=True)


def _glue(scan: _Records, buf: bytes, header: int) -> _Records:
    """Join records split by a line break inside an unquoted cell (an Excel line break):
    consecutive pieces ended by a break of another kind than the header's (a lone CR in an
    LF or CRLF file, an LF in a Mac file …) that together have the header's number of
    fields (``A,,`` + ``0`` with width 3). The breaks stay in the cell; their byte offsets
    are in ``glued``. Complete rows never fit together (2 × width − 1 > width)."""
    a = np.frombuffer(buf, dtype=np.uint8)
    stops, fields, blank = scan.stops, scan.fields, scan.blank
    width = int(fields[header])
    term = a[np.minimum(stops, a.size - 1)]
    after = a[np.minimum(stops + 1, a.size - 1)]
    kind = np.where(stops >= a.size, 3, np.where(term == 10, 0, np.where(
        (after == 10) & (stops + 1 < a.size), 1, 2)))  # LF, CRLF, lone CR, end of file
    # the file's line ending is the header's (a header holds no cell line breaks)
    usual = int(kind[header]) if kind[header] < 3 else 0
    foreign = (kind != usual) & (kind < 3)
    fits = np.append((fields[:-1] + fields[1:] - 1 <= width) | blank[1:], False)
    candidates = np.flatnonzero(foreign & fits & ~blank)
    joins: list[tuple[int, int]] = []
    done = -1
    for i in candidates:  # pieces that may fit with the next one: rare
        if i <= done:
            continue
        total, j = int(fields[i]), int(i)
        while foreign[j]:
            k = j + 1  # the next piece with text, across empty ones ("A,\n\n,")
            while k < stops.size and blank[k] and foreign[k]:
                k += 1
            if k >= stops.size or blank[k] or total + int(fields[k]) - 1 > width:
                break
            j, total = k, total + int(fields[k]) - 1
        if total == width and j > i:
            joins.append((int(i), j))
            done = j
    if not joins:
        return scan
    keep = np.ones(stops.size, dtype=bool)
    new_stops, last_lines, new_fields = stops.copy(), scan.last_lines.copy(), fields.copy()
    glued = []
    for i, j in joins:
        keep[i + 1 : j + 1] = False
        new_stops[i], last_lines[i], new_fields[i] = stops[j], scan.last_lines[j], width
        glued += [np.arange(stops[k], scan.starts[k + 1]) for k in range(i, j)]
    return replace(
        scan, starts=scan.starts[keep], stops=new_stops[keep], lines=scan.lines[keep],
        last_lines=last_lines[keep], fields=new_fields[keep], blank=blank[keep],
        glued=np.concatenate(glued).astype(np.int64),
    )


def _reject_huge(scan: _Records, sizes: np.ndarray, header: int) -> None:
    """Mark records longer than :data:`MAX_ROW_BYTES` as rejected (``fields`` -1, a note)."""
    for i in np.flatnonzero(sizes > MAX_ROW_BYTES):  # a handful at most
        if i != header:
            scan.fields[i] = -1
            scan.notes[int(i)] = (
                f"row too large: {sizes[i] / 1e6:,.1f} MB (at most {MAX_ROW_BYTES / 1e6:,.1f} "
                "MB per row)")


def _scan_with_csv(text: str, delimiter: str) -> tuple[list[list[str]], _Records]:
    """Slow path (the csv module, a loop over records) for quoting :func:`_scan_records`
    cannot follow, e.g. a ``"`` inside an unquoted field or an unterminated quote."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    last: list[int] = []
    previous = 0
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # rows too large are rejected below, not fatal
    try:
        for row in reader:
            rows.append(row)
            lines.append(previous + 1)
            previous = reader.line_num
            last.append(previous)
    except csv.Error as exc:
        raise InputError(f"line {previous + 1}: cannot split into fields: {exc}") from exc
    finally:
        csv.field_size_limit(limit)
    fields = np.array([len(r) for r in rows], dtype=np.int64)
    blank = np.array([not "".join(r).strip(" \t") for r in rows], dtype=bool)
    none = np.zeros(len(rows), dtype=np.int64)
    notes = {}
    if len(rows) > 1 and _unterminated(text, lines[-1], delimiter):
        fields[-1] = -1
        notes[len(rows) - 1] = (
            f"unterminated quote: lines {lines[-1]}-{previous} were read as one row"
            if previous > lines[-1] else
            f"unterminated quote: line {previous} ends inside a quoted field (cut short?)"
        )
    scan = _Records(none, none, np.array(lines, dtype=np.int64),
                    np.array(last, dtype=np.int64), fields, blank, notes)
    return rows, scan


def _unterminated(text: str, line: int, delimiter: str) -> bool:
    """Whether the text from physical ``line`` to the end holds a quote never closed."""
    tail = "\n".join(re.split(r"\r\n|\r|\n", text)[line - 1 :])
    try:
        list(csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


#: Bytes whose text holds more than the 65,536 characters :func:`sniff_delimiter` looks at.
_SNIFF_BYTES = 4 * 65536 + 8


def _valid_utf8(data: bytes) -> bool:
    """Whether ``data`` is UTF-8 (as ``data.decode("utf-8")`` judges it), checked by Arrow on
    the bytes themselves: no Python string of the whole file (250 MB: 0.04 s, not 0.3-0.4)."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    text = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _utf8_head(data: bytes) -> str | None:
    """The text of the start of ``data`` (all of it for a short file), when the whole file is
    UTF-8 without a byte-order mark (the common file, parsed as bytes); None otherwise."""
    if data.startswith(codecs.BOM_UTF8) or not _valid_utf8(data):
        return None
    # an incremental decoder keeps back a character cut at the end of the slice
    return codecs.getincrementaldecoder("utf-8")().decode(data[:_SNIFF_BYTES])


def _read_csv(data: bytes, path: Path, *, encoding: str | None) -> _Table:
    head = _utf8_head(data) if encoding is None else None
    if head is None:
        name, text, bad = _decode(data, path, encoding)
    else:  # only the start is decoded; the rest is read as bytes
        name, bad = "utf-8", []
        # a start of blank lines alone: the text past it (rare) is needed to sniff
        whole = len(data) <= _SNIFF_BYTES or not head.isspace()
        text = head if whole else data.decode("utf-8")
    if not text or text.isspace():
        raise InputError("empty file: no header line", path=str(path))
    delimiter = sniff_delimiter(text)
    warnings = _bad_byte_warnings(data, bad)
    if codecs.lookup(name.split("/")[0]).name in ("utf-8", "utf-8-sig") and not bad:
        buf = data.removeprefix(codecs.BOM_UTF8)  # parse the bytes as they are
    else:
        buf = text.encode("utf-8")
    del text  # the fast path works on bytes; keep memory to one copy of the file
    meta = {"encoding": name, "delimiter": delimiter}
    lines = _line_records(buf, delimiter)  # the common file: one record per line
    if lines is not None:
        table = _csv_fast(buf, lines, delimiter, meta)
        if table is not None:
            return _with_warnings(table, warnings)
    scan = _scan_records(buf, delimiter)
    if scan is not None and not scan.blank.all():
        header = int(np.flatnonzero(~scan.blank)[0])
        scan = _glue(scan, buf, header)
        _reject_huge(scan, scan.stops - scan.starts, header)
        table = _csv_fast(buf, scan, delimiter, meta)
        if table is not None:
            return _with_warnings(table, warnings)
    log.info("%s: quoting needs the slow csv-module reader", path)
    try:
        rows, scan = _scan_with_csv(buf.decode("utf-8"), delimiter)
    except InputError as exc:
        raise InputError(str(exc), path=str(path)) from exc
    if scan.blank.all():
        raise InputError("empty file: no header line", path=str(path))
    sizes = np.array([sum(map(len, row)) for row in rows], dtype=np.int64)
    _reject_huge(scan, sizes, int(np.flatnonzero(~scan.blank)[0]))
    return _with_warnings(_csv_slow(rows, scan, delimiter, meta), warnings)


def _with_warnings(table: _Table, warnings: pd.DataFrame) -> _Table:
    if warnings.empty:
        return table
    return replace(table, warnings=pd.concat([warnings, table.warnings], ignore_index=True))


def _split_header(scan: _Records) -> tuple[int, np.ndarray, np.ndarray]:
    """Index of the header record, data record indices, and which of them are bad."""
    nonblank = np.flatnonzero(~scan.blank)
    header = int(nonblank[0])
    data = nonblank[1:]
    bad = scan.fields[data] != scan.fields[header]
    return header, data, bad


def _field_rejects(scan: _Records, data: np.ndarray, bad: np.ndarray, width: int,
                   raw: list[str]) -> pd.DataFrame:
    records = data[bad]

    def reason(i: int) -> str:
        if i in scan.notes:
            return scan.notes[i]
        text = f"expected {width} field{'s' * (width != 1)}, found {scan.fields[i]}"
        if scan.last_lines[i] > scan.lines[i]:  # a quote opened here closed lines later
            text += (f": lines {scan.lines[i]}-{scan.last_lines[i]} were read as one row "
                     "(a quoted field runs over them)")
        return text

    return pd.DataFrame({
        "line": scan.lines[records].astype("int64"),
        "column": "",
        "reason": [reason(i) for i in records],
        "raw": raw,
    }).astype({"column": "str", "reason": "str", "raw": "str"})


def _unique_headers(headers: list[str]) -> tuple[list[str], pd.DataFrame]:
    """Name blank headers by position ('column 15') and make repeated names unique
    ('Notes', 'Notes (2)') so no column is lost; a warning for each repeated name."""
    seen: dict[str, int] = {}
    first: dict[str, int] = {}
    result = []
    repeated: list[tuple[int, str, str]] = []  # position, header, name given
    for position, raw in enumerate(headers, start=1):
        header = raw if raw.strip() else f"column {position}"
        seen[header] = seen.get(header, 0) + 1
        first.setdefault(header, position)
        name = header if seen[header] == 1 else f"{header} ({seen[header]})"
        result.append(name)
        if seen[header] > 1:
            repeated.append((position, header, name))
    if not repeated:
        return result, _empty_warnings()
    warnings = pd.DataFrame({
        "line": np.ones(len(repeated), dtype="int64"),
        "column": [name for _, _, name in repeated],
        "value": [header for _, header, _ in repeated],
        "reason": [f"repeated header: column {position} has the name of column "
                   f"{first[header]}; kept under its own name" for position, header, _ in
                   repeated],
    }).astype({"column": "str", "value": "str", "reason": "str"})
    return result, warnings


def _csv_fast(buf: bytes, scan: _Records, delimiter: str, meta: dict) -> _Table | None:
    header, data, bad = _split_header(scan)
    width = int(scan.fields[header])

    def raw_text(records: np.ndarray) -> list[str]:
        return [buf[scan.starts[i] : min(scan.stops[i], scan.starts[i] + 4 * _RAW_CHARS)]
                .decode("utf-8", "replace")[:_RAW_CHARS] for i in records]

    header_text = buf[scan.starts[header] : scan.stops[header]].decode("utf-8")
    names, header_warnings = _unique_headers(
        next(csv.reader(io.StringIO(header_text, newline=""), delimiter=delimiter)))
    good = data[~bad]
    keep = np.zeros(scan.starts.size, dtype=bool)
    keep[good] = True
    segment = np.diff(np.append(scan.starts, len(buf)))
    first = int(good[0]) if good.size else 0
    source: Any = buf
    restore: dict[str, str] = {}
    if scan.glued.size:  # line breaks inside unquoted cells: hidden from the parser
        counts = np.bincount(np.frombuffer(buf, np.uint8), minlength=256)
        free = [b for b in (0x1E, 0x1F, 0x1D, 0x1C, *range(1, 9)) if counts[b] == 0]
        if len(free) < 2:
            return None
        source = np.frombuffer(buf, np.uint8).copy()
        for byte, stand_in in ((13, free[0]), (10, free[1])):
            source[scan.glued[source[scan.glued] == byte]] = stand_in
            restore[chr(stand_in)] = chr(byte)
    if keep[first:].all():  # only the header and lines before it go: no copy
        body = memoryview(source)[scan.starts[first]:]
    else:
        body = np.frombuffer(source, np.uint8)[np.repeat(keep, segment)]
    if good.size:
        longest = int((scan.stops[good] - scan.starts[good]).max())
        try:
            frame = _parse_text_table(body, delimiter=delimiter, names=names,
                                      multiline=scan.multiline, longest=longest,
                                      restore=restore, by_lines=scan.by_lines)
        except (pa.ArrowInvalid, ValueError):
            return None
        if len(frame) != good.size:
            return None
    else:
        frame = pd.DataFrame({name: pd.Series(dtype="str") for name in names})
    rejects = _field_rejects(scan, data, bad, width, raw_text(data[bad]))
    swallowed = _swallowed_rows(buf, scan, good, delimiter, width)
    warnings = pd.concat([header_warnings, pd.DataFrame({
        "line": scan.lines[swallowed].astype("int64"), "column": "",
        "value": raw_text(swallowed),
        "reason": [f"a quoted field runs over lines {scan.lines[i]}-{scan.last_lines[i]}, "
                   "which look like rows of their own: read as one row (check its quotes)"
                   for i in swallowed],
    })], ignore_index=True) if swallowed.size else header_warnings
    return _Table(frame, scan.lines[good], rejects, int(data.size),
                  lambda rows: raw_text(good[rows]), meta, warnings)


def _swallowed_rows(buf: bytes, scan: _Records, records: np.ndarray, delimiter: str,
                    width: int) -> np.ndarray:
    """Records (of ``records``) spanning several lines of which a later one holds a whole
    row's worth of delimiters: most likely a stray quote that swallowed rows."""
    multi = records[scan.last_lines[records] > scan.lines[records]]
    if multi.size == 0 or width < 2:
        return multi
    a = np.frombuffer(buf, dtype=np.uint8)
    per_line = np.bincount(np.searchsorted(_line_breaks(a), np.flatnonzero(a == ord(delimiter))),
                           minlength=int(scan.last_lines.max()) + 1)
    full = np.concatenate(([0], np.cumsum(per_line >= width - 1)))  # full[k]: lines 1..k
    # lines are 1-based; per_line[k - 1] is line k: count full lines in first+1..last
    return multi[full[scan.last_lines[multi]] - full[scan.lines[multi]] > 0]


def _parse_text_table(body: Any, *, delimiter: str, names: list[str], multiline: bool,
                      longest: int = 0, restore: dict[str, str] | None = None,
                      by_lines: bool = False) -> pd.DataFrame:
    """Parse header-less, blank-free UTF-8 CSV bytes into string columns named ``names``.

    Blank-headed columns without a value are dropped here, in Arrow, before pandas sees
    them (cheap however many there are). ``restore``: characters standing for line breaks
    inside unquoted cells → the break characters. ``by_lines``: the body's lines were taken
    as its records (:func:`_line_records`), so Arrow splits its blocks at any line break
    (quotes ignored: 1M records, 0.47-0.51 -> 0.36-0.39 s); a value holding a line break
    then shows a quoted one that spanned lines, perhaps across two blocks, and raises
    ValueError (the full scan reads that file)."""
    keys = [str(i) for i in range(len(names))]
    table = pacsv.read_csv(
        pa.py_buffer(body),
        read_options=pacsv.ReadOptions(column_names=keys,
                                       block_size=max(1 << 20, 2 * longest + 1024)),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=multiline, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(keys, pa.large_string()), strings_can_be_null=True,
            quoted_strings_can_be_null=True, null_values=[""]),
    )
    if by_lines and _holds_line_break(table):
        raise ValueError("a quoted value spans lines")
    keep = [i for i, name in enumerate(names)
            if not (_UNNAMED.fullmatch(name) and table.column(i).null_count == table.num_rows)]
    columns = [table.column(i) for i in keep]
    for stand_in, byte in (restore or {}).items():
        columns = [pc.replace_substring(column, stand_in, byte) for column in columns]
    table = pa.table(columns, names=[names[i] for i in keep])
    text = pd.StringDtype("pyarrow", na_value=np.nan)
    return table.to_pandas(types_mapper={pa.string(): text, pa.large_string(): text}.get)


def _holds_line_break(table: pa.Table) -> bool:
    """Whether a value of ``table`` (parsed text) holds a line feed: its text bytes are
    searched as they are (192 MB at 1M records: 0.03 s). A file of lines taken as records
    has a carriage return only before a line feed (:func:`_line_records`)."""
    for column in table.columns:
        for chunk in column.chunks:
            data = chunk.buffers()[2]
            if data is not None and (np.frombuffer(data, np.uint8) == 10).any():
                return True
    return False


def _csv_slow(rows: list[list[str]], scan: _Records, delimiter: str, meta: dict) -> _Table:
    header, data, bad = _split_header(scan)
    width = int(scan.fields[header])
    good = data[~bad]
    names, header_warnings = _unique_headers(rows[header])

    def raw_text(records: np.ndarray) -> list[str]:
        return [delimiter.join(rows[i])[:_RAW_CHARS] for i in records]

    frame = pd.DataFrame([rows[i] for i in good], columns=names, dtype="str")
    rejects = _field_rejects(scan, data, bad, width, raw_text(data[bad]))
    return _Table(frame, scan.lines[good], rejects, int(data.size),
                  lambda positions: raw_text(good[positions]), meta, header_warnings)


# --------------------------------------------------------------------------------------------
# XLSX and Parquet


def _table_from_cells(cells: pd.DataFrame, meta: dict, path: Path, *,
                      names: list[str] | None = None,
                      is_header: HeaderTest | None = None) -> _Table:
    """A table from XLSX cells (``names`` None: the header is the first non-blank row, or
    the first of the next rows that is a header by ``is_header``, default: names a trace
    column, when it is not: the rows above are a title, skipped with a warning; lines are
    sheet rows) or Parquet columns (``names`` given; line = row + 2, the header being line
    1). Blank rows are skipped and not counted."""
    is_header = is_header or _header_test(None)
    text = pd.DataFrame({i: _clean_text(cells.iloc[:, i]) for i in range(cells.shape[1])},
                        index=pd.RangeIndex(len(cells)))
    blank = text.isna().all(axis=1).to_numpy()
    nonblank = np.flatnonzero(~blank)
    title = None  # the warning on the rows above the header, if any
    if names is None:
        if nonblank.size == 0:
            raise InputError("empty file: no header row", path=str(path))

        def row(at: int) -> list[str]:
            return text.iloc[at].fillna("").astype("str").tolist()

        header = next((int(at) for at in nonblank[:_TITLE_LINES + 1]
                       if is_header(row(at))), int(nonblank[0]))
        data = nonblank[nonblank > header]
        names = row(header)
        lines = np.arange(len(cells)) + 1
        if header > nonblank[0]:  # the sheet rows above the header: a title
            title = _title_warning(header, " ".join(row(int(nonblank[0]))).strip())
    else:
        data, lines = nonblank, np.arange(len(cells)) + 2
    names, header_warnings = _unique_headers(names)
    if title is not None:
        header_warnings = pd.concat([title, header_warnings], ignore_index=True)
    frame = text.iloc[data].set_axis(names, axis=1).reset_index(drop=True)

    def raw_text(positions: np.ndarray) -> list[str]:
        rows = frame.iloc[positions].astype("str").fillna("")
        return rows.agg(",".join, axis=1).str.slice(0, _RAW_CHARS).tolist()

    empty = pd.DataFrame({c: pd.Series(dtype="str") for c in _REJECT_COLUMNS}).astype(
        {"line": "int64"})
    return _Table(frame, lines[data], empty, int(data.size), raw_text, meta, header_warnings)


def _read_xlsx(data: bytes, path: Path, *, sheet: str | int | None,
               is_header: HeaderTest, column: str | None = None) -> _Table:
    """A workbook's ``sheet``, else the first sheet that holds a header by ``is_header`` (its
    warnings name trace columns, or ``column``: :func:`_trace_sheet`)."""
    from openpyxl.utils.exceptions import InvalidFileException  # only for XLSX: 0.1 s

    try:
        book = pd.ExcelFile(io.BytesIO(data), engine="openpyxl")
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ValueError) as exc:
        raise InputError(f"not a readable XLSX file: {exc}", path=str(path)) from exc
    notes = _empty_warnings()
    with book:
        names = book.sheet_names
        if sheet is None:
            chosen, notes = _trace_sheet(book, names, is_header, column=column)
        else:
            chosen = sheet
        if (isinstance(chosen, int) and not 0 <= chosen < len(names)) or (
            isinstance(chosen, str) and chosen not in names
        ):
            raise InputError(f"no sheet {chosen!r}; sheets are: {', '.join(names)}",
                             path=str(path))
        cells = pd.read_excel(book, sheet_name=chosen, header=None, dtype=str,
                              na_filter=False, keep_default_na=False)
    name = chosen if isinstance(chosen, str) else names[chosen]
    table = _table_from_cells(cells, {"encoding": None, "sheet": name}, path,
                              is_header=is_header)
    if len(notes):
        table = replace(table, warnings=pd.concat([notes, table.warnings], ignore_index=True))
    return table


def _trace_sheet(book: pd.ExcelFile, names: list[str], is_header: HeaderTest, *,
                 column: str | None = None) -> tuple[str, pd.DataFrame]:
    """The sheet a workbook's traces are read from when none is named: the first whose top
    rows (:data:`_TITLE_LINES` and its header) hold a header by ``is_header`` (a trace
    column, or ``column``: ``geoflow geocode --column``), else the first sheet (whose headers
    the error then names); and the warning (line 1) naming the sheets passed over and the
    other sheets that hold such a header too, which are not read."""
    none = "trace column" if column is None else f"column {column!r}"
    what = "trace columns" if column is None else none
    traced = []
    for name in names:
        top = pd.read_excel(book, sheet_name=name, header=None, dtype=str, na_filter=False,
                            keep_default_na=False, nrows=_TITLE_LINES + 1)
        if any(is_header(row) for row in top.astype(str).values.tolist()):
            traced.append(name)
    if not traced:
        return names[0], _empty_warnings()
    chosen, others = traced[0], traced[1:]
    passed = names[:names.index(chosen)]
    said = []
    if passed:
        said.append(f"{_sheets(passed)} name{'s' if len(passed) == 1 else ''} no {none}")
    if others:
        said.append(f"{_sheets(others)} also hold{'s' if len(others) == 1 else ''} {what} "
                    f"and {'is' if len(others) == 1 else 'are'} not read"
                    + (f" (--sheet NAME reads {'it' if len(others) == 1 else 'one'})"
                       if column is None else ""))
    if not said:
        return chosen, _empty_warnings()
    return chosen, pd.DataFrame({"line": [1], "column": [""], "value": [chosen[:_RAW_CHARS]],
                                 "reason": [f"sheet {chosen!r} read; " + "; ".join(said)]})


def _sheets(names: list[str]) -> str:
    """``sheet 'A'`` or ``sheets 'A', 'B'``."""
    return ("sheet " if len(names) == 1 else "sheets ") + ", ".join(repr(n) for n in names)


def _read_parquet(data: bytes, path: Path) -> _Table:
    try:
        cells = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable Parquet file: {exc}", path=str(path)) from exc
    table = _table_from_cells(cells, {"encoding": None}, path,
                              names=[str(c) for c in cells.columns])
    return _with_warnings(table, _parquet_coercions(cells))


def _parquet_coercions(cells: pd.DataFrame) -> pd.DataFrame:
    """A warning (line 1) for each Parquet column whose values become text by more than
    formatting: booleans (``True``), lists (``['TX']``) and structs/maps (``{'a': 1}``)."""
    found = []
    for name in cells.columns:  # a dtype look per column, then one value of the few found
        values = cells[name]
        kind = "true/false values" if pd.api.types.is_bool_dtype(values.dtype) else None
        if kind is None and values.dtype == object:
            first = values.dropna().head(1).tolist()
            if first and isinstance(first[0], (list, tuple, np.ndarray)):
                kind = "lists"
            elif first and isinstance(first[0], dict):
                kind = "structs/maps"
        if kind:
            example = values.dropna().head(1).astype("str").tolist()
            found.append((str(name), example[0] if example else "",
                          f"Parquet column of {kind}: read as text"))
    if not found:
        return _empty_warnings()
    return pd.DataFrame({"line": np.ones(len(found), dtype="int64"),
                         "column": [f[0] for f in found], "value": [f[1] for f in found],
                         "reason": [f[2] for f in found]}).astype(
        {"column": "str", "value": "str", "reason": "str"})


# --------------------------------------------------------------------------------------------
# header checks


#: How many lines or rows above a table's header may be a title (skipped, and warned).
_TITLE_LINES = 20


#: Whether a row read as headers is the table's header row.
HeaderTest = Callable[[list[str]], bool]


def _header_test(user_map: dict[str, str] | None, column: str | None = None) -> HeaderTest:
    """What makes a row the header: it names ``column`` (given: ``geoflow geocode
    --column``), else a trace column (:func:`_names_trace_columns`)."""
    if column is not None:
        return lambda names: column in (str(name).strip() for name in names)
    return lambda names: _names_trace_columns(names, user_map)


def _names_trace_columns(names: list[str], user_map: dict[str, str] | None) -> bool:
    """Whether a row read as headers names a column that makes a row usable (its distinct
    non-empty cells are mapped: an export's thousands of blank header cells are not)."""
    given = list(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))
    mapped = schema.map_headers(given, user_map)
    return any(canonical in schema.USABLE_COLUMNS for canonical in mapped.values())


def _title_lines(data: bytes, encoding: str | None, is_header: HeaderTest
                 ) -> tuple[int, str]:
    """A CSV's lines above its header: ``(lines, the first's text)`` when its first line is
    no header by ``is_header`` but one of the next :data:`_TITLE_LINES` is (a published
    table's title, note or date above it), else ``(0, "")``."""
    head = data[:65536].removeprefix(codecs.BOM_UTF8)
    try:
        text = head.decode(encoding or detect_encoding(head), errors="replace")
    except LookupError:
        return 0, ""
    lines = [line.rstrip("\r") for line in text.split("\n")[:_TITLE_LINES + 1]]
    given = [at for at, line in enumerate(lines) if line.strip()]
    if len(given) < 2:
        return 0, ""
    delimiter = sniff_delimiter(text)

    def names(line: str) -> list[str]:
        return next(csv.reader([line], delimiter=delimiter), [])

    try:  # a line the csv module cannot split (a bare CR in it) is left to the reader
        if is_header(names(lines[given[0]])):
            return 0, ""
        for at in given[1:]:
            if at + 1 < len(lines) and is_header(names(lines[at])):
                return at, " ".join(c.strip() for c in names(lines[given[0]]) if c.strip())
    except csv.Error:
        pass
    return 0, ""


def lines_above_header(head: bytes, column_map: dict[str, str] | None = None) -> int:
    """How many lines of a CSV beginning with ``head`` (its first 64 KB suffice) lie above
    its header (a published table's title or note), as :func:`read_traces` skips them."""
    user_map = schema.validate_column_map(column_map)
    return _title_lines(head, None, _header_test(user_map))[0]


def _from_line(data: bytes, lines: int) -> bytes:
    """``data`` from the start of its line ``lines`` + 1 (0: all of it)."""
    at = 0
    for _ in range(lines):
        at = data.index(b"\n", at) + 1
    return data[at:] if at else data


def _below_title(table: _Table, lines: int, title: str) -> _Table:
    """A table read below ``lines`` title lines: its lines counted in the file, and a
    warning saying what was skipped."""
    if not lines:
        return table
    rejects = table.rejects.assign(line=table.rejects["line"] + lines)
    warnings = table.warnings.assign(line=table.warnings["line"] + lines)
    return replace(table, lines=np.asarray(table.lines) + lines, rejects=rejects,
                   warnings=pd.concat([_title_warning(lines, title), warnings],
                                      ignore_index=True))


def _title_warning(lines: int, title: str) -> pd.DataFrame:
    """The warning (line 1) on the lines above a table's header."""
    span = "line 1" if lines == 1 else f"lines 1-{lines}"
    return pd.DataFrame({"line": [1], "column": [""], "value": [title[:_RAW_CHARS]],
                         "reason": [f"{span} above the header skipped (a title or note)"]})


def _require_trace_columns(header_map: dict[str, str], path: Path) -> None:
    """SchemaError unless at least one header maps to a column that makes a row usable."""
    if any(canonical in schema.USABLE_COLUMNS for canonical in header_map.values()):
        return
    seen = ", ".join(repr(h) for h in list(header_map)[:12]) or "none"
    examples = ", ".join(repr(h) for h in schema.HEADER_EXAMPLES)
    raise SchemaError(
        f"no recognisable trace columns; headers seen: {seen}. Expected headers such as "
        f"{examples} (or pass a column map)",
        path=str(path),
    )


#: A header naming a year (``2019``, ``CY 2019``, ``FY2019``, ``Año 2019``): a count table
#: with a column per year, as ATF publishes its Mexico tables.
_YEAR_HEADER = re.compile(r"(?:cy|fy|ano|year|calendar_year)?_?((?:19|20)\d\d)")


#: Columns about one gun: a file with any of them is trace records, never a count table.
_PER_GUN = frozenset({"trace_id", "serial_number", "purchaser_name", "purchase_date",
                      "recovery_date", "possessor_name", "manufacturer", "model", "caliber"})


def year_columns(frame: pd.DataFrame, header_map: dict[str, str]
                 ) -> tuple[pd.DataFrame, dict[str, str], dict[str, int]]:
    """A count table with a column per year and no count column (``State,CY 2017,CY 2018``):
    each row's guns are the sum of its year cells (an empty or placeholder cell counts 0; a
    row whose cells are all empty has no count), in a column ``"<first>–<last>"`` read as the
    count. A cell that is not a count makes its row's count that text, named with its
    column, so the row is rejected saying where. One year column is the count of that year.
    A file with a column about one gun (:data:`_PER_GUN`) is trace records: left as it is.
    Returns ``(frame, header_map, {year header: year})``; nothing changes without them."""
    if schema.COUNT_COLUMN in header_map.values() or _PER_GUN & set(header_map.values()):
        return frame, header_map, {}  # counted already, or a gun per row (a trace file)
    years = {}
    for raw, target in header_map.items():
        found = _YEAR_HEADER.fullmatch(schema.normalise_header(raw))
        if found and target not in _KNOWN_COLUMNS:
            years[raw] = int(found.group(1))
    if not years:
        return frame, header_map, {}
    names = list(years)
    label = names[0] if len(names) == 1 else f"{names[0]}–{names[-1]}"
    total = np.zeros(len(frame))
    seen = np.zeros(len(frame), dtype=bool)
    wrong = pd.Series(pd.NA, index=frame.index, dtype="string")  # the first bad cell
    for name in names:
        cells = _clean_text(frame[name])
        numbers, bad = parse_counts(cells)
        given = cells.notna().to_numpy(dtype=bool)
        total += np.where(given & ~bad, numbers, 0.0)
        seen |= given
        bad &= given
        first = bad & wrong.isna().to_numpy(dtype=bool)
        if first.any():
            wrong[first] = cells[first].astype("string") + f" (in {name})"
    counts = pd.Series(total.astype(np.int64), index=frame.index).astype("string")
    counts = counts.mask(~seen).where(wrong.isna(), wrong)
    out = frame.assign(**{label: counts})
    header_map = {**header_map, label: schema.COUNT_COLUMN}
    if len(names) == 1 and schema.YEAR_COLUMN not in header_map.values():
        year = f"{label} (the year of the header)"
        out[year] = str(years[names[0]])
        header_map[year] = schema.YEAR_COLUMN
    return out, header_map, years


def _years_warning(years: dict[str, int], header_map: dict[str, str]) -> pd.DataFrame:
    """The warning (line 1) of a table whose year columns were summed: no year is kept."""
    label = next((raw for raw, target in header_map.items()
                  if target == schema.COUNT_COLUMN), "")
    rows = [] if len(years) < 2 else [{
        "line": 1, "column": label, "value": "",
        "reason": f"a column per year ({len(years)}): each row's guns are their sum; by_year "
                  "and --from/--to have no year to use"}]
    return pd.DataFrame(rows, columns=_WARNING_COLUMNS).astype(
        {"line": "int64", "column": "str", "value": "str", "reason": "str"})


#: The warning (line 1) on a header that names no column geoflow reads.
UNKNOWN_HEADER = "header not recognised: the column is not used (--column-map can name it)"
#: What a header becomes that names no column geoflow reads (nor the ``Dataset`` column).
_KNOWN_COLUMNS = frozenset({*schema.ALIASES.values(), schema.DATASET_COLUMN})


def _unknown_headers(header_map: dict[str, str], repeated: set[str]) -> pd.DataFrame:
    """Warnings (line 1) for headers geoflow does not read: a crossing column headed
    "aduana" is not a column silently dropped, and ``--column-map`` can name it. A
    ``repeated`` header (the reader's "FFL Name (2)", warned about as such) is not one."""
    unknown = [raw for raw, target in header_map.items()
               if target not in _KNOWN_COLUMNS and raw not in repeated
               and schema.normalise_header(raw) not in _KNOWN_COLUMNS]
    return pd.DataFrame({
        "line": np.ones(len(unknown), dtype="int64"), "column": unknown,
        "value": [""] * len(unknown),
        "reason": [UNKNOWN_HEADER] * len(unknown),
    }).astype({"column": "str", "value": "str", "reason": "str"})


def _unused_map_entries(user_map: dict[str, str], headers: list[str]) -> pd.DataFrame:
    """Warnings for column-map entries that match no header (likely a typo)."""
    present = {schema.normalise_header(h) for h in headers}
    unused = [k for k in user_map if schema.normalise_header(k) not in present]
    return pd.DataFrame({
        "line": np.ones(len(unused), dtype="int64"), "column": unused,
        "value": [user_map[k] for k in unused],
        "reason": [f"column map entry {k!r} matches no header" for k in unused],
    }).astype({"column": "str", "value": "str", "reason": "str"})
