"""What a map shows, renderer-independent: the *scene* both the Leaflet page and the stills draw.

:func:`build_scene` turns a pipeline ``RunResult`` and :class:`MapOptions` into a frozen
:class:`Scene`; ``geoflow.render`` draws it with Leaflet, ``geoflow.static`` with matplotlib.
Everything a reader sees is decided here, once: which legs are drawn and how wide, the colours
(checked for contrast), the choropleth classes (mapclassify's quantiles), the labels and their
priorities, the legend, the texts and the synthetic-data banner. No I/O, no drawing library.

The story is a funnel: guns go from many dealers, converge on a few ports of entry and fan out
across Mexico. So the flows are drawn as two aggregated *legs* (``flow_style="legs"``, the
default): the **US leg** origin → port and the **Mexican leg** port → destination, each summed
separately over the flows, at a level chosen per side for the data (:data:`LEVELS`):

- ``"place"``: each dealer (US) / each recovery place (MX), when that side has at most half of
  ``max_legs`` legs at that level (a trafficker, a small state);
- ``"town"`` (US only): dealers of the same town merged;
- ``"state"``: one fixed point per state (``shapes/gazetteer_states.csv``), for the national map.

Each side keeps its largest legs up to its share of ``max_legs`` (150); every placed gun is
either in a drawn leg or counted in :attr:`Legend.notes`. A leg is split by route kind, so a
modelled crossing is never drawn as a known one (dashed, :data:`MODELLED_DASH`), and known and
modelled twins bow to opposite sides. ``flow_style="paths"`` keeps one line per flow
(dealer → port → place), the ``top_n`` largest.

Scene API (all frozen dataclasses; coordinates are WGS 84 ``(lon, lat)`` tuples):

- :class:`Scene`: ``title``, ``subtitle``, ``source``, ``credit``, ``caveat``, ``names_note``,
  ``attribution`` (tuple of texts), ``synthetic`` (bool), ``banner`` (the synthetic-data banner
  text, "" when not synthetic), ``flow_style``, ``levels`` (``{"us": level, "mx": level}``),
  ``flow_colour``, ``legs``, ``areas``, ``classes``, ``points``, ``labels``, ``legend``,
  ``bounds`` (``((west, south), (east, north))`` of everything drawn, or None).
- :class:`Leg`: ``side`` (``us`` | ``mx`` | ``path``), ``origin``/``destination`` (names),
  ``port_code``, ``port_name``, ``route_kind`` (``known`` | ``modelled``), ``guns``, ``width``
  (px), ``colour``, ``dash`` (SVG dash array or None), ``arrow`` (draw an arrowhead at the
  end), ``coords`` (the display curve, Web-Mercator quadratic Bézier, lon/lat), ``properties``
  (what a tooltip shows). Sorted largest first.
- :class:`Area`: one state: ``code``, ``name``, ``country``, ``guns``, ``share``, ``cls``
  (class index, −1 = none), ``fill`` (colour drawn), ``geometry`` (shapely, simplified).
- :class:`Classes`: per country: ``country``, ``title``, ``bins`` (upper bounds), ``colours``
  (as drawn: lightened when flows are drawn so the flow colour keeps ≥ 3:1 contrast),
  ``labels``, ``none_colour``.
- :class:`PointLayer`: ``kind`` (``dealer`` | ``recovery`` | ``port``), ``name``, ``points``
  (tuple of :class:`Point`: ``lon``, ``lat``, ``radius`` px, ``fill``, ``stroke``,
  ``hollow`` (placed only at state level: drawn as a ring), ``guns``, ``properties``),
  ``hidden`` and ``hidden_guns`` (not drawn, beyond ``max_points``).
- :class:`Label`: ``text``, ``lon``, ``lat``, ``kind`` (``port`` | ``dealer`` | ``recovery`` |
  ``state``), ``priority`` (higher first when labels collide), ``min_zoom`` (web-map zoom from
  which it may show; a still at national scale uses ``min_zoom <= 5``).
- :class:`Legend`: ``widths`` (``(guns, px)`` samples; the first is the largest drawn leg),
  ``classes``, ``routes`` (``(route_kind, label, dash)``), ``points`` (``(kind, label, fill,
  stroke)``), ``notes`` (what is not drawn, and how).

>>> from geoflow.pipeline import run_pipeline
>>> scene = build_scene(run_pipeline("traces.csv"), options=MapOptions())  # doctest: +SKIP
>>> scene.legs[0].guns, scene.legend.widths[0]  # doctest: +SKIP
(257, (257, 18.0))
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from geoflow.aggregate import (
    first_rows,
    plural,
    positions_in,
    python_values,
)
from geoflow.counts import BORDER_PLACE
from geoflow.errors import ConfigError
from geoflow.flows import state_guns
from geoflow.schema import SYNTHETIC_LABEL
from geoflow.shapes import ShapeCache

__all__ = [
    "ATTRIBUTION",
    "DEFAULT_CAVEAT",
    "FLOW_STYLES",
    "LEVELS",
    "MODELLED_DASH",
    "NO_DATA",
    "PALETTES",
    "PORT_COLOUR",
    "SYNTHETIC_BANNER",
    "WIDTH_RANGE",
    "Area",
    "Classes",
    "Label",
    "Leg",
    "Legend",
    "MapOptions",
    "Point",
    "PointLayer",
    "Scene",
    "ShapeCache",
    "build_scene",
    "contrast_ratio",
    "is_synthetic",
    "lighten",
    "relative_luminance",
    "side_legs",
]

DEFAULT_CAVEAT = (
    "Trace data cover only guns that were recovered and submitted for tracing; "
    "they are not a measure of all trafficking."
)

#: The banner on every map (national, per entity, batch index) of synthetic input.
SYNTHETIC_BANNER = SYNTHETIC_LABEL

#: Data and software credits every map carries (shapes/README.md gives the licences).
ATTRIBUTION: tuple[str, ...] = (
    "Boundaries: US Census Bureau TIGER/Line; INEGI Marco Geoestadístico",
    "Places: GeoNames (CC BY 4.0)",
    "Leaflet",
)

#: Light to dark, 5 classes. Every pair of neighbours stays ΔE ≥ 10 (CIELAB) under simulated
#: deuteranopia and protanopia even after the lightening for flow contrast (_lightened), which
#: tests/test_static.py checks: hence the 5-class ColorBrewer purples and greens (the 6-class
#: light end was too close), and greys evenly spaced in L* (92 … 47) that need no lightening.
_SEQUENTIAL = {
    "blues": ("#deebf7", "#9ecae1", "#6baed6", "#3182bd", "#08519c"),
    "oranges": ("#fee6ce", "#fdae6b", "#fd8d3c", "#e6550d", "#a63603"),
    "purples": ("#f2f0f7", "#cbc9e2", "#9e9ac8", "#756bb1", "#54278f"),
    "greens": ("#edf8e9", "#bae4b3", "#74c476", "#31a354", "#006d2c"),
    "viridis": ("#fde725", "#5ec962", "#21918c", "#3b528b", "#440154"),
    "cividis": ("#fee838", "#c3b369", "#7f7c75", "#48526b", "#00224e"),
    "greys": ("#e8e8e8", "#c8c8c8", "#aaaaaa", "#8c8c8c", "#6f6f6f"),
}

#: Colour-blind-safe sequential palettes (ColorBrewer single-hue, viridis, cividis), light to
#: dark, as (US states: guns sourced, Mexican states: guns recovered).
PALETTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "blue-orange": (_SEQUENTIAL["blues"], _SEQUENTIAL["oranges"]),
    "purple-green": (_SEQUENTIAL["purples"], _SEQUENTIAL["greens"]),
    "viridis": (_SEQUENTIAL["viridis"], _SEQUENTIAL["viridis"]),
    "cividis": (_SEQUENTIAL["cividis"], _SEQUENTIAL["cividis"]),
    "greys": (_SEQUENTIAL["greys"], _SEQUENTIAL["greys"]),
}

#: Per palette: (dealer circles, recovery circles, flow lines), distinct from each other.
INK: dict[str, tuple[str, str, str]] = {
    "blue-orange": ("#08519c", "#a63603", "#2b1d3f"),
    "purple-green": ("#54278f", "#006d2c", "#3a2a14"),
    "viridis": ("#440154", "#c2410c", "#111111"),
    "cividis": ("#00224e", "#c2410c", "#111111"),
    "greys": ("#252525", "#c2410c", "#4d000f"),
}

NO_DATA = "#f7f7f5"
PORT_COLOUR = "#111111"
MODELLED_DASH = "7 5"
#: Leg widths in px: the smallest leg, and the largest drawn leg.
WIDTH_RANGE = (1.5, 18.0)
#: The full width goes to the largest leg, but to no fewer guns than this: a map whose largest
#: flow is 7 guns keeps thin lines instead of drawing 7 guns 18 px wide.
FULL_WIDTH_MIN_GUNS = 50.0
#: Minimum WCAG contrast between the flow colour and every area colour under it.
MIN_CONTRAST = 3.0
FLOW_STYLES = ("legs", "paths")
LEVELS = ("place", "town", "state")
_CURVE_POINTS = 16
_DECIMALS = 4
_RADIUS = {"dealer": (2.0, 11.0), "recovery": (2.0, 10.0), "port": (4.0, 11.0)}


@dataclass(frozen=True, kw_only=True)
class MapOptions:
    """What the map says and how much it draws (shared by the web map and the stills).

    ``source`` empty means "name the input file"; ``subtitle`` empty means a sentence of the
    totals (with the filter description). ``tiles`` offers the online CartoDB Positron layer in
    the layer control (always off until the reader turns it on). ``flow_style`` ``legs`` draws
    the aggregated US and Mexican legs (at most ``max_legs``), ``paths`` one line per flow (the
    ``top_n`` largest of at least ``min_guns`` guns); ``max_points`` bounds the dealers and
    recovery places. What is not drawn is counted in the legend. ``synthetic`` forces the
    synthetic-data banner (it is also set from the run's manifest). ``show_names`` only changes
    the wording: names arrive already pseudonymised unless the pipeline ran with ``show_names``.
    """

    title: str = "Guns traced from US dealers to Mexico"
    subtitle: str = ""
    source: str = ""
    credit: str = "Map: geoflow"
    caveat: str = DEFAULT_CAVEAT
    palette: str = "blue-orange"
    flow_style: str = "legs"
    max_legs: int = 150
    top_n: int = 300
    min_guns: int = 1
    max_points: int = 1500
    tiles: bool = True
    show_names: bool = False
    synthetic: bool = False

    def __post_init__(self) -> None:
        if self.palette not in PALETTES:
            raise ConfigError(
                f"unknown palette {self.palette!r}; choose one of {', '.join(PALETTES)}"
            )
        if self.flow_style not in FLOW_STYLES:
            raise ConfigError(f"unknown flow style {self.flow_style!r}; choose one of "
                              f"{', '.join(FLOW_STYLES)}")
        for name in ("top_n", "min_guns", "max_points", "max_legs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")


class MapData(Protocol):
    """What :func:`build_scene` reads from a ``RunResult`` (docs/internals.md)."""

    flows: pd.DataFrame
    dealers: pd.DataFrame
    recoveries: pd.DataFrame
    crossings: pd.DataFrame
    states: pd.DataFrame


@dataclass(frozen=True)
class Leg:
    side: str
    origin: str
    destination: str
    port_code: str
    port_name: str
    route_kind: str
    guns: int
    width: float
    colour: str
    dash: str | None
    arrow: bool
    coords: tuple[tuple[float, float], ...]
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Area:
    code: str
    name: str
    country: str
    guns: int
    share: float | None
    cls: int
    fill: str
    geometry: Any


@dataclass(frozen=True)
class Classes:
    country: str
    title: str
    bins: tuple[float, ...]
    colours: tuple[str, ...]
    labels: tuple[str, ...]
    none_colour: str = NO_DATA


@dataclass(frozen=True)
class Point:
    lon: float
    lat: float
    radius: float
    fill: str
    stroke: str
    hollow: bool
    guns: int
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PointLayer:
    kind: str
    name: str
    points: tuple[Point, ...]
    hidden: int = 0
    hidden_guns: int = 0


@dataclass(frozen=True)
class Label:
    text: str
    lon: float
    lat: float
    kind: str
    priority: float
    min_zoom: float = 0.0


@dataclass(frozen=True)
class Legend:
    widths: tuple[tuple[int, float], ...]
    classes: tuple[Classes, ...]
    routes: tuple[tuple[str, str, str | None], ...]
    points: tuple[tuple[str, str, str, str], ...]
    notes: tuple[str, ...]
    flow_title: str = ""


@dataclass(frozen=True)
class Scene:
    title: str
    subtitle: str
    source: str
    credit: str
    caveat: str
    names_note: str
    attribution: tuple[str, ...]
    synthetic: bool
    banner: str
    flow_style: str
    levels: Mapping[str, str]
    flow_colour: str
    legs: tuple[Leg, ...]
    areas: tuple[Area, ...]
    classes: tuple[Classes, ...]
    points: tuple[PointLayer, ...]
    labels: tuple[Label, ...]
    legend: Legend
    bounds: tuple[tuple[float, float], tuple[float, float]] | None
    palette: str = "blue-orange"


# --------------------------------------------------------------------------- colour


def _rgb(colour: str) -> np.ndarray:
    text = colour.lstrip("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    return np.array([int(text[i:i + 2], 16) for i in (0, 2, 4)], dtype=float) / 255.0


def relative_luminance(colour: str) -> float:
    """WCAG 2 relative luminance of a ``#rrggbb`` colour (0 black … 1 white)."""
    c = _rgb(colour)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two colours (1 … 21).

    >>> round(contrast_ratio("#000000", "#ffffff"), 1)
    21.0
    """
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def lighten(colour: str, amount: float) -> str:
    """``colour`` mixed with white (``amount`` 0 = unchanged, 1 = white)."""
    mixed = _rgb(colour) * (1 - amount) + amount
    return "#" + "".join(f"{round(v * 255):02x}" for v in mixed)


def _lightened(palette: Sequence[str], against: str, ratio: float) -> tuple[str, ...]:
    """The palette mixed evenly with white, just enough that every colour reaches ``ratio``
    contrast with ``against`` (class order kept: one amount for all)."""
    for amount in np.arange(0.0, 0.96, 0.05):
        colours = tuple(lighten(c, float(amount)) for c in palette)
        if all(contrast_ratio(c, against) >= ratio for c in colours):
            return colours
    return tuple(lighten(c, 0.95) for c in palette)


# --------------------------------------------------------------------------- small helpers


def _fmt(x: float) -> str:
    return f"{round(x):,}"


def _count(n: float, noun: str) -> str:
    """``"1 gun"``, ``"2,343 guns"`` (``n`` rounded first)."""
    return plural(round(n), noun)


def _guns(values: Any) -> np.ndarray:
    """Guns as floats, 0 where missing or not a number (numbers in numpy's own arrays are
    read as they are: the pandas round trip cost a batch entity's scene ~1 ms)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
        return values.astype(float)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return np.where(np.isnan(values), 0.0, values).astype(float)
    return pd.to_numeric(pd.Series(values), errors="coerce").fillna(0).to_numpy(dtype=float)


def _text(series: pd.Series) -> pd.Series:
    return series.astype("string").fillna("")


_OUTLINES = ShapeCache()


def _outlines(geoms: np.ndarray) -> list[Any]:
    """State outlines simplified for drawing (cached per shape: :class:`ShapeCache`)."""
    return _OUTLINES.get(list(geoms), lambda todo: shapely.make_valid(
        shapely.simplify(todo, 0.02, preserve_topology=True)))


def _mercator(lonlat: np.ndarray) -> np.ndarray:
    lat = np.clip(lonlat[..., 1], -85.0, 85.0)
    y = np.degrees(np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)))
    return np.stack([lonlat[..., 0], y], axis=-1)


