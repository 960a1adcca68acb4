"""The map: one self-contained HTML file drawn with Folium from a pipeline ``RunResult``.

The page needs no network: Leaflet's js and css (from the ``django-js-lib-leaflet`` package)
are inlined, folium's CDN links (jQuery, Bootstrap, fonts) are dropped, and the basemap is the
US and Mexican state outlines. An online tile layer is *offered* in the layer control, switched
off. Data go into a few compact GeoJSON layers drawn by a small script (:data:`RUNTIME_JS`)
that builds tooltips and popups with ``textContent``, so names from the data show as text.

Escaping, in one place: :func:`escape_html` for text put into HTML (it also neutralises the
characters that matter inside JavaScript template strings), :func:`js_string` and
:func:`script_json` for values put into a ``<script>``.

Example
-------
>>> from geoflow.pipeline import run_pipeline
>>> html = render_map(run_pipeline("traces.csv"), options=MapOptions(title="Guns to Mexico"))
"""

from __future__ import annotations

import base64
import html as _html
import json
import math
import os
import re
import secrets
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import branca.element
import folium
import folium.map
import numpy as np
import pandas as pd
import shapely
from folium.template import Template

from geoflow.errors import ConfigError, OutputError
from geoflow.scene import (
    DEFAULT_CAVEAT,
    INK,
    MODELLED_DASH,
    NO_DATA,
    PALETTES,
    PORT_COLOUR,
    MapData,
    MapOptions,
    _class_colours,
    _class_labels,
    _count,
    _fmt,
    _mercator,
    _nice,
    _source,
    _subtitle,
    _unmercator,
)
from geoflow.scene import _sqrt_scale as _scale
from geoflow.scene import bezier as _bezier

__all__ = [
    "DEFAULT_CAVEAT",
    "PALETTES",
    "MapOptions",
    "render_map",
    "escape_html",
    "js_string",
    "script_json",
    "class_breaks",
    "select_flows",
    "curve_flows",
    "leaflet_assets",
    "write_map",
]

_INK = INK
_NO_DATA = NO_DATA
_PORT_COLOUR = PORT_COLOUR
_DASH = MODELLED_DASH
_DECIMALS = 4
_CURVE_POINTS = 16
_FLOW_WIDTH = (1.0, 12.0)
_FLOW_WIDTH_FLOOR = 50.0  # guns that get the full width at least: small flows stay thin
_TILES = "https://{s}.basemaps.cartocdn.com/light_all/{z}/{x}/{y}{r}.png"
_TILES_ATTR = ('&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> '
               'contributors &copy; <a href="https://carto.com/attributions">CARTO</a>')


# --------------------------------------------------------------------------- escaping

_HTML_EXTRA = str.maketrans({"`": "&#96;", "$": "&#36;", "\\": "&#92;", "{": "&#123;",
                             "}": "&#125;"})
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027",
                  "`": "\\u0060", "$": "\\u0024", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SCRIPT_UNSAFE_RE = re.compile("[<>&'`$\u2028\u2029]")


def escape_html(text: object) -> str:
    """Text → HTML that shows it literally, also safe inside a JS template string or attribute.

    ``None``/NA become "". Besides ``& < > " '`` this encodes backticks, ``$``, braces and
    backslashes as character references, so the result cannot end or interpolate a
    JavaScript template literal (folium puts popup HTML inside those).

    >>> escape_html("<img src=x onerror=alert(1)> `${x}` \\\\")
    '&lt;img src=x onerror=alert(1)&gt; &#96;&#36;&#123;x&#125;&#96; &#92;&#92;'
    """
    if text is None or (not isinstance(text, str) and pd.isna(text)):
        return ""
    return _html.escape(str(text), quote=True).translate(_HTML_EXTRA)


