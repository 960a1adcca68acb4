"""Flows dealer → port of entry → recovery place, and the point/polygon layers, as GeoDataFrames.

Records are grouped on integer codes (one pass over the records); geometry is built once per
distinct flow with vectorised great-circle interpolation (numpy slerp + ``shapely.linestrings``).
Column contracts: docs/internals.md, "flows / aggregate / export → render".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoflow.aggregate import group_stats, iso_dates

__all__ = [
    "FLOW_COLUMNS",
    "dealer_ids",
    "great_circle_points",
    "flow_lines",
    "build_flows",
    "build_dealers",
    "build_recoveries",
    "build_crossings",
    "build_states",
]

EARTH_RADIUS_KM = 6371.0088
#: Longest straight segment left in a densified line, in km (curvature of a great circle over
#: 100 km is far below a pixel at the zoom levels a US–Mexico map is read at).
SEGMENT_KM = 100.0

FLOW_COLUMNS: tuple[str, ...] = (
    "flow_id", "dealer_id", "dealer_name", "dealer_place", "dealer_state", "crossing_code",
    "crossing_name", "recovery_place", "recovery_state", "route_kind", "guns", "purchasers",
    "top_purchaser", "first_purchase", "last_purchase", "median_time_to_crime_days",
    "dealer_lon", "dealer_lat", "port_lon", "port_lat", "recovery_lon", "recovery_lat",
)


def _hash_ids(keys: pd.Series, prefix: str, digits: int) -> pd.Series:
    """``prefix`` + hex digest of each key, hashing each distinct key once."""
    codes, uniques = pd.factorize(keys, use_na_sentinel=True)
    digests = [
        prefix + hashlib.sha256(str(u).encode("utf-8")).hexdigest()[:digits] for u in uniques
    ]
    ids = pd.array([*digests, pd.NA], dtype="string")
    return pd.Series(ids[codes], index=keys.index, dtype="string")


def _norm(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.normalize("NFKD")
    text = text.str.encode("ascii", errors="ignore").str.decode("ascii").astype("string")
    return text.str.casefold().str.replace(r"[^0-9a-z]+", " ", regex=True).str.strip()


def dealer_ids(records: pd.DataFrame) -> pd.Series:
    """Stable ``D-xxxxxxxx`` id per dealer: from the FFL number when present, else from the
    normalised (name, city, state). NA when a record names no dealer at all."""
    ffl = _norm(records["dealer_ffl"]).str.replace(" ", "", regex=False)
    ffl = ffl.mask(ffl == "")
    fallback = (
        _norm(records["dealer_name"]).fillna("") + "|"
        + _norm(records["dealer_city"]).fillna("") + "|"
        + _norm(records["dealer_state"]).fillna("")
    )
    fallback = fallback.mask(fallback == "||")
    keys = ("ffl:" + ffl).fillna("name:" + fallback)
    return _hash_ids(keys, "D-", 8)


def _unit(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lam, phi = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], -1)


def great_circle_points(
    lon0: np.ndarray, lat0: np.ndarray, lon1: np.ndarray, lat1: np.ndarray,
    fractions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Points at ``fractions`` (0..1) of the great-circle arc from point 0 to point 1.

    All arguments are equal-length arrays (one entry per output point); returns lon, lat.
    """
    a, b = _unit(lon0, lat0), _unit(lon1, lat1)
    dot = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
    omega = np.arccos(dot)
    sin_omega = np.sin(omega)
    small = sin_omega < 1e-12
    safe = np.where(small, 1.0, sin_omega)
    wa = np.where(small, 1.0 - fractions, np.sin((1.0 - fractions) * omega) / safe)
    wb = np.where(small, fractions, np.sin(fractions * omega) / safe)
    p = wa[:, None] * a + wb[:, None] * b
    lon = np.degrees(np.arctan2(p[:, 1], p[:, 0]))
    lat = np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])))
    # exact end points (no rounding drift on the dealer, port and recovery vertices)
    lon = np.where(fractions == 0.0, lon0, np.where(fractions == 1.0, lon1, lon))
    lat = np.where(fractions == 0.0, lat0, np.where(fractions == 1.0, lat1, lat))
    return lon, lat


def _arc_km(lon0, lat0, lon1, lat1) -> np.ndarray:
    dot = np.clip(np.einsum("ij,ij->i", _unit(lon0, lat0), _unit(lon1, lat1)), -1.0, 1.0)
    return np.arccos(dot) * EARTH_RADIUS_KM


