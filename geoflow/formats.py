"""Outputs for analysts' tools: flowmap.blue / flowmap.gl tables, a kepler.gl flows CSV, one
GeoPackage with every layer and table, and optional GeoParquet and shapefiles.

The builders are pure (flows GeoDataFrame in, DataFrames out); the writers take a folder.
Files and columns: docs/outputs.md.

>>> tables = flowmap_tables(result.flows, level="place")      # doctest: +SKIP
>>> sorted(tables)                                           # doctest: +SKIP
['flows', 'flows_dealer_port', 'flows_port_place', 'locations']
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from geoflow import export, geopackage
from geoflow.errors import OutputError
from geoflow.export import write_csv

__all__ = [
    "FORMATS",
    "FLOWMAP_FILES",
    "SHAPEFILE_FIELDS",
    "flow_ends",
    "flowmap_tables",
    "flow_level_note",
    "kepler_flows",
    "shapefile_names",
    "write_geopackage",
    "write_geoparquet",
    "write_shapefiles",
    "write_analyst_files",
]

#: Optional formats of ``geoflow run --format``.
FORMATS = ("geoparquet", "shapefile")
#: flowmap.blue tables: file stem → what it holds (locations are shared by the three flows).
FLOWMAP_FILES = {
    "locations": "every dealer (or US state), port of entry and recovery place (or MX state)",
    "flows": "whole flows: dealer → recovery place, summed over ports and route kinds",
    "flows_dealer_port": "first leg: dealer → port of entry",
    "flows_port_place": "second leg: port of entry → recovery place",
}
#: Shapefile (DBF) field names: at most 10 characters, one per layer column (docs/outputs.md).
SHAPEFILE_FIELDS: dict[str, str] = {
    "flow_id": "flow_id", "dealer_id": "dealer_id", "dealer_name": "dealer_nm",
    "dealer_ffl": "dealer_ffl", "dealer_place": "dealer_plc", "dealer_state": "dealer_st",
    "crossing_code": "cross_code", "crossing_name": "cross_name",
    "recovery_place": "recov_plc", "recovery_state": "recov_st", "route_kind": "route_kind",
    "guns": "guns", "purchasers": "purchasers", "top_purchaser": "top_purch",
    "top_purchaser_share_frac": "top_pur_sh", "first_purchase": "purch_from",
    "last_purchase": "purch_to", "median_time_to_crime_days": "ttc_median",
    "dealer_lon": "dealer_lon", "dealer_lat": "dealer_lat", "port_lon": "port_lon",
    "port_lat": "port_lat", "recovery_lon": "recov_lon", "recovery_lat": "recov_lat",
    "geocode_level": "geo_level", "geocode_score": "geo_score", "first_recovery": "recov_from",
    "last_recovery": "recov_to", "code": "code", "name": "name", "us_state": "us_state",
    "mx_city": "mx_city", "guns_known": "guns_known", "guns_modelled": "guns_model",
    "country": "country", "share_frac": "share_frac", "guns_sourced": "guns_src",
    "guns_recovered": "guns_recov", "guns_placed": "guns_plcd",
}
_LAYERS = ("flows", "dealers", "recoveries", "crossings", "states")
#: ``last_change`` written into geoflow.gpkg (reproducible files; the manifest has the run time).
GPKG_DATE = "2000-01-01T00:00:00.000Z"


def _hashed_ids(prefix: str, *parts: pd.Series) -> pd.Series:
    """``prefix`` + 8 hex digits of a hash of the parts' text, hashed once per distinct key."""
    text = parts[0].astype("string").fillna("")
    for part in parts[1:]:
        text = text + "|" + part.astype("string").fillna("")
    codes, uniques = pd.factorize(text)
    ids = np.array([prefix + hashlib.sha256(u.encode()).hexdigest()[:8] for u in uniques],
                   dtype=object)
    return pd.Series(ids[codes], index=text.index, dtype="string")


