"""Flows dealer → port of entry → recovery place, and the point/polygon layers, as GeoDataFrames.

Records are grouped on integer codes (one pass over the records); geometry is built once per
distinct flow with vectorised great-circle interpolation (numpy slerp + ``shapely.linestrings``).
Column contracts: docs/internals.md, "flows / aggregate / export → render".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoflow.aggregate import (
    as_datetimes,
    ascii_text,
    categorical_take,
    counted,
    date_span,
    entity_cells,
    entity_column,
    fill_unknown,
    first_rows,
    first_seen_codes,
    group_stats,
    gun_weights,
    hex_digits,
    is_value,
    iso_dates,
    positions_in,
    recovery_keys,
    rows_where,
    take_text,
    weighted_count,
)
from geoflow.shapes import load_state_points

__all__ = [
    "FLOW_COLUMNS",
    "DEALER_COLUMNS",
    "dealer_ids",
    "flow_ids",
    "great_circle_points",
    "flow_lines",
    "flow_geometry",
    "build_flows",
    "build_dealers",
    "build_recoveries",
    "build_crossings",
    "entity_layers",
    "build_states",
    "STATE_GUNS",
    "state_guns",
]

EARTH_RADIUS_KM = 6371.0088
#: Longest straight segment left in a densified line, in km: over 200 km a great circle departs
#: from the straight segment drawn between its ends by well under a pixel at the zoom levels a
#: US–Mexico map is read at, and the files stay small.
SEGMENT_KM = 200.0

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


def flow_ids(keys: pd.DataFrame) -> pd.array:
    """Stable ``F-`` + 10 hex ids from the key columns of each flow (vectorised: pandas'
    keyed SipHash of each value, combined per row; the same keys give the same id on every
    run)."""
    return _hex_ids(_flow_hash(keys))


def _flow_hash(keys: pd.DataFrame) -> np.ndarray:
    """40-bit hash per row of ``keys`` (the number behind the flow id)."""
    text = pd.DataFrame({name: _as_hashed(keys[name]) for name in keys.columns})
    hashes = pd.util.hash_pandas_object(text, index=False)
    return hashes.to_numpy(dtype=np.uint64) >> np.uint64(64 - _HASH_BITS)  # 10 hex digits


def _as_hashed(values: pd.Series) -> pd.Series:
    """``values`` as text, NA as ``""``. A categorical stays one over its categories as text:
    pandas hashes each category once, and a category's hash is its text's."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return values.astype("string").fillna("")
    categories = pd.Index(values.cat.categories.astype("string"))
    codes = values.cat.codes.to_numpy()
    if (codes < 0).any():
        empty = categories.get_indexer([""])[0]
        if empty < 0:
            categories, empty = categories.append(pd.Index([""], dtype="string")), len(categories)
        codes = np.where(codes < 0, empty, codes)
    return pd.Series(pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(categories)),
                     index=values.index)


def _hex_ids(value: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """``F-`` + 10 lower-case hex digits of each 40-bit value, without a Python loop."""
    # the low five bytes of each value, most significant first (a big-endian view)
    octets = value.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 3:]
    return pd.array(ascii_text(b"F-", hex_digits(octets, 10)), dtype="string")


#: Bits of a flow hash (:func:`_flow_hash`): the guns of a flow go above them in one key.
_HASH_BITS = 40