def flow_lines(
    dealer: np.ndarray, port: np.ndarray, recovery: np.ndarray, *, segment_km: float = SEGMENT_KM
) -> np.ndarray:
    """LineStrings dealer → port → recovery, each leg densified along its great circle.

    ``dealer``, ``port`` and ``recovery`` are (n, 2) lon/lat arrays; the port is an exact
    vertex of each line. Vectorised: one numpy pass over all vertices of all lines.
    """
    n = len(dealer)
    if n == 0:
        return np.array([], dtype=object)
    legs_start = np.concatenate([dealer, port])
    legs_end = np.concatenate([port, recovery])
    km = _arc_km(legs_start[:, 0], legs_start[:, 1], legs_end[:, 0], legs_end[:, 1])
    steps = np.maximum(np.ceil(km / segment_km).astype(np.int64), 1)
    # leg 1 gives steps+1 points (0..1), leg 2 gives steps points (skip its start = the port)
    counts = np.concatenate([steps[:n] + 1, steps[n:]])
    leg = np.repeat(np.arange(2 * n), counts)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    position = np.arange(counts.sum()) - offsets
    position = np.where(leg >= n, position + 1, position)
    fractions = position / steps[leg]
    lon, lat = great_circle_points(
        legs_start[leg, 0], legs_start[leg, 1], legs_end[leg, 0], legs_end[leg, 1], fractions
    )
    line = np.where(leg >= n, leg - n, leg)
    order = np.lexsort((leg >= n, line))  # stable: leg 1 points, then leg 2, per line
    coords = np.column_stack([lon[order], lat[order]])
    return shapely.linestrings(coords, indices=line[order])


def _first(values: pd.Series, group: np.ndarray, n: int) -> np.ndarray:
    series = pd.Series(values.to_numpy(), dtype=values.dtype)
    return series.groupby(group).first().reindex(pd.RangeIndex(n)).to_numpy()


def _mean(values: pd.Series, group: np.ndarray, n: int) -> np.ndarray:
    series = pd.Series(values.to_numpy(dtype=float, na_value=np.nan))
    return series.groupby(group).mean().reindex(pd.RangeIndex(n)).to_numpy()


def _group(records: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, int]:
    codes = records.groupby(keys, sort=False, dropna=False, observed=True).ngroup()
    codes = codes.to_numpy(dtype=np.int64)
    return codes, int(codes.max()) + 1 if len(codes) else 0


def _recovery_key(records: pd.DataFrame) -> pd.Series:
    """Recovery place identity: the matched place name, else the rounded coordinates."""
    coords = (
        records["recovery_lat"].round(4).astype("string") + ","
        + records["recovery_lon"].round(4).astype("string")
    )
    return records["recovery_place"].astype("string").fillna(coords)


