"""A batch's GeoPackages: GDAL writes the schema once per process, SQLite inserts the rows.

GDAL (through pyogrio) opens the GeoPackage again for every layer it writes, and each open
reads the whole SQLite schema: about 10 ms a layer, 0.13 s for the 13 layers and tables of
one output set, whatever their size. Every entity of a batch has the same layers, columns
and types, so:

- :func:`schema_key` names that schema (layer and column names, pandas types, geometry
  types, metadata keys), or None when a frame holds something this module does not write
  exactly as GDAL does (other types, empty or 3D geometries, unusual metadata text);
- :func:`emptied` turns a GeoPackage GDAL wrote into a template: no rows, no extents, fresh
  empty R-trees, vacuumed; the bytes are the same whichever entity GDAL wrote;
- :func:`fill` writes the template and inserts the rows with SQLite: the GeoPackage binary
  geometry GDAL writes (header, envelope, ISO WKB), R-tree and feature counts by GDAL's own
  triggers, extents in ``gpkg_contents``, the layer metadata as GDAL stores it.

The tests compare every table of a filled file with GDAL's own file of the same frames.
"""

from __future__ import annotations

import re
import sqlite3
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from geoflow.aggregate import python_values

__all__ = ["emptied", "fill", "schema_key"]

#: pandas types written here as GDAL writes them (TEXT, INTEGER, REAL, BOOLEAN as 0/1).
_PLAIN_TYPES = frozenset({"str", "string", "Int64", "int64", "Int32", "int32", "float64",
                          "Float64", "bool", "boolean"})
#: Metadata values written into GDAL's XML here: plain ASCII, nothing GDAL would escape.
_PLAIN_TEXT = re.compile(r"[\w .,:/-]*", re.ASCII)
#: shapely's type id of each single geometry, and what makes its one-part multi- form.
_MULTI = {0: shapely.multipoints, 1: shapely.multilinestrings, 3: shapely.multipolygons}
_SRS_ID = 4326


def _columns(frame: pd.DataFrame, geometry: str | None) -> tuple | None:
    columns = []
    for name, dtype in frame.dtypes.items():
        if name == geometry:
            continue
        dtype = str(dtype)
        if dtype not in _PLAIN_TYPES:
            return None
        columns.append((str(name), dtype))
    return tuple(columns)


def _geometry_kind(layer) -> tuple | None:
    """The geometry types present (shapely ids), or None for what :func:`fill` does not
    write (empty, 3D or other geometries)."""
    geometries = layer.geometry.to_numpy()
    present = geometries[~shapely.is_missing(geometries)]
    types = np.unique(shapely.get_type_id(present))
    if (not np.isin(types, (0, 1, 3, 4, 5, 6)).all() or shapely.is_empty(present).any()
            or shapely.has_z(present).any()):
        return None
    return tuple(types.tolist())


def schema_key(layers: Mapping[str, object], tables: Mapping[str, pd.DataFrame],
               about: Mapping[str, Mapping[str, str]]) -> tuple | None:
    """What decides the schema GDAL writes for these frames, or None when :func:`fill`
    cannot write them exactly as GDAL would (GDAL then writes the file itself)."""
    key: list[tuple] = []
    for name, layer in layers.items():
        geometry = layer.geometry.name
        columns, kind = _columns(layer, geometry), _geometry_kind(layer)
        if columns is None or kind is None or getattr(layer.crs, "srs", None) != "EPSG:4326":
            return None
        key.append((name, geometry, columns, kind))
    for name, table in tables.items():
        columns = _columns(pd.DataFrame(table), None)
        if columns is None:
            return None
        key.append((name, columns))
    for name, items in about.items():
        if name not in layers or not all(_PLAIN_TEXT.fullmatch(str(value))
                                         for key_, value in items.items()
                                         if key_ != "description"):
            return None
        key.append((name, tuple(sorted(items))))
    return tuple(key)