def script_json(value: Any) -> str:
    """Any JSON value → JavaScript source safe inside ``<script>`` (and HTML attributes).

    ``<``, ``>``, ``&``, quotes, backticks, ``$`` and the JS line separators are written as
    ``\\uXXXX`` escapes, so no data can close the script element or start a template.
    NaN is refused (it is not JSON); pass ``None`` instead.
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _SCRIPT_UNSAFE_RE.sub(lambda m: _SCRIPT_UNSAFE[m.group()], text)


def js_string(text: object) -> str:
    """Text → a quoted JavaScript string literal safe inside ``<script>``; NA → ``""``."""
    return script_json("" if text is None or (not isinstance(text, str) and pd.isna(text))
                       else str(text))


# --------------------------------------------------------------------------- pure helpers


def class_breaks(values: Sequence[float] | np.ndarray, *, k: int = 5) -> np.ndarray:
    """Quantile class upper bounds of the positive ``values`` (at most ``k``, distinct).

    Bounds are values from the data, so integer counts give integer ranges; zeros form no
    class (they are drawn as "none").

    >>> class_breaks([0, 1, 2, 3, 4, 100], k=2).tolist()
    [2.0, 100.0]
    """
    vals = np.asarray(values, dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size == 0:
        return np.array([], dtype=float)
    probs = np.linspace(0, 1, k + 1)[1:]
    return np.unique(np.quantile(vals, probs, method="inverted_cdf"))


def _classify(values: np.ndarray, uppers: np.ndarray) -> np.ndarray:
    """Class index per value (−1 for zero or missing)."""
    vals = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    idx = np.searchsorted(uppers, vals, side="left")
    return np.where(vals > 0, np.minimum(idx, max(len(uppers) - 1, 0)), -1)


def select_flows(flows: pd.DataFrame, *, top_n: int, min_guns: int) -> tuple[pd.DataFrame, int,
                                                                                  int]:
    """The flows to draw: at least ``min_guns`` guns, the ``top_n`` largest.

    Returns ``(shown, hidden_flows, hidden_guns)``; ties at the cut keep input order.
    """
    guns = pd.to_numeric(flows["guns"], errors="coerce").fillna(0).to_numpy()
    order = np.argsort(-guns, kind="stable")
    keep = guns[order] >= min_guns
    keep &= np.cumsum(keep) <= top_n
    hidden = order[~keep]
    return flows.iloc[order[keep]], len(hidden), int(guns[hidden].sum())


def curve_flows(flows: pd.DataFrame) -> np.ndarray:
    """Curved display lines dealer → port → recovery (shapely LineStrings aligned with ``flows``).

    Flows through the same port are bowed alternately left and right, a little more for each
    further flow (largest first), so lines sharing a port fan out instead of overlapping. Works
    in Web Mercator so curves look as drawn; coordinates are rounded to 4 decimals. (The
    arrowheads are SVG markers added in the browser, so they keep their size at every zoom.)
    """
    if len(flows) == 0:
        return np.array([], dtype=object)
    dealer = _mercator(flows[["dealer_lon", "dealer_lat"]].to_numpy(dtype=float))
    port = _mercator(flows[["port_lon", "port_lat"]].to_numpy(dtype=float))
    recovery = _mercator(flows[["recovery_lon", "recovery_lat"]].to_numpy(dtype=float))
    guns = pd.to_numeric(flows["guns"], errors="coerce").fillna(0).to_numpy()
    rank = (pd.Series(-guns, index=flows.index)
            .groupby(flows["crossing_code"].astype("string").fillna("").to_numpy())
            .rank(method="first").to_numpy() - 1)
    bend = np.where(rank % 2 == 0, 1.0, -1.0) * np.minimum(0.08 + 0.05 * (rank // 2), 0.35)
    t = np.linspace(0.0, 1.0, _CURVE_POINTS)
    leg1 = _bezier(dealer, port, bend, t)
    leg2 = _bezier(port, recovery, bend, t)
    coords = np.concatenate([leg1, leg2[:, 1:]], axis=1)
    return shapely.linestrings(np.round(_unmercator(coords), _DECIMALS))


def _kth_largest(values: pd.Series, k: int) -> int:
    """The (k+1)-th largest value (0 if there are not that many): the largest flow not drawn
    when the k largest are."""
    arr = pd.to_numeric(values, errors="coerce").fillna(0).to_numpy()
    return int(-np.partition(-arr, k)[k]) if k < arr.size else 0


# --------------------------------------------------------------------------- data → GeoJSON


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict]:
    """Property dicts with the listed columns present in ``frame``; NA/NaN → None."""
    cols = [c for c in columns if c in frame.columns]
    sub = frame[cols].astype(object)
    sub = sub.where(sub.notna(), None)
    return sub.to_dict("records")


def _collection(geoms: np.ndarray | Sequence, props: list[dict]) -> dict:
    """A FeatureCollection of (rounded) geometries and their properties; None geometries dropped."""
    geoms = np.asarray(geoms, dtype=object)
    present = ~shapely.is_missing(geoms) if geoms.size else np.array([], dtype=bool)
    texts = shapely.to_geojson(shapely.transform(geoms[present],
                                                 lambda c: np.round(c, _DECIMALS)))
    keep = [p for p, ok in zip(props, present, strict=True) if ok]
    return {"type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": p, "geometry": json.loads(g)}
                         for p, g in zip(keep, np.atleast_1d(texts), strict=True)]}


def _with_guns(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["guns"] = pd.to_numeric(out["guns"], errors="coerce").fillna(0).astype(int)
    return out


def _flow_layer(shown: pd.DataFrame) -> tuple[dict, list[float]]:
    """Line GeoJSON of the drawn flows; the width scale's full-width guns and the largest flow's
    guns."""
    shown = _with_guns(shown)
    vmax = max(float(shown["guns"].max()) if len(shown) else 1.0, _FLOW_WIDTH_FLOOR)
    widths = _scale(shown["guns"].to_numpy(), *_FLOW_WIDTH, vmax)
    lines = curve_flows(shown)
    shown = shown.assign(
        w=widths,
        k=np.where(shown["route_kind"].astype("string").fillna("") == "known", "known",
                   "modelled"),
        title=(shown["dealer_name"].astype("string").fillna(shown["dealer_place"].astype(
            "string")).fillna("?") + " → " + shown["recovery_place"].astype("string")
            .fillna("?")),
        route=np.where(shown["route_kind"].astype("string").fillna("") == "known",
                       "known (from case records)", "modelled (shortest route)"),
        purchases=_span(shown.get("first_purchase"), shown.get("last_purchase")),
    )
    props = _records(shown, ["title", "flow_id", "dealer_name", "dealer_place", "crossing_name",
                             "route", "recovery_place", "guns", "purchasers", "top_purchaser",
                             "purchases", "median_time_to_crime_days", "w", "k"])
    actual = float(shown["guns"].max()) if len(shown) else 1.0
    return _collection(lines, props), [vmax, actual]


def _span(first: pd.Series | None, last: pd.Series | None) -> pd.Series | None:
    """'2007-03-01 – 2009-11-30' from two date columns (either may be missing)."""
    if first is None or last is None:
        return None
    a, b = first.astype("string"), last.astype("string")
    both = a + " – " + b
    return both.where(a != b, a).fillna(a).fillna(b)


def _points(frame: pd.DataFrame, *, columns: Sequence[str], radius: tuple[float, float],
            limit: int) -> tuple[dict, int, int]:
    """Point GeoJSON of the ``limit`` largest rows by guns, radius ∝ √guns; and what was left."""
    frame = _with_guns(frame)
    frame = frame.iloc[np.argsort(-frame["guns"].to_numpy(), kind="stable")]
    hidden = frame.iloc[limit:]
    frame = frame.iloc[:limit]
    vmax = float(frame["guns"].max()) if len(frame) else 1.0
    frame = frame.assign(r=_scale(frame["guns"].to_numpy(), *radius, vmax))
    data = _collection(frame.geometry.to_numpy(), _records(frame, [*columns, "r"]))
    return data, len(hidden), int(hidden["guns"].sum())


def _simplify(geoms: np.ndarray) -> np.ndarray:
    return shapely.make_valid(shapely.simplify(geoms, 0.02, preserve_topology=True))


def _state_layer(states: pd.DataFrame, country: str, palette: Sequence[str]) -> tuple[
        dict, list[str], list[str]]:
    """Choropleth GeoJSON of one country's states: class index ``q``; colours and labels."""
    part = _with_guns(states[states["country"].astype("string") == country])
    uppers = class_breaks(part["guns"].to_numpy())
    colours = _class_colours(palette, len(uppers))
    part = part.assign(q=_classify(part["guns"].to_numpy(), uppers),
                       pct=pd.to_numeric(part.get("share"), errors="coerce"))
    data = _collection(_simplify(part.geometry.to_numpy()),
                       _records(part, ["name", "code", "guns", "pct", "q"]))
    return data, colours, _class_labels(part["guns"].to_numpy(), uppers)


