"""Count tables: published tables whose rows stand for many guns (guns by US state, by year,
by US state × Mexican state …), mapped for what they hold and no more.

The reader turns the count column into the ``guns`` weight every aggregate sums
(:func:`geoflow.aggregate.gun_weights`); coarse places are geocoded like any other (a bare US
or Mexican state lands on the state's point, level ``state``). What this module adds is the
destination a count table often has instead of a place: the country alone (``Mexico``).
Such rows are routed to the border and no further: their flow ends at the port of entry
(:func:`to_border`), no Mexican point is invented, and the recoveries layer leaves them out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoflow.crossings import TIER_PENALTY_KM, haversine_km
from geoflow.places import normalise_country

__all__ = ["BORDER_LEVEL", "BORDER_PLACE", "to_border", "nearest_ports"]

#: ``recovery_geocode_level`` of a row whose recovery is only "Mexico": its flow ends at the port.
BORDER_LEVEL = "country"
#: ``recovery_place`` of such rows (flows, flowmap names).
BORDER_PLACE = "Mexico (place not given; flow ends at the border)"
_RECOVERY_PLACE_COLUMNS = ("recovery_city", "recovery_state", "recovery_lat", "recovery_lon")


def nearest_ports(dealer_lonlat: np.ndarray, ports: pd.DataFrame) -> np.ndarray:
    """Row index into ``ports`` of the port nearest each dealer (great circle plus the port's
    tier penalty, as the crossing model), computed once per distinct dealer point."""
    port_xy = np.column_stack([ports.geometry.x.to_numpy(), ports.geometry.y.to_numpy()])
    penalty = (ports["tier"].astype(str).map(TIER_PENALTY_KM).fillna(0.0).to_numpy(float)
               if "tier" in ports.columns else np.zeros(len(ports)))
    unique, inverse = np.unique(np.asarray(dealer_lonlat, dtype=float), axis=0,
                                return_inverse=True)
    distance = haversine_km(unique[:, None, :], port_xy[None, :, :]) + penalty
    return distance.argmin(axis=1)[inverse.ravel()]


def to_border(records: pd.DataFrame, ports: pd.DataFrame) -> pd.DataFrame:
    """Records (after geocoding and :func:`geoflow.crossings.assign_crossings`) whose dealer
    is located and whose recovery is Mexico with no place, state or coordinates end at a
    port: their own crossing (``known``) or the port nearest the dealer (``modelled``).
    Their ``recovery_lat``/``recovery_lon`` become the port's, ``recovery_place`` is
    :data:`BORDER_PLACE` and ``recovery_geocode_level`` :data:`BORDER_LEVEL`;
    ``recovery_admin1`` stays empty (no Mexican state is known). Other records are unchanged.
    """
    present = [c for c in _RECOVERY_PLACE_COLUMNS if c in records.columns]
    no_place = records[present].isna().all(axis=1).to_numpy(dtype=bool)
    mexico = (normalise_country(records["recovery_country"]) == "MX").to_numpy(
        dtype=bool, na_value=False)
    dealer = records[["dealer_lon", "dealer_lat"]].to_numpy(dtype=float, na_value=np.nan)
    border = no_place & mexico & np.isfinite(dealer).all(axis=1)
    if not border.any():
        return records
    out = records.copy(deep=False)  # copy-on-write: the caller's frame is not changed
    codes = ports["code"].astype(str)
    given = pd.Index(codes).get_indexer(out["crossing_code"].astype("string").fillna(""))
    port = np.where(given >= 0, given, -1)
    todo = border & (port < 0)
    if todo.any():
        port[todo] = nearest_ports(dealer[todo], ports)
    rows = np.flatnonzero(border)
    at = port[rows]
    mask = pd.Series(border, index=out.index)
    text = {
        "recovery_place": BORDER_PLACE,
        "recovery_geocode_level": BORDER_LEVEL,
    }
    for column, value in text.items():
        out[column] = out[column].astype("string").mask(mask, value)
    modelled = pd.Series(todo, index=out.index)
    out["crossing_code"] = out["crossing_code"].astype("string").mask(
        modelled, pd.Series(codes.to_numpy()[port], index=out.index, dtype="string"))
    out["crossing_name"] = out["crossing_name"].astype("string").mask(
        modelled, pd.Series(ports["name"].astype(str).to_numpy()[port], index=out.index,
                            dtype="string"))
    out["route_kind"] = out["route_kind"].astype("string").mask(modelled, "modelled")
    for column, axis in (("recovery_lon", "x"), ("recovery_lat", "y")):
        values = out[column].to_numpy(dtype=float, na_value=np.nan).copy()
        values[rows] = getattr(ports.geometry, axis).to_numpy()[at]
        out[column] = values
    return out
