"""The web map: one self-contained HTML page drawing a :class:`geoflow.scene.Scene` with Leaflet.

``render_map`` builds the scene (``geoflow.scene.build_scene``: legs, classes, labels, legend,
texts) and draws it. The page needs no network: Leaflet's js and css (from the
``django-js-lib-leaflet`` package) are inlined, folium's CDN links (jQuery, Bootstrap, fonts)
are dropped, and the basemap is the US and Mexican state outlines. An online tile layer is
*offered* in the layer control, switched off. The page's own script and styles are the package
files ``geoflow/map.js`` and ``geoflow/map.css``, inlined; the script draws compact GeoJSON
layers, builds tooltips and popups with ``textContent`` (names from the data show as text),
places the labels without overlap at every zoom, and fits the data into the part of the view
the panels leave free.

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
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import branca.element
import folium
import folium.map
import pandas as pd
import xyzservices
from folium.elements import ElementAddToElement
from folium.template import Template

from geoflow.errors import ConfigError
from geoflow.scene import (
    DEFAULT_CAVEAT,
    NO_DATA,
    PALETTES,
    PORT_COLOUR,
    Leg,
    MapData,
    MapOptions,
    PointLayer,
    Scene,
    ShapeCache,
    _count,
    build_scene,
)

__all__ = [
    "DEFAULT_CAVEAT",
    "PALETTES",
    "MapOptions",
    "render_map",
    "render_scene",
    "escape_html",
    "js_string",
    "script_json",
    "leaflet_assets",
    "page_assets",
    "write_map",
]

_DECIMALS = 4
_TILES = "https://{s}.basemaps.cartocdn.com/light_all/{z}/{x}/{y}{r}.png"
_TILES_ATTR = ('&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> '
               'contributors &copy; <a href="https://carto.com/attributions">CARTO</a>')
#: Opacity of the legs: high, so a leg keeps its contrast with the states under it.
_FLOW_OPACITY = 0.9


# --------------------------------------------------------------------------- escaping

_HTML_EXTRA = str.maketrans({"`": "&#96;", "$": "&#36;", "\\": "&#92;", "{": "&#123;",
                             "}": "&#125;"})
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027",
                  "`": "\\u0060", "$": "\\u0024", "\u2028": "\\u2028", "\u2029": "\\u2029",
                  "{": "\\u007b"}
#: ``{`` only where it would open a Jinja tag (``{{``, ``{%``, ``{#``), which JSON itself never
#: writes outside a string: folium renders page scripts through Jinja.
_SCRIPT_UNSAFE_RE = re.compile("[<>&'`$\u2028\u2029]|\\{(?=[{%#])")


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

    ``<``, ``>``, ``&``, quotes, backticks, ``$``, the JS line separators and a ``{`` that
    would open a Jinja tag are written as ``\\uXXXX`` escapes, so no data can close the script
    element, start a template literal or be run as a template by folium.
    NaN is refused (it is not JSON); pass ``None`` instead.
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _SCRIPT_UNSAFE_RE.sub(lambda m: _SCRIPT_UNSAFE[m.group()], text)


def js_string(text: object) -> str:
    """Text → a quoted JavaScript string literal safe inside ``<script>``; NA → ``""``."""
    return script_json("" if text is None or (not isinstance(text, str) and pd.isna(text))
                       else str(text))



# --------------------------------------------------------------------------- scene → GeoJSON


def _feature(geometry: dict, properties: dict) -> dict:
    return {"type": "Feature", "properties": properties, "geometry": geometry}


def _rounded(coords: Any) -> Any:
    if isinstance(coords, (int, float)):
        return round(float(coords), _DECIMALS)
    return [_rounded(c) for c in coords]


def _legs_geojson(legs: Sequence[Leg]) -> dict:
    feats = [_feature({"type": "LineString", "coordinates": [list(c) for c in leg.coords]},
                      {**leg.properties, "w": leg.width, "k": leg.route_kind, "side": leg.side,
                       "a": leg.arrow})
             for leg in legs]
    return {"type": "FeatureCollection", "features": feats}


def _clean(props: dict) -> dict:
    """JSON-safe properties: NaN/NA → None, numpy numbers → Python."""
    out = {}
    for key, value in props.items():
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            out[key] = None
        elif hasattr(value, "item"):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def _points_geojson(layer: PointLayer) -> dict:
    feats = [_feature({"type": "Point", "coordinates": [p.lon, p.lat]},
                      {**_clean(dict(p.properties)), "r": p.radius, "hollow": p.hollow})
             for p in layer.points]
    return {"type": "FeatureCollection", "features": feats}


def _geometry_json(geometry: Any) -> dict:
    """A shape's GeoJSON geometry with coordinates rounded to :data:`_DECIMALS`."""
    out = json.loads(json.dumps(geometry.__geo_interface__))
    out["coordinates"] = _rounded(out["coordinates"])
    return out