# --------------------------------------------------------------------------- page assets


@lru_cache(maxsize=1)
def leaflet_assets() -> tuple[str, str]:
    """Leaflet 1.9's (js, css) text from ``django-js-lib-leaflet``, images inlined as data URIs."""
    root = resources.files("js_lib_leaflet").joinpath("static", "js_lib_leaflet")
    js = root.joinpath("leaflet.js").read_text(encoding="utf-8")
    js = re.sub(r"//# sourceMappingURL=\S+\s*$", "", js)
    css = root.joinpath("leaflet.css").read_text(encoding="utf-8")

    def data_uri(match: re.Match) -> str:
        png = root.joinpath("images", match.group(1)).read_bytes()
        return "url(data:image/png;base64," + base64.b64encode(png).decode("ascii") + ")"

    css = re.sub(r"url\(images/([\w.-]+\.png)\)", data_uri, css)
    if "</script" in js.lower() or "</style" in css.lower():  # pragma: no cover - packaging bug
        raise ConfigError("the installed Leaflet files cannot be inlined safely")
    return js, css


RUNTIME_JS = r"""
var geoflow = (function () {
  "use strict";
  var counts = {};
  function fmt(v, kind) {
    if (v === null || v === undefined || v === "") return null;
    if (kind === "int") return Math.round(v).toLocaleString("en-US");
    if (kind === "pct") return (100 * v).toFixed(1) + "%";
    if (kind === "days") return Math.round(v).toLocaleString("en-US") + " days";
    return String(v);
  }
  function card(p, spec, brief) {
    var box = document.createElement("div");
    box.className = "gf-card";
    var head = document.createElement("div");
    head.className = "gf-card-title";
    head.textContent = fmt(p[spec.title]) || spec.fallback;
    box.appendChild(head);
    var table = document.createElement("table");
    spec.rows.slice(0, brief ? spec.brief : spec.rows.length).forEach(function (r) {
      var v = fmt(p[r[1]], r[2]);
      if (v === null) return;
      var tr = table.insertRow();
      var th = document.createElement("th");
      th.textContent = r[0];
      tr.appendChild(th);
      tr.insertCell().textContent = v;
    });
    box.appendChild(table);
    return box;
  }
  function bind(layer, p, spec) {
    layer.bindTooltip(function () { return card(p, spec, true); }, {sticky: true});
    layer.bindPopup(function () { return card(p, spec, false); }, {maxWidth: 340});
  }
  function pane(map, name, z) {
    api.map = map;
    if (!map.getPane(name)) map.createPane(name).style.zIndex = z;
    return name;
  }
  function states(map, data, o) {
    var p = pane(map, "gfStates", 350);
    return L.geoJSON(data, {
      pane: p,
      style: function (f) {
        var q = f.properties.q;
        return {color: o.stroke, weight: 0.8, opacity: 1, fillOpacity: 0.85,
                fillColor: q >= 0 ? o.colours[q] : o.empty, className: "gf-state"};
      },
      onEachFeature: function (f, l) { bind(l, f.properties, o.spec); }
    });
  }
  var SVGNS = "http://www.w3.org/2000/svg";
  function arrowDefs(svg, colour) {
    if (svg.querySelector("#gf-arrow-s")) return;
    var defs = document.createElementNS(SVGNS, "defs");
    [["s", 9], ["m", 13], ["l", 19]].forEach(function (a) {
      var m = document.createElementNS(SVGNS, "marker");
      m.setAttribute("id", "gf-arrow-" + a[0]);
      m.setAttribute("viewBox", "0 0 10 10");
      m.setAttribute("refX", "13");
      m.setAttribute("refY", "5");
      m.setAttribute("markerUnits", "userSpaceOnUse");
      m.setAttribute("markerWidth", a[1]);
      m.setAttribute("markerHeight", a[1]);
      m.setAttribute("orient", "auto");
      var tri = document.createElementNS(SVGNS, "path");
      tri.setAttribute("d", "M0,0 L10,5 L0,10 z");
      tri.setAttribute("fill", colour);
      tri.setAttribute("class", "gf-arrow");
      m.appendChild(tri);
      defs.appendChild(m);
    });
    svg.insertBefore(defs, svg.firstChild);
  }
  function flows(map, data, o) {
    var p = pane(map, "gfFlows", 420);
    counts.flows = data.features.length;
    return L.geoJSON(data, {
      pane: p,
      style: function (f) {
        var k = f.properties.k === "known" ? "known" : "modelled";
        // thin (small) flows recede, wide ones stand out: opacity 0.35 at 1 px to 0.85 at 12 px
        var alpha = Math.min(0.85, 0.3 + 0.05 * f.properties.w);
        return {color: o.colour, weight: f.properties.w, opacity: alpha, lineCap: "round",
                dashArray: k === "known" ? null : o.dash, className: "gf-flow gf-" + k};
      },
      onEachFeature: function (f, l) {
        bind(l, f.properties, o.spec);
        l.on("add", function () {
          var path = l.getElement();
          arrowDefs(path.ownerSVGElement, o.colour);
          var w = f.properties.w;
          path.setAttribute("marker-end", "url(#gf-arrow-" + (w < 3 ? "s" : w < 7 ? "m" : "l")
                            + ")");
        });
      }
    });
  }
  function points(map, data, o) {
    var p = pane(map, "gfPoints", 430);
    counts[o.kind] = data.features.length;
    return L.geoJSON(data, {
      pointToLayer: function (f, ll) {
        return L.circleMarker(ll, {pane: p, radius: f.properties.r, color: o.stroke,
          weight: o.weight, fillColor: o.fill, fillOpacity: o.fillOpacity,
          className: "gf-" + o.kind});
      },
      onEachFeature: function (f, l) { bind(l, f.properties, o.spec); }
    });
  }
  function panel(map, id, position) {
    var el = document.getElementById(id);
    if (!el) return;
    var Panel = L.Control.extend({onAdd: function () {
      L.DomEvent.disableClickPropagation(el);
      L.DomEvent.disableScrollPropagation(el);
      return el;
    }});
    new Panel({position: position}).addTo(map);
  }
  function fit(map, bounds) {
    // Keep the data clear of the title and legend on a wide screen; fold the legend on a
    // narrow one.
    var legend = document.getElementById("gf-legend");
    var title = document.getElementById("gf-title");
    var wide = map.getSize().x > 760;
    if (!wide && legend) legend.removeAttribute("open");
    var right = wide && legend ? legend.offsetWidth + 30 : 20;
    var top = wide && title ? title.offsetHeight + 20 : 20;
    map.fitBounds(bounds, {paddingTopLeft: [20, top], paddingBottomRight: [right, 20]});
  }
  function tiles(map) {
    // When the reader switches the online tiles on, let them show through the choropleths.
    map.on("overlayadd overlayremove", function (e) {
      var pane = map.getPane("gfStates");
      if (pane && e.layer instanceof L.TileLayer) {
        pane.style.opacity = e.type === "overlayadd" ? "0.55" : "";
      }
    });
  }
  var api = {states: states, flows: flows, points: points, panel: panel, fit: fit, tiles: tiles,
             counts: counts, map: null};
  return api;
})();
"""