def _bounds(blob: bytes) -> tuple[float, float, float, float]:
    """(min x, max x, min y, max y) of a GeoPackage geometry blob written by :func:`_blobs`
    or GDAL: its envelope, or a point's coordinates."""
    order = "<" if blob[3] & 1 else ">"
    if (blob[3] >> 1) & 7:
        return struct.unpack_from(order + "4d", blob, 8)
    x, y = struct.unpack_from(("<" if blob[8] == 1 else ">") + "2d", blob, 13)
    return x, x, y, y


def _connect(path: Path) -> sqlite3.Connection:
    """SQLite on ``path`` with the SQL functions GDAL's R-tree triggers call; no journal or
    sync (the file is in the run's temporary folder), deleted bytes zeroed (the same rows
    give the same file)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.create_function("ST_IsEmpty", 1, lambda blob: (blob[3] >> 4) & 1, deterministic=True)
    for at, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        con.create_function(name, 1, lambda blob, at=at: _bounds(blob)[at], deterministic=True)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", "secure_delete=ON"):
        con.execute(f"PRAGMA {pragma}")
    return con


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _laid_out(con: sqlite3.Connection, columns: Mapping[str, list[str]]) -> bool:
    """Whether each table holds ``fid``, its geometry column (layers) and ``columns[name]``,
    in this order: what :func:`fill` inserts into."""
    geometry = dict(con.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))
    for name, attributes in columns.items():
        have = [row[1] for row in con.execute(f"PRAGMA table_info({_quoted(name)})")]
        if have != ["fid", *([geometry[name]] if name in geometry else []), *attributes]:
            return False
    return True


def emptied(path: str | Path, columns: Mapping[str, list[str]]) -> bytes | None:
    """The bytes of GDAL's GeoPackage at ``path`` without the rows of its layers and tables
    (name → attribute columns, as the frames hold them): no extents or descriptions, empty
    R-trees made anew, vacuumed. None (GDAL then writes every file) when GDAL named or
    ordered the columns otherwise, or this Python's SQLite lacks the R-tree module."""
    path = Path(path)
    con = _connect(path)
    try:
        if not _laid_out(con, columns):
            return None
        con.execute("BEGIN")
        for name in columns:
            con.execute(f"DELETE FROM {_quoted(name)}")  # noqa: S608 (a quoted identifier)
        con.execute("DELETE FROM sqlite_sequence")  # ids start at 1 again, as in a new file
        rtrees = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                             "AND sql LIKE 'CREATE VIRTUAL TABLE%USING rtree%'").fetchall()
        for name, sql in rtrees:  # a node keeps deleted entries' bytes: made anew
            con.execute(f"DROP TABLE {_quoted(name)}")
            con.execute(sql)
        con.execute("UPDATE gpkg_contents SET description = '', min_x = NULL, "
                    "min_y = NULL, max_x = NULL, max_y = NULL")
        if con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'gpkg_metadata'"
                       ).fetchone()[0]:
            con.execute("UPDATE gpkg_metadata SET metadata = ''")
        con.execute("COMMIT")
        con.execute("VACUUM")
    except sqlite3.OperationalError:  # no R-tree module: GDAL writes every file
        return None
    finally:
        con.close()
    data = bytearray(path.read_bytes())
    # SQLite's change counter (and the "valid for" copy of it) counts the writes GDAL made
    # for this entity's rows: one fixed value, so every entity gives the same template
    data[24:28] = data[92:96] = (1).to_bytes(4, "big")
    return bytes(data)