def _unmercator(xy: np.ndarray) -> np.ndarray:
    lat = np.degrees(2 * np.arctan(np.exp(np.radians(xy[..., 1]))) - np.pi / 2)
    return np.stack([xy[..., 0], lat], axis=-1)


def bezier(p0: np.ndarray, p2: np.ndarray, bend: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Quadratic Bézier curves p0 → p2 bowed sideways by ``bend`` × length: (m, len(t), 2)."""
    d = p2 - p0
    ctrl = (p0 + p2) / 2 + bend[:, None] * np.stack([-d[:, 1], d[:, 0]], axis=1)
    tt = t[None, :, None]
    return ((1 - tt) ** 2 * p0[:, None] + 2 * (1 - tt) * tt * ctrl[:, None]
            + tt ** 2 * p2[:, None])


def _curves(start: np.ndarray, end: np.ndarray, bend: np.ndarray) -> np.ndarray:
    """Lon/lat curves (m, n, 2) from lon/lat ends, drawn in Web Mercator, rounded."""
    t = np.linspace(0.0, 1.0, _CURVE_POINTS)
    xy = bezier(_mercator(start), _mercator(end), bend, t)
    return np.round(_unmercator(xy), _DECIMALS)


def widths(guns: np.ndarray, vmax: float) -> np.ndarray:
    """Line width in px ∝ guns: ``WIDTH_RANGE[1]`` at ``vmax``, never under ``WIDTH_RANGE[0]``."""
    lo, hi = WIDTH_RANGE
    vals = np.asarray(guns, dtype=float)
    return np.round(np.maximum(lo, hi * vals / vmax) if vmax > 0 else np.full_like(vals, lo), 2)


def _sqrt_scale(values: np.ndarray, lo: float, hi: float, vmax: float) -> np.ndarray:
    """Square-root scale → [lo, hi] (circle area ∝ value)."""
    vals = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    frac = np.sqrt(np.clip(vals / vmax, 0, 1)) if vmax > 0 else np.zeros_like(vals)
    return np.round(lo + (hi - lo) * frac, 2)


def _nice(x: float) -> int:
    """The largest 1-2-5 number ≤ x (at least 1)."""
    if x < 1:
        return 1
    mag = 10 ** math.floor(math.log10(x))
    return int(max(m * mag for m in (1, 2, 5) if m * mag <= x))


def _short_place(text: str) -> str:
    """``"Culiacán, Sinaloa"`` → ``"Culiacán"``; US towns keep their state (``"Laredo, TX"``)."""
    head, _, tail = text.partition(",")
    tail = tail.strip()
    return text.strip() if re.fullmatch(r"[A-Z]{2}", tail) else head.strip()


@lru_cache(maxsize=1)
def state_points() -> dict[str, tuple[float, float, str]]:
    """ISO state code → (lon, lat, name): the one fixed point per state the maps use
    (``geoflow.shapes.load_state_points``, the same points as state-level flows)."""
    from geoflow.shapes import load_state_names, load_state_points

    names = load_state_names().set_index("code")["name"]
    points = load_state_points()
    return {code: (float(lon), float(lat), str(names.get(code, code)))
            for code, lon, lat in zip(points["code"], points["lon"], points["lat"],
                                      strict=True)}


# --------------------------------------------------------------------------- synthetic


def is_synthetic(result: Any) -> bool:
    """True when the run's manifest says its input is synthetic (``manifest["synthetic"]``) or
    the input is the shipped sample file."""
    manifest = getattr(result, "manifest", None) or {}
    if manifest.get("synthetic"):
        return True
    path = str((manifest.get("input") or {}).get("path") or "")
    return re.split(r"[\\/]", path)[-1].startswith("geoflow-sample-")


# --------------------------------------------------------------------------- legs


def _ends(flows: pd.DataFrame, side: str, level: str) -> pd.DataFrame:
    """Per flow, the key, name and lon/lat of the leg's far end (origin for ``us``,
    destination for ``mx``) at ``level``. A flow that ends at the border (a count table's
    guns with no place in Mexico: :data:`~geoflow.counts.BORDER_PLACE`) has no Mexican end:
    its Mexican leg would be a point at the port, with an arrowhead saying guns were
    recovered there."""
    ends = _far_ends(flows, side, level)
    if side == "mx" and "recovery_place" in flows.columns:
        border = _at_border(flows)
        if border.any():
            ends["lon"] = np.where(border, np.nan, ends["lon"].to_numpy(dtype=float))
            ends["lat"] = np.where(border, np.nan, ends["lat"].to_numpy(dtype=float))
    return ends


def _at_border(flows: pd.DataFrame) -> np.ndarray:
    """Boolean array: flows that end at the border, with no place in Mexico."""
    places = pa.array(_text(flows["recovery_place"]).array)
    return pc.equal(places, BORDER_PLACE).to_numpy(zero_copy_only=False)


def _far_ends(flows: pd.DataFrame, side: str, level: str) -> pd.DataFrame:
    """:func:`_ends` before the border's flows are taken out."""
    if side == "us":
        place, state, lon, lat, ident = ("dealer_place", "dealer_state", "dealer_lon",
                                         "dealer_lat", "dealer_id")
    else:
        place, state, lon, lat, ident = ("recovery_place", "recovery_state", "recovery_lon",
                                         "recovery_lat", "recovery_place")
    if level == "state" and state not in flows.columns:
        level = "town"
    if level == "state":
        codes = _text(flows[state])
        fixed = pd.DataFrame.from_dict(state_points(), orient="index",
                                       columns=["lon", "lat", "name"])
        row = positions_in(fixed.index, codes)  # -1: a code with no fixed point
        known, row = row >= 0, np.maximum(row, 0)
        # the state's name, else the place (Arrow kernels: no Python string per flow)
        names = pa.array(fixed["name"].tolist(), pa.large_string()).take(pa.array(row))
        places = pc.cast(pa.array(_text(flows[place]).array), pa.large_string())
        return pd.DataFrame({
            "key": codes.array,
            "name": pd.arrays.ArrowStringArray(pc.if_else(pa.array(known), names, places)),
            "lon": np.where(known, fixed["lon"].to_numpy(dtype=float)[row],
                            flows[lon].to_numpy(dtype=float)),
            "lat": np.where(known, fixed["lat"].to_numpy(dtype=float)[row],
                            flows[lat].to_numpy(dtype=float)),
        }, index=flows.index)
    key_col = ident if (level == "place" and ident in flows.columns) else place
    names = flows["dealer_name"] if (side == "us" and level == "place"
                                     and "dealer_name" in flows.columns) else flows[place]
    keys = pa.array(_text(flows[key_col]).array)
    if key_col != place:  # no id: the place (an Arrow kernel, no pandas mask per call)
        keys = pc.if_else(pc.equal(keys, ""), pa.array(_text(flows[place]).array), keys)
    # .array keeps Arrow text as it is (to_numpy would make a million Python strings)
    return pd.DataFrame({"key": pd.arrays.ArrowStringArray(keys), "name": _text(names).array,
                         "lon": flows[lon].to_numpy(dtype=float),
                         "lat": flows[lat].to_numpy(dtype=float)}, index=flows.index)