PAGE_CSS = """
html, body {width: 100%; height: 100%; margin: 0; padding: 0;}
.folium-map {position: absolute; inset: 0; background: #dce6ee;}
.leaflet-container {font: 13px/1.35 system-ui, -apple-system, "Segoe UI", Roboto,
  "DejaVu Sans", sans-serif;}
.gf-panel {background: rgba(255,255,255,0.93); padding: 8px 11px; border-radius: 4px;
  box-shadow: 0 1px 4px rgba(0,0,0,0.3); max-width: 330px; color: #222;}
.gf-title h1 {font-size: 19px; margin: 0 0 3px; line-height: 1.2;}
.gf-title p {margin: 0; color: #444;}
.gf-footer {max-width: 460px; font-size: 11.5px; color: #333;}
.gf-footer p {margin: 1px 0;}
.gf-caveat {font-style: italic;}
.gf-legend {font-size: 12px; max-height: 70vh; overflow-y: auto;}
.gf-legend summary {font-weight: 600; cursor: pointer;}
.gf-legend h2 {font-size: 12px; margin: 8px 0 3px; font-weight: 600;}
.gf-legend .row {display: flex; align-items: center; gap: 6px; margin: 1px 0;}
.gf-legend .sw {width: 16px; height: 11px; border: 1px solid #999; flex: none;}
.gf-legend svg {flex: none;}
.gf-legend .note {color: #555; margin: 3px 0 0;}
.gf-card {font-size: 12px; min-width: 160px;}
.gf-card-title {font-weight: 600; margin-bottom: 3px;}
.gf-card table {border-collapse: collapse;}
.gf-card th {text-align: left; font-weight: normal; color: #555; padding: 0 8px 0 0;
  vertical-align: top;}
.gf-card td {font-variant-numeric: tabular-nums;}
"""