def _blobs(geometries: np.ndarray, declared: str) -> list[bytes | None]:
    """GeoPackage binary geometries as GDAL writes them: ``GP``, version 0, flags (little
    endian; an envelope [min x, max x, min y, max y] for all but points), SRS id, ISO WKB;
    single geometries of a MULTI… layer as one-part multi-geometries. None for missing."""
    out: list[bytes | None] = [None] * len(geometries)
    rows = np.flatnonzero(~shapely.is_missing(geometries))
    shapes = geometries[rows].copy()
    types = shapely.get_type_id(shapes)
    if declared.startswith("MULTI"):
        for single, make in _MULTI.items():
            at = np.flatnonzero(types == single)
            if len(at):
                shapes[at] = make(shapes[at], indices=np.arange(len(at)))
        types = shapely.get_type_id(shapes)
    wkb = shapely.to_wkb(shapes, byte_order=1, flavor="iso", output_dimension=2)
    envelopes = np.ascontiguousarray(shapely.bounds(shapes)[:, [0, 2, 1, 3]], dtype="<f8")
    point = struct.pack("<2sBBi", b"GP", 0, 1, _SRS_ID)
    boxed = struct.pack("<2sBBi", b"GP", 0, 3, _SRS_ID)
    for i, row in enumerate(rows.tolist()):
        out[row] = (point + wkb[i] if types[i] == 0
                    else boxed + envelopes[i].tobytes() + wkb[i])
    return out


def _insert(con: sqlite3.Connection, name: str, frame: pd.DataFrame,
            geometry: tuple[str, list] | None = None) -> None:
    skip = frame.geometry.name if geometry else None
    names = [geometry[0]] if geometry else []
    values = [geometry[1]] if geometry else []
    # column by column, by position; None for NA and NaN, bool as 0/1 (by SQLite): the rows
    # as GDAL stores them
    for column, series in frame.items():
        if column != skip:
            names.append(str(column))
            values.append(python_values(series))
    con.executemany(f"INSERT INTO {_quoted(name)} ({', '.join(map(_quoted, names))}) "  # noqa: S608
                    f"VALUES ({', '.join('?' * len(names))})", zip(*values, strict=True))


def _metadata_xml(items: Mapping[str, str]) -> str:
    """GDAL's text of a layer's metadata (keys sorted without case, as GDAL sorts them)."""
    lines = "".join(f'    <MDI key="{key}">{items[key]}</MDI>\n'
                    for key in sorted(items, key=str.upper))
    return ("<GDALMultiDomainMetadata>\n  <Metadata>\n" + lines
            + "  </Metadata>\n</GDALMultiDomainMetadata>\n")


def fill(template: bytes, layers: Mapping[str, object], tables: Mapping[str, pd.DataFrame],
         path: str | Path, *, about: Mapping[str, Mapping[str, str]]) -> None:
    """Write ``template`` (:func:`emptied`) to ``path`` with the rows of ``layers`` and
    ``tables`` (the frames of the same :func:`schema_key`) and the layer metadata
    ``about``. sqlite3 and OS errors are raised."""
    path = Path(path)
    path.write_bytes(template)
    con = _connect(path)
    try:
        con.execute("BEGIN")
        for name, layer in layers.items():
            column, declared = con.execute(
                "SELECT column_name, geometry_type_name FROM gpkg_geometry_columns "
                "WHERE table_name = ?", (name,)).fetchone()
            _insert(con, name, layer, (column, _blobs(layer.geometry.to_numpy(), declared)))
            if len(layer):
                minx, miny, maxx, maxy = (float(v) for v in layer.total_bounds)
                con.execute("UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, "
                            "max_y = ? WHERE table_name = ?", (minx, miny, maxx, maxy, name))
        for name, table in tables.items():
            _insert(con, name, pd.DataFrame(table))
        for name, items in about.items():
            rest = {k: str(v) for k, v in items.items() if k != "description"}
            con.execute("UPDATE gpkg_contents SET description = ? WHERE table_name = ?",
                        (str(items.get("description", "")), name))
            if rest:
                con.execute("UPDATE gpkg_metadata SET metadata = ? WHERE id IN (SELECT "
                            "md_file_id FROM gpkg_metadata_reference WHERE table_name = ?)",
                            (_metadata_xml(rest), name))
        con.execute("COMMIT")
    finally:
        con.close()