def side_legs(flows: pd.DataFrame, side: str, level: str) -> pd.DataFrame:
    """One row per (far end, port, route kind) with summed guns, largest first: the end's
    and the port's name and point from the group's first flow, the end's point averaged."""
    return _legs_from_ends(flows, _ends(flows, side, level), _routes(flows))


def _placed_ends(ends: pd.DataFrame) -> np.ndarray:
    """Rows of ``ends`` (:func:`_ends`) with a point: the flows a leg is drawn from."""
    lon, lat = ends["lon"].to_numpy(dtype=float), ends["lat"].to_numpy(dtype=float)
    return np.flatnonzero(np.isfinite(lon) & np.isfinite(lat))


def _routes(flows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per flow, a code for its port (first seen) and whether its route is known: what a leg
    is summed by besides its far end, the same for every side and level (read once)."""
    ports = pd.factorize(_text(flows["crossing_code"]).array)[0]
    known = pc.equal(pa.array(_text(flows["route_kind"]).array), "known")
    return ports.astype(np.int64), known.to_numpy(zero_copy_only=False).astype(bool)


def _key_codes(ends: pd.DataFrame) -> np.ndarray:
    """A code (≥ 0) per far end (``ends["key"]``), first seen first."""
    return pd.factorize(ends["key"].array, use_na_sentinel=False)[0].astype(np.int64)


def _legs_from_ends(flows: pd.DataFrame, ends: pd.DataFrame,
                    routes: tuple[np.ndarray, np.ndarray], keys: np.ndarray | None = None
                    ) -> pd.DataFrame:
    """:func:`side_legs` from the far ends of the flows at one level, the flows' ``routes``
    (:func:`_routes`) and the ends' ``keys`` (:func:`_key_codes`, made here when None).
    Arrays throughout, texts taken only for the legs' first flows, the table made once in
    its order (a batch entity sums its legs at two or three levels)."""
    lon, lat = ends["lon"].to_numpy(dtype=float), ends["lat"].to_numpy(dtype=float)
    rows = _placed_ends(ends)
    ports, known = routes
    keys = _key_codes(ends) if keys is None else keys
    # (far end, port, route) as one number, numbered as first seen: numpy, no groupby
    combined = (keys[rows] * (int(ports.max(initial=0)) + 1) + ports[rows]) * 2 + known[rows]
    group = pd.factorize(combined)[0].astype(np.int64)
    n = int(group.max()) + 1 if len(group) else 0
    first = first_rows(group, n)
    sizes = np.bincount(group, minlength=n)

    def mean(values: np.ndarray) -> np.ndarray:  # exact when a group's values are equal
        values = values[rows]
        base = values[first]
        return base + np.bincount(group, weights=values - base[group], minlength=n) / sizes

    guns = np.bincount(group, weights=_guns(flows["guns"].to_numpy())[rows], minlength=n)
    key = ends["key"].array.take(rows[first])
    # keys ranked in Arrow (UTF-8 byte order is code point order, as Python sorts text)
    key_rank = pd.factorize(key, sort=True)[0]
    order = np.lexsort((key_rank, -guns))
    at = rows[first[order]]  # each leg's first flow (the first placed one)
    return pd.DataFrame({
        "key": key.take(order), "port_code": _text(flows["crossing_code"]).array.take(at),
        "route_kind": pd.arrays.ArrowStringArray(pa.array(
            np.where(known[at], "known", "modelled"), pa.string())),
        "name": ends["name"].array.take(at),
        "lon": mean(lon)[order], "lat": mean(lat)[order],
        "port_name": _text(flows["crossing_name"]).array.take(at),
        "port_lon": flows["port_lon"].to_numpy(dtype=float)[at],
        "port_lat": flows["port_lat"].to_numpy(dtype=float)[at],
        "guns": guns[order],
    })


def choose_level(flows: pd.DataFrame, side: str, budget: int) -> str:
    """The finest level at which ``side`` has at most ``budget`` legs (else ``state``)."""
    return _chosen_legs(flows, side, budget)[0]


def _chosen_legs(flows: pd.DataFrame, side: str, budget: int,
                 routes: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[str, pd.DataFrame]:
    """:func:`choose_level` and the legs at that level (summed once); ``routes``: the
    flows' :func:`_routes`, when the caller has them."""
    routes = _routes(flows) if routes is None else routes
    for level in ("place", "town") if side == "us" else ("place",):
        ends = _ends(flows, side, level)
        keys = _key_codes(ends)
        placed = keys[_placed_ends(ends)]
        if np.count_nonzero(np.bincount(placed)) > budget:
            continue  # more far ends than legs allowed: the legs need not be summed
        legs = _legs_from_ends(flows, ends, routes, keys)
        if len(legs) <= budget:
            return level, legs
    return "state", _legs_from_ends(flows, _ends(flows, side, "state"), routes)


def _split_budget(guns: tuple[np.ndarray, np.ndarray], total: int) -> tuple[int, int]:
    """Leg budgets (US, MX) for legs sorted largest first: the split of ``total`` legs that
    draws the largest share of guns on the worse-covered side (then the most legs)."""
    n_us, n_mx = len(guns[0]), len(guns[1])
    if n_us + n_mx <= total:
        return n_us, n_mx
    cover = [np.concatenate([[0.0], np.cumsum(g) / max(g.sum(), 1)]) for g in guns]
    us = np.arange(max(0, total - n_mx), min(n_us, total) + 1)
    worst = np.minimum(cover[0][us], cover[1][total - us])
    best = int(us[np.argmax(worst)])
    return best, total - best


def _leg_objects(frame: pd.DataFrame, side: str, *, vmax: float, colour: str) -> list[Leg]:
    if frame.empty:
        return []
    port = frame[["port_lon", "port_lat"]].to_numpy(dtype=float)
    far = frame[["lon", "lat"]].to_numpy(dtype=float)
    start, end = (far, port) if side == "us" else (port, far)
    kind = frame["route_kind"].to_numpy()
    bend = np.where(kind == "known", 0.12, -0.12)
    lines = _curves(start, end, bend)
    w = widths(frame["guns"].to_numpy(), vmax)
    legs = []
    # the columns as lists (itertuples makes a class a call, ~0.5 ms on a batch entity)
    rows = zip(*(frame[c].tolist() for c in ("name", "port_name", "port_code", "route_kind",
                                               "guns")), strict=True)
    for i, (name, port_name, port_code, route_kind, guns) in enumerate(rows):
        origin, destination = (name, port_name) if side == "us" else (port_name, name)
        route = ("known (from case records)" if route_kind == "known"
                 else "modelled (shortest route)")
        legs.append(Leg(
            side=side, origin=origin, destination=destination, port_code=port_code,
            port_name=port_name, route_kind=route_kind, guns=int(guns),
            width=float(w[i]), colour=colour,
            dash=None if route_kind == "known" else MODELLED_DASH, arrow=side == "mx",
            coords=tuple(map(tuple, lines[i].tolist())),
            properties={"title": f"{origin} → {destination}", "guns": int(guns),
                        "leg": "US leg: to the port" if side == "us"
                        else "Mexican leg: from the port", "crossing_name": port_name,
                        "route": route}))
    return legs


def _path_legs(flows: pd.DataFrame, options: MapOptions, colour: str) -> tuple[
        list[Leg], int, int]:
    """One curved line per flow dealer → port → place (``flow_style="paths"``)."""
    guns = _guns(flows["guns"].to_numpy())
    order = np.argsort(-guns, kind="stable")
    keep = guns[order] >= options.min_guns
    keep &= np.cumsum(keep) <= options.top_n
    shown = flows.iloc[order[keep]]
    hidden = order[~keep]
    if shown.empty:
        return [], len(hidden), int(guns[hidden].sum())
    g = _guns(shown["guns"].to_numpy())
    vmax = max(float(g.max()), FULL_WIDTH_MIN_GUNS)
    rank = (pd.Series(-g).groupby(_text(shown["crossing_code"]).to_numpy())
            .rank(method="first").to_numpy() - 1)
    bend = np.where(rank % 2 == 0, 1.0, -1.0) * np.minimum(0.08 + 0.05 * (rank // 2), 0.35)
    dealer = shown[["dealer_lon", "dealer_lat"]].to_numpy(dtype=float)
    port = shown[["port_lon", "port_lat"]].to_numpy(dtype=float)
    place = shown[["recovery_lon", "recovery_lat"]].to_numpy(dtype=float)
    coords = np.concatenate([_curves(dealer, port, bend), _curves(port, place, bend)[:, 1:]],
                            axis=1)
    w = widths(g, vmax)
    kinds = np.where(_text(shown["route_kind"]) == "known", "known", "modelled")
    origin = _text(shown["dealer_name"]).where(_text(shown["dealer_name"]) != "",
                                               _text(shown["dealer_place"]))
    dest = _text(shown["recovery_place"])
    extra = _props(shown, ["flow_id", "dealer_name", "dealer_place", "recovery_place",
                           "purchasers", "top_purchaser", "median_time_to_crime_days"])
    legs = [Leg(side="path", origin=o, destination=d, port_code=pc, port_name=pn,
                route_kind=k, guns=int(n), width=float(wi), colour=colour,
                dash=None if k == "known" else MODELLED_DASH, arrow=d != BORDER_PLACE,
                coords=tuple(map(tuple, c.tolist())),
                properties={**x, "title": f"{o} → {d}", "guns": int(n), "crossing_name": pn,
                            "route": "known (from case records)" if k == "known"
                            else "modelled (shortest route)"})
            for o, d, pc, pn, k, n, wi, c, x in zip(
                origin, dest, _text(shown["crossing_code"]), _text(shown["crossing_name"]),
                kinds, g, w, coords, extra, strict=True)]
    return legs, len(hidden), int(guns[hidden].sum())


def _legs(flows: pd.DataFrame, options: MapOptions, colour: str) -> tuple[
        list[Leg], dict[str, str], list[str], float]:
    """The drawn legs, the level per side, the notes on what is not drawn, the width scale's
    full-width guns."""
    notes: list[str] = []
    if options.flow_style == "paths":
        legs, hidden, hidden_guns = _path_legs(flows, options, colour)
        if hidden:
            notes.append(f"And {_count(hidden, 'smaller flow')} ({_count(hidden_guns, 'gun')}) "
                         "not drawn.")
        vmax = max(max((leg.guns for leg in legs), default=1), FULL_WIDTH_MIN_GUNS)
        return legs, {"us": "path", "mx": "path"}, notes, vmax
    if options.min_guns > 1:  # --min-guns: flows below it are left out, and counted
        guns = _guns(flows["guns"].to_numpy())
        small = guns < options.min_guns
        if small.any():
            notes.append(f"{_count(int(small.sum()), 'flow')} of fewer than "
                         f"{_count(options.min_guns, 'gun')} ({_count(guns[small].sum(), 'gun')}) "
                         "left out.")
        flows = flows[~small]
    half = max(options.max_legs // 2, 1)
    routes = _routes(flows)
    chosen = {side: _chosen_legs(flows, side, half, routes) for side in ("us", "mx")}
    levels = {side: level for side, (level, _) in chosen.items()}
    tables = {side: legs for side, (_, legs) in chosen.items()}
    budgets = dict(zip(("us", "mx"), _split_budget(
        (tables["us"]["guns"].to_numpy(), tables["mx"]["guns"].to_numpy()), options.max_legs),
        strict=True))
    shown = {side: tables[side].iloc[:budgets[side]] for side in tables}
    vmax = max([float(t["guns"].max()) for t in shown.values() if len(t)]
               + [FULL_WIDTH_MIN_GUNS])
    legs = []
    for side, noun in (("us", "US leg"), ("mx", "Mexican leg")):
        legs += _leg_objects(shown[side], side, vmax=vmax, colour=colour)
        rest = tables[side].iloc[budgets[side]:]
        if len(rest):
            notes.append(f"And {_count(len(rest), f'smaller {noun}')} "
                         f"({_count(rest['guns'].sum(), 'gun')}, at most "
                         f"{_fmt(rest['guns'].max())} each) not drawn.")
    legs.sort(key=lambda leg: -leg.guns)
    return legs, levels, notes, vmax


# --------------------------------------------------------------------------- areas


def quantile_bins(values: np.ndarray, k: int) -> np.ndarray:
    """The class upper bounds of ``mapclassify.Quantiles(values, k=k).bins``, computed as it
    does (SciPy's ``scoreatpercentile`` at 100/k, 200/k … 100 %, ties merged, so fewer than
    ``k`` bounds when quantiles tie) without importing mapclassify, which pulls in SciPy and
    scikit-learn: seconds of every run's export."""
    ordered = np.sort(np.asarray(values, dtype=float))
    step = 100.0 / k
    percents = np.arange(step, 100 + step, step)
    percents[-1] = min(percents[-1], 100.0)
    bounds = []
    for percent in percents:  # k ≤ 5 classes
        at = percent / 100.0 * (len(ordered) - 1)
        low = int(at)
        if low == at:
            bounds.append(ordered[low])
        else:
            weights = np.array([low + 1 - at, at - low])
            bounds.append((ordered[low] * weights[0] + ordered[low + 1] * weights[1])
                          / weights.sum())
    return np.unique(np.array(bounds, dtype=float))


def _classify(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class upper bounds, class index per value; −1 for zero) by quantiles of the
    positive values (:func:`quantile_bins`; fewer classes when there are fewer distinct
    values). For counts the bounds are whole numbers (a quantile between 6 and 7 becomes 6),
    so classes never share a label."""
    vals = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    positive = vals[vals > 0]
    if positive.size == 0:
        return np.array([], dtype=float), np.full(vals.shape, -1)
    k = min(5, len(np.unique(positive)))
    if k == 1:
        bins = np.array([positive.max()])
    else:
        bins = quantile_bins(positive, k)
        if np.all(positive == np.round(positive)):  # counts: whole-number classes "8–16"
            bins = np.unique(np.floor(bins))
    idx = np.minimum(np.searchsorted(bins, vals, side="left"), len(bins) - 1)
    return bins, np.where(vals > 0, idx, -1)


def _class_colours(palette: Sequence[str], n: int) -> list[str]:
    """``n`` colours spread over a light→dark palette (darkest kept)."""
    if n <= 0:
        return []
    picks = np.linspace(len(palette) - n if n < len(palette) else 0, len(palette) - 1, n)
    return [palette[round(i)] for i in picks]


def _class_labels(values: np.ndarray, uppers: np.ndarray) -> list[str]:
    """Legend labels ``"1–12"``, ``"13–40"`` … for integer-like class bounds."""
    vals = np.asarray(values, dtype=float)
    low = float(np.min(vals[vals > 0])) if (vals > 0).any() else 0.0
    labels = []
    for up in uppers:
        labels.append(f"{_fmt(low)}" if low >= up else f"{_fmt(low)}–{_fmt(up)}")
        low = math.floor(up) + 1
    return labels


def _areas(states: pd.DataFrame, palette: str, flow_colour: str, lighten_for_flows: bool
           ) -> tuple[list[Area], list[Classes]]:
    """Each state's shaded area and each country's classes. The columns are read once, as
    arrays (a frame selected per country cost a batch entity ~3 ms)."""
    areas: list[Area] = []
    classes: list[Classes] = []
    titles = {"US": "US states: guns sourced from dealers",
              "MX": "Mexican states: guns recovered"}
    country = _text(states["country"]).to_numpy(dtype=object)
    codes, names = (_text(states[c]).tolist() for c in ("code", "name"))
    all_guns = _guns(state_guns(states))  # guns_sourced (US) / guns_recovered (MX)
    geoms = _outlines(states.geometry.to_numpy())
    share = (pd.to_numeric(states["share_frac"], errors="coerce").to_numpy(
        dtype=float, na_value=np.nan) if "share_frac" in states else None)
    for side, colours_all in zip(("US", "MX"), PALETTES[palette], strict=True):
        rows = np.flatnonzero(country == side)
        guns = all_guns[rows]
        bins, idx = _classify(guns)
        colours = _class_colours(colours_all, len(bins))
        if lighten_for_flows and colours:
            colours = list(_lightened(colours, flow_colour, MIN_CONTRAST + 0.1))
        classes.append(Classes(country=side, title=titles[side],
                               bins=tuple(float(b) for b in bins), colours=tuple(colours),
                               labels=tuple(_class_labels(guns, bins))))
        for i, row in enumerate(rows.tolist()):
            s = None if share is None or np.isnan(share[row]) else float(share[row])
            areas.append(Area(code=codes[row], name=names[row], country=side,
                              guns=int(guns[i]), share=s, cls=int(idx[i]),
                              fill=colours[idx[i]] if idx[i] >= 0 else NO_DATA,
                              geometry=geoms[row]))
    return areas, classes


# --------------------------------------------------------------------------- points


_POINT_COLUMNS = {
    "dealer": ["dealer_name", "dealer_place", "guns", "purchasers", "dealer_ffl",
               "top_purchaser", "top_purchaser_share_frac", "median_time_to_crime_days",
               "first_purchase", "last_purchase", "geocode_level", "geocode_score"],
    "recovery": ["recovery_place", "guns", "purchasers", "recovery_state", "geocode_level",
                 "geocode_score", "first_recovery", "last_recovery"],
    "port": ["name", "guns", "guns_known", "guns_modelled", "code", "mx_city", "us_state"],
}
_POINT_NAMES = {"dealer": ("US dealers", "dealers"),
                "recovery": ("Recovery places", "recovery places"),
                "port": ("Ports of entry", "ports")}


def _props(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict]:
    """Per row, ``columns`` (those present) as Python values, None for NA: built column by
    column (a frame's ``to_dict("records")`` costs 10 ms a layer, a batch entity's third)."""
    cols = [c for c in columns if c in frame.columns]
    values = [python_values(frame[column]) for column in cols]
    return [dict(zip(cols, row, strict=True)) for row in zip(*values, strict=True)] if cols \
        else [{} for _ in range(len(frame))]


def _point_layer(frame: pd.DataFrame, kind: str, *, limit: int, fill: str, stroke: str
                 ) -> PointLayer:
    guns = _guns(frame["guns"].to_numpy()) if len(frame) else np.array([], dtype=float)
    order = np.argsort(-guns, kind="stable")
    shown, hidden = order[:limit], order[limit:]
    sub = frame.iloc[shown]
    g = guns[shown]
    radius = _sqrt_scale(g, *_RADIUS[kind], float(g.max()) if len(g) else 1.0)
    xy = shapely.get_coordinates(sub.geometry.to_numpy()) if len(sub) else np.empty((0, 2))
    level = (_text(sub["geocode_level"]).to_numpy() if "geocode_level" in sub.columns
             else np.full(len(sub), ""))
    props = _props(sub, _POINT_COLUMNS[kind])
    points = tuple(
        Point(lon=round(float(x), _DECIMALS), lat=round(float(y), _DECIMALS),
              radius=float(r), fill=fill, stroke=stroke, hollow=lev == "state",
              guns=int(n), properties=p)
        for (x, y), r, lev, n, p in zip(xy, radius, level, g, props, strict=True))
    return PointLayer(kind=kind, name=_POINT_NAMES[kind][0], points=points, hidden=len(hidden),
                      hidden_guns=int(guns[hidden].sum()))


# --------------------------------------------------------------------------- labels


def _labels(result: MapData, legs: Sequence[Leg], areas: Sequence[Area]) -> list[Label]:
    """Label candidates: every port used (top 5 always), top dealer towns, top recovery
    places, states with guns. Renderers place them without overlap, highest priority first."""
    labels: list[Label] = []
    crossings = result.crossings
    if len(crossings):
        g = _guns(crossings["guns"].to_numpy())
        xy = shapely.get_coordinates(crossings.geometry.to_numpy())
        gmax = max(g.max(), 1)
        for rank, i in enumerate(np.argsort(-g, kind="stable")):
            if g[i] <= 0:
                continue
            labels.append(Label(text=str(crossings["name"].iloc[i]), lon=float(xy[i, 0]),
                                lat=float(xy[i, 1]), kind="port",
                                priority=(4.0 if rank < 5 else 2.0) + g[i] / gmax,
                                min_zoom=0.0 if rank < 5 else 5.0))
    ports = {lab.text.casefold() for lab in labels}
    for kind, frame, column, many in (("dealer", result.dealers, "dealer_place", 8),
                                      ("recovery", result.recoveries, "recovery_place", 10)):
        if not len(frame) or column not in frame.columns:
            continue
        # per town (in order of first appearance): its guns summed, its first point; the
        # towns of most guns first (numpy: a groupby cost a batch entity ~2 ms a layer)
        texts = _text(frame[column]).to_numpy(dtype=object)
        named = np.flatnonzero(texts != "")
        xy = shapely.get_coordinates(frame.geometry.to_numpy())[named]
        codes, towns = pd.factorize(texts[named])
        g = np.bincount(codes, weights=_guns(frame["guns"].to_numpy())[named],
                        minlength=len(towns))
        gmax = max(float(g.max()) if len(towns) else 1.0, 1.0)
        largest = np.argsort(-g, kind="stable")[:many * 3]
        at = first_rows(codes, len(towns))[largest]
        for rank, (town, g_town, x, y) in enumerate(zip(
                towns[largest].tolist(), g[largest].tolist(), xy[at, 0].tolist(),
                xy[at, 1].tolist(), strict=True)):
            top = rank < 3
            if str(town).split(",")[0].strip().casefold() in ports:
                continue  # the port's label already names the town
            labels.append(Label(text=_short_place(str(town)), lon=float(x), lat=float(y),
                                kind=kind, priority=(3.0 if top else 1.5 if rank < many
                                                     else 1.0) + g_town / gmax,
                                min_zoom=0.0 if rank < many else 6.0))
    fixed = state_points()
    # a place placed only at its state's point (a guess, drawn as a ring) is labelled there
    # with the state's name already: a state label beside it would say the name twice
    at_points = {(round(lab.lon, 3), round(lab.lat, 3)) for lab in labels
                 if lab.kind in ("dealer", "recovery")}
    for country in ("US", "MX"):
        ranked = sorted((a for a in areas if a.country == country and a.guns > 0
                         and a.code in fixed
                         and (round(fixed[a.code][0], 3), round(fixed[a.code][1], 3))
                         not in at_points), key=lambda a: -a.guns)
        for rank, area in enumerate(ranked):  # the top 3 states of each side from the start
            lon, lat, _ = fixed[area.code]
            labels.append(Label(text=area.name, lon=lon, lat=lat, kind="state",
                                priority=0.5 + min(area.share or 0.0, 0.49),
                                min_zoom=0.0 if rank < 3 else 5.5))
    labels.sort(key=lambda lab: -lab.priority)
    return labels


# --------------------------------------------------------------------------- texts


def _route_parts(result: MapData) -> list[str]:
    """"from … US dealers", "through … ports of entry", "to … places in Mexico", each from
    what the map shows: states when a count table names no dealer or place, nothing for a
    side with neither ("from 0 US dealers … to 0 places" read as if nothing was traced)."""
    def states_with(column: str) -> int:
        if column not in result.states.columns:
            return 0
        return int((_guns(result.states[column].to_numpy()) > 0).sum())

    def towns(frame: pd.DataFrame) -> int:  # 0 when every point is a state's (a guess)
        if "geocode_level" not in frame.columns or not len(frame):
            return len(frame)
        return len(frame) * int((_text(frame["geocode_level"]) != "state").any())

    sides = (("from", len(result.dealers), "US dealer", "",
              states_with("guns_sourced"), "US state"),
             ("through", len(result.crossings), "port", " of entry", 0, ""),
             ("to", towns(result.recoveries), "place", " in Mexico",
              states_with("guns_recovered"), "Mexican state"))
    parts = []
    for word, places, noun, after, states, state_noun in sides:
        if places:
            parts.append(f"{word} {_count(places, noun)}{after}")
        elif states:
            parts.append(f"{word} {_count(states, state_noun)}")
    return parts


def _years(result: MapData) -> str:
    """"CY 2017–CY 2019" when a count table's year columns were summed into its count (the
    map shows those years together), else ""."""
    manifest = getattr(result, "manifest", None) or {}
    years = (manifest.get("input") or {}).get("year_columns") or []
    return f"{years[0]}–{years[-1]}" if len(years) > 1 else ""


def _shaded(result: MapData) -> str:
    """With no flow to draw (a table of Mexican states alone), what the state shading counts:
    "1,050 traced guns recovered in 4 Mexican states" ("" when nothing is shaded)."""
    parts = []
    for column, verb, noun in (("guns_sourced", "sold in", "US state"),
                               ("guns_recovered", "recovered in", "Mexican state")):
        if column in result.states.columns:
            guns = _guns(result.states[column].to_numpy())
            if (guns > 0).any():
                total = _count(int(guns.sum()), "traced gun") if not parts else (
                    f"{int(guns.sum()):,}")
                parts.append(f"{total} {verb} {_count(int((guns > 0).sum()), noun)}")
    return "; ".join(parts)


def _subtitle(result: MapData, options: MapOptions) -> str:
    if options.subtitle:
        text = options.subtitle
    else:
        guns = int(_guns(result.flows["guns"].to_numpy()).sum()) if len(result.flows) else 0
        parts, years = _route_parts(result), _years(result)
        head = _count(guns, "traced gun") + (f" in {years}" if years else "")
        text = (" ".join([head + ("," if years and parts else ""), ", ".join(parts)]).strip()
                if guns else _shaded(result) or _count(0, "traced gun"))
    description = getattr(result, "description", "") or ""
    return f"{text} — {description}" if description and description not in text else text


def _source(result: MapData, options: MapOptions, synthetic: bool) -> str:
    if options.source:
        return options.source
    manifest = getattr(result, "manifest", None) or {}
    path = str((manifest.get("input") or {}).get("path") or "")
    name = re.split(r"[\\/]", path)[-1] if path else "firearm trace records"
    if name.startswith("geoflow-sample-"):
        return ("Source: synthetic sample made by geoflow (invented records shaped by published "
                "reporting; not real traces)")
    if synthetic:
        return f"Source: {name} (synthetic records, not real traces); analysis by geoflow"
    return f"Source: {name}; analysis by geoflow"


def _bounds(legs: Sequence[Leg], layers: Sequence[PointLayer], areas: Sequence[Area]
            ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    xy = [np.asarray(leg.coords) for leg in legs]
    xy += [np.array([[p.lon, p.lat] for p in layer.points]) for layer in layers
           if layer.points]
    xy = [a for a in xy if a.size]
    if not xy:
        drawn = [a.geometry for a in areas if a.guns > 0] or [a.geometry for a in areas]
        if not drawn:
            return None
        box = shapely.total_bounds(np.asarray(drawn, dtype=object))
        return ((float(box[0]), float(box[1])), (float(box[2]), float(box[3])))
    allxy = np.concatenate(xy)
    lo, hi = np.nanmin(allxy, axis=0), np.nanmax(allxy, axis=0)
    return ((round(float(lo[0]), 4), round(float(lo[1]), 4)),
            (round(float(hi[0]), 4), round(float(hi[1]), 4)))


# --------------------------------------------------------------------------- the scene


#: Why guns are on no leg, as the legend says it (the reasons of unplaced.csv).
_UNPLACED_WHY = {
    "no dealer location": "dealer place unknown",
    "no recovery location": "recovery place unknown",
    "no dealer or recovery location": "dealer and recovery place unknown",
    "no port of entry": "no port of entry",
    "recovered outside Mexico": "recovered outside Mexico",
    "duplicate trace record": "repeated trace record",
}


def _unplaced_note(manifest: Mapping[str, Any], unplaced: pd.DataFrame | None = None) -> str:
    """One legend sentence on the selected guns that are on no leg, and why (the reasons of
    ``unplaced``, unplaced.csv's rows; the subtitle counts the mapped guns, the state shading
    every gun whose state is known)."""
    guns = int((manifest.get("counts") or {}).get("guns_unplaced") or 0)
    if guns <= 0:
        return ""
    verb = "is" if guns == 1 else "are"
    return (f"{_count(guns, 'traced gun')} {verb} not drawn as flows ({_unplaced_why(unplaced)}; "
            "listed in unplaced.csv); the state shading counts every gun whose state is known.")


def _unplaced_why(unplaced: pd.DataFrame | None) -> str:
    """``recovery place unknown``, or the guns of each reason when there are several, most
    first (``9 recovery place unknown, 2 recovered outside Mexico``)."""
    if unplaced is None or not len(unplaced) or "reason" not in unplaced:
        return "dealer, recovery place or crossing unknown"
    weights = (unplaced["guns"].to_numpy(dtype=float, na_value=0) if "guns" in unplaced
               else np.ones(len(unplaced)))
    by = pd.Series(weights).groupby(unplaced["reason"].astype("string").to_numpy()).sum()
    by = by.sort_values(ascending=False, kind="stable")
    words = [_UNPLACED_WHY.get(str(reason), str(reason)) for reason in by.index]
    if len(words) == 1:
        return words[0]
    return ", ".join(f"{_fmt(n)} {word}" for n, word in zip(by.to_numpy(), words, strict=True))


def _names_purchasers(result: Any) -> bool:
    """Whether any flow of ``result`` has a known purchaser: a count table, or records that
    name no buyer, show no one, and the map says nothing about how it would."""
    flows = getattr(result, "flows", None)
    return (flows is not None and "purchasers" in flows and len(flows) > 0
            and int(flows["purchasers"].max()) > 0)


def _withheld_note(suppression: Mapping[str, Any]) -> str:
    """One legend sentence on what the small-count rule (privacy.suppress) withheld."""
    if not suppression:
        return ""
    if not suppression.get("enabled"):
        return "Small-count suppression is off: every purchaser and exact date is published."
    k = suppression["min_cell"]
    flows = suppression.get("cells", {}).get("flows", {}).get("rows", 0)
    hidden = suppression.get("purchasers_not_listed", {}).get("purchasers", 0)
    parts = []
    if flows:
        parts.append(f"{_count(flows, 'flow')} show no purchaser and only years")
    if hidden:
        parts.append(f"{_count(hidden, 'purchaser')} are counted only in totals")
    return (f"Cells of fewer than {k} guns or purchasers: " + "; ".join(parts) + "."
            if parts else "")


def build_scene(result: MapData, *, options: MapOptions | None = None) -> Scene:
    """The renderer-independent scene of a run (see the module docstring for its parts)."""
    options = options or MapOptions()
    dealer_ink, recovery_ink, flow_colour = INK[options.palette]
    synthetic = bool(options.synthetic or is_synthetic(result))
    legs, levels, notes, vmax = _legs(result.flows, options, flow_colour)
    areas, classes = _areas(result.states, options.palette, flow_colour, bool(legs))
    layers = [
        _point_layer(result.recoveries, "recovery", limit=options.max_points,
                     fill=recovery_ink, stroke="#ffffff"),
        _point_layer(result.crossings, "port", limit=options.max_points, fill="#ffffff",
                     stroke=PORT_COLOUR),
        _point_layer(result.dealers, "dealer", limit=options.max_points, fill=dealer_ink,
                     stroke="#ffffff"),
    ]
    # the legend lists only the symbols drawn (a count table has no dealer or place points)
    drawn = {layer.kind for layer in layers if layer.points}
    if any(p.hollow for layer in layers for p in layer.points):
        drawn.add("hollow")
    for layer in layers:
        if layer.hidden:
            notes.append(f"And {_fmt(layer.hidden)} smaller {_POINT_NAMES[layer.kind][1]} "
                         f"({_count(layer.hidden_guns, 'gun')}) not drawn.")
    biggest = max((leg.guns for leg in legs), default=0)
    samples = [s for s in dict.fromkeys((biggest, _nice(biggest / 4), _nice(biggest / 20)))
               if 0 < s <= biggest]
    width_samples = tuple((int(s), float(w)) for s, w in
                          zip(samples, widths(np.array(samples, dtype=float), vmax),
                              strict=True))
    floor_guns = math.ceil(WIDTH_RANGE[0] * vmax / WIDTH_RANGE[1]) if legs else 0
    if legs and floor_guns > 1:
        noun = "Flows" if options.flow_style == "paths" else "Legs"
        notes.insert(0, f"{noun} of {_count(floor_guns, 'gun')} or fewer are drawn at the "
                        f"{WIDTH_RANGE[0]:g} px minimum.")
    if not legs:
        total = int(_guns(result.flows["guns"].to_numpy()).sum()) if len(result.flows) else 0
        notes.insert(0, f"No flows drawn: {_count(total, 'gun')} below the threshold."
                     if total else "No flows to draw.")
    unplaced = _unplaced_note(getattr(result, "manifest", None) or {},
                              getattr(result, "unplaced", None))
    if unplaced:
        notes.append(unplaced)
    withheld = _withheld_note(getattr(result, "suppression", None) or {})
    if withheld:
        notes.append(withheld)
    into_mexico = any(leg.arrow for leg in legs)  # else every flow ends at the border
    flow_title = (("Flows: dealer → port of entry → recovery place (guns)" if into_mexico
                   else "Flows: dealer → port of entry (guns)")
                  if options.flow_style == "paths" else
                  "Guns by leg: US origin → port of entry → Mexican destination" if into_mexico
                  else "Guns by leg: US origin → port of entry")
    legend = Legend(
        widths=width_samples, classes=tuple(classes),
        routes=(("known", "known crossing (case records)", None),
                ("modelled", "modelled crossing (dashed: shortest route, not known)",
                 MODELLED_DASH)),
        points=tuple(point for point in (
            ("dealer", "US dealer (circle area ∝ guns sold)", dealer_ink, "#ffffff"),
            ("recovery", "recovery place (area ∝ guns recovered)", recovery_ink, "#ffffff"),
            ("port", "port of entry (area ∝ guns routed)", "#ffffff", PORT_COLOUR),
            ("hollow", "ring: placed only at state level (a guess)", "#ffffff", "#555555"))
            if point[0] in drawn),
        notes=tuple(notes), flow_title=flow_title)
    names_note = ("" if not _names_purchasers(result) else
                  "Purchaser names are shown as they appear in the records."
                  if options.show_names else
                  "Purchasers are shown as pseudonyms (P-xxxxxx), not names.")
    return Scene(
        title=options.title, subtitle=_subtitle(result, options),
        source=_source(result, options, synthetic), credit=options.credit,
        caveat=options.caveat, names_note=names_note, attribution=ATTRIBUTION,
        synthetic=synthetic, banner=SYNTHETIC_BANNER if synthetic else "",
        flow_style=options.flow_style, levels=levels, flow_colour=flow_colour,
        legs=tuple(legs), areas=tuple(areas), classes=tuple(classes), points=tuple(layers),
        labels=tuple(_labels(result, legs, areas)), legend=legend,
        bounds=_bounds(legs, layers, areas), palette=options.palette)
