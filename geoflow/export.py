"""Writers: RFC 7946 GeoJSON, formula-safe CSV, JSON, and atomic output folders.

GeoJSON is written with :mod:`json` (fast and fully controlled): WGS 84 lon/lat, coordinates
rounded to 6 decimals, no ``crs`` member, NaN written as ``null``, polygon exteriors
counter-clockwise (right-hand rule). CSV cells that would start a spreadsheet formula
(``= + - @``, tab, CR) get a leading ``'`` unless the cell is a number (OWASP advice).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from geoflow.errors import OutputError
from geoflow.privacy import arrow_text
from geoflow.shapes import ShapeCache

__all__ = [
    "GENERATOR",
    "DECIMALS",
    "number_texts",
    "float_texts",
    "formula_safe",
    "markdown_text",
    "write_csv",
    "csv_text",
    "to_jsonable",
    "write_json",
    "geojson_text",
    "geojson_features",
    "write_geojson",
    "write_geoparquet",
    "write_flows_parquet",
    "three_point_wkb",
    "safe_path",
    "is_geoflow_folder",
    "check_output_dir",
    "atomic_output_dir",
    "write_atomic",
    "output_target",
    "writes_in_place",
    "user_files",
]

log = logging.getLogger(__name__)

#: Value of ``generator`` in every manifest.json geoflow writes.
GENERATOR = "geoflow"
DECIMALS = 6
#: The first characters of a cell that a spreadsheet reads as a formula.
_FORMULA_START = np.frombuffer(b"=+-@\t\r", dtype=np.uint8)
#: Whether a first byte starts a formula, by byte value (a lookup: ``np.isin`` costs 0.1 ms
#: a column, which a batch entity's 17 small tables pay on every text column).
_STARTS_FORMULA = np.isin(np.arange(256), _FORMULA_START)
#: This machine, in the names of temporary folders (``.OUT.tmp-<host>-<pid>-…``): a later run
#: removes those whose process is gone.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_STALE = re.compile(r"\.(?:tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[^/]+")
#: Names of our own temporaries inside an output folder written in place.
_OURS = re.compile(r"\.geoflow\.(?:tmp|old)-.*")
#: Files an operating system drops into folders by itself.
_OS_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
#: Markdown output: no raw HTML (``& < >`` as entities), no links, images, code or emphasis
#: formed by data (backslash escapes), one line per item (line breaks become spaces).
_MARKDOWN_ESCAPES = str.maketrans({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "`": "\\`", "*": "\\*",
    "_": "\\_", "[": "\\[", "]": "\\]", "\n": " ", "\r": " ",
})


def formula_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``frame`` where text cells starting with ``= + - @``, tab or CR get a ``'``
    prefix, unless the cell reads as a number (``-12.5`` stays as it is)."""
    out = frame.copy(deep=False)  # copy-on-write: columns replaced below, ``frame`` unchanged
    # by position (names may repeat); ``items`` rather than ``iloc``: ~20 µs less a column
    for at, (_, series) in enumerate(frame.items()):
        categorical = isinstance(series.dtype, pd.CategoricalDtype)
        if not (categorical or _is_text(series.dtype)):
            continue  # numbers, flags, dates: no text to start a formula
        if categorical:
            series = series.astype("string")
        risky = _formula_risk(series)
        if not risky.any():
            if categorical:  # written as its text; other columns stay as they are
                out.isetitem(at, series)
            continue
        text, risky = series.astype("string"), pd.Series(risky, index=series.index)
        numeric = pd.to_numeric(text.where(risky), errors="coerce").notna()
        fix = risky & ~numeric
        out.isetitem(at, text.mask(fix, "'" + text))
    return out


def _formula_risk(series: pd.Series) -> np.ndarray:
    """Whether each text cell starts like a formula (:data:`_FORMULA_START`), by the first
    byte of each cell in Arrow's buffers (all ASCII characters, so a first byte is a first
    character; an Arrow regex over the column took ten times as long). pandas text, held by
    Arrow or by Python, goes to Arrow as it is (an ``astype`` cost a batch entity's small
    tables ~100 µs a column), except a few cells held by Python, read one by one
    (:data:`FORMULA_PYTHON_ROWS`); other objects through pandas' text."""
    values = series.array
    if isinstance(values, pd.arrays.StringArray) and len(values) < FORMULA_PYTHON_ROWS:
        # Python's text, a few cells: each read here
        return np.fromiter((isinstance(cell, str) and cell.startswith(_FORMULA_TEXTS)
                            for cell in values.to_numpy(dtype=object)), bool, len(values))
    if not _is_text(series.dtype, objects=False):
        values = series.astype("string[pyarrow]").array
    return _STARTS_FORMULA[_first_bytes(pa.array(values, type=pa.large_string()))]


#: Cells of Python's text below which :func:`_formula_risk` reads each cell in Python: on a
#: batch entity's small tables Arrow's conversion cost more (~70 text columns an entity).
FORMULA_PYTHON_ROWS = 1000
#: :data:`_FORMULA_START` as texts (``str.startswith``).
_FORMULA_TEXTS = tuple(chr(byte) for byte in _FORMULA_START)


def _is_text(dtype: object, *, objects: bool = True) -> bool:
    """``dtype`` holds text: pandas' (Python's or Arrow's), Arrow's own, or (``objects``)
    Python objects, which may be text."""
    if isinstance(dtype, pd.StringDtype):
        return True
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(
            dtype.pyarrow_dtype)
    return objects and pd.api.types.is_object_dtype(dtype)