class _Json(str):
    """JSON text already made safe by :func:`script_json`, put into the page as it is."""


#: The state outlines' GeoJSON geometries as :func:`script_json` text, made once per process
#: (every page draws the same shapes: a batch entity's two collections took 21 ms to encode).
_GEOMETRY_JSON = ShapeCache()


def _areas_geojson(scene: Scene, country: str) -> _Json:
    """The FeatureCollection of a country's areas, the text :func:`script_json` makes of it
    (the pieces joined at ``{``/``}``/``,`` boundaries, where no escape can begin)."""
    areas = [area for area in scene.areas if area.country == country
             and area.geometry is not None and not area.geometry.is_empty]
    geometries = _GEOMETRY_JSON.get([area.geometry for area in areas],
                                    lambda todo: [script_json(_geometry_json(g)) for g in todo])
    feats = ",".join(
        '{"type":"Feature","properties":' + script_json(
            {"name": area.name, "code": area.code, "guns": area.guns, "pct": area.share,
             "fill": area.fill}) + ',"geometry":' + geometry + "}"
        for area, geometry in zip(areas, geometries, strict=True))
    return _Json('{"type":"FeatureCollection","features":[' + feats + "]}")


# --------------------------------------------------------------------------- page assets


@lru_cache(maxsize=1)
def page_assets() -> tuple[str, str]:
    """geoflow's own (js, css) for the page: the package files ``map.js`` and ``map.css``."""
    root = resources.files("geoflow")
    js = root.joinpath("map.js").read_text(encoding="utf-8")
    css = root.joinpath("map.css").read_text(encoding="utf-8")
    if "</script" in js.lower() or "</style" in css.lower():  # pragma: no cover - packaging bug
        raise ConfigError("geoflow's map.js/map.css cannot be inlined safely")
    return js, css


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


class _DataLayer(folium.map.Layer):
    """A layer drawn by ``map.js`` from data serialised with :func:`script_json`."""

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
        self.data_js = data if isinstance(data, _Json) else script_json(data)
        self.options_js = script_json(options)

    def render(self, **kwargs) -> None:
        """As folium renders a layer, but the script (all the layer's data) goes into the page
        as it is: branca would compile it as a Jinja template, at 20 ms per 100 kB."""
        if self.show:
            self.add_child(_AddToParent(element_name=self.get_name(),
                                        element_parent_name=self._parent.get_name()),
                           name=self.get_name() + "_add")
        script = self._template.module.script(self, kwargs)
        self.get_root().script.add_child(_Raw(script), name=self.get_name())
        for element in self._children.values():
            element.render(**kwargs)


class _Raw(branca.element.Element):
    """Markup put into the page as it is (``branca.element.Element(text)`` would compile the
    text as a Jinja template: 0.1 s per page for Leaflet's script alone)."""

    _template = Template("{{ this.text }}")

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class _RawMacro(branca.element.MacroElement):
    """``MacroElement.render``, except that each macro's text goes into the page through
    :class:`_Raw` rather than ``branca.element.Element(text)``, which compiles it as a Jinja
    template (a dozen compilations, ~4 ms, of every page) to render the same text
    (:func:`_as_compiled`). A base after folium's own classes: ``class _Map(folium.Map,
    _RawMacro)`` keeps folium's ``render`` and replaces only branca's."""

    def render(self, **kwargs) -> None:
        figure = self.get_root()
        macros = self._template.module.__dict__
        for part in ("header", "html", "script"):
            macro = macros.get(part)
            if macro is not None:
                getattr(figure, part).add_child(_Raw(_as_compiled(macro(self, kwargs))),
                                                name=self.get_name())
        for element in self._children.values():
            element.render(**kwargs)