def _ends(flows: pd.DataFrame, level: str) -> pd.DataFrame:
    """Per flow: origin, port and destination location ids, names and coordinates."""
    if level == "state":
        origin = ("US-" + flows["dealer_state"].astype("string")).where(
            flows["dealer_state"] == "unknown", flows["dealer_state"].astype("string"))
        dest = ("MX-" + flows["recovery_state"].astype("string")).where(
            flows["recovery_state"] == "unknown", flows["recovery_state"].astype("string"))
        origin_name = flows["dealer_place"].astype("string")
    else:
        lat6 = {c: flows[c].round(6).astype("string") for c in
                ("dealer_lat", "dealer_lon", "recovery_lat", "recovery_lon")}
        fallback = _hashed_ids("D-", flows["dealer_place"], lat6["dealer_lat"],
                               lat6["dealer_lon"])
        origin = flows["dealer_id"].astype("string").fillna(fallback)
        dest = _hashed_ids("R-", flows["recovery_place"], lat6["recovery_lat"],
                           lat6["recovery_lon"])
        origin_name = flows["dealer_name"].astype("string").fillna(
            flows["dealer_place"].astype("string")).fillna(origin)
    return pd.DataFrame({
        "origin": origin, "origin_name": origin_name,
        "origin_lat": flows["dealer_lat"], "origin_lon": flows["dealer_lon"],
        "port": "port-" + flows["crossing_code"].astype("string"),
        "port_name": flows["crossing_name"].astype("string").fillna(
            flows["crossing_code"].astype("string")) + " (port of entry)",
        "port_lat": flows["port_lat"], "port_lon": flows["port_lon"],
        "dest": dest, "dest_name": flows["recovery_place"].astype("string"),
        "dest_lat": flows["recovery_lat"], "dest_lon": flows["recovery_lon"],
        "count": flows["guns"].astype("int64"),
    }, index=flows.index)


def _attributes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its geometry column (a plain DataFrame)."""
    if isinstance(frame, gpd.GeoDataFrame):
        # as a DataFrame first: GeoDataFrame.drop rebuilds a GeoDataFrame (3 times slower)
        return pd.DataFrame(frame).drop(columns=frame.geometry.name)
    return frame


def _summed(ends: pd.DataFrame, origin: str, dest: str) -> pd.DataFrame:
    """``count`` summed per (``origin``, ``dest``) pair with both known, most first, then by
    origin and destination: a groupby's sums in that order, from the pairs' sorted codes
    (pandas' groupby and sort cost a batch entity's three tables ~4 ms)."""
    known = (ends[origin].notna() & ends[dest].notna()).to_numpy()
    ranks, texts = zip(*(pd.factorize(ends[column][known], sort=True)
                         for column in (origin, dest)), strict=True)
    pairs, at = np.unique(ranks[0] * len(texts[1]) + ranks[1], return_inverse=True)
    counts = np.bincount(at, weights=ends["count"].to_numpy()[known],
                         minlength=len(pairs)).astype(np.int64)
    order = np.lexsort((pairs, -counts))  # pairs ascend as origin, then destination
    pairs = pairs[order]
    return pd.DataFrame({"origin": texts[0].take(pairs // len(texts[1])),
                         "dest": texts[1].take(pairs % len(texts[1])),
                         "count": counts[order]})


def flow_ends(flows: pd.DataFrame, *, level: str = "place") -> pd.DataFrame:
    """Per flow of the layer: origin, port and destination ids, names and coordinates, as
    :func:`flowmap_tables` and :func:`kepler_flows` read them (work it out once for both)."""
    return _ends(_attributes(flows), level)


def flowmap_tables(flows: pd.DataFrame, *, level: str = "place",
                   ends: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """flowmap.blue tables from the flows layer: ``locations`` (``id,name,lat,lon``) and three
    flow tables (``origin,dest,count``) — see :data:`FLOWMAP_FILES`. Each flow table's
    ``count`` adds up to the guns of ``flows``. ``ends``: :func:`flow_ends` of ``flows``."""
    ends = flow_ends(flows, level=level) if ends is None else ends
    parts = [
        ends[[f"{role}", f"{role}_name", f"{role}_lat", f"{role}_lon"]].set_axis(
            ["id", "name", "lat", "lon"], axis=1)
        for role in ("origin", "port", "dest")
    ]
    locations = (pd.concat(parts, ignore_index=True).drop_duplicates("id")
                 .reset_index(drop=True))
    locations["lat"] = locations["lat"].round(6)
    locations["lon"] = locations["lon"].round(6)
    return {
        "locations": locations,
        "flows": _summed(ends, "origin", "dest"),
        "flows_dealer_port": _summed(ends, "origin", "port"),
        "flows_port_place": _summed(ends, "port", "dest"),
    }


def kepler_flows(flows: pd.DataFrame, *, level: str = "place",
                 ends: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per flow for kepler.gl's arc/line layers: ``origin_lat, origin_lon, dest_lat,
    dest_lon`` (found by name), ``guns``, the port and the route kind. ``ends``:
    :func:`flow_ends` of ``flows``."""
    ends = flow_ends(flows, level=level) if ends is None else ends
    return pd.DataFrame({
        "flow_id": flows["flow_id"].astype("string"),
        "origin": ends["origin"], "origin_name": ends["origin_name"],
        "origin_lat": ends["origin_lat"], "origin_lon": ends["origin_lon"],
        "dest": ends["dest"], "dest_name": ends["dest_name"],
        "dest_lat": ends["dest_lat"], "dest_lon": ends["dest_lon"],
        "guns": ends["count"],
        "crossing_code": flows["crossing_code"].astype("string"),
        "crossing_name": flows["crossing_name"].astype("string"),
        "port_lat": ends["port_lat"], "port_lon": ends["port_lon"],
        "route_kind": flows["route_kind"].astype("string"),
    }).reset_index(drop=True)