def _first_bytes(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first byte of each UTF-8 text of ``texts`` (uint8; 0 for an empty or null one),
    read from Arrow's offsets and data buffers."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.large_string())
    n = len(texts)
    _, offsets, data = texts.buffers()
    starts = np.frombuffer(offsets, dtype=np.int64)[texts.offset:texts.offset + n + 1]
    filled = starts[1:] > starts[:-1]
    if texts.null_count:
        filled &= texts.is_valid().to_numpy(zero_copy_only=False)
    first = np.zeros(n, dtype=np.uint8)
    if filled.any():
        first[filled] = np.frombuffer(data, dtype=np.uint8)[starts[:-1][filled]]
    return first


def markdown_text(text: object) -> str:
    """``text`` safe inside a line of Markdown (``findings.md``): ``& < >`` become HTML
    entities, so data such as ``<img src=x onerror=…>`` stays text, and ``\\ ` * _ [ ]``
    are backslash-escaped, so data cannot form links, images, code or emphasis. JSON keeps
    the raw text."""
    return str(text).translate(_MARKDOWN_ESCAPES)


def write_csv(frame: pd.DataFrame, path: str | Path, *, bom: bool = False) -> None:
    """Write ``frame`` as UTF-8 CSV (RFC 4180 CRLF rows, so a CR inside a cell is quoted),
    without the index, formula-safe; ``bom`` starts the file with a UTF-8 byte-order mark
    so Excel reads accents right (``--excel``). The bytes are pandas' ``to_csv``; tables of
    :data:`CSV_ARROW_ROWS` rows or more of text, numbers and flags are formatted column by
    column with Arrow (:func:`csv_text`: 3× faster at 80,000 purchasers), others by pandas
    (a few kernels per column cost more than pandas' loop over a few rows)."""
    safe = formula_safe(frame)
    encoding = "utf-8-sig" if bom else "utf-8"
    if len(safe) < CSV_ARROW_ROWS:  # pandas' text of a small table, written here: to_csv's
        text = safe.to_csv(index=False, lineterminator="\r\n")  # own file handling was a third
    else:
        text = csv_text(safe)
    if text is None:
        safe.to_csv(path, index=False, encoding=encoding, lineterminator="\r\n")
    else:
        with Path(path).open("w", encoding=encoding, newline="") as handle:
            handle.write(text)


#: From this many rows on, :func:`write_csv` formats a table with Arrow (:func:`csv_text`).
CSV_ARROW_ROWS = 1000
#: A CSV cell holding one of these is quoted (Python's csv module, ``QUOTE_MINIMAL``, with
#: pandas' ``\r\n`` line terminator).
_CSV_SPECIAL = '[,"\r\n]'
#: Characters a JSON string literal writes escaped.
_JSON_ESCAPED = b'\\"'
_CONTROL = bytes(range(0x20))


def csv_text(frame: pd.DataFrame) -> str | None:
    """``frame.to_csv(index=False, lineterminator="\\r\\n")``, the same text, built column
    by column with Arrow kernels (no Python work per cell): numbers as pandas writes them
    (floats by numpy's shortest repr, NaN empty), flags ``True``/``False``, text quoted
    where it holds a comma, quote or line break. None for a frame with a column of another
    kind (dates, mixed objects) or no column: pandas writes those."""
    if not len(frame.columns):
        return None
    cells = []
    for at in range(frame.shape[1]):  # by position: names may repeat
        texts = _csv_cells(frame.iloc[:, at])
        if texts is None:
            return None
        cells.append(texts)
    names = _csv_quoted(pa.array([str(c) for c in frame.columns], pa.string()))
    if len(cells) == 1:  # a row of one empty cell is written "" (else it reads as no row)
        cells[0], names = (pc.if_else(pc.equal(texts, ""), '""', texts)
                           for texts in (cells[0], names))
    header = ",".join(names.to_pylist())
    if not len(frame):
        return header + "\r\n"
    rows = pc.binary_join_element_wise(*cells, ",")
    return header + "\r\n" + "\r\n".join(rows.to_pylist()) + "\r\n"


def _csv_cells(series: pd.Series) -> pa.Array | None:
    """The CSV text of each value of ``series`` as pandas writes it, or None (another kind)."""
    dtype = series.dtype
    missing = series.isna().to_numpy()
    if dtype == np.float64:  # float32's shortest repr is its own: pandas writes those
        texts = float_texts(series.to_numpy())
    elif dtype.kind in "ib":
        if dtype.kind == "b":
            flags = series.to_numpy(dtype=bool, na_value=False)
            texts = pa.array(["False", "True"]).take(pa.array(flags.astype(np.int8)))
        else:
            texts = pc.cast(pa.array(series.to_numpy(dtype=np.int64, na_value=0)),
                            pa.string())
    elif isinstance(dtype, pd.StringDtype) or (
            pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(series, skipna=True)
            in ("string", "empty")):
        texts = _csv_quoted(arrow_text(series).cast(pa.string()))
    else:
        return None
    if missing.any():
        texts = pc.if_else(pa.array(missing), "", texts)
    return pc.fill_null(texts, "")


def _each_distinct_once(texts_of: Callable[[np.ndarray], pa.Array]
                        ) -> Callable[[np.ndarray], pa.Array]:
    """``texts_of`` (floats → one text each) working on the distinct values only, told apart
    by their bits (-0.0 is not 0.0), the texts then taken per value: a table's shares and
    medians, a layer's coordinates repeat (a run's GeoJSON numbers: 75 -> 26 ms)."""
    @functools.wraps(texts_of)
    def texts(values: np.ndarray) -> pa.Array:
        values = np.ascontiguousarray(values, dtype=float)
        codes, distinct = pd.factorize(values.view(np.int64), use_na_sentinel=False)
        return texts_of(distinct.view(np.float64)).take(pa.array(codes))
    return texts


@_each_distinct_once
def float_texts(values: np.ndarray) -> pa.Array:
    """Each float as numpy's ``astype(str)`` writes it (what pandas' ``to_csv`` writes): the
    shortest repr, ``.0`` on whole numbers, exponents below 1e-4 and from 1e16. Arrow casts
    values of 1e-4 to 1e9 (the same digits, without ``.0``: numpy takes 3 µs a value);
    numpy writes the others (NaN, huge or tiny values)."""
    values = np.asarray(values, dtype=float)
    magnitude = np.abs(values)
    arrow = ((magnitude >= 1e-4) & (magnitude < 1e9)) | (values == 0)
    texts = pc.cast(pa.array(np.where(arrow, values, 0.0)), pa.string())
    texts = pc.if_else(pc.match_substring(texts, "."), texts,
                       pc.binary_join_element_wise(texts, ".0", ""))
    if not arrow.all():
        others = np.flatnonzero(~arrow)
        texts = pc.replace_with_mask(texts, pa.array(~arrow),
                                     pa.array(values[others].astype(str).tolist(), pa.string()))
    return texts


def _csv_quoted(texts: pa.Array) -> pa.Array:
    """Each text, quoted (inner quotes doubled) where it holds a comma, quote or line break."""
    if not _holds_any(texts, b',"\r\n'):
        return texts  # no cell can need quotes: no regex over every cell
    special = pc.fill_null(pc.match_substring_regex(texts, _CSV_SPECIAL), False)
    if not pc.any(special).as_py():
        return texts
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(texts, '"', '""'), '"',
                                         "")
    return pc.if_else(special, quoted, texts)