def build_flows(
    records: pd.DataFrame,
    ports: pd.DataFrame,
    *,
    level: str = "place",
    state_names: Mapping[str, str] | None = None,
    segment_km: float = SEGMENT_KM,
) -> gpd.GeoDataFrame:
    """One flow per (dealer, port, recovery place, route kind) — or per (US state, port,
    MX state, route kind) with ``level="state"`` — from *placed* records with a crossing.

    ``ports`` is :func:`geoflow.crossings.load_ports` (``code``, ``name``, Point geometry).
    """
    if level not in ("place", "state"):
        raise ValueError(f"flow level must be 'place' or 'state', not {level!r}")
    frame = records.assign(
        _recovery_key=_recovery_key(records),
        _dealer_state=records["dealer_admin1"].astype("string").fillna("unknown"),
        _recovery_state=records["recovery_admin1"].astype("string").fillna("unknown"),
    )
    if level == "place":
        keys = ["dealer_id", "crossing_code", "_recovery_key", "route_kind"]
    else:
        keys = ["_dealer_state", "crossing_code", "_recovery_state", "route_kind"]
    group, n = _group(frame, keys)
    stats = group_stats(frame, group, n)
    names = state_names or {}
    if level == "place":
        dealer_id = _first(frame["dealer_id"], group, n)
        dealer_name = _first(frame["dealer_name"], group, n)
        dealer_place = _first(frame["dealer_place"], group, n)
        recovery_place = _first(frame["_recovery_key"], group, n)
        d_lon = _first(frame["dealer_lon"], group, n)
        d_lat = _first(frame["dealer_lat"], group, n)
        r_lon = _first(frame["recovery_lon"], group, n)
        r_lat = _first(frame["recovery_lat"], group, n)
    else:
        dealer_id = dealer_name = np.full(n, None, dtype=object)
        dealer_place = np.array([names.get(s, s) for s in _first(frame["_dealer_state"], group, n)],
                                dtype=object)
        recovery_place = np.array(
            [names.get(s, s) for s in _first(frame["_recovery_state"], group, n)], dtype=object)
        d_lon, d_lat = _mean(frame["dealer_lon"], group, n), _mean(frame["dealer_lat"], group, n)
        r_lon = _mean(frame["recovery_lon"], group, n)
        r_lat = _mean(frame["recovery_lat"], group, n)
    code = _first(frame["crossing_code"], group, n)
    port_table = pd.DataFrame({"name": ports["name"].to_numpy(),
                               "lon": shapely.get_x(ports.geometry.to_numpy()),
                               "lat": shapely.get_y(ports.geometry.to_numpy())},
                              index=pd.Index(ports["code"].astype(str), name="code"))
    port_rows = port_table.reindex(pd.Index(code).astype(str))
    table = pd.DataFrame(
        {
            "dealer_id": pd.array(dealer_id, dtype="string"),
            "dealer_name": pd.array(dealer_name, dtype="string"),
            "dealer_place": pd.array(dealer_place, dtype="string"),
            "dealer_state": pd.array(_first(frame["_dealer_state"], group, n), dtype="string"),
            "crossing_code": pd.array(code, dtype="string"),
            "crossing_name": pd.array(port_rows["name"].to_numpy(), dtype="string"),
            "recovery_place": pd.array(recovery_place, dtype="string"),
            "recovery_state": pd.array(_first(frame["_recovery_state"], group, n),
                                       dtype="string"),
            "route_kind": pd.array(_first(frame["route_kind"], group, n), dtype="string"),
            "guns": stats.guns,
            "purchasers": stats.purchasers,
            "top_purchaser": stats.top_purchaser.to_numpy(),
            "first_purchase": stats.first_purchase.to_numpy(),
            "last_purchase": stats.last_purchase.to_numpy(),
            "median_time_to_crime_days": stats.median_ttc.to_numpy(),
            "dealer_lon": d_lon.astype(float),
            "dealer_lat": d_lat.astype(float),
            "port_lon": port_rows["lon"].to_numpy(dtype=float),
            "port_lat": port_rows["lat"].to_numpy(dtype=float),
            "recovery_lon": r_lon.astype(float),
            "recovery_lat": r_lat.astype(float),
        }
    )
    key_columns = ["dealer_id", "dealer_state", "crossing_code", "recovery_place",
                   "recovery_state", "route_kind"]
    id_key = table[key_columns[0]].fillna("").str.cat(
        [table[c].fillna("") for c in key_columns[1:]], sep="|")
    table.insert(0, "flow_id", _hash_ids(id_key, "F-", 10).to_numpy())
    geometry = flow_lines(
        table[["dealer_lon", "dealer_lat"]].to_numpy(),
        table[["port_lon", "port_lat"]].to_numpy(),
        table[["recovery_lon", "recovery_lat"]].to_numpy(),
        segment_km=segment_km,
    )
    flows = gpd.GeoDataFrame(table, geometry=gpd.GeoSeries(geometry), crs="EPSG:4326")
    flows = flows.sort_values(["guns", "flow_id"], ascending=[False, True], kind="stable")
    return flows.reset_index(drop=True)


