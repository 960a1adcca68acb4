"""Writers: RFC 7946 GeoJSON, formula-safe CSV, JSON, and atomic output folders.

GeoJSON is written with :mod:`json` (fast and fully controlled): WGS 84 lon/lat, coordinates
rounded to 6 decimals, no ``crs`` member, NaN written as ``null``, polygon exteriors
counter-clockwise (right-hand rule). CSV cells that would start a spreadsheet formula
(``= + - @``, tab, CR) get a leading ``'`` unless the cell is a number (OWASP advice).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoflow.errors import OutputError

__all__ = [
    "GENERATOR",
    "DECIMALS",
    "formula_safe",
    "write_csv",
    "to_jsonable",
    "write_json",
    "geojson_text",
    "geojson_features",
    "write_geojson",
    "safe_path",
    "is_geoflow_folder",
    "check_output_dir",
    "atomic_output_dir",
]

#: Value of ``generator`` in every manifest.json geoflow writes.
GENERATOR = "geoflow"
DECIMALS = 6
_FORMULA_START = r"^[=+\-@\t\r]"


def formula_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``frame`` where text cells starting with ``= + - @``, tab or CR get a ``'``
    prefix, unless the cell reads as a number (``-12.5`` stays as it is)."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype("string")
        if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
            continue
        text = series.astype("string")
        risky = text.str.contains(_FORMULA_START, regex=True).fillna(False)
        if not risky.any():
            out[column] = series
            continue
        numeric = pd.to_numeric(text.where(risky), errors="coerce").notna()
        fix = risky & ~numeric
        out[column] = text.mask(fix, "'" + text)
    return out


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as UTF-8 CSV (RFC 4180 CRLF rows, so a CR inside a cell is quoted),
    without the index, formula-safe."""
    formula_safe(frame).to_csv(path, index=False, encoding="utf-8", lineterminator="\r\n")


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


def _property_lines(frame: pd.DataFrame) -> list[str]:
    """One JSON object text per row (pandas' C encoder: NaN/NA → null, floats ≤ 10 digits)."""
    if frame.shape[1] == 0 or len(frame) == 0:  # pandas writes "{}" for an empty frame
        return ["{}"] * len(frame)
    table = frame.copy()
    for column in table.columns:
        if table[column].dtype.kind == "f":
            table[column] = table[column].round(DECIMALS)
        elif table[column].dtype.kind == "M":
            table[column] = table[column].dt.strftime("%Y-%m-%d")
    text = table.to_json(orient="records", lines=True, force_ascii=False,
                         double_precision=10, date_format="iso")
    return text.splitlines()


def _geometry_texts(geometries: np.ndarray) -> np.ndarray:
    """GeoJSON geometry texts: exteriors counter-clockwise, coordinates rounded to 6 decimals
    (GEOS writes the shortest round-tripping form), ``null`` for missing or empty."""
    polygonal = np.isin(shapely.get_type_id(geometries), (3, 6))  # Polygon, MultiPolygon
    if polygonal.any():
        geometries = geometries.copy()
        geometries[polygonal] = shapely.orient_polygons(geometries[polygonal],
                                                        exterior_cw=False)
    geometries = shapely.transform(geometries, lambda xy: np.round(xy, DECIMALS))
    texts = shapely.to_geojson(geometries)
    missing = shapely.is_missing(geometries) | shapely.is_empty(geometries)
    return np.where(missing, "null", texts)


def _feature_chunks(gdf: gpd.GeoDataFrame, chunk: int) -> Iterator[str]:
    """Feature texts joined by ``,\\n``, ``chunk`` features at a time."""
    if gdf.crs is not None and not gdf.crs.equals("EPSG:4326"):
        gdf = gdf.to_crs("EPSG:4326")
    geometry_name = gdf.geometry.name
    attributes = pd.DataFrame(gdf.drop(columns=geometry_name))
    geometries = gdf.geometry.to_numpy()
    for start in range(0, len(gdf), chunk):
        properties = _property_lines(attributes.iloc[start:start + chunk])
        shapes = _geometry_texts(geometries[start:start + chunk])
        yield ",\n".join(
            f'{{"type":"Feature","properties":{props},"geometry":{geom}}}'
            for props, geom in zip(properties, shapes, strict=True)
        )


def geojson_text(gdf: gpd.GeoDataFrame, *, chunk: int = 20_000) -> str:
    """RFC 7946 FeatureCollection text for ``gdf`` (reprojected to EPSG:4326 if needed).

    Vectorised: properties through pandas' JSON encoder, geometries through GEOS; only the
    final string join touches each feature.
    """
    return "".join(_geojson_pieces(gdf, chunk))


def _geojson_pieces(gdf: gpd.GeoDataFrame, chunk: int) -> Iterator[str]:
    yield '{"type":"FeatureCollection","features":[\n'
    for i, text in enumerate(_feature_chunks(gdf, chunk)):
        yield (",\n" if i else "") + text
    yield "\n]}\n"


def geojson_features(gdf: gpd.GeoDataFrame) -> dict:
    """The FeatureCollection of :func:`geojson_text` as a dict."""
    return json.loads(geojson_text(gdf))


def write_geojson(gdf: gpd.GeoDataFrame, path: str | Path, *, chunk: int = 20_000) -> None:
    """Write ``gdf`` as RFC 7946 GeoJSON, one feature per line, streaming ``chunk`` features
    at a time so memory stays bounded for hundreds of thousands of flows."""
    with Path(path).open("w", encoding="utf-8") as handle:
        handle.writelines(_geojson_pieces(gdf, chunk))


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
    written by geoflow, or ``force`` is set (then any folder, never a file, is replaced)."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError("exists and is not a folder", path=str(out))
    if any(out.iterdir()) and not force and not is_geoflow_folder(out):
        raise OutputError(
            "folder is not empty and was not written by geoflow (no geoflow manifest.json);"
            " choose another folder or pass --force to replace it",
            path=str(out),
        )


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out_dir``; on success swap it into place.

    An existing ``out_dir`` is replaced only when it is empty, was written by geoflow
    (manifest ``generator``) or ``force`` is set; otherwise :class:`OutputError`. If the body
    raises, the temporary folder is removed and ``out_dir`` is left as it was.
    """
    out = Path(out_dir)
    check_output_dir(out, force=force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot create output folder: {exc.strerror}", path=str(out)) from exc
    try:
        yield temp
        _swap(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _swap(temp: Path, out: Path) -> None:
    """Move ``temp`` to ``out``; an old ``out`` is moved aside first and deleted after."""
    old = None
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
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