def _output_order(guns: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """The flows' output order: ``np.lexsort((hashes, -guns))`` (most guns first, then by
    hash, flows sharing both in their order). Guns and hash as one 64-bit key sorted by
    numpy's quicksort (693,417 flows: 193 -> 35 ms); a stable sort only when two flows share
    the key, a lexsort when the guns do not fit beside the hash."""
    most = int(guns.max(initial=0))
    if most >= 1 << (64 - _HASH_BITS):
        return np.lexsort((hashes, -guns))
    key = ((most - guns).astype(np.uint64) << np.uint64(_HASH_BITS)) | hashes.astype(np.uint64)
    order = np.argsort(key)
    ranked = key[order]
    if (ranked[1:] == ranked[:-1]).any():
        order = np.argsort(key, kind="stable")
    return order


def _norm(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.normalize("NFKD")
    text = text.str.encode("ascii", errors="ignore").str.decode("ascii").astype("string")
    return text.str.casefold().str.replace(r"[^0-9a-z]+", " ", regex=True).str.strip()


#: The record columns a dealer's id (:func:`dealer_ids`) is made from.
DEALER_COLUMNS = ("dealer_ffl", "dealer_name", "dealer_city", "dealer_state")


def dealer_ids(records: pd.DataFrame) -> pd.Series:
    """Stable ``D-xxxxxxxx`` id per dealer: from the FFL number when present, else from the
    normalised (name, city, state). NA when a record names no dealer at all.

    Works on the distinct (FFL, name, city, state) combinations, then maps back.
    """
    columns = list(DEALER_COLUMNS)
    frame = pd.DataFrame({c: records.get(c, pd.NA) for c in columns}, index=records.index)
    # categoricals are grouped by their codes: only the distinct dealers become text
    frame = frame.astype({c: "string" for c in columns
                          if not isinstance(frame[c].dtype, pd.CategoricalDtype)})
    group, _ = _group(frame, columns)
    first = first_rows(group, int(group.max()) + 1 if len(group) else 0)
    distinct = frame.iloc[first].reset_index(drop=True).astype("string")
    ffl = _norm(distinct["dealer_ffl"]).str.replace(" ", "", regex=False)
    ffl = ffl.mask(ffl == "")
    fallback = (
        _norm(distinct["dealer_name"]).fillna("") + "|"
        + _norm(distinct["dealer_city"]).fillna("") + "|"
        + _norm(distinct["dealer_state"]).fillna("")
    )
    # neither name nor city (a count table's bare state): no dealer is known
    fallback = fallback.mask(fallback.str.startswith("||"))
    ids = _hash_ids(("ffl:" + ffl).fillna("name:" + fallback), "D-", 8)
    return pd.Series(categorical_take(ids, group), index=records.index)


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


def flow_lines(
    dealer: np.ndarray, port: np.ndarray, recovery: np.ndarray, *,
    segment_km: float | None = SEGMENT_KM, chunk: int = 20_000,
) -> np.ndarray:
    """LineStrings dealer → port → recovery, each leg densified along its great circle
    (``segment_km=None``: the three points alone, no densification).

    ``dealer``, ``port`` and ``recovery`` are (n, 2) lon/lat arrays; the port is an exact
    vertex of each line. Vectorised over all vertices of ``chunk`` lines at a time, so memory
    stays bounded however many flows there are.
    """
    n = len(dealer)
    if n == 0:
        return np.array([], dtype=object)
    if segment_km is None:
        coords = np.round(np.stack([dealer, port, recovery], axis=1).reshape(-1, 2), 6)
        return shapely.linestrings(coords, indices=np.repeat(np.arange(n), 3))
    parts = [
        _flow_lines(dealer[i:i + chunk], port[i:i + chunk], recovery[i:i + chunk], segment_km)
        for i in range(0, n, chunk)
    ]
    return np.concatenate(parts)


def _flow_lines(
    dealer: np.ndarray, port: np.ndarray, recovery: np.ndarray, segment_km: float
) -> np.ndarray:
    n = len(dealer)
    starts = _unit(*np.concatenate([dealer, port]).T)  # 2n legs: dealer→port, port→recovery
    ends = _unit(*np.concatenate([port, recovery]).T)
    omega = np.arccos(np.clip(np.einsum("ij,ij->i", starts, ends), -1.0, 1.0))
    steps = np.maximum(np.ceil(omega * EARTH_RADIUS_KM / segment_km).astype(np.int64), 1)
    # leg 1 gives steps+1 points (0..1), leg 2 gives steps points (skip its start = the port)
    counts = np.concatenate([steps[:n] + 1, steps[n:]])
    leg = np.repeat(np.arange(2 * n), counts)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    position = np.arange(counts.sum()) - offsets + (leg >= n)
    t = position / steps[leg]
    sin_omega = np.sin(omega)
    short = sin_omega < 1e-12
    safe = np.where(short, 1.0, sin_omega)[leg]
    w_start = np.where(short[leg], 1.0 - t, np.sin((1.0 - t) * omega[leg]) / safe)
    w_end = np.where(short[leg], t, np.sin(t * omega[leg]) / safe)
    p = w_start[:, None] * starts[leg] + w_end[:, None] * ends[leg]
    lon = np.degrees(np.arctan2(p[:, 1], p[:, 0]))
    lat = np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])))
    # exact dealer, port and recovery vertices (no rounding drift)
    ends_lonlat = np.concatenate([port, recovery])
    starts_lonlat = np.concatenate([dealer, port])
    at_end, at_start = t == 1.0, t == 0.0
    lon[at_end], lat[at_end] = ends_lonlat[leg[at_end], 0], ends_lonlat[leg[at_end], 1]
    lon[at_start], lat[at_start] = starts_lonlat[leg[at_start], 0], starts_lonlat[leg[at_start], 1]
    line = np.where(leg >= n, leg - n, leg)
    order = np.argsort(line, kind="stable")  # per line: leg 1 points, then leg 2
    coords = np.round(np.column_stack([lon[order], lat[order]]), 6)  # what GeoJSON keeps
    return shapely.linestrings(coords, indices=line[order])