class _DataLayer(folium.map.Layer):
    """A layer drawn by :data:`RUNTIME_JS` from data serialised with :func:`script_json`."""

    _template = Template("""
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = geoflow.{{ this.kind }}({{ this._parent.get_name() }},
            {{ this.data_js }}, {{ this.options_js }});
        {% endmacro %}
    """)

    def __init__(self, kind: str, data: Any, options: dict, *, name: str,
                 show: bool = True) -> None:
        super().__init__(name=name, overlay=True, control=True, show=show)
        if kind not in {"states", "flows", "points"}:
            raise ValueError(kind)
        self._name = "GeoflowLayer"
        self.kind = kind
        self.data_js = script_json(data)
        self.options_js = script_json(options)


class _Script(branca.element.MacroElement):
    """Raw script lines run after every layer exists (panels, bounds)."""

    _template = Template("{% macro script(this, kwargs) %}{{ this.code }}{% endmacro %}")

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code


# --------------------------------------------------------------------------- HTML blocks


def _swatches(colours: Sequence[str], labels: Sequence[str]) -> str:
    rows = [f'<div class="row"><span class="sw" style="background:{escape_html(c)}"></span>'
            f"{escape_html(lab)}</div>" for c, lab in zip(colours, labels, strict=True)]
    rows.append(f'<div class="row"><span class="sw" style="background:{_NO_DATA}"></span>'
                "none</div>")
    return "".join(rows)