def _holds_any(texts: pa.Array, characters: bytes) -> bool:
    """Whether the text bytes of ``texts`` hold any of ``characters`` (ASCII), read in one
    pass over Arrow's data buffer: most columns hold none, and skip a kernel over every
    cell (the buffer of a sliced array may hold other cells' bytes: a kernel in vain)."""
    data = texts.buffers()[2]
    blob = b"" if data is None else data.to_pybytes()
    return len(blob.translate(None, characters)) < len(blob)


def to_jsonable(value: object) -> object:
    """``value`` with numpy scalars, timestamps and paths made JSON-friendly; NaN/NA → None."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is pd.NA or value is pd.NaT or value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(data: object, path: str | Path) -> None:
    """Write ``data`` as indented UTF-8 JSON (numpy scalars and NaN handled: NaN → null)."""
    text = json.dumps(to_jsonable(data), ensure_ascii=False, indent=2, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def _json_values(series: pd.Series) -> pa.Array:
    """JSON text of every value of a column that is not pandas text, integers or floats
    (those go through :func:`_column_texts` together): flags, dates, categoricals, objects;
    ``null`` for NA. Vectorised with Arrow: text is escaped once per distinct value."""
    kind = series.dtype.kind
    if kind == "b":
        values = pa.array(np.where(series.to_numpy(), "true", "false"))
        return pc.if_else(pa.array(series.isna().to_numpy()), "null", values)
    if kind == "M":
        series = series.dt.strftime("%Y-%m-%d")
    if isinstance(series.dtype, pd.CategoricalDtype):
        categories = series.cat.categories
        if categories.dtype.kind in "OSUT" or pd.api.types.is_string_dtype(categories.dtype):
            texts = _json_strings(pa.array(categories.astype("string"), type=pa.string()))
            codes = series.cat.codes.to_numpy()
            return pc.fill_null(texts.take(pa.array(codes, mask=codes < 0)), "null")
        series = series.astype(object)
    if isinstance(series.dtype, pd.StringDtype) or (
        series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) == "string"
    ):
        return _json_strings(pa.array(series.astype("string"), type=pa.string()))
    codes, uniques = pd.factorize(series, use_na_sentinel=True)  # mixed objects: rare
    texts = [json.dumps(to_jsonable(value), ensure_ascii=False, allow_nan=False)
             for value in uniques]
    codes = np.where(codes < 0, len(texts), codes)  # NA → the trailing null
    return pc.fill_null(pa.array([*texts, None], type=pa.string()).take(pa.array(codes)),
                        "null")


#: Above this magnitude a double holds no 6 decimals: such values are written as they are.
_EXACT_LIMIT = 2.0 ** 53 / 10 ** DECIMALS


@_each_distinct_once
def number_texts(values: np.ndarray) -> pa.Array:
    """JSON text of each value rounded to 6 decimals, as its shortest decimal (``-116.945805``,
    never ``-116.94580499999999``); floats keep a ``.0`` (``3.0``) so readers that infer types
    do not read an integer; null for NaN and infinities.

    The text is built from the rounded integer value × 10⁶ (whole and fractional digits), so
    it is exactly the rounded decimal; vectorised with Arrow string kernels."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    exact = finite & (np.abs(values) < _EXACT_LIMIT)
    scaled = np.rint(np.where(exact, values, 0.0) * 10 ** DECIMALS).astype(np.int64)
    whole, fraction = np.divmod(np.abs(scaled), 10 ** DECIMALS)
    digits = pc.utf8_lpad(pc.cast(pa.array(fraction), pa.string()), DECIMALS, "0")
    digits = pc.utf8_rtrim(digits, characters="0")
    digits = pc.if_else(pc.equal(digits, ""), "0", digits)
    sign = pa.array(np.where(scaled < 0, "-", ""))
    text = pc.binary_join_element_wise(sign, pc.cast(pa.array(whole), pa.string()), ".",
                                       digits, "")
    if not exact[finite].all():  # huge magnitudes: Arrow's shortest round-trip form
        text = pc.if_else(pa.array(exact), text,
                          pc.cast(pa.array(np.where(finite, values, 0.0)), pa.string()))
    return pc.if_else(pa.array(finite), text, pa.nulls(len(values), pa.string()))


