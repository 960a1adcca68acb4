"""Shipped state polygons and state names (US states + DC + Puerto Rico, 32 Mexican states).

The files live in ``shapes/`` of the checkout and install as the package
``geoflow.shapes_data``; they are read through :mod:`importlib.resources`, so they work from
a wheel as well as from the checkout. ``scripts/build_shapes.py`` rebuilds them; sources,
licences and simplification tolerance are in ``shapes/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from geoflow.errors import InputError

__all__ = ["DATA_PACKAGE", "ShapeCache", "data_file", "load_states", "load_state_names",
           "load_state_points"]

#: The package that carries the shipped data files.
DATA_PACKAGE = "geoflow.shapes_data"


def data_file(name: str) -> Traversable:
    """Return the shipped data file ``name`` (a :class:`Traversable`), or raise InputError."""
    resource = files(DATA_PACKAGE).joinpath(name)
    if not resource.is_file():
        raise InputError(
            f"shipped data file {name!r} is missing from {DATA_PACKAGE}; "
            "reinstall geoflow or run scripts/build_shapes.py",
            path=str(resource),
        )
    return resource


@lru_cache(maxsize=1)
def _states() -> gpd.GeoDataFrame:
    with as_file(data_file("states.geojson")) as path:
        frame = gpd.read_file(path, engine="pyogrio")
    frame = frame[["code", "name", "country", "geometry"]].set_crs(4326, allow_override=True)
    for column in ("code", "name", "country"):
        frame[column] = frame[column].astype("string")
    return frame.reset_index(drop=True)


def load_states() -> gpd.GeoDataFrame:
    """US and Mexican state polygons: ``code`` (ISO 3166-2, ``US-TX``, ``MX-CHH``), ``name``,
    ``country`` (``US``/``MX``), geometry (Polygon/MultiPolygon, EPSG:4326).

    Read once per process; each call returns a fresh copy the caller may modify.

    >>> states = load_states()
    >>> states.loc[states["code"] == "MX-NLE", "name"].item()
    'Nuevo León'
    """
    return _states().copy()


@lru_cache(maxsize=1)
def _state_names() -> pd.DataFrame:
    with data_file("state_names.csv").open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype="string", keep_default_na=False)
    return frame.replace("", pd.NA)


def load_state_names() -> pd.DataFrame:
    """Names and abbreviations of every state in :func:`load_states`.

    Columns: ``code``, ``name``, ``country``, ``number`` (US FIPS code or INEGI number
    ``01``–``32``, as text), ``abbreviations`` and ``alternate_names`` (each ``|``-separated,
    written the way records write them: ``"Chih.|CHIH|CHH"``, ``"Distrito Federal|CDMX"``; NA
    when there are none). Compare after removing accents, case and punctuation.
    """
    return _state_names().copy()


@lru_cache(maxsize=1)
def _state_points() -> pd.DataFrame:
    with data_file("gazetteer_states.csv").open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype={"code": "string", "name": "string",
                                           "country": "string"})
    return frame[["code", "lon", "lat"]]


def load_state_points() -> pd.DataFrame:
    """One fixed representative point per state (``shapes/gazetteer_states.csv``: a point
    inside the state, e.g. the Census internal point): ``code``, ``lon``, ``lat``. State-level
    flows start and end there, so every flow of a state shares one point.

    >>> points = load_state_points().set_index("code")
    >>> bool(points.loc["US-TX", "lat"] > 25)
    True
    """
    return _state_points().copy()


class ShapeCache:
    """Results derived from a shape, kept per shape *object* for the life of the process.

    Every output set of a batch draws the same shipped state outlines (the very same shapely
    objects: ``shapes.load_states`` reads them once per process), so what is derived from them
    (simplified outlines, their GeoJSON) is made once per worker, not once per entity. Keyed by
    identity; the shape is held, so its id is never reused while cached. Bounded: cleared when
    full.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._items: dict[int, tuple[Any, Any]] = {}

    def get(self, shapes: Sequence[Any], make: Any) -> list[Any]:
        """``make(missing)`` → derived values for the shapes not cached yet (one vectorised
        call); returns the derived value of every shape, in order."""
        hits = [self._items.get(id(g)) for g in shapes]
        missing = [i for i, hit in enumerate(hits) if hit is None or hit[0] is not shapes[i]]
        if missing:
            made = make(np.asarray([shapes[i] for i in missing], dtype=object))
            if len(self._items) + len(missing) > self.limit:
                self._items.clear()
            for i, value in zip(missing, made, strict=True):
                hits[i] = self._items[id(shapes[i])] = (shapes[i], value)
        return [hit[1] for hit in hits]