def _line_svg(width: float, colour: str, *, dashed: bool = False) -> str:
    dash = f' stroke-dasharray="{_DASH}"' if dashed else ""
    return (f'<svg width="44" height="{max(12, math.ceil(width) + 4)}" aria-hidden="true">'
            f'<line x1="2" x2="42" y1="50%" y2="50%" stroke="{colour}" stroke-opacity="0.8"'
            f' stroke-width="{width:.1f}"{dash}/></svg>')


def _dot_svg(fill: str, stroke: str) -> str:
    return (f'<svg width="16" height="16" aria-hidden="true"><circle cx="8" cy="8" r="6" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/></svg>')


def _legend(*, us: tuple[list[str], list[str]], mx: tuple[list[str], list[str]],
            flow_counts: dict, point_notes: list[str], colours: dict) -> str:
    """The legend panel's HTML (every text through :func:`escape_html`)."""
    e = escape_html
    parts = ['<details open class="gf-panel gf-legend" id="gf-legend"><summary>Legend</summary>',
             "<h2>US states: guns sourced from dealers</h2>", _swatches(*us),
             "<h2>Mexican states: guns recovered</h2>", _swatches(*mx),
             "<h2>Flows: dealer → port of entry → recovery place (guns)</h2>"]
    ink = colours["flow"]
    for guns, width in flow_counts["samples"]:
        parts.append(f'<div class="row">{_line_svg(width, ink)}{e(_fmt(guns))}</div>')
    parts.append(f'<div class="row">{_line_svg(3, ink)}known crossing (case records)</div>')
    parts.append(f'<div class="row">{_line_svg(3, ink, dashed=True)}modelled crossing (dashed: '
                 "shortest route, not known)</div>")
    parts.append('<div class="row">▶ the arrowhead points to where the guns were recovered</div>')
    shown, hidden, hidden_guns = flow_counts["shown"], flow_counts["hidden"], flow_counts[
        "hidden_guns"]
    note = (f"Showing the {_count(shown, 'largest flow')}" if shown != 1 else
            "Showing the largest flow")
    if flow_counts["min_guns"] > 1:
        note += f" of at least {_fmt(flow_counts['min_guns'])} guns"
    if not hidden:
        note += "."
    elif flow_counts["largest_hidden"] < flow_counts["smallest_shown"]:
        note += f", and {_count(hidden, 'smaller flow')} ({_count(hidden_guns, 'gun')}) not drawn."
    else:  # a tie at the cut: the rest are no larger than the smallest drawn
        note += (f", and {_count(hidden, 'more flow')} of at most "
                 f"{_count(flow_counts['largest_hidden'], 'gun')} each "
                 f"({_count(hidden_guns, 'gun')}) not drawn.")
    if shown == 0:
        note = (f"No flows drawn: {_count(hidden, 'flow')} ({_count(hidden_guns, 'gun')}) are "
                "below the threshold." if hidden else "No flows to draw.")
    parts.append(f'<p class="note" id="gf-flow-note">{e(note)}</p>')
    parts.append("<h2>Places</h2>")
    parts.append(f'<div class="row">{_dot_svg(colours["dealer"], "#fff")}US dealer (circle area ∝ '
                 "guns sold)</div>")
    parts.append(f'<div class="row">{_dot_svg(colours["recovery"], "#fff")}recovery place '
                 "(area ∝ guns recovered)</div>")
    parts.append(f'<div class="row">{_dot_svg("#fff", _PORT_COLOUR)}port of entry (area ∝ '
                 "guns routed)</div>")
    parts += [f'<p class="note">{e(n)}</p>' for n in point_notes]
    parts.append("</details>")
    return "".join(parts)


# --------------------------------------------------------------------------- the map

_FLOW_SPEC = {"title": "title", "fallback": "Flow", "brief": 4, "rows": [
    ["Guns", "guns", "int"], ["Port of entry", "crossing_name"], ["Route", "route"],
    ["Purchasers", "purchasers", "int"], ["Dealer", "dealer_name"], ["Dealer in", "dealer_place"],
    ["Recovered in", "recovery_place"], ["Top purchaser", "top_purchaser"],
    ["Purchases", "purchases"], ["Median time to crime", "median_time_to_crime_days", "days"],
    ["Flow id", "flow_id"]]}