def _json_strings(values: pa.Array) -> pa.Array:
    """JSON string literals of ``values`` (null → ``null``): backslashes and quotes escaped
    with Arrow; the rare value holding a control character goes through :mod:`json`."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = values
    if _holds_any(values, _JSON_ESCAPED):
        text = pc.replace_substring(text, "\\", "\\\\")
        text = pc.replace_substring(text, '"', '\\"')
    quoted = pc.binary_join_element_wise('"', text, '"', "")
    control = (pc.fill_null(pc.match_substring_regex(values, "[\\x00-\\x1f]"), False)
               if _holds_any(values, _CONTROL) else None)
    if control is not None and pc.any(control).as_py():
        rows = pc.filter(values, control).to_pylist()
        fixed = pa.array([json.dumps(v, ensure_ascii=False) for v in rows], type=pa.string())
        quoted = pc.replace_with_mask(quoted, control, fixed)
    return pc.fill_null(quoted, "null")


def _property_lines(frame: pd.DataFrame, positions: list[int] | None = None) -> pa.Array:
    """One JSON object text per row of the columns at ``positions`` (default: all), built
    column by column (no per-row Python work)."""
    positions = list(range(frame.shape[1])) if positions is None else positions
    if not positions or len(frame) == 0:
        return pa.array(["{}"] * len(frame), type=pa.string())
    parts = []
    for at, (i, texts) in enumerate(zip(positions, _column_texts(frame, positions),
                                        strict=True)):
        key = ("{" if at == 0 else ",") + json.dumps(str(frame.columns[i]),
                                                     ensure_ascii=False) + ":"
        parts += [key, texts]
    return pc.binary_join_element_wise(*parts, "}", "")


def _column_texts(frame: pd.DataFrame, positions: list[int]) -> list[pa.Array]:
    """:func:`_json_values` of the columns of ``frame`` at ``positions``. The text, integer
    and float columns are each put end to end and go through the kernels once, then are cut
    apart again: a batch entity's layers have tens of columns of a few rows, where each
    kernel call costs more than its work."""
    n = len(frame)
    out: list[pa.Array | None] = [None] * len(positions)
    kinds: dict[str, list[tuple[int, object]]] = {"text": [], "integer": [], "float": []}
    wanted = dict(zip(positions, range(len(positions)), strict=True))
    for position, (_, series) in enumerate(frame.items()):
        if position not in wanted:
            continue
        i, dtype = wanted[position], series.dtype
        if isinstance(dtype, pd.StringDtype):  # pandas' own Arrow text: no copy of it
            text = pa.array(series.array).cast(pa.large_string())
            kinds["text"].append((i, text.combine_chunks() if isinstance(
                text, pa.ChunkedArray) else text))
        elif dtype.kind in "iu":
            kinds["integer"].append((i, pa.array(series, type=pa.int64())))
        elif dtype.kind == "f" and not isinstance(dtype, pd.CategoricalDtype):
            kinds["float"].append((i, series.to_numpy(dtype=float, na_value=np.nan)))
        else:
            out[i] = _json_values(series)
    make = {
        "text": lambda parts: _json_strings(pa.concat_arrays(parts).cast(pa.string())),
        "integer": lambda parts: pc.fill_null(pc.cast(pa.concat_arrays(parts), pa.string()),
                                              "null"),
        "float": lambda parts: pc.fill_null(number_texts(np.concatenate(parts)), "null"),
    }
    for kind, columns in kinds.items():
        if columns:
            texts = make[kind]([values for _, values in columns])
            for at, (i, _) in enumerate(columns):
                out[i] = texts.slice(at * n, n)
    return out


_GEOJSON_TYPES = {0: "Point", 1: "LineString", 3: "Polygon", 4: "MultiPoint",
                  5: "MultiLineString", 6: "MultiPolygon"}


#: GeoJSON texts of polygons, made once per process: the only polygons written are the
#: shipped state outlines, the very same objects in every output set of a batch.
_POLYGON_TEXTS = ShapeCache()


def _geometry_texts(geometries: np.ndarray) -> np.ndarray:
    """GeoJSON geometry texts: exteriors counter-clockwise, coordinates rounded to 6 decimals
    and written as their shortest decimal (:func:`number_texts`; GEOS would write
    ``-116.94580499999999``), ``null`` for missing or empty. Polygons' texts are cached per
    shape object (:class:`~geoflow.shapes.ShapeCache`)."""
    polygonal = np.isin(shapely.get_type_id(geometries), (3, 6))  # Polygon, MultiPolygon
    if not polygonal.any():
        return _new_geometry_texts(geometries)
    texts = np.empty(len(geometries), dtype=object)
    texts[~polygonal] = _new_geometry_texts(geometries[~polygonal])
    texts[polygonal] = _POLYGON_TEXTS.get(list(geometries[polygonal]), _new_geometry_texts)
    return texts


def _new_geometry_texts(geometries: np.ndarray) -> np.ndarray:
    """:func:`_geometry_texts` without the cache. Per geometry type: the coordinates of all
    its geometries as one ragged array, texts joined level by level (ring, polygon,
    multi-polygon) with Arrow list kernels."""
    types = shapely.get_type_id(geometries)
    polygonal = np.isin(types, (3, 6))  # Polygon, MultiPolygon
    if polygonal.any():
        geometries = geometries.copy()
        geometries[polygonal] = shapely.orient_polygons(geometries[polygonal],
                                                        exterior_cw=False)
    texts = np.full(len(geometries), "null", dtype=object)
    present = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
    for type_id in np.unique(types[present]):
        rows = np.flatnonzero(present & (types == type_id))
        name = _GEOJSON_TYPES.get(int(type_id))
        if name is None:  # a GeometryCollection (never written by geoflow): GEOS's text
            texts[rows] = shapely.to_geojson(geometries[rows])
            continue
        _, coords, offsets = shapely.to_ragged_array(geometries[rows], include_z=False)
        nested = pc.binary_join_element_wise(
            "[", number_texts(coords[:, 0]), ",", number_texts(coords[:, 1]), "]", "")
        for level in offsets:  # innermost first
            lists = pa.LargeListArray.from_arrays(pa.array(level, pa.int64()), nested)
            nested = pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", "")
        texts[rows] = pc.binary_join_element_wise(
            '{"type":"' + name + '","coordinates":', nested, "}", "").to_numpy(
            zero_copy_only=False)
    return texts


def _feature_chunks(gdf: gpd.GeoDataFrame, chunk: int) -> Iterator[str]:
    """Feature texts joined by ``,\\n``, ``chunk`` features at a time."""
    if gdf.crs is not None and not gdf.crs.equals("EPSG:4326"):
        gdf = gdf.to_crs("EPSG:4326")
    geometry_name = gdf.geometry.name
    attributes = [i for i, column in enumerate(gdf.columns) if column != geometry_name]
    geometries = gdf.geometry.to_numpy()
    for start in range(0, len(gdf), chunk):
        rows = gdf if len(gdf) <= chunk else gdf.iloc[start:start + chunk]
        properties = _property_lines(rows, attributes)
        shapes = pa.array(_geometry_texts(geometries[start:start + chunk]), type=pa.string())
        features = pc.binary_join_element_wise(
            '{"type":"Feature","properties":', properties, ',"geometry":', shapes, "}", "")
        yield ",\n".join(features.to_pylist())


def geojson_text(gdf: gpd.GeoDataFrame, *, chunk: int = 20_000) -> str:
    """RFC 7946 FeatureCollection text for ``gdf`` (reprojected to EPSG:4326 if needed).

    Vectorised: properties through pandas' JSON encoder, geometries through GEOS; only the
    final string join touches each feature.
    """
    return "".join(_geojson_pieces(gdf, chunk))


def _geojson_pieces(gdf: gpd.GeoDataFrame, chunk: int,
                    members: Mapping[str, object] | None = None) -> Iterator[str]:
    head = "".join(f"{json.dumps(str(k), ensure_ascii=False)}:"
                   f"{json.dumps(to_jsonable(v), ensure_ascii=False, allow_nan=False)},"
                   for k, v in (members or {}).items())
    yield '{"type":"FeatureCollection",' + head + '"features":[\n'
    for i, text in enumerate(_feature_chunks(gdf, chunk)):
        yield (",\n" if i else "") + text
    yield "\n]}\n"


def geojson_features(gdf: gpd.GeoDataFrame) -> dict:
    """The FeatureCollection of :func:`geojson_text` as a dict."""
    return json.loads(geojson_text(gdf))


def write_geojson(gdf: gpd.GeoDataFrame, path: str | Path, *, chunk: int = 20_000,
                  members: Mapping[str, object] | None = None) -> None:
    """Write ``gdf`` as RFC 7946 GeoJSON, one feature per line, streaming ``chunk`` features
    at a time so memory stays bounded for hundreds of thousands of flows. ``members`` are
    extra top-level members of the FeatureCollection (RFC 7946 foreign members, e.g. the
    flow level), written before ``features``."""
    with Path(path).open("w", encoding="utf-8") as handle:
        handle.writelines(_geojson_pieces(gdf, chunk, members))


def write_geoparquet(gdf: gpd.GeoDataFrame, path: str | Path) -> None:
    """Write ``gdf`` as GeoParquet (WKB geometry, EPSG:4326, zstd-compressed columns):
    the columnar file analysts load whole into pandas/GeoPandas, QGIS, DuckDB or R; min/max
    statistics of its numbers (:func:`_number_columns`)."""
    _plain_text(gdf).to_parquet(path, index=False, compression="zstd", schema_version="1.0.0",
                                write_statistics=_number_columns(gdf))


def _number_columns(frame: pd.DataFrame) -> list[str]:
    """The integer and float columns: the only ones GeoParquet files keep min/max statistics
    of. Flows come most guns first, so a reader skips row groups by guns; the statistics of
    text and WKB (ids, names, dates as text, in no order) skip nothing and took a fifth of
    the write (693,417 flows: 0.41 -> 0.33 s of CPU)."""
    return [str(column) for column in frame.columns
            if pd.api.types.is_integer_dtype(frame[column].dtype)
            or pd.api.types.is_float_dtype(frame[column].dtype)]


def _plain_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with categoricals as plain text (readers need no dictionary), all text held
    by Arrow (text made as Python strings, in a batch's small entities, is written as the
    same Parquet type); a shallow copy (copy-on-write: no copy of a million flows)."""
    frame = frame.copy(deep=False)
    for column in frame.columns:
        dtype = frame[column].dtype
        if isinstance(dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(pd.StringDtype("pyarrow"))
        elif isinstance(dtype, pd.StringDtype) and dtype.storage != "pyarrow":
            frame[column] = frame[column].astype(
                pd.StringDtype("pyarrow", na_value=dtype.na_value))
    return frame


#: WKB of a 2-D LineString of three points: its head (byte order, type, point count), then
#: x y x y x y; the head as one 9-byte value (:data:`_THREE_POINT_HEAD`), so it is copied in
#: one piece rather than field by field.
_THREE_POINT_WKB = np.dtype([("head", "V9"), ("xy", "<f8", (6,))])
_THREE_POINT_HEAD = np.void(b"\x01" + (2).to_bytes(4, "little") + (3).to_bytes(4, "little"))


#: Lines per Arrow array of :func:`three_point_wkb` (its 32-bit offsets stop at 2 GiB).
_WKB_CHUNK = 10_000_000
#: Rows per row group of flows_full.parquet (Arrow's default maximum).
PARQUET_ROW_GROUP = 1 << 20


def three_point_wkb(flows: pd.DataFrame) -> pa.ChunkedArray:
    """Each flow's line dealer → port → recovery as WKB (little-endian, coordinates rounded
    to 6 decimals), straight from its coordinate columns: the bytes ``shapely.to_wkb`` gives
    for :func:`geoflow.flows.flow_geometry`, without a line object per flow."""
    n = len(flows)
    records = np.empty(n, dtype=_THREE_POINT_WKB)
    records["head"] = _THREE_POINT_HEAD
    xy = records["xy"]  # filled column by column: no (n, 6) copy of the coordinates first
    columns = (f"{end}_{axis}" for end in ("dealer", "port", "recovery") for axis in ("lon", "lat"))
    for at, column in enumerate(columns):
        xy[:, at] = np.round(flows[column].to_numpy(dtype=float), 6)
    parts = []
    for start in range(0, n, _WKB_CHUNK):
        part = records[start:start + _WKB_CHUNK]
        offsets = np.arange(len(part) + 1, dtype=np.int32) * _THREE_POINT_WKB.itemsize
        parts.append(pa.Array.from_buffers(pa.binary(), len(part), [
            None, pa.py_buffer(offsets), pa.py_buffer(part)]))
    return pa.chunked_array(parts, pa.binary())


def _geopandas_to_arrow():
    """GeoPandas' own GeoDataFrame → Arrow table builder (internal to GeoPandas), or None
    where a GeoPandas lacks it (:func:`write_flows_parquet` then goes through lines)."""
    try:
        from geopandas.io.arrow import _geopandas_to_arrow
    except ImportError:
        return None
    return _geopandas_to_arrow


def write_flows_parquet(flows: pd.DataFrame, path: str | Path) -> None:
    """flows_full.parquet: :func:`write_geoparquet` for flows with lines; flows without
    (a plain DataFrame: ``build_flows(lines=False)``) get each flow's three-point line
    written as WKB from its coordinates (:func:`three_point_wkb`), the same file GeoPandas
    writes for those lines, without a line object per flow in memory."""
    from pyarrow import parquet

    from geoflow.flows import flow_geometry

    to_arrow = _geopandas_to_arrow()
    if isinstance(flows, gpd.GeoDataFrame) or not len(flows) or to_arrow is None:
        lines = flows if isinstance(flows, gpd.GeoDataFrame) else gpd.GeoDataFrame(
            flows, geometry=flow_geometry(flows), crs="EPSG:4326")
        write_geoparquet(lines, path)
        return
    frame = _plain_text(flows)
    # GeoPandas' own schema and metadata, from the first flow, with the bounds of them all
    first = gpd.GeoDataFrame(frame.iloc[:1], geometry=shapely.from_wkb(
        three_point_wkb(frame.iloc[:1]).to_numpy(zero_copy_only=False)), crs="EPSG:4326")
    schema = to_arrow(first, index=False, schema_version="1.0.0").schema
    geo = json.loads(schema.metadata[b"geo"])
    geo["columns"]["geometry"]["bbox"] = _three_point_bounds(frame)
    schema = schema.with_metadata({**schema.metadata, b"geo": json.dumps(geo).encode()})
    # one row group at a time (the size Arrow cuts them to anyway): the Arrow copy of the
    # flows and their WKB never exist for all of them at once
    with parquet.ParquetWriter(path, schema, compression="zstd",
                               write_statistics=_number_columns(frame)) as writer:
        for start in range(0, len(frame), PARQUET_ROW_GROUP):
            part = frame.iloc[start:start + PARQUET_ROW_GROUP]
            table = pa.Table.from_pandas(part, preserve_index=False)
            writer.write_table(pa.table([*table.columns, three_point_wkb(part)], schema=schema))


def _three_point_bounds(flows: pd.DataFrame) -> list[float]:
    """Bounds (min lon, min lat, max lon, max lat) of the three points of every flow, as
    :func:`three_point_wkb` rounds them (rounding keeps the order: the rounded extremes are
    the extremes rounded, so only they are rounded)."""
    ends = ("dealer", "port", "recovery")
    lon, lat = ([flows[f"{end}_{axis}"].to_numpy(dtype=float) for end in ends]
                for axis in ("lon", "lat"))
    if not len(flows):
        return [math.nan] * 4
    with warnings.catch_warnings():  # no coordinate at all: NaN bounds, as numpy gives them
        warnings.simplefilter("ignore", RuntimeWarning)
        low = [np.nanmin([np.nanmin(v) for v in axis]) for axis in (lon, lat)]
        high = [np.nanmax([np.nanmax(v) for v in axis]) for axis in (lon, lat)]
    return [float(np.round(value, 6)) for value in (*low, *high)]


def safe_path(folder: str | Path, name: str) -> Path:
    """``folder / name``, refusing names that would leave ``folder`` (``..``, absolute)."""
    base = Path(folder).resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base) or target == base:
        raise OutputError(f"unsafe output file name {name!r}", path=str(folder))
    return target