def _as_compiled(text: str) -> str:
    """``text`` as ``branca.element.Element(text)`` renders it: Jinja reads line ends as
    ``\\n`` and drops a final one; text holding Jinja's own syntax is compiled as branca
    would."""
    if "{{" in text or "{%" in text or "{#" in text:
        return branca.element.Element(text).render()
    lines = _LINE_END.split(text)
    if lines[-1] == "":
        del lines[-1]
    return "\n".join(lines)


_LINE_END = re.compile(r"\r\n|\r|\n")


class _Map(folium.Map, _RawMacro):
    pass


class _LayerControl(folium.LayerControl, _RawMacro):
    pass


class _AddToParent(ElementAddToElement, _RawMacro):
    pass


class _Script(_RawMacro):
    """Raw script lines run after every layer exists (panels, bounds)."""

    _template = Template("{% macro script(this, kwargs) %}{{ this.code }}{% endmacro %}")

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code



# --------------------------------------------------------------------------- HTML blocks


def _line_svg(width: float, colour: str, *, dashed: bool = False) -> str:
    dash = ""
    if dashed:
        on, off = max(6, round(2.2 * width)), max(4, round(1.3 * width))
        dash = f' stroke-dasharray="{on} {off}"'
    cap = "butt" if dashed else "round"
    return (f'<svg width="52" height="{max(12, math.ceil(width) + 4)}" aria-hidden="true">'
            f'<line x1="{2 + width / 2:.1f}" x2="{50 - width / 2:.1f}" y1="50%" y2="50%" '
            f'stroke="{escape_html(colour)}" stroke-opacity="{_FLOW_OPACITY}" '
            f'stroke-linecap="{cap}" stroke-width="{width:.2f}"{dash}/></svg>')


def _dot_svg(fill: str, stroke: str, *, ring: bool = False) -> str:
    width = 1.8 if ring else 1.5
    return (f'<svg width="16" height="16" aria-hidden="true"><circle cx="8" cy="8" r="6" '
            f'fill="{escape_html(fill)}" stroke="{escape_html(stroke)}" '
            f'stroke-width="{width}"/></svg>')


def _legend(scene: Scene, *, open_: bool = True) -> str:
    """The legend panel's HTML from ``scene.legend`` (every text through :func:`escape_html`)."""
    e = escape_html
    legend = scene.legend
    ink = scene.flow_colour
    parts = [f'<details {"open " if open_ else ""}class="gf-panel gf-legend" id="gf-legend">'
             "<summary>Legend</summary>"]
    if legend.widths:
        parts.append(f"<h2>{e(legend.flow_title)}</h2>")
        for guns, width in legend.widths:
            parts.append(f'<div class="row gf-width-sample" data-guns="{int(guns)}" '
                         f'data-width="{width:g}">{_line_svg(width, ink)}'
                         f'{e(_count(guns, "gun"))}</div>')
        for kind, label, dash in legend.routes:
            parts.append(f'<div class="row gf-route-{e(kind)}">'
                         f"{_line_svg(3, ink, dashed=dash is not None)}{e(label)}</div>")
        if any(leg.arrow for leg in scene.legs):
            parts.append('<div class="row">▶ arrowheads: where the guns were recovered</div>')
    dots = {"hollow": True}
    for classes in legend.classes:
        if not classes.colours:
            continue
        parts.append(f"<h2>{e(classes.title)}</h2>")
        rows = [f'<div class="row"><span class="sw gf-class" style="background:{e(c)}">'
                f"</span>{e(lab)}</div>" for c, lab in zip(classes.colours, classes.labels,
                                                           strict=True)]
        rows.append(f'<div class="row"><span class="sw" style="background:{e(NO_DATA)}">'
                    "</span>none</div>")
        parts.append("".join(rows))
    parts.append("<h2>Places</h2>")
    for kind, label, fill, stroke in legend.points:
        parts.append(f'<div class="row">{_dot_svg(fill, stroke, ring=kind in dots)}'
                     f"{e(label)}</div>")
    parts += [f'<p class="note gf-not-drawn">{e(n)}</p>' for n in legend.notes]
    parts.append("</details>")
    return "".join(parts)