_DEALER_SPEC = {"title": "dealer_name", "fallback": "Dealer", "brief": 3, "rows": [
    ["City", "dealer_place"], ["Guns", "guns", "int"], ["Purchasers", "purchasers", "int"],
    ["FFL", "dealer_ffl"], ["Top purchaser", "top_purchaser"],
    ["Top purchaser share", "top_purchaser_share", "pct"],
    ["Median time to crime", "median_time_to_crime_days", "days"],
    ["First purchase", "first_purchase"], ["Last purchase", "last_purchase"]]}
_RECOVERY_SPEC = {"title": "recovery_place", "fallback": "Recovery place", "brief": 2, "rows": [
    ["Guns recovered", "guns", "int"], ["Purchasers", "purchasers", "int"],
    ["State", "recovery_state"], ["Placed at", "geocode_level"],
    ["First recovery", "first_recovery"], ["Last recovery", "last_recovery"]]}
_PORT_SPEC = {"title": "name", "fallback": "Port of entry", "brief": 2, "rows": [
    ["Guns routed", "guns", "int"], ["Known from case records", "guns_known", "int"],
    ["Modelled", "guns_modelled", "int"], ["CBP port code", "code"],
    ["Mexican side", "mx_city"], ["State", "us_state"]]}
_STATE_SPEC = {"title": "name", "fallback": "State", "brief": 2, "rows": [
    ["Guns", "guns", "int"], ["Share", "pct", "pct"], ["Code", "code"]]}


def _bounds(*frames: pd.DataFrame) -> list[list[float]] | None:
    boxes = [f.geometry.total_bounds for f in frames if len(f) and not f.geometry.is_empty.all()]
    if not boxes:
        return None
    arr = np.array(boxes)
    west, south = np.nanmin(arr[:, 0]), np.nanmin(arr[:, 1])
    east, north = np.nanmax(arr[:, 2]), np.nanmax(arr[:, 3])
    return [[round(float(south), 4), round(float(west), 4)],
            [round(float(north), 4), round(float(east), 4)]]


def _page(options: MapOptions) -> tuple[branca.element.Figure, folium.Map]:
    """An empty page: inlined Leaflet and our script, no CDN links, the optional tile layer."""
    figure = branca.element.Figure(title=escape_html(options.title))
    fmap = folium.Map(location=[29.0, -100.0], zoom_start=4, tiles=None, zoom_control="topright",
                      control_scale=True, zoom_snap=0.25)
    fmap.default_js = []  # folium's CDN scripts and styles (Leaflet, jQuery, Bootstrap, fonts)
    fmap.default_css = []
    figure.add_child(fmap)
    leaflet_js, leaflet_css = leaflet_assets()
    header = figure.header
    header.add_child(branca.element.Element(f"<style>{leaflet_css}</style>"), name="leaflet_css")
    header.add_child(branca.element.Element(f"<style>{PAGE_CSS}</style>"), name="geoflow_css")
    header.add_child(branca.element.Element(f"<script>{leaflet_js}</script>"), name="leaflet")
    header.add_child(branca.element.Element(f"<script>{RUNTIME_JS}</script>"), name="geoflow")
    if options.tiles:
        folium.TileLayer(_TILES, attr=_TILES_ATTR, subdomains="abcd", max_zoom=20,
                         name="Online basemap (CartoDB Positron; needs network)",
                         overlay=True, show=False, control=True).add_to(fmap)
    return figure, fmap


def _panels(result: MapData, options: MapOptions, legend: str) -> str:
    """Title, legend and footer (source, credit, caveat, names) as escaped HTML."""
    e = escape_html
    names_note = ("Purchaser names are shown as they appear in the records."
                  if options.show_names else
                  "Purchasers are shown as pseudonyms (P-xxxxxx), not names.")
    title = (f'<div class="gf-panel gf-title" id="gf-title"><h1>{e(options.title)}</h1>'
             f"<p>{e(_subtitle(result, options))}</p></div>")
    footer = (f'<div class="gf-panel gf-footer" id="gf-footer">'
              f'<p class="gf-source">{e(_source(result, options, False))}</p>'
              f'<p class="gf-credit">{e(options.credit)}</p>'
              f'<p class="gf-caveat">{e(options.caveat)}</p>'
              f'<p class="gf-names">{e(names_note)}</p></div>')
    return title + legend + footer