def shapefile_names(columns: list[str]) -> dict[str, str]:
    """Column → DBF field name: :data:`SHAPEFILE_FIELDS` where listed, else the first 10
    characters made unique with a digit (a column added later still gets a field)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for column in columns:
        name = SHAPEFILE_FIELDS.get(column, column[:10])
        stem, n = name, 1
        while name in used:
            name = f"{stem[:9 - len(str(n))]}_{n}"
            n += 1
        used.add(name)
        out[column] = name
    return out


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns GDAL drivers take: categoricals and pandas strings as object text."""
    changes = {c: frame[c].astype(object).where(frame[c].notna(), None)
               for c in frame.columns
               if c != getattr(frame, "_geometry_column_name", None)
               and (isinstance(frame[c].dtype, (pd.CategoricalDtype, pd.StringDtype)))}
    return frame.assign(**changes) if changes else frame


def _write(frame: pd.DataFrame, path: Path, **kwargs) -> None:
    import pyogrio

    try:
        # GDAL's Arrow path takes pandas strings and categoricals as they are
        pyogrio.write_dataframe(frame if kwargs.get("use_arrow") else _plain(frame), path,
                                **kwargs)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        raise OutputError(f"cannot write {kwargs.get('layer') or path.name}: {exc}",
                          path=str(path)) from exc


#: GeoPackage templates of this process by schema (:func:`geoflow.geopackage.schema_key`;
#: None: written by GDAL every time). A batch has one schema, a worker one template.
_TEMPLATES: dict[tuple, bytes | None] = {}


def write_geopackage(layers: Mapping[str, gpd.GeoDataFrame],
                     tables: Mapping[str, pd.DataFrame], path: str | Path, *,
                     about: Mapping[str, Mapping[str, str]] | None = None,
                     reuse_schema: bool = False) -> Path:
    """One GeoPackage: each layer with its geometry (EPSG:4326), each table as an attribute
    table (no geometry), under its own name. ``about`` gives a layer GDAL metadata (name →
    key → text; GDAL stores ``description`` as the layer's GeoPackage description, which
    QGIS shows). Written through Arrow (GDAL's columnar path: 2-3× faster than feature by
    feature, the same values read back). GDAL's timestamps are fixed
    (``OGR_CURRENT_DATE`` = :data:`GPKG_DATE`), so the same result gives the same bytes.
    SQLite neither syncs each layer to disk (``OGR_SQLITE_SYNCHRONOUS=OFF``: 10× faster) nor
    keeps a rollback journal (``journal_mode=OFF``: a fifth faster for a batch entity's small
    layers); the file is written in the run's temporary folder, which replaces OUT only when
    complete, so a crash leaves no half-written GeoPackage behind.

    ``reuse_schema`` (a batch's output sets, all of one schema): GDAL writes the schema once
    per process and SQLite inserts each file's rows into it (:mod:`geoflow.geopackage`; 10×
    faster for a batch entity's small layers, the same tables, rows and metadata)."""
    path = Path(path)
    about = about or {}
    key = geopackage.schema_key(layers, tables, about) if reuse_schema else None
    if key is not None and key not in _TEMPLATES:  # GDAL writes this schema once, beside
        scratch = path.with_name(f".{path.stem}.schema{path.suffix}")
        columns = {name: [str(c) for c in frame.columns if c != frame.geometry.name]
                   for name, frame in layers.items()}
        columns.update({name: [str(c) for c in table.columns] for name, table in tables.items()})
        try:
            _write_with_gdal(layers, tables, scratch, about)
            _TEMPLATES[key] = geopackage.emptied(scratch, columns)
        finally:
            scratch.unlink(missing_ok=True)
    template = _TEMPLATES.get(key) if key is not None else None
    if template is None:
        _write_with_gdal(layers, tables, path, about)
        return path
    try:
        geopackage.fill(template, layers, tables, path, about=about)
    except (sqlite3.Error, OSError) as exc:
        raise OutputError(f"cannot write {path.name}: {exc}", path=str(path)) from exc
    return path