def build_dealers(records: pd.DataFrame) -> gpd.GeoDataFrame:
    """One Point per dealer (placed records): guns, purchasers, top purchaser and its share,
    median time to crime and purchase span."""
    group, n = _group(records, ["dealer_id"])
    stats = group_stats(records, group, n)
    lon = _first(records["dealer_lon"], group, n).astype(float)
    lat = _first(records["dealer_lat"], group, n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.round(stats.top_purchaser_guns / np.maximum(stats.guns, 1), 6)
    table = pd.DataFrame(
        {
            "dealer_id": pd.array(_first(records["dealer_id"], group, n), dtype="string"),
            "dealer_name": pd.array(_first(records["dealer_name"], group, n), dtype="string"),
            "dealer_ffl": pd.array(_first(records["dealer_ffl"], group, n), dtype="string"),
            "dealer_place": pd.array(_first(records["dealer_place"], group, n), dtype="string"),
            "dealer_state": pd.array(_first(records["dealer_admin1"], group, n), dtype="string"),
            "guns": stats.guns,
            "purchasers": stats.purchasers,
            "top_purchaser": stats.top_purchaser.to_numpy(),
            "top_purchaser_share": np.where(stats.purchasers > 0, share, np.nan),
            "median_time_to_crime_days": stats.median_ttc.to_numpy(),
            "first_purchase": stats.first_purchase.to_numpy(),
            "last_purchase": stats.last_purchase.to_numpy(),
        }
    )
    points = gpd.GeoDataFrame(table, geometry=shapely.points(lon, lat), crs="EPSG:4326")
    return points.sort_values(["guns", "dealer_id"], ascending=[False, True],
                              kind="stable").reset_index(drop=True)


def build_recoveries(records: pd.DataFrame) -> gpd.GeoDataFrame:
    """One Point per recovery place (placed records): guns, purchasers, geocode level and
    recovery date span."""
    frame = records.assign(_recovery_key=_recovery_key(records))
    group, n = _group(frame, ["_recovery_key"])
    stats = group_stats(frame, group, n)
    dates = pd.Series(pd.to_datetime(frame["recovery_date"]).to_numpy()).groupby(group)
    index = pd.RangeIndex(n)
    table = pd.DataFrame(
        {
            "recovery_place": pd.array(_first(frame["_recovery_key"], group, n), dtype="string"),
            "recovery_state": pd.array(_first(frame["recovery_admin1"], group, n),
                                       dtype="string"),
            "guns": stats.guns,
            "purchasers": stats.purchasers,
            "geocode_level": pd.array(_first(frame["recovery_geocode_level"], group, n),
                                      dtype="string"),
            "first_recovery": iso_dates(dates.min().reindex(index)).to_numpy(),
            "last_recovery": iso_dates(dates.max().reindex(index)).to_numpy(),
        }
    )
    lon = _first(frame["recovery_lon"], group, n).astype(float)
    lat = _first(frame["recovery_lat"], group, n).astype(float)
    points = gpd.GeoDataFrame(table, geometry=shapely.points(lon, lat), crs="EPSG:4326")
    return points.sort_values(["guns", "recovery_place"], ascending=[False, True],
                              kind="stable").reset_index(drop=True)


def build_crossings(records: pd.DataFrame, ports: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One Point per port used by placed records, with guns split known / modelled."""
    frame = records[records["crossing_code"].notna()]
    modelled = (frame["route_kind"].astype("string") == "modelled").fillna(False)
    counts = pd.DataFrame(
        {"code": frame["crossing_code"].astype(str).to_numpy(),
         "modelled": modelled.to_numpy(dtype=bool)}
    ).groupby("code").agg(guns=("modelled", "size"), guns_modelled=("modelled", "sum"))
    used = ports.assign(code=ports["code"].astype(str)).merge(
        counts, left_on="code", right_index=True, how="inner")
    used["guns_modelled"] = used["guns_modelled"].astype("int64")
    used["guns_known"] = used["guns"] - used["guns_modelled"]
    columns = ["code", "name", "us_state", "mx_city", "guns", "guns_known", "guns_modelled"]
    out = gpd.GeoDataFrame(used[columns], geometry=used.geometry.to_numpy(), crs="EPSG:4326")
    for column in ("code", "name", "us_state", "mx_city"):
        out[column] = out[column].astype("string")
    return out.sort_values(["guns", "code"], ascending=[False, True],
                           kind="stable").reset_index(drop=True)


def build_states(records: pd.DataFrame, states: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Every US and Mexican state with ``guns`` (US: sourced there, MX: recovered there) and
    ``share`` of placed guns on its side of the border."""
    sourced = records["dealer_admin1"].astype("string").value_counts()
    recovered = records["recovery_admin1"].astype("string").value_counts()
    out = gpd.GeoDataFrame(states[["code", "name", "country"]].copy(),
                           geometry=states.geometry.to_numpy(), crs="EPSG:4326")
    is_us = (out["country"] == "US").to_numpy()
    guns = np.where(is_us, out["code"].map(sourced).fillna(0),
                    out["code"].map(recovered).fillna(0)).astype("int64")
    total = len(records)
    out.insert(3, "guns", guns)
    out.insert(4, "share", np.round(guns / total, 6) if total else 0.0)
    return out