def is_geoflow_folder(folder: str | Path) -> bool:
    """True when ``folder/manifest.json`` says ``"generator": "geoflow"``."""
    manifest = Path(folder) / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR


def check_output_dir(out_dir: str | Path, *, force: bool = False) -> None:
    """Raise :class:`OutputError` unless ``out_dir`` may be (re)written: it is missing, empty,
    or written by geoflow and holding nothing else, or ``force`` is set (then any folder,
    never a file, is replaced). Also refuses a folder that cannot be written (checked before
    any work). A symlink is followed: the folder it points to is checked and written."""
    out = output_target(out_dir)
    if not out.exists():
        parent = _existing_ancestor(out.parent)
        if not parent.is_dir():
            raise OutputError(f"cannot create the folder: {parent} is a file",
                              path=str(out_dir))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create the folder: {parent} is not writable",
                              path=str(out_dir))
        return
    if not out.is_dir():
        raise OutputError("exists and is not a folder", path=str(out_dir))
    in_place = writes_in_place(out)
    if not os.access(out if in_place else out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write outputs: {out if in_place else out.parent} is not "
                          "writable", path=str(out_dir))
    entries = [p for p in out.iterdir() if not _OURS.fullmatch(p.name)]
    if not entries or force:
        return
    if not is_geoflow_folder(out):
        raise OutputError(
            "folder is not empty and was not written by geoflow (no geoflow manifest.json);"
            " choose another folder or pass --force to replace it",
            path=str(out_dir),
        )
    foreign = user_files(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                           else "")
        raise OutputError(
            f"holds files geoflow did not write ({shown}); move them out of the folder, or "
            "pass --force to replace the folder with them"
            + (" (written in place: --force keeps them)" if in_place else ""),
            path=str(out_dir),
        )