def _write_with_gdal(layers: Mapping[str, gpd.GeoDataFrame],
                     tables: Mapping[str, pd.DataFrame], path: Path,
                     about: Mapping[str, Mapping[str, str]]) -> None:
    import pyogrio

    settings = {"OGR_CURRENT_DATE": GPKG_DATE, "OGR_SQLITE_SYNCHRONOUS": "OFF",
                "OGR_SQLITE_PRAGMA": "journal_mode=OFF"}
    previous = {key: pyogrio.get_gdal_config_option(key) for key in settings}
    pyogrio.set_gdal_config_options(settings)
    try:
        for name, layer in layers.items():
            _write(layer, path, layer=name, driver="GPKG", append=path.exists(), use_arrow=True,
                   layer_metadata=dict(about[name]) if name in about else None)
        for name, table in tables.items():
            _write(pd.DataFrame(table), path, layer=name, driver="GPKG", append=path.exists(),
                   use_arrow=True)
    finally:
        pyogrio.set_gdal_config_options(previous)


def write_geoparquet(layers: Mapping[str, gpd.GeoDataFrame], folder: str | Path) -> list[Path]:
    """``folder/<layer>.parquet`` (GeoParquet 1.0, :func:`geoflow.export.write_geoparquet`) for
    each layer."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    paths = []
    for name, layer in layers.items():
        paths.append(folder / f"{name}.parquet")
        export.write_geoparquet(layer, paths[-1])
    return paths


def write_shapefiles(layers: Mapping[str, gpd.GeoDataFrame], folder: str | Path) -> list[Path]:
    """``folder/<layer>.shp`` (UTF-8 DBF) for each layer, fields renamed by
    :func:`shapefile_names`, plus ``folder/fields.csv`` (layer, field, column) so the mapping
    travels with the files."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    rows, paths = [], []
    for name, layer in layers.items():
        columns = [c for c in layer.columns if c != layer.geometry.name]
        names = shapefile_names(columns)
        rows += [{"layer": name, "field": names[c], "column": c} for c in columns]
        paths.append(folder / f"{name}.shp")
        _write(layer.rename(columns=names), paths[-1], driver="ESRI Shapefile",
               encoding="UTF-8")
    write_csv(pd.DataFrame(rows, columns=["layer", "field", "column"]), folder / "fields.csv")
    return paths


def flow_level_note(level: str, *, shown: int, total: int) -> dict[str, str]:
    """What a copy of the flows layer holds (GeoPackage metadata, ``flowmap/README.txt``):
    ``flow_level``, ``flows`` (its count), ``flows_total`` (every flow of the run, all in
    ``flows_full.parquet``) and a ``description`` sentence saying so."""
    kind = ("state-level flows (US state → port of entry → Mexican state)" if level == "state"
            else "place-level flows (dealer → port of entry → recovery place)")
    text = f"{shown:,} {kind}"
    if shown != total:
        text += (f", summed from the run's {total:,} place-level flows (too many to open"
                 " comfortably here)")
    text += "; every flow of the run is in flows_full.parquet."
    return {"flow_level": level, "flows": str(shown), "flows_total": str(total),
            "flows_full": "flows_full.parquet", "description": text}


def write_analyst_files(result, folder: str | Path, *, formats: tuple[str, ...] = (),
                        bom: bool = False, reuse_schema: bool = False) -> None:
    """Write ``flowmap/`` (flowmap.blue tables, ``kepler_flows.csv``, ``README.txt``) and
    ``geoflow.gpkg`` for a RunResult into ``folder``, plus ``geoparquet/`` and ``shapefile/``
    when ``formats`` names them (:data:`FORMATS`). Their flows are those of flows.geojson
    (``result.flows_geojson``: state level past ``pipeline.FLOWS_GEOJSON_MAX`` place-level
    flows); every flow stays in flows_full.parquet."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose from {FORMATS}")
    folder = Path(folder)
    flows, level = result.flows_geojson  # what flows.geojson holds: sized for its readers
    about = flow_level_note(level, shown=len(flows), total=len(result.flows))
    (folder / "flowmap").mkdir(exist_ok=True)
    ends = flow_ends(flows, level=level)
    for name, table in flowmap_tables(flows, level=level, ends=ends).items():
        write_csv(table, folder / "flowmap" / f"{name}.csv", bom=bom)
    write_csv(kepler_flows(flows, level=level, ends=ends),
              folder / "flowmap" / "kepler_flows.csv", bom=bom)
    (folder / "flowmap" / "README.txt").write_text(
        f"{about['description']}\nflow_level: {level}\n", encoding="utf-8")
    layers = {name: getattr(result, name) for name in _LAYERS}
    layers["flows"] = flows
    write_geopackage(layers, result.tables, folder / "geoflow.gpkg", about={"flows": about},
                     reuse_schema=reuse_schema)
    if "geoparquet" in formats:
        write_geoparquet(layers, folder / "geoparquet")
    if "shapefile" in formats:
        write_shapefiles(layers, folder / "shapefile")