#: A word with hyphens in escaped text: a pseudonym (``P-77d6ca``), a code (``US-TX``).
_HYPHENATED = re.compile(r"[^\s-]+(?:-[^\s-]+)+")


def _unbroken(html: str) -> str:
    """Escaped text whose hyphenated words stay whole on one line: a browser may break a
    line after any hyphen, and a title read ``Purchaser: P-`` / ``77d6ca``."""
    return _HYPHENATED.sub(lambda m: f'<span class="gf-nobreak">{m.group()}</span>', html)


def _panels(scene: Scene) -> str:
    """Title, legend and footer (source, credit, caveat, names, credits) as escaped HTML."""
    e = escape_html
    title = (f'<div class="gf-panel gf-title" id="gf-title"><h1>{_unbroken(e(scene.title))}'
             f"</h1><p>{_unbroken(e(scene.subtitle))}</p></div>")
    lines = (("source", scene.source), ("credit", scene.credit), ("caveat", scene.caveat),
             ("names", scene.names_note))
    footer = ('<details open class="gf-panel gf-footer" id="gf-footer">'
              "<summary>Source and notes</summary>"
              + "".join(f'<p class="gf-{kind}">{e(text)}</p>' for kind, text in lines if text)
              + "</details>")
    return title + _legend(scene) + footer


def _banner(scene: Scene) -> str:
    if not scene.synthetic:
        return ""
    return (f'<div class="gf-synthetic" id="gf-synthetic" role="note">{escape_html(scene.banner)}'
            "</div>")


_FLOW_SPEC = {"title": "title", "fallback": "Flow", "brief": 4, "rows": [
    ["Guns", "guns", "int"], ["Port of entry", "crossing_name"], ["Route", "route"],
    ["Leg", "leg"],
    ["Purchasers", "purchasers", "int"], ["Dealer", "dealer_name"], ["Dealer in", "dealer_place"],
    ["Recovered in", "recovery_place"], ["Top purchaser", "top_purchaser"],
    ["Purchases", "purchases"], ["Median time to crime", "median_time_to_crime_days", "days"],
    ["Flow id", "flow_id"]]}