def output_target(out_dir: str | Path) -> Path:
    """The folder outputs go to: ``out_dir`` made absolute, a symlink followed to the folder
    it points to (the link itself is left as it is and keeps pointing at the outputs)."""
    out = Path(os.path.abspath(out_dir))
    if out.is_symlink():
        target = Path(os.path.realpath(out))
        log.info("%s is a symlink: writing into %s, which it points to", out_dir, target)
        return target
    return out


def writes_in_place(out: Path) -> bool:
    """Whether an existing ``out`` must be written into rather than swapped by a rename: a
    mount point (a Docker volume), the current folder or one holding it, or a folder whose
    parent cannot be written."""
    if not out.is_dir():
        return False
    cwd = Path.cwd().resolve()
    resolved = out.resolve()
    return (os.path.ismount(resolved) or resolved == cwd or resolved in cwd.parents
            or not os.access(resolved.parent, os.W_OK | os.X_OK))


def user_files(folder: str | Path) -> list[str]:
    """Paths (relative, ``/``-separated; folders end in ``/``) in a geoflow ``folder`` that its
    manifest's ``files`` does not list: files the user added. Empty when the manifest has
    no list (older geoflow) or is not geoflow's."""
    folder = Path(folder)
    try:
        files = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(files, list):
        return []
    listed = {str(f).rstrip("/") for f in files}
    trees = {str(f).rstrip("/") for f in files if str(f).endswith("/")}
    parents = {f.rsplit("/", 1)[0] for f in listed if "/" in f}
    parents |= {p.rsplit("/", i)[0] for p in list(parents) for i in range(p.count("/") + 1)}
    found = []
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder).as_posix()
        base = "" if base == "." else base + "/"
        keep = []
        for name in sorted(dirs):
            rel = base + name
            if (not base and _OURS.fullmatch(name)) or rel in trees:
                continue  # our temporaries, and folders that are ours as a whole
            if rel in parents:
                keep.append(name)
            elif rel not in listed:
                found.append(rel + "/")
        dirs[:] = keep  # walk only folders that hold listed files
        found += [base + name for name in sorted(names)
                  if base + name not in listed and name not in _OS_FILES]
    return sorted(found)