def render_map(result: MapData, *, options: MapOptions | None = None) -> str:
    """The self-contained HTML map of a ``RunResult`` (docs/internals.md "→ render").

    Draws the US/MX state choropleths (guns sourced / recovered), the ``top_n`` largest flows
    of at least ``min_guns`` guns, dealers, recovery places and ports; everything not drawn is
    counted in the legend. Returns the page as a string; the caller writes it.
    """
    options = options or MapOptions()
    us_palette, mx_palette = PALETTES[options.palette]
    ink = _INK[options.palette]
    colours = {"dealer": ink[0], "recovery": ink[1], "flow": ink[2]}
    figure, fmap = _page(options)

    states = result.states
    us_data, us_colours, us_labels = _state_layer(states, "US", us_palette)
    mx_data, mx_colours, mx_labels = _state_layer(states, "MX", mx_palette)
    state_opts = {"stroke": "#7a7a7a", "empty": _NO_DATA, "spec": _STATE_SPEC}
    _DataLayer("states", us_data, {**state_opts, "colours": us_colours},
               name="US states: guns sourced").add_to(fmap)
    _DataLayer("states", mx_data, {**state_opts, "colours": mx_colours},
               name="Mexican states: guns recovered").add_to(fmap)

    shown, hidden, hidden_guns = select_flows(result.flows, top_n=options.top_n,
                                              min_guns=options.min_guns)
    flow_data, (vmax, biggest) = _flow_layer(shown)
    _DataLayer("flows", flow_data, {"colour": colours["flow"], "dash": _DASH, "spec": _FLOW_SPEC},
               name="Flows (width ∝ guns; dashed = modelled crossing)").add_to(fmap)

    notes = []
    point_layers = [
        ("recovery", result.recoveries, _RECOVERY_SPEC, (2.5, 12.0), "Recovery places",
         {"stroke": "#ffffff", "weight": 1, "fill": colours["recovery"], "fillOpacity": 0.85},
         "recovery places"),
        ("port", result.crossings, _PORT_SPEC, (4.0, 13.0), "Ports of entry",
         {"stroke": _PORT_COLOUR, "weight": 2, "fill": "#ffffff", "fillOpacity": 0.95},
         "ports"),
        ("dealer", result.dealers, _DEALER_SPEC, (2.5, 15.0), "US dealers",
         {"stroke": "#ffffff", "weight": 1, "fill": colours["dealer"], "fillOpacity": 0.85},
         "dealers"),
    ]
    for kind, frame, spec, radius, name, style, noun in point_layers:
        columns = [row[1] for row in spec["rows"]] + [spec["title"]]
        data, left, left_guns = _points(frame, columns=columns, radius=radius,
                                        limit=options.max_points)
        _DataLayer("points", data, {**style, "kind": kind, "spec": spec}, name=name).add_to(fmap)
        if left:
            notes.append(f"And {_fmt(left)} smaller {noun} ({_count(left_guns, 'gun')}) not "
                         "drawn.")

    samples = sorted({_nice(biggest), _nice(biggest / 10), 1}, reverse=True)
    widths = _scale(np.array(samples, dtype=float), *_FLOW_WIDTH, vmax)
    legend = _legend(us=(us_colours, us_labels), mx=(mx_colours, mx_labels),
                     flow_counts={"shown": len(shown), "hidden": hidden,
                                  "smallest_shown": int(shown["guns"].min()) if len(shown) else 0,
                                  "largest_hidden": _kth_largest(result.flows["guns"], len(shown)),
                                  "hidden_guns": hidden_guns, "min_guns": options.min_guns,
                                  "samples": list(zip(samples, widths, strict=True))},
                     point_notes=notes, colours=colours)
    figure.html.add_child(branca.element.Element(_panels(result, options, legend)),
                          name="geoflow_panels")

    folium.LayerControl(collapsed=True, position="topright").add_to(fmap)
    _stable_ids(figure)
    map_name = fmap.get_name()
    code = [f"geoflow.panel({map_name}, 'gf-title', 'topleft');",
            f"geoflow.panel({map_name}, 'gf-legend', 'bottomright');",
            f"geoflow.panel({map_name}, 'gf-footer', 'bottomleft');"]
    if options.tiles:
        code.append(f"geoflow.tiles({map_name});")
    bounds = _bounds(shown, result.crossings) or _bounds(states)
    if bounds:
        code.append(f"geoflow.fit({map_name}, {script_json(bounds)});")
    fmap.add_child(_Script("\n".join(code)))
    return figure.render()


def _stable_ids(element: branca.element.Element, counter: list[int] | None = None) -> None:
    """Replace folium's random element ids by a counter, so the same data give the same page."""
    counter = counter if counter is not None else [0]
    element._id = f"{counter[0]:04d}"
    counter[0] += 1
    for child in list(element._children.values()):
        _stable_ids(child, counter)


def write_map(html: str, path: str | Path) -> Path:
    """Write the page atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a folder; give a file name such as map.html", path=str(path))
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # honours the umask
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(html)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write the map: {exc.strerror or exc}", path=str(path)) from exc
    return path