def _take(values: pd.Series, rows: np.ndarray) -> pd.api.extensions.ExtensionArray | np.ndarray:
    """``values`` at positions ``rows``: numbers stay numbers, text becomes a string array."""
    if values.dtype.kind in "fiub":
        return values.to_numpy()[rows]
    return take_text(values, rows)


def _take_coded(values: pd.Series, rows: np.ndarray) -> Any:
    """``values`` at ``rows``: a categorical stays one (its codes taken), else as :func:`_take`."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return pd.Categorical.from_codes(values.cat.codes.to_numpy()[rows], dtype=values.dtype)
    return _take(values, rows)


def _mean(values: pd.Series, group: np.ndarray, n: int) -> np.ndarray:
    series = pd.Series(values.to_numpy(dtype=float, na_value=np.nan))
    return series.groupby(group).mean().reindex(pd.RangeIndex(n)).to_numpy()


def _group(records: pd.DataFrame, keys: list) -> tuple[np.ndarray, int]:
    """Integer group code per record for ``keys`` (column names or Series), and the count."""
    codes = first_seen_codes([records[k] if isinstance(k, str) else k for k in keys])
    return codes, int(codes.max()) + 1 if len(codes) else 0


def _geocode_props(records: pd.DataFrame, role: str, first: np.ndarray) -> dict[str, Any]:
    """``geocode_level`` and ``geocode_score`` of each point: those of the record whose
    coordinates it shows (``state`` = a state centroid; a score below
    :data:`geoflow.geocode.CONFIDENT_SCORE` = a guess)."""
    n = len(first)
    level, score = f"{role}_geocode_level", f"{role}_geocode_score"
    return {
        "geocode_level": (pd.array(_take(records[level], first), dtype="string")
                          if level in records else pd.array([pd.NA] * n, dtype="string")),
        "geocode_score": (pd.array(records[score].to_numpy()[first], dtype="Int64")
                          if score in records else pd.array([pd.NA] * n, dtype="Int64")),
    }


def _recovery_label(place: pd.api.extensions.ExtensionArray | pd.Categorical, lat: np.ndarray,
                    lon: np.ndarray) -> pd.api.extensions.ExtensionArray | pd.Categorical:
    """The place name, or ``"lat, lon"`` for records placed by coordinates alone. A
    categorical of names stays one when none is missing (the flows' hash: each name once)."""
    if isinstance(place, pd.Categorical) and not place.isna().any():
        return place
    labels = pd.Series(place, dtype="string")
    missing = labels.isna().to_numpy()
    if missing.any():  # only places given by bare coordinates get a formatted label
        labels[missing] = [f"{a:.4f}, {b:.4f}" for a, b in
                           zip(lat[missing], lon[missing], strict=True)]
    return labels.array


def _state_point(points: pd.DataFrame, states: pd.Series, records: pd.DataFrame, role: str,
                 group: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """lon, lat per flow of the fixed point of its ``states`` code; a state without one
    (``unknown``) falls back to the mean of its records' coordinates."""
    at = pd.Index(points["code"].astype(str)).get_indexer(pd.Index(states.astype(str)))
    lon = np.where(at >= 0, points["lon"].to_numpy(dtype=float)[np.maximum(at, 0)], np.nan)
    lat = np.where(at >= 0, points["lat"].to_numpy(dtype=float)[np.maximum(at, 0)], np.nan)
    if (at < 0).any():
        lon = np.where(at >= 0, lon, _mean(records[f"{role}_lon"], group, n))
        lat = np.where(at >= 0, lat, _mean(records[f"{role}_lat"], group, n))
    return lon, lat


def build_flows(
    records: pd.DataFrame,
    ports: pd.DataFrame,
    *,
    level: str = "place",
    state_names: Mapping[str, str] | None = None,
    segment_km: float | None = SEGMENT_KM,
    state_points: pd.DataFrame | None = None,
    lines: bool = True,
    by: str | None = None,
) -> gpd.GeoDataFrame | pd.DataFrame:
    """One flow per (dealer, port, recovery place, route kind) — or per (US state, port,
    MX state, route kind) with ``level="state"`` — from *placed* records with a crossing.

    ``ports`` is :func:`geoflow.crossings.load_ports` (``code``, ``name``, Point geometry).
    ``segment_km=None`` draws each flow as its three points (see :func:`flow_lines`).
    ``lines=False`` builds no lines at all: a plain DataFrame whose coordinate columns are
    each flow's three points (:func:`flow_geometry` draws them; a line object per flow costs
    about 300 bytes, gigabytes at ten million records).
    State-level flows start and end at one fixed point per state (``state_points``, default
    :func:`geoflow.shapes.load_state_points`), so all flows of a state share it.
    ``by`` (a column of ``records``: a code per record, such as a batch's entity) groups by
    it as well, so each code's flows are those its records alone give, in their order; the
    table then holds that column too (:func:`entity_layers`).
    """
    records = counted(records)
    if level not in ("place", "state"):
        raise ValueError(f"flow level must be 'place' or 'state', not {level!r}")
    dealer_state = fill_unknown(records["dealer_admin1"])
    recovery_state = fill_unknown(records["recovery_admin1"])
    if level == "place":
        keys = ["dealer_id", "crossing_code", *recovery_keys(records), "route_kind"]
    else:
        keys = [dealer_state, "crossing_code", recovery_state, "route_kind"]
    group, n = _group(records, [by, *keys] if by else keys)
    first = first_rows(group, n)
    names = state_names or {}
    r_lat = np.asarray(_take(records["recovery_lat"], first), dtype=float)
    r_lon = np.asarray(_take(records["recovery_lon"], first), dtype=float)

    def flow_keys(rows: np.ndarray, lat: np.ndarray, lon: np.ndarray, take=_take
                  ) -> pd.DataFrame:
        place = (_recovery_label(take(records["recovery_place"], rows), lat, lon)
                 if level == "place" else pd.array(
                     [names.get(s, s) for s in _take(recovery_state, rows)], dtype="string"))
        return pd.DataFrame({
            "dealer_id": take(records["dealer_id"], rows) if level == "place"
            else pd.array([pd.NA] * len(rows), dtype="string"),
            "dealer_state": take(dealer_state, rows),
            "crossing_code": take(records["crossing_code"], rows),
            "recovery_place": place,
            "recovery_state": take(recovery_state, rows),
            "route_kind": take(records["route_kind"], rows),
        })

    # hashed from categoricals where the records hold them: each distinct text hashed once
    hashes = _flow_hash(flow_keys(first, r_lat, r_lon, take=_take_coded))
    # number the flows in output order (guns desc, then id) before building anything big,
    # so no sorted copy of the whole table is needed afterwards
    order = _output_order(weighted_count(group, gun_weights(records), n), hashes)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    group, first, hashes = rank[group], first[order], hashes[order]
    r_lat, r_lon = r_lat[order], r_lon[order]
    key = flow_keys(first, r_lat, r_lon)  # again, in output order: cheaper than a take
    del rank, order
    stats = group_stats(records, group, n)
    if level == "place":
        dealer_name = _take(records["dealer_name"], first)
        dealer_place = _take(records["dealer_place"], first)
        d_lon = np.asarray(_take(records["dealer_lon"], first), dtype=float)
        d_lat = np.asarray(_take(records["dealer_lat"], first), dtype=float)
    else:
        dealer_name = pd.array([pd.NA] * n, dtype="string")
        dealer_place = [names.get(s, s) for s in key["dealer_state"]]
        points = load_state_points() if state_points is None else state_points
        d_lon, d_lat = _state_point(points, key["dealer_state"], records, "dealer", group, n)
        r_lon, r_lat = _state_point(points, key["recovery_state"], records, "recovery",
                                    group, n)
    port_at = positions_in(pd.Index(ports["code"].astype(str)), records["crossing_code"], first)
    port_xy = np.append(shapely.get_coordinates(ports.geometry.to_numpy()), [[np.nan] * 2], 0)
    port_name = pd.array(ports["name"].astype(str), dtype="string").take(port_at,
                                                                        allow_fill=True)
    table = pd.DataFrame(
        {
            "flow_id": _hex_ids(hashes),
            "dealer_id": key["dealer_id"].array,
            "dealer_name": pd.array(dealer_name, dtype="string"),
            "dealer_place": pd.array(dealer_place, dtype="string"),
            "dealer_state": key["dealer_state"].array,
            "crossing_code": key["crossing_code"].array,
            "crossing_name": port_name,
            "recovery_place": key["recovery_place"].array,
            "recovery_state": key["recovery_state"].array,
            "route_kind": key["route_kind"].array,
            "guns": stats.guns,
            "purchasers": stats.purchasers,
            "top_purchaser": stats.top_purchaser.array,
            "first_purchase": stats.first_purchase.array,
            "last_purchase": stats.last_purchase.array,
            "median_time_to_crime_days": stats.median_ttc.to_numpy(),
            "dealer_lon": d_lon,
            "dealer_lat": d_lat,
            "port_lon": port_xy[port_at, 0],
            "port_lat": port_xy[port_at, 1],
            "recovery_lon": r_lon,
            "recovery_lat": r_lat,
            **entity_column(records, by, first),
        }
    )
    if not lines:
        return table
    return gpd.GeoDataFrame(table, geometry=gpd.GeoSeries(flow_geometry(table, segment_km)),
                            crs="EPSG:4326")


def flow_geometry(flows: pd.DataFrame, segment_km: float | None = None) -> np.ndarray:
    """Each flow's line dealer → port → recovery from its coordinate columns: the three
    points (default), or densified every ``segment_km`` (see :func:`flow_lines`)."""
    return flow_lines(*(flows[[f"{end}_lon", f"{end}_lat"]].to_numpy(dtype=float)
                        for end in ("dealer", "port", "recovery")), segment_km=segment_km)


def build_dealers(records: pd.DataFrame, by: str | None = None) -> gpd.GeoDataFrame:
    """One Point per dealer (placed records): guns, purchasers, top purchaser and its share,
    median time to crime and purchase span. Records naming no dealer (no name, FFL or city:
    a count table's bare state) have no dealer point. ``by``: as :func:`build_flows`'s."""
    records = counted(records)
    records = rows_where(records, records["dealer_id"].notna().to_numpy(dtype=bool))
    group, n = _group(records, [by, "dealer_id"] if by else ["dealer_id"])
    stats = group_stats(records, group, n)
    first = first_rows(group, n)
    lon = np.asarray(_take(records["dealer_lon"], first), dtype=float)
    lat = np.asarray(_take(records["dealer_lat"], first), dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.round(stats.top_purchaser_guns / np.maximum(stats.guns, 1), 6)
    table = pd.DataFrame(
        {
            "dealer_id": pd.array(_take(records["dealer_id"], first), dtype="string"),
            "dealer_name": pd.array(_take(records["dealer_name"], first), dtype="string"),
            "dealer_ffl": pd.array(_take(records["dealer_ffl"], first), dtype="string"),
            "dealer_place": pd.array(_take(records["dealer_place"], first), dtype="string"),
            "dealer_state": pd.array(_take(records["dealer_admin1"], first), dtype="string"),
            "guns": stats.guns,
            "purchasers": stats.purchasers,
            "top_purchaser": stats.top_purchaser.array,
            "top_purchaser_share_frac": np.where(stats.purchasers > 0, share, np.nan),
            "median_time_to_crime_days": stats.median_ttc.to_numpy(),
            "first_purchase": stats.first_purchase.array,
            "last_purchase": stats.last_purchase.array,
            **_geocode_props(records, "dealer", first),
            **entity_column(records, by, first),
        }
    )
    points = gpd.GeoDataFrame(table, geometry=shapely.points(lon, lat), crs="EPSG:4326")
    return points.sort_values(["guns", "dealer_id"], ascending=[False, True],
                              kind="stable").reset_index(drop=True)


def build_recoveries(records: pd.DataFrame, by: str | None = None) -> gpd.GeoDataFrame:
    """One Point per recovery place (placed records): guns, purchasers, geocode level and
    recovery date span. Rows of a count table that end at the border (recovery "Mexico" with
    no place, :data:`geoflow.counts.BORDER_LEVEL`) have no recovery place and are left out.
    ``by``: as :func:`build_flows`'s."""
    records = counted(records)
    records = rows_where(records, ~is_value(records["recovery_geocode_level"], "country"))
    keys = recovery_keys(records)
    group, n = _group(records, [by, *keys] if by else keys)
    stats = group_stats(records, group, n)
    first = first_rows(group, n)
    earliest, latest = date_span(group, as_datetimes(records["recovery_date"]), n)
    lon = np.asarray(_take(records["recovery_lon"], first), dtype=float)
    lat = np.asarray(_take(records["recovery_lat"], first), dtype=float)
    table = pd.DataFrame(
        {
            "recovery_place": _recovery_label(_take(records["recovery_place"], first), lat, lon),
            "recovery_state": pd.array(_take(records["recovery_admin1"], first),
                                       dtype="string"),
            "guns": stats.guns,
            "purchasers": stats.purchasers,
            **_geocode_props(records, "recovery", first),
            "first_recovery": iso_dates(pd.Series(earliest)).array,
            "last_recovery": iso_dates(pd.Series(latest)).array,
            **entity_column(records, by, first),
        }
    )
    points = gpd.GeoDataFrame(table, geometry=shapely.points(lon, lat), crs="EPSG:4326")
    return points.sort_values(["guns", "recovery_place"], ascending=[False, True],
                              kind="stable").reset_index(drop=True)


def entity_layers(placed: pd.DataFrame, ports: pd.DataFrame, *, by: str,
                  level: str = "place", state_names: Mapping[str, str] | None = None
                  ) -> dict[str, gpd.GeoDataFrame]:
    """The flows, dealers, recoveries and crossings of the placed records of every entity of
    a batch at once: each grouped by the entity's code (``placed[by]``) as well, so each
    entity's rows are those its own records give, in their order, each row holding its code
    in ``by`` (:func:`geoflow.aggregate.entity_frames` takes it out)."""
    return {"flows": build_flows(placed, ports, level=level, state_names=state_names, by=by),
            "dealers": build_dealers(placed, by), "recoveries": build_recoveries(placed, by),
            "crossings": build_crossings(placed, ports, by)}


def build_crossings(records: pd.DataFrame, ports: gpd.GeoDataFrame, by: str | None = None
                    ) -> gpd.GeoDataFrame:
    """One Point per port used by placed records, with guns split known / modelled; most
    guns first (then by code). Counted by each record's row in ``ports``, not merged (a
    batch entity's layer: 8 -> 5 ms). ``by``: as :func:`build_flows`'s."""
    records = counted(records)
    at = positions_in(pd.Index(ports["code"].astype(str)), records["crossing_code"])
    cell, owner, port_of = entity_cells(records, by, at, len(ports))
    weights = gun_weights(records)
    guns = weighted_count(cell, weights, len(port_of))
    modelled = weighted_count(cell, weights * is_value(records["route_kind"], "modelled"),
                              len(port_of))
    used = np.flatnonzero(np.bincount(cell[cell >= 0], minlength=len(port_of)))
    codes = ports["code"].astype(str).to_numpy()[port_of[used]]
    keys = (pd.factorize(codes, sort=True)[0], -guns[used], *([owner[used]] if by else []))
    order = used[np.lexsort(keys)]
    chosen = ports.iloc[port_of[order]]
    return gpd.GeoDataFrame({
        "code": chosen["code"].astype(str).astype("string").array,
        **{column: chosen[column].astype("string").array
           for column in ("name", "us_state", "mx_city")},
        "guns": guns[order], "guns_known": guns[order] - modelled[order],
        "guns_modelled": modelled[order],
        **({by: owner[order]} if by else {}),
    }, geometry=chosen.geometry.to_numpy(), crs="EPSG:4326")


#: The guns column of a state in ``states.geojson``, by country: one word, one meaning.
STATE_GUNS = {"US": "guns_sourced", "MX": "guns_recovered"}


def state_guns(states: pd.DataFrame) -> np.ndarray:
    """Guns per row of a states layer: ``guns_sourced`` for US states, ``guns_recovered`` for
    Mexican ones (what a choropleth of either side shades by)."""
    is_us = (states["country"].astype("string") == "US").to_numpy(dtype=bool, na_value=False)
    values = np.where(is_us, states[STATE_GUNS["US"]].to_numpy(dtype=float, na_value=0.0),
                      states[STATE_GUNS["MX"]].to_numpy(dtype=float, na_value=0.0))
    return values.astype(np.int64)


def build_states(records: pd.DataFrame, states: gpd.GeoDataFrame, *,
                 sourced: pd.Series | None = None, recovered: pd.Series | None = None
                 ) -> gpd.GeoDataFrame:
    """Every US and Mexican state: ``guns_sourced`` (US states: guns sold there; null for
    Mexican states) or ``guns_recovered`` (Mexican states: guns recovered there; null for US
    states), ``share_frac`` of those guns on its side of the border (0–1), and
    ``guns_placed``: of them, the guns on the map.

    ``sourced`` and ``recovered`` (state code → guns) are the counts over all valid records,
    as in ``by_us_state``/``by_mx_state`` and the findings; without them ``records`` are
    counted. ``guns_placed`` always counts ``records`` (the placed records of a run), so a
    state with unplaced guns shows both numbers, each under its own name."""
    records = counted(records)
    codes = pd.Index(states["code"].astype(str))
    weights = gun_weights(records)

    def tally(column: str) -> tuple[np.ndarray, int]:
        """Guns of ``records`` per state by ``column`` (a state code), and the guns of all
        records that name a state."""
        at = positions_in(codes, records[column])
        return (weighted_count(at, weights, len(codes)),
                int(weights[records[column].notna().to_numpy()].sum()))

    def given(counts: pd.Series) -> tuple[np.ndarray, int]:
        """``counts`` (state code → guns) per state, and their total."""
        at = codes.get_indexer(counts.index.astype(str))
        return weighted_count(at, counts.to_numpy(dtype=float), len(codes)), counts.sum()

    placed_us, us_total = tally("dealer_admin1")
    placed_mx, mx_total = tally("recovery_admin1")
    sourced_guns, us_total = (placed_us, us_total) if sourced is None else given(sourced)
    recovered_guns, mx_total = ((placed_mx, mx_total) if recovered is None
                                else given(recovered))
    is_us = (states["country"] == "US").to_numpy()
    guns = np.where(is_us, sourced_guns, recovered_guns)
    totals = np.where(is_us, us_total, mx_total).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, np.round(guns / totals, 6), 0.0)
    # one frame made at once (a column set at a time cost a batch entity ~2 ms)
    return gpd.GeoDataFrame({
        **{column: states[column].copy() for column in ("code", "name", "country")},
        "geometry": gpd.GeoSeries(states.geometry.to_numpy(), index=states.index),
        # each side's own count, null on the other side of the border
        "guns_sourced": pd.arrays.IntegerArray(sourced_guns, ~is_us),
        "guns_recovered": pd.arrays.IntegerArray(recovered_guns, is_us),
        "share_frac": share,
        "guns_placed": np.where(is_us, placed_us, placed_mx).astype("int64"),
    }, index=states.index, geometry="geometry", crs="EPSG:4326")