_DEALER_SPEC = {"title": "dealer_name", "fallback": "Dealer", "brief": 3, "rows": [
    ["City", "dealer_place"], ["Guns", "guns", "int"], ["Purchasers", "purchasers", "int"],
    ["FFL", "dealer_ffl"], ["Top purchaser", "top_purchaser"],
    ["Top purchaser share", "top_purchaser_share_frac", "pct"],
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



_SPECS = {"states": _STATE_SPEC, "dealer": _DEALER_SPEC, "recovery": _RECOVERY_SPEC,
          "port": _PORT_SPEC}
_POINT_STYLE = {"recovery": (0.8, 0.75), "port": (2, 0.95), "dealer": (0.8, 0.75)}


def _page(scene: Scene, options: MapOptions) -> tuple[branca.element.Figure, folium.Map]:
    """An empty page: inlined Leaflet and our script, no CDN links, the optional tile layer."""
    figure = branca.element.Figure(title=escape_html(scene.title))
    fmap = _Map(location=[29.0, -100.0], zoom_start=4, tiles=None, zoom_control="topright",
                control_scale=True, zoom_snap=0.25)
    fmap.default_js = []  # folium's CDN scripts and styles (Leaflet, jQuery, Bootstrap, fonts)
    fmap.default_css = []
    figure.add_child(fmap)
    leaflet_js, leaflet_css = leaflet_assets()
    own_js, own_css = page_assets()
    header = figure.header
    header.add_child(_Raw(f"<style>{leaflet_css}</style>"), name="leaflet_css")
    header.add_child(_Raw(f"<style>{own_css}</style>"), name="geoflow_css")
    header.add_child(_Raw(f"<script>{leaflet_js}</script>"), name="leaflet")
    header.add_child(_Raw(f"<script>{own_js}</script>"), name="geoflow")
    if options.tiles:
        # a provider, not its URL: folium looks a URL up among xyzservices' ~900 named
        # providers first (2-3 ms a page, a quarter of a batch entity's map.html)
        tiles = xyzservices.TileProvider(name="CartoDB.Positron", url=_TILES,
                                         attribution=_TILES_ATTR, subdomains="abcd")
        folium.TileLayer(tiles, attr=_TILES_ATTR, max_zoom=20,
                         name="Online basemap (CartoDB Positron; needs network)",
                         overlay=True, show=False, control=True).add_to(fmap)
    return figure, fmap


def render_scene(scene: Scene, *, options: MapOptions | None = None) -> str:
    """The self-contained HTML page drawing ``scene`` (``options`` only for ``tiles``)."""
    options = options or MapOptions()
    figure, fmap = _page(scene, options)
    state_opts = {"stroke": "#8c8c8c", "spec": _STATE_SPEC}
    for country, name in (("US", "US states: guns sourced"),
                          ("MX", "Mexican states: guns recovered")):
        _DataLayer("states", _areas_geojson(scene, country), state_opts,
                   name=name).add_to(fmap)
    flow_name = ("Flows (width ∝ guns; dashed = modelled crossing)" if scene.flow_style == "paths"
                 else "Legs (width ∝ guns; dashed = modelled crossing)")
    _DataLayer("flows", _legs_geojson(scene.legs),
               {"colour": scene.flow_colour, "opacity": _FLOW_OPACITY, "spec": _FLOW_SPEC},
               name=flow_name).add_to(fmap)
    for layer in scene.points:
        weight, opacity = _POINT_STYLE[layer.kind]
        fill = layer.points[0].fill if layer.points else "#ffffff"
        stroke = layer.points[0].stroke if layer.points else PORT_COLOUR
        _DataLayer("points", _points_geojson(layer),
                   {"stroke": stroke, "fill": fill, "weight": weight, "fillOpacity": opacity,
                    "kind": layer.kind, "spec": _SPECS[layer.kind]},
                   name=layer.name).add_to(fmap)
    figure.html.add_child(_Raw(_banner(scene) + _panels(scene)), name="geoflow_panels")
    _LayerControl(collapsed=True, position="topright").add_to(fmap)
    _stable_ids(figure)
    map_name = fmap.get_name()
    labels = [{"t": lab.text, "lon": round(lab.lon, _DECIMALS), "lat": round(lab.lat, _DECIMALS),
               "k": lab.kind, "z": lab.min_zoom, "r": 7 if lab.kind == "port" else 5}
              for lab in scene.labels]
    code = [f"geoflow.attribution({map_name}, {script_json(list(scene.attribution))});",
            f"geoflow.panel({map_name}, 'gf-title', 'topleft');",
            f"geoflow.panel({map_name}, 'gf-legend', 'bottomright');",
            f"geoflow.panel({map_name}, 'gf-footer', 'bottomleft');",
            f"geoflow.labels({map_name}, {script_json(labels)});"]
    if scene.synthetic:
        code.insert(0, "document.body.classList.add('gf-has-banner'); "
                       f"{map_name}.invalidateSize();")
    if options.tiles:
        code.append(f"geoflow.tiles({map_name});")
    if scene.bounds:
        (west, south), (east, north) = scene.bounds
        code.append(f"geoflow.fit({map_name}, {script_json([[south, west], [north, east]])});")
    fmap.add_child(_Script("\n".join(code)))
    return figure.render()


def render_map(result: MapData, *, options: MapOptions | None = None) -> str:
    """The self-contained HTML map of a ``RunResult`` (docs/internals.md "render").

    Builds the scene (aggregated legs, classed states, points, labels, legend, texts, the
    synthetic banner) and draws it; everything not drawn is counted in the legend. Returns
    the page as a string; the caller writes it.
    """
    options = options or MapOptions()
    return render_scene(build_scene(result, options=options), options=options)


def _stable_ids(element: branca.element.Element, counter: list[int] | None = None) -> None:
    """Replace folium's random element ids by a counter, so the same data give the same page."""
    counter = counter if counter is not None else [0]
    element._id = f"{counter[0]:04d}"
    counter[0] += 1
    for child in list(element._children.values()):
        _stable_ids(child, counter)


def write_map(html: str, path: str | Path) -> Path:
    """Write the page atomically (a temporary file in the same folder, then a rename)."""
    from geoflow.export import write_atomic

    return write_atomic(path, html.encode("utf-8"), what="the map")