#: A batch's checkpoint inside its temporary folder (see :func:`atomic_output_dir`).
CHECKPOINT_FILE = ".geoflow-checkpoint"


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, *, force: bool = False, checkpoint: str | None = None,
                      resume: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success its contents become ``out_dir``.

    An existing ``out_dir`` is replaced only when it is empty, or was written by geoflow
    (manifest ``generator``) and holds no file its manifest does not list, or ``force`` is
    set; otherwise :class:`OutputError`. If the body raises (an error, Ctrl-C, SIGTERM, a
    full disk), the temporary folder is removed and ``out_dir`` is left as it was; an
    ``OSError`` becomes :class:`OutputError` (exit 7). Temporaries that a killed geoflow
    left beside ``out_dir`` are removed first.

    Usually the temporary folder sits beside ``out_dir`` and is swapped in by renames. A
    mount point, the current folder (``-o .``) or a folder whose parent is read-only cannot be
    renamed: it is written in place instead, each top-level output moved in by a rename
    (``manifest.json`` last) and geoflow's previous outputs removed; other files stay.
    A symlink ``out_dir`` is followed (see :func:`output_target`).

    ``checkpoint`` (a batch's identity: input, options, entities) is written into the
    temporary folder as :data:`CHECKPOINT_FILE`. With ``resume``, the newest temporary folder
    of a killed geoflow holding the same checkpoint is taken over, with what it holds, instead
    of being removed (``geoflow run --per … --resume``).
    """
    out = output_target(out_dir)
    check_output_dir(out, force=force)
    in_place = writes_in_place(out)
    home = out if in_place else out.parent
    adopted = _remove_stale(home, ".geoflow" if in_place else f".{out.name}",
                            keep=checkpoint if resume else None)
    try:
        home.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(
            prefix=f".{'geoflow' if in_place else out.name}.tmp-{_tag()}-", dir=home))
        if adopted is not None:  # under this process's name: alive, so no run removes it
            temp.rmdir()
            try:
                adopted.rename(temp)
            except OSError:  # another run took it first: start afresh
                temp.mkdir()
        temp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: a web server could not read it
        if checkpoint is not None:
            (temp / CHECKPOINT_FILE).write_text(checkpoint, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot create output folder: {exc.strerror}", path=str(out)) from exc
    try:
        try:
            yield temp
            (temp / CHECKPOINT_FILE).unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(_os_message("cannot write outputs", exc),
                              path=str(out_dir)) from exc
        with _signals_deferred():
            if in_place:
                _move_in(temp, out, force=force)
            else:
                _swap(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _os_message(what: str, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{what}: the disk is full (no space left on device); the folder is unchanged"
    name = f" ({Path(exc.filename).name})" if exc.filename else ""
    return f"{what}: {exc.strerror or exc}{name}; the folder is unchanged"


def _swap(temp: Path, out: Path) -> None:
    """Move ``temp`` to ``out``; an old ``out`` is moved aside first and deleted after."""
    old = None
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{_tag()}-", dir=out.parent))
            out.rename(old / "previous")
        temp.rename(out)
    except OSError as exc:
        if old is not None and (old / "previous").exists() and not out.exists():
            (old / "previous").rename(out)
        raise OutputError(f"cannot move outputs into place: {exc.strerror}",
                          path=str(out)) from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | Path, data: bytes, *, what: str = "the file") -> Path:
    """Write one file atomically: a temporary file in the same folder (created with the
    umask's permissions), then a rename. A folder at ``path`` or an OS error raises
    :class:`OutputError` ("cannot write <what>: …")."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"is a folder; give a file name such as map{path.suffix or '.html'}",
                          path=str(path))
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # honours the umask
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {what}: {exc.strerror or exc}", path=str(path)) from exc
    return path


def _move_in(temp: Path, out: Path, *, force: bool) -> None:
    """Write ``temp``'s entries into ``out`` by renames (a folder that cannot be renamed):
    geoflow's previous outputs (its manifest's ``files``) and entries of the same names go
    aside first and are deleted at the end; on failure everything is put back."""
    ours = {str(f).split("/")[0] for f in _manifest_files(out)}
    new = sorted((p.name for p in temp.iterdir()), key=lambda n: (n == "manifest.json", n))
    aside = Path(tempfile.mkdtemp(prefix=f".geoflow.old-{_tag()}-", dir=out))
    moved: list[str] = []
    placed: list[str] = []
    try:
        # manifest.json first: while outputs move, the folder does not claim to be complete
        for name in sorted(ours | set(new), key=lambda n: (n != "manifest.json", n)):
            if (out / name).exists() or (out / name).is_symlink():
                (out / name).rename(aside / name)
                moved.append(name)
        for name in new:
            (temp / name).rename(out / name)
            placed.append(name)
    except OSError as exc:
        for name in placed:
            (out / name).rename(temp / name)
        for name in moved:
            (aside / name).rename(out / name)
        raise OutputError(_os_message("cannot move outputs into place", exc),
                          path=str(out)) from exc
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(temp, ignore_errors=True)
    log.debug("%s written in place (%d outputs; force=%s)", out, len(new), force)


def _manifest_files(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        return []
    files = data.get("files")
    return [str(f) for f in files] if isinstance(files, list) else ["manifest.json"]


def _remove_stale(home: Path, prefix: str, *, keep: str | None = None) -> Path | None:
    """Delete ``<prefix>.tmp-*`` / ``.old-*`` folders in ``home`` left by a geoflow on this
    machine that is no longer running (killed, or the power went): the process id in the
    name tells. The newest temporary folder whose :data:`CHECKPOINT_FILE` reads ``keep`` is
    left in place and returned (None: none)."""
    if not home.is_dir():
        return None
    stale = []
    for path in home.glob(f"{glob.escape(prefix)}.*-*"):
        match = _STALE.fullmatch(path.name[len(prefix):])
        if not match or match["host"] != _HOST or not path.is_dir():
            continue
        if not _alive(int(match["pid"])):
            stale.append(path)
    kept = None
    if keep is not None:
        matching = [p for p in stale if _checkpoint_of(p) == keep]
        kept = max(matching, key=lambda p: p.stat().st_mtime, default=None)
    for path in stale:
        if path != kept:
            log.info("removing %s, left by an interrupted geoflow run", path)
            shutil.rmtree(path, ignore_errors=True)
    return kept


def _checkpoint_of(folder: Path) -> str | None:
    try:
        return (folder / CHECKPOINT_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _tag() -> str:
    return f"{_HOST}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while outputs move into place (a rename pair must not be cut
    in half); they are delivered right after."""
    signals = {signal.SIGINT, signal.SIGTERM}
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
