"""Print and social stills: the map's scene as SVG, PDF and PNG, drawn with matplotlib.

No browser, no tiles, no network: the state outlines come from ``shapes/`` and are drawn in an
Albers equal-area conic fitted to the US–Mexico extent (:data:`CRS`). What is drawn — legs,
points, classes, labels, legend, texts, the synthetic flag — comes from the renderer-independent
scene (:mod:`geoflow.scene`), so the stills show what the web map shows.

Made for designers: SVG text stays ``<text>`` (``svg.fonttype = 'none'``), every layer is a
named group (``<g id="states">``, ``flows``, ``ports``, ``places``, ``labels``, ``legend``,
``title``, ``source``) with plain fills; the PDF embeds its font (DejaVu Sans, TrueType, which
ships with matplotlib). Labels are placed with the renderer's own text extents so that no two
overlap.

Example
-------
>>> from geoflow.static import render_still
>>> render_still(scene, "guns.svg", size="social")                  # doctest: +SKIP
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from geoflow.errors import ConfigError

__all__ = [
    "CRS",
    "FONT",
    "FORMATS",
    "LAYERS",
    "PAPERS",
    "SIZES",
    "StillSize",
    "still_size",
    "project",
    "base_map",
    "cvd_delta_e",
    "place_labels",
    "boxes_disjoint",
    "wrap_text",
    "draw_scene",
    "figure_bytes",
    "save_figure",
    "render_still",
    "write_stills",
    "RUN_STILLS",
]

#: The map projection: Albers equal-area conic fitted to the US–Mexico extent (about 15°–49° N:
#: standard parallels at one sixth and five sixths of that range), so state areas stay true
#: for the choropleths and the border region is barely distorted.
CRS = "+proj=aea +lat_0=30 +lon_0=-100 +lat_1=21 +lat_2=43 +datum=WGS84 +units=m +no_defs"
#: The one font used: ships with matplotlib (and Debian's ``fonts-dejavu-core``); embedded in
#: PDFs as TrueType, named in SVGs so a designer's copy of it (or a fallback) is used.
FONT = "DejaVu Sans"
FORMATS = ("svg", "pdf", "png")
#: Named SVG groups, bottom to top; tests and designers rely on these ids.
LAYERS = ("states", "flows", "ports", "places", "labels", "legend", "title", "source")
#: Landscape paper for the ``page`` size (inches).
PAPERS = {"letter": (11.0, 8.5), "a4": (11.69, 8.27)}
#: State outlines are simplified once per process to this tolerance (metres in :data:`CRS`):
#: below a pixel of the largest still (a 7 in column at 300 dpi across ~4,000 km).
SIMPLIFY_M = 1000.0

_RC = {
    "svg.fonttype": "none",        # SVG text stays <text>
    "pdf.fonttype": 42,            # TrueType embedded in PDFs
    "ps.fonttype": 42,
    "font.family": "sans-serif",
    "font.sans-serif": [FONT],
    "svg.hashsalt": "geoflow",     # stable clip-path ids: the same scene gives the same file
    "path.simplify": True,
    "axes.unicode_minus": False,
    "lines.scale_dashes": False,   # dash lengths in points, as _dash computes them
}


@dataclass(frozen=True)
class StillSize:
    """A named still: physical size (inches), resolution and the body text size (points).

    Pixel sizes are exact: ``width_in * dpi`` pixels wide. Text sizes scale from ``font_pt``
    (title 1.75×, subtitle 1.1×, labels 0.95×, legend 0.9×, footer 0.85×).
    """

    name: str
    width_in: float
    height_in: float
    dpi: int
    font_pt: float

    @property
    def pixels(self) -> tuple[int, int]:
        return round(self.width_in * self.dpi), round(self.height_in * self.dpi)

    @property
    def landscape(self) -> bool:
        return self.width_in >= 1.2 * self.height_in


def _px(name: str, width: int, height: int, font_pt: float, dpi: int = 200) -> StillSize:
    return StillSize(name, width / dpi, height / dpi, dpi, font_pt)


#: Named sizes, as desks ask for them. Pixel presets are drawn at 200 dpi (so text reads at
#: social-feed sizes); print presets at 300 dpi. ``wide`` is the still ``geoflow run`` writes.
SIZES: dict[str, StillSize] = {
    "social": _px("social", 1200, 675, 7.0),
    "square": _px("square", 1080, 1080, 7.0),
    "story": _px("story", 1080, 1920, 8.0),
    "wide": _px("wide", 1600, 1000, 7.5),
    "column": StillSize("column", 3.35, 4.8, 300, 6.0),
    "two-column": StillSize("two-column", 7.0, 5.0, 300, 8.0),
    "page": StillSize("page", *PAPERS["letter"], 300, 10.0),
}


def still_size(name: str, *, paper: str = "letter") -> StillSize:
    """The :data:`SIZES` entry ``name``; ``page`` takes its size from ``paper`` (landscape
    ``letter`` or ``a4``). Unknown names raise :class:`ConfigError`."""
    if name not in SIZES:
        raise ConfigError(f"unknown still size {name!r}; choose one of {', '.join(SIZES)}")
    if paper not in PAPERS:
        raise ConfigError(f"unknown paper {paper!r}; choose one of {', '.join(PAPERS)}")
    size = SIZES[name]
    if name == "page":
        size = replace(size, width_in=PAPERS[paper][0], height_in=PAPERS[paper][1])
    return size


# --------------------------------------------------------------------------- projection


@lru_cache(maxsize=1)
def _transformer():
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", CRS, always_xy=True)


def project(lonlat: np.ndarray) -> np.ndarray:
    """``(..., 2)`` lon/lat → ``(..., 2)`` metres in :data:`CRS` (NaN stays NaN)."""
    arr = np.asarray(lonlat, dtype=float)
    x, y = _transformer().transform(arr[..., 0], arr[..., 1])
    return np.stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)], axis=-1)


@dataclass(frozen=True)
class BaseMap:
    """The projected, simplified state outlines, ready for matplotlib (built once)."""

    codes: tuple[str, ...]      # ISO 3166-2 code per state, in the order of ``paths``
    names: tuple[str, ...]
    paths: tuple                # matplotlib Path per state (all its rings)
    border: tuple               # matplotlib Paths of the US–Mexico border line
    centres: np.ndarray         # (n, 2) a point inside each state (for state labels)
    bounds: np.ndarray          # (n, 4) xmin, ymin, xmax, ymax per state


def _ring_path(geom):
    """A matplotlib Path of every ring of a (multi)polygon or (multi)line, no Python loop over
    vertices."""
    import shapely
    from matplotlib.path import Path as MplPath

    if shapely.get_type_id(geom) in (3, 6):  # (multi)polygon → its rings
        polys = shapely.get_parts(geom)
        rings = np.concatenate([shapely.get_rings(polys)]) if len(polys) else []
        closed = True
    else:
        rings = shapely.get_parts(geom)
        closed = False
    coords, index = shapely.get_coordinates(rings, return_index=True)
    if not len(coords):
        return MplPath(np.zeros((0, 2)))
    codes = np.full(len(coords), MplPath.LINETO, dtype=MplPath.code_type)
    starts = np.r_[0, np.flatnonzero(np.diff(index)) + 1]
    codes[starts] = MplPath.MOVETO
    if closed:
        codes[np.r_[starts[1:] - 1, len(coords) - 1]] = MplPath.CLOSEPOLY
    return MplPath(coords, codes)


@lru_cache(maxsize=1)
def base_map() -> BaseMap:
    """The states of ``shapes/states.geojson`` projected to :data:`CRS` and simplified as a
    coverage (shared borders stay shared), plus the US–Mexico border. Cached per process."""
    import shapely

    from geoflow.shapes import load_states

    states = load_states().to_crs(CRS)
    geoms = shapely.coverage_simplify(states.geometry.to_numpy(), SIMPLIFY_M)
    geoms = shapely.make_valid(geoms)
    # the states are a coverage (shared borders are shared exactly, as build_shapes.py makes
    # them and coverage_simplify keeps them), so the coverage union merges edges rather than
    # overlaying polygons: the same outlines in ~7 ms instead of ~90 ms
    country = states["country"].to_numpy()
    us = shapely.coverage_union_all(geoms[country == "US"])
    mx = shapely.coverage_union_all(geoms[country == "MX"])
    border = shapely.line_merge(shapely.intersection(shapely.boundary(us), shapely.boundary(mx)))
    centres = shapely.get_coordinates(shapely.point_on_surface(geoms))
    return BaseMap(
        codes=tuple(states["code"].astype(str)),
        names=tuple(states["name"].astype(str)),
        paths=tuple(_ring_path(g) for g in geoms),
        border=(_ring_path(border),),
        centres=centres,
        bounds=shapely.bounds(geoms),
    )


# --------------------------------------------------------------------------- colour-blind check

#: Machado, Oliveira & Fernandes (2009), severity 1.0, applied to linear sRGB.
_CVD = {
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968],
                              [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868],
                            [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
}
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])


def _lab(linear_rgb: np.ndarray) -> np.ndarray:
    """Linear sRGB (n, 3) → CIELAB (D65)."""
    t = linear_rgb @ _SRGB_TO_XYZ.T / _D65
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])],
                    axis=1)


def cvd_delta_e(colours: Sequence[str], kind: str | None = None) -> np.ndarray:
    """CIE76 ΔE between each pair of neighbouring ``colours`` (hex), as seen with normal
    vision (``kind=None``), ``"deuteranopia"`` or ``"protanopia"`` (Machado et al. 2009,
    severity 1; simulated colours are not clipped, as in ``colorspacious``).

    >>> cvd_delta_e(["#ffffff", "#000000"], "protanopia").round(1).tolist()
    [100.0]
    """
    from matplotlib.colors import to_rgb

    rgb = np.array([to_rgb(c) for c in colours], dtype=float).reshape(-1, 3)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    if kind is not None:
        linear = linear @ _CVD[kind].T
    lab = _lab(linear)
    return np.linalg.norm(np.diff(lab, axis=0), axis=1)


# --------------------------------------------------------------------------- matplotlib glue


def _layer_class():
    """A matplotlib Artist that draws its children inside one named SVG group. A child may be
    given as a callable that makes it (or a list of them): made only when the layer is used,
    so the layouts :func:`draw_scene` tries and drops cost no artists."""
    from matplotlib.artist import Artist

    class Layer(Artist):
        def __init__(self, name: str, children: Iterable[Artist] = ()) -> None:
            super().__init__()
            self.set_gid(name)
            self.children: list = list(children)

        def add(self, artist):
            self.children.append(artist)
            return artist

        def get_children(self):
            if not all(isinstance(child, Artist) for child in self.children):
                made = [child if isinstance(child, Artist) else child()
                        for child in self.children]
                self.children = [a for m in made for a in (m if isinstance(m, list) else [m])]
            return list(self.children)

        def draw(self, renderer) -> None:
            if not self.get_visible():
                return
            renderer.open_group(self.get_gid(), gid=self.get_gid())
            for child in sorted(self.get_children(), key=lambda a: a.get_zorder()):
                child.draw(renderer)
            renderer.close_group(self.get_gid())
            self.stale = False

    return Layer


@lru_cache(maxsize=1)
def _layer_type():
    return _layer_class()


def _new_figure(size: StillSize):
    """A figure with the still's Agg canvas (no pyplot, no global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size.width_in, size.height_in), dpi=size.dpi, facecolor="white")
    _agg_types()[0](fig)
    return fig


# --------------------------------------------------------------------------- raster text
#
# matplotlib's Agg renders every glyph of every text anew on each draw, which was half the cost
# of a batch entity's PNG. The same lines recur on every still of a batch (legend, source,
# place names), so the PNG renderer rasterises each distinct line once per process and blits
# the cached coverage bitmap: FreeType renders the whole line at a whole-pixel position (as
# matplotlib did up to 3.10), and a label's halo is that bitmap dilated by a disc. SVG and PDF
# are untouched (text stays text; halos there are CSS or stroked outlines).


@lru_cache(maxsize=4096)  # a few KB a line: a long batch's worker keeps ~20 MB at most
def _line(text: str, font_file: str, size: float, dpi: float
          ) -> tuple[np.ndarray, float, tuple[float, float, float]]:
    """One line of text in ``font_file`` as FreeType renders it in Agg (hinted, anti-aliased):
    its coverage bitmap, the bitmap's x offset and the line's (width, height, descent), all
    in pixels."""
    from matplotlib.backends.backend_agg import get_hinting_flag
    from matplotlib.font_manager import get_font

    font = get_font(font_file)
    font.clear()
    font.set_size(size, dpi)
    font.set_text(text, 0.0, flags=get_hinting_flag())
    width, height = font.get_width_height()
    extent = (width / 64.0, height / 64.0, font.get_descent() / 64.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    return np.array(font.get_image(), dtype=np.uint8), font.get_bitmap_offset()[0] / 64.0, extent


@lru_cache(maxsize=2048)
def _halo_bitmap(text: str, font_file: str, size: float, dpi: float, radius: float
                 ) -> np.ndarray:
    """The line's bitmap grown by a disc of ``radius`` pixels (so ``ceil(radius)`` pixels
    wider on every side): the label's halo."""
    return _dilate(_line(text, font_file, size, dpi)[0], radius)


@lru_cache(maxsize=256)
def _font_heights(font_file: str, size: float, dpi: float) -> tuple[float, float, float]:
    """(ascent, descent, line gap) in pixels of the font, from its OS/2 or hhea table, as
    ``Text`` computes them for every text it lays out (here once per font, size and dpi)."""
    from matplotlib.font_manager import get_font

    font = get_font(font_file)
    for table_name, gap_key, ascent_key, descent_key in (
            ("OS/2", "sTypoLineGap", "sTypoAscender", "sTypoDescender"),
            ("hhea", "lineGap", "ascent", "descent")):
        table = font.get_sfnt_table(table_name)
        if table is None:
            continue
        scale = 1 / font.get_sfnt_table("head")["unitsPerEm"] * size * dpi / 72
        return table[ascent_key] * scale, -table[descent_key] * scale, table[gap_key] * scale
    return None, None, None


@lru_cache(maxsize=8)
def _disc(radius: float) -> tuple[tuple[int, int, int], ...]:
    """(dy, dx, weight out of 255) of every pixel a disc of ``radius`` covers, its rim
    weighted by how much of the pixel it covers (roughly)."""
    r = int(np.ceil(radius))
    cells = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            weight = round(255 * min(max(radius + 0.5 - float(np.hypot(dx, dy)), 0.0), 1.0))
            if weight and (dx or dy):
                cells.append((dy, dx, weight))
    return tuple(cells)


def _dilate(coverage: np.ndarray, radius: float) -> np.ndarray:
    """``coverage`` (uint8) grown by a disc of ``radius`` pixels, its rim anti-aliased: the
    white outline a stroke of twice the radius around each glyph paints."""
    r = int(np.ceil(radius))
    h, w = coverage.shape
    out = np.pad(coverage, r)
    faded: dict[int, np.ndarray] = {255: coverage}
    for dy, dx, weight in _disc(radius):
        if weight not in faded:
            faded[weight] = (coverage.astype(np.uint16) * weight // 255).astype(np.uint8)
        window = out[r + dy:r + dy + h, r + dx:r + dx + w]
        np.maximum(window, faded[weight], out=window)
    return out


def _font_file(prop) -> str:
    """The font file ``findfont`` picks for ``prop``, looked up once per process for each
    family, style, variant, weight and stretch: ``findfont`` hashes the properties and reads
    rcParams on every call, and scores every installed font (~3 ms) for each new size, though
    the size cannot change its choice among scalable fonts (every TrueType font)."""
    return _find_font(tuple(prop.get_family()), prop.get_style(), prop.get_variant(),
                      prop.get_weight(), prop.get_stretch(), prop.get_file())


@lru_cache(maxsize=64)
def _find_font(family: tuple, style: str, variant: str, weight, stretch, file) -> str:
    """``findfont`` of these properties under :data:`_RC` (every still is drawn there, so a
    generic family such as ``sans-serif`` means :data:`FONT`)."""
    from matplotlib.font_manager import FontProperties, findfont

    if file is not None:
        return findfont(FontProperties(fname=file))
    with _rc():
        return findfont(FontProperties(family=list(family), style=style, variant=variant,
                                       weight=weight, stretch=stretch))


@lru_cache(maxsize=1)
def _agg_types():
    """(canvas class, renderer class): Agg with cached line bitmaps, one renderer per pixel
    size in a process (a batch's stills are drawn one after another into the same buffer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg

    class Renderer(RendererAgg):
        @staticmethod
        def _key(prop) -> tuple:
            return _font_file(prop), prop.get_size_in_points()

        def get_text_width_height_descent(self, s, prop, ismath):
            if ismath:
                return super().get_text_width_height_descent(s, prop, ismath)
            return _line(s, *self._key(prop), self.dpi)[2]

        def _get_font_height_metrics(self, prop):  # Text._get_layout asks every time
            return _font_heights(*self._key(prop), self.dpi)

        def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
            if ismath or angle or not gc.get_antialiased():
                return super().draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
            image, x_offset, (_, _, descent) = _line(s, *self._key(prop), self.dpi)
            halo = getattr(mtext, "halo_pt", 0.0) * self.dpi / 72
            if halo > 0:
                image = _halo_bitmap(s, *self._key(prop), self.dpi, halo)
                grow = int(np.ceil(halo))
                x_offset, descent = x_offset - grow, descent + grow
            # draw_text_image takes the bitmap's left edge and bottom row (y downwards)
            self._renderer.draw_text_image(image, round(x + x_offset), round(y + descent) + 1,
                                           0, gc)

    @lru_cache(maxsize=4)
    def renderer(width: int, height: int, dpi: float) -> Renderer:
        return Renderer(width, height, dpi)

    class Canvas(FigureCanvasAgg):
        def get_renderer(self):
            width, height = self.get_width_height(physical=True)
            self.renderer = renderer(width, height, self.figure.dpi)
            return self.renderer

    return Canvas, Renderer


@lru_cache(maxsize=1)
def _halo_type():
    """A label's white halo: stroked glyph outlines (matplotlib's path effect) in PDF; in the
    PNG, the cached bitmap of the label grown by ``halo_pt`` (same look, a fraction of the
    cost). SVG hides the halo layer and uses CSS instead (:func:`figure_bytes`)."""
    from matplotlib import patheffects
    from matplotlib.text import Text

    raster = _agg_types()[1]

    class Halo(Text):
        def __init__(self, *args, halo_pt: float, **kwargs) -> None:
            stroke = patheffects.Stroke(linewidth=2 * halo_pt, foreground="#ffffff")
            super().__init__(*args, path_effects=[stroke], **kwargs)
            self.halo_pt = halo_pt

        def draw(self, renderer) -> None:
            if not isinstance(renderer, raster):
                return super().draw(renderer)
            effects = self._path_effects
            self._path_effects = []
            try:
                super().draw(renderer)
            finally:
                self._path_effects = effects

    return Halo


def _rc():
    import matplotlib

    return matplotlib.rc_context(_RC)


@lru_cache(maxsize=4)
def _measuring_figure(dpi: float):
    """A figure and renderer used only to measure text (cached per resolution; the lines it
    measures are the PNG renderer's, so a line measured for the layout is drawn from cache)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=dpi)
    return fig, _agg_types()[0](fig).get_renderer()


@lru_cache(maxsize=16384)
def _text_width(text: str, size: float, weight: str, dpi: float) -> float:
    """Width in pixels of one line of ``text`` as Agg lays it out (cached: the same words
    recur on every still of a batch)."""
    from matplotlib.font_manager import FontProperties

    _, renderer = _measuring_figure(dpi)
    prop = FontProperties(family=FONT, size=size, weight=weight)
    return renderer.get_text_width_height_descent(text, prop, ismath=False)[0]


@lru_cache(maxsize=4096)
def text_extent(text: str, size: float, weight: str, dpi: float, linespacing: float = 1.2
                ) -> tuple[float, float]:
    """(width, height) in pixels of a matplotlib Text (one or more lines) exactly as
    ``Text.get_window_extent`` reports it at ``dpi``."""
    from matplotlib.text import Text

    fig, renderer = _measuring_figure(dpi)
    artist = Text(0, 0, text, fontsize=size, fontweight=weight, linespacing=linespacing,
                  fontfamily=FONT)
    artist.set_figure(fig)
    box = artist.get_window_extent(renderer)
    return box.width, box.height


def wrap_text(text: str, *, width_px: float, fontsize: float, dpi: float,
              weight: str = "normal") -> str:
    """``text`` broken at spaces into lines no wider than ``width_px`` (words measured by
    the renderer, with 2% to spare for kerning across the spaces; a word longer than the
    width keeps a line of its own)."""
    space = _text_width("x x", fontsize, weight, dpi) - 2 * _text_width("x", fontsize, weight,
                                                                          dpi)
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line, used = "", 0.0
        for word in paragraph.split():
            w = _text_width(word, fontsize, weight, dpi)
            if line and (used + space + w) * 1.02 > width_px:
                lines.append(line)
                line, used = word, w
            else:
                line, used = (f"{line} {word}", used + space + w) if line else (word, w)
        lines.append(line)
    return "\n".join(lines)


def _mathtext_safe(text: object) -> str:
    """Text shown literally: a ``$`` would start matplotlib's mathtext."""
    return "" if text is None else str(text).replace("$", r"\$")


# --------------------------------------------------------------------------- label placement

#: Candidate positions around an anchor, in order of preference: (dx, dy) unit offsets and the
#: text alignment that goes with them (cartographic convention: upper right first).
_CANDIDATES = (
    (1, 0.6, "left", "bottom"), (1, -0.6, "left", "top"), (-1, 0.6, "right", "bottom"),
    (-1, -0.6, "right", "top"), (1, 0, "left", "center"), (-1, 0, "right", "center"),
    (0, 1, "center", "bottom"), (0, -1, "center", "top"),
)


def place_labels(
    sizes: np.ndarray,
    anchors: np.ndarray,
    *,
    frame: Sequence[float],
    gaps: np.ndarray,
    centred: np.ndarray | None = None,
    obstacles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy label placement in display pixels, in the given (priority) order.

    ``sizes`` (n, 2) are the labels' widths and heights as the renderer measured them,
    ``anchors`` (n, 2) the points they name, ``gaps`` (n,) the distance kept from the anchor,
    ``centred`` (n,) labels that may only sit centred on their anchor (state names),
    ``frame`` (x0, y0, x1, y1) the box every label must stay inside, ``obstacles`` (m, 4)
    boxes no label may cover (panels, markers). Returns ``(chosen, boxes)``: the index into
    :data:`_CANDIDATES` per label (-1 = left out, -2 = centred) and each label's box (x0, y0,
    x1, y1; NaN when left out). Accepted boxes are pairwise disjoint.
    """
    n = len(sizes)
    chosen = np.full(n, -1, dtype=int)
    boxes = np.full((n, 4), np.nan)
    taken = np.empty((0, 4)) if obstacles is None else np.asarray(obstacles, float).reshape(-1, 4)
    x0f, y0f, x1f, y1f = frame
    centred = np.zeros(n, dtype=bool) if centred is None else np.asarray(centred, dtype=bool)
    for i in range(n):
        w, h = sizes[i]
        ax, ay = anchors[i]
        if not (np.isfinite(ax) and np.isfinite(ay)):
            continue
        if centred[i]:
            options = [(-2, ax - w / 2, ay - h / 2)]
        else:
            g = gaps[i]
            options = []
            for k, (dx, dy, ha, va) in enumerate(_CANDIDATES):
                left = ax + dx * g - {"left": 0, "center": w / 2, "right": w}[ha]
                bottom = ay + dy * g - {"bottom": 0, "center": h / 2, "top": h}[va]
                options.append((k, left, bottom))
        for k, left, bottom in options:
            box = np.array([left, bottom, left + w, bottom + h])
            if box[0] < x0f or box[1] < y0f or box[2] > x1f or box[3] > y1f:
                continue
            if len(taken) and np.any((box[0] < taken[:, 2]) & (taken[:, 0] < box[2])
                                     & (box[1] < taken[:, 3]) & (taken[:, 1] < box[3])):
                continue
            chosen[i] = k
            boxes[i] = box
            taken = np.vstack([taken, box])
            break
    return chosen, boxes


def boxes_disjoint(boxes: np.ndarray) -> bool:
    """True when no two of the (n, 4) boxes overlap (touching edges allowed)."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    overlap = ((b[:, None, 0] < b[None, :, 2]) & (b[None, :, 0] < b[:, None, 2])
               & (b[:, None, 1] < b[None, :, 3]) & (b[None, :, 1] < b[:, None, 3]))
    np.fill_diagonal(overlap, False)
    return not overlap.any()


# --------------------------------------------------------------------------- saving


_SVG_STYLE = (
    "#labels text{stroke:#ffffff;stroke-width:2.4px;stroke-linejoin:round;paint-order:stroke}"
)


def figure_bytes(fig, fmt: str) -> bytes:
    """The figure as ``svg``, ``pdf`` or ``png`` bytes (no dates, so output is repeatable).

    In SVG the label halos are CSS (``paint-order: stroke`` on ``#labels text``) instead of the
    outlined copies PNG and PDF use, so the labels stay one editable ``<text>`` each.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown still format {fmt!r}; choose one of {', '.join(FORMATS)}")
    halos = [a for a in fig.artists if a.get_gid() == "halos"]
    buffer = io.BytesIO()
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None},
                "png": {}}[fmt]
    with _rc():
        for layer in halos:
            layer.set_visible(fmt != "svg")
        try:
            if fmt == "png":
                _write_png(fig, buffer)
            elif fmt == "svg":
                _write_svg(fig, buffer)
            else:
                fig.savefig(buffer, format=fmt, dpi=fig.dpi, metadata=metadata,
                            facecolor="white")
        finally:
            for layer in halos:
                layer.set_visible(True)
    data = buffer.getvalue()
    if fmt == "svg":
        text = data.decode("utf-8")
        text = text.replace("</style>", _SVG_STYLE + "\n  </style>", 1)
        data = text.encode("utf-8")
    return data


def _write_svg(fig, buffer) -> None:
    """The figure as SVG, as ``savefig(format="svg")`` writes it (in points: the figure is
    drawn at 72 dpi), with text measured through a per-process cache: the renderer
    ``savefig`` makes is new each time, and so was its cache of the same lines' extents."""
    from matplotlib.backends.backend_mixed import MixedModeRenderer

    dpi = fig.dpi
    width, height = fig.get_size_inches()
    text = io.StringIO()
    fig.dpi = 72
    try:
        renderer = MixedModeRenderer(fig, width, height, dpi, _svg_renderer_type()(
            width * 72, height * 72, text, image_dpi=dpi, metadata={"Date": None}))
        fig.draw(renderer)
        renderer.finalize()
    finally:
        fig.dpi = dpi
    buffer.write(text.getvalue().encode("utf-8"))


@lru_cache(maxsize=1)
def _svg_renderer_type():
    """matplotlib's SVG renderer with text extents cached per process and a quicker loop for
    collections drawn as one ``<path>`` per element (legs, arrowheads, states, places): the
    same elements, attributes and styles matplotlib writes, without its per-element graphics
    context and colour parsing (which made a batch entity's legs cost ~30 ms)."""
    from matplotlib.backends.backend_svg import RendererSVG, _generate_css, _short_float_fmt
    from matplotlib.colors import rgb2hex
    from matplotlib.transforms import Affine2D

    class Renderer(RendererSVG):
        def get_text_width_height_descent(self, s, prop, ismath):
            if ismath:
                return super().get_text_width_height_descent(s, prop, ismath)
            return _outline_extent(s, tuple(prop.get_family()), prop.get_style(),
                                   prop.get_weight(), prop.get_size_in_points())

        def _get_font_height_metrics(self, prop):  # Text._get_layout asks every time
            return _font_heights(_font_file(prop), prop.get_size_in_points(), 72)

        def draw_path_collection(self, gc, master_transform, paths, all_transforms,
                                 offsets, offset_trans, facecolors, edgecolors, linewidths,
                                 linestyles, antialiaseds, urls, offset_position, **kwargs):
            ids = max(len(paths), len(all_transforms))
            uses = self._iter_collection_uses_per_path(paths, all_transforms, offsets,
                                                       facecolors, edgecolors)
            if (not uses or len(paths[0].vertices) + 9 * uses + 3 < (len(paths[0].vertices)
                                                                       + 5) * uses
                    or any(url is not None for url in urls) or gc.get_hatch() is not None
                    or gc.get_sketch_params() is not None or gc.get_forced_alpha()):
                # matplotlib's own loop: nothing to draw, <defs> + <use>, links or hatches
                return super().draw_path_collection(
                    gc, master_transform, paths, all_transforms, offsets, offset_trans,
                    facecolors, edgecolors, linewidths, linestyles, antialiaseds, urls,
                    offset_position, **kwargs)
            shifts = offset_trans.transform(offsets) if len(offsets) else np.zeros((1, 2))
            clip = self._get_clip_attrs(gc)
            join, cap = gc.get_joinstyle(), gc.get_capstyle()
            styles: dict[tuple, str] = {}
            master_flip = self._make_flip_transform(master_transform)  # most elements' own
            for i in range(max(ids, len(offsets))):
                # element i as backend_bases._iter_collection_raw_paths and _iter_collection
                # make it: path, transform, offset, then its graphics context's style
                xo, yo = shifts[i % len(shifts)]
                if not (np.isfinite(xo) and np.isfinite(yo)):
                    continue
                j = i % ids
                transform = master_transform
                if len(all_transforms):
                    transform = Affine2D(all_transforms[j % len(all_transforms)]) + transform
                if xo != 0 or yo != 0:
                    transform = transform.frozen()
                    transform.translate(xo, yo)
                face = tuple(facecolors[i % len(facecolors)]) if len(facecolors) else None
                if face is not None and face[3] == 0:
                    face = None
                edge, width, dashes = None, 0.0, gc.get_dashes()
                if len(edgecolors):
                    edge = tuple(edgecolors[i % len(edgecolors)])
                    width = (linewidths[i % len(linewidths)] if len(linewidths)
                             else gc.get_linewidth())
                    if len(linestyles):
                        dashes = linestyles[i % len(linestyles)]
                    if edge[3] == 0:
                        width = 0.0
                key = (face, edge, float(width), dashes[0],
                       None if dashes[1] is None else tuple(dashes[1]))
                if key not in styles:
                    styles[key] = _generate_css(_style(face, edge, width, dashes, join, cap))
                path = paths[j % len(paths)]
                flip = (master_flip if transform is master_transform
                        else self._make_flip_transform(transform))
                self.writer.element("path", d=self._convert_path(
                    path, flip, clip=face is None,
                    simplify=path.should_simplify and face is None), **clip, style=styles[key])

    def _style(face, edge, width, dashes, join, cap) -> dict:
        """RendererSVG._get_style_dict for a plain graphics context (no hatch, no forced
        alpha)."""
        attrib = {}
        if face is None:
            attrib["fill"] = "none"
        else:
            if face[:3] != (0, 0, 0):
                attrib["fill"] = rgb2hex(face)
            if face[3] != 1.0:
                attrib["fill-opacity"] = _short_float_fmt(face[3])
        offset, seq = dashes
        if seq is not None:
            attrib["stroke-dasharray"] = ",".join(_short_float_fmt(v) for v in seq)
            attrib["stroke-dashoffset"] = _short_float_fmt(float(offset))
        if width:
            attrib["stroke"] = rgb2hex(edge)
            if edge[3] != 1.0:
                attrib["stroke-opacity"] = _short_float_fmt(edge[3])
            if width != 1.0:
                attrib["stroke-width"] = _short_float_fmt(width)
            if join != "round":
                attrib["stroke-linejoin"] = join
            if cap != "butt":
                attrib["stroke-linecap"] = {"projecting": "square"}.get(cap, cap)
        return attrib

    return Renderer


def _outline_extent(text: str, family: tuple, style: str, weight, size: float
                    ) -> tuple[float, float, float]:
    """(width, height, descent) in points of one line of text as SVG and PDF measure it:
    ``text_to_path`` lays text out unhinted at its ``FONT_SCALE`` and scales the extent to
    the size, so the layout is done (and the font found) once for every size of a text."""
    from matplotlib.textpath import text_to_path

    scale = size / text_to_path.FONT_SCALE
    width, height, descent = _outline_extent_unscaled(text, family, style, weight)
    return width * scale, height * scale, descent * scale


@lru_cache(maxsize=8192)
def _outline_extent_unscaled(text: str, family: tuple, style: str, weight
                             ) -> tuple[float, float, float]:
    """:func:`_outline_extent` at ``text_to_path.FONT_SCALE`` points (where its scale is 1)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(family=list(family), style=style, weight=weight,
                          size=text_to_path.FONT_SCALE)
    return text_to_path.get_text_width_height_descent(text, prop, False)


def _write_png(fig, buffer) -> None:
    """The figure (opaque: a white page) as an RGB PNG, no metadata but its resolution:
    rows unfiltered (on flat map colours both faster and smaller than Pillow's adaptive
    filters), deflated by zlib at its fastest level (a 1600×1000 still in ~31 ms). ISA-L
    took ~5 ms, but in one CI run the same pixels came out as different bytes, and the
    same input must give the same file (chunked and whole reads, resumed batches)."""
    from PIL import Image

    fig.canvas.draw()
    width, height = fig.canvas.get_width_height(physical=True)
    rgb = Image.frombuffer("RGBA", (width, height), fig.canvas.buffer_rgba(), "raw", "RGBA", 0,
                           1).tobytes("raw", "RGB")  # packed in C: alpha dropped
    rows = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 0] = 0  # each row's filter: none
    rows[:, 1:] = np.frombuffer(rgb, dtype=np.uint8).reshape(height, -1)
    per_metre = round(fig.dpi / 0.0254)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    buffer.write(b"\x89PNG\r\n\x1a\n"
                 + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                 + chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1))
                 + chunk(b"IDAT", zlib.compress(rows, 1))
                 + chunk(b"IEND", b""))


def save_figure(fig, path: str | Path, fmt: str | None = None) -> Path:
    """Write the figure atomically (temporary file, then rename); ``fmt`` defaults to the
    file's extension. Raises :class:`OutputError` when the file cannot be written."""
    from geoflow.export import write_atomic

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    return write_atomic(path, figure_bytes(fig, fmt), what="the still")


# --------------------------------------------------------------------------- the figure

_BANNER_FILL = "#b00020"
_INK = "#1a1a1a"
_MUTED = "#555555"
_STATE_EDGE = "#a3a3a3"
_BORDER = "#4d4d4d"
_NO_DATA = "#f7f7f5"
#: CSS px per inch: the web map's unit, for turning the scene's px widths and radii into points
#: and for the web-map zoom a still corresponds to (labels' ``min_zoom``).
_CSS_DPI = 96
#: The width in CSS px of the web map the scene's widths are designed for.
_WEB_WIDTH_PX = 1100
_MIN_LINE_PT = 0.35
#: The smallest legend text (points): print legibility.
_MIN_TEXT_PT = 5.0
_MIN_SPAN_M = 400_000.0
_PAD = 0.06
_EDGE_PT = 10.0
_LABEL_KINDS = {  # kind → (size factor, weight, colour)
    "port": (1.0, "bold", _INK),
    "dealer": (0.95, "normal", _INK),
    "recovery": (0.95, "normal", _INK),
    "state": (0.9, "normal", "#6b6b6b"),
}


@dataclass(frozen=True)
class _Type:
    """Text sizes (points) of one still."""

    body: float

    @property
    def title(self) -> float:
        return self.body * 1.6

    @property
    def subtitle(self) -> float:
        return self.body * 1.1

    @property
    def label(self) -> float:
        return self.body * 0.9

    @property
    def legend(self) -> float:
        return self.body * 0.9

    @property
    def footer(self) -> float:
        return self.body * 0.8


def _stack_text(fig, layer, *, x: float, y: float, text: str, size: float,
                width: float, weight: str = "normal", colour: str = _INK, va: str = "top",
                gid: str | None = None) -> float:
    """A wrapped paragraph at (x, y) inches (top-left, or bottom-left with ``va="bottom"``);
    returns its height in inches."""
    from matplotlib.text import Text

    if not text:
        return 0.0
    wrapped = wrap_text(_mathtext_safe(text), width_px=width * fig.dpi, fontsize=size,
                        dpi=fig.dpi, weight=weight)
    layer.add(partial(Text, x, y, wrapped, fontsize=size, fontweight=weight, color=colour,
                      ha="left", va=va, transform=fig.dpi_scale_trans, linespacing=1.25, gid=gid))
    return _lines_height(wrapped.count("\n") + 1, size, weight, fig.dpi, 1.25) / fig.dpi


def _lines_height(lines: int, size: float, weight: str, dpi: float, linespacing: float
                  ) -> float:
    """Height in pixels of a Text of ``lines`` lines: with a fixed line spacing every line is
    the font's line height whatever its glyphs (matplotlib ≥ 3.11; before that, lines with
    glyphs taller than "lp" grew by a pixel or two), so paragraphs of new words are stacked
    without measuring each of their lines (a few ms of FreeType layout per line)."""
    return text_extent("\n".join(["lp"] * lines), size, weight, dpi, linespacing)[1]


class _Legend:
    """The legend, laid out top-down in points from its top-left corner (moved into place by
    :attr:`offset` once the layout is known)."""

    def __init__(self, fig, layer, *, width_pt: float, size: float, px_pt: float):
        from matplotlib.transforms import Affine2D

        self.fig, self.layer = fig, layer
        self.width, self.size, self.px_pt = width_pt, size, px_pt
        self.offset = Affine2D()
        self.transform = Affine2D().scale(1 / 72) + self.offset + fig.dpi_scale_trans
        self.y = 0.0  # cursor: top of the next row, going down (negative)
        self.line = size * 1.3

    def _width(self, text: str, size: float, weight: str = "normal") -> float:
        """Width in points."""
        return _text_width(text, size, weight, self.fig.dpi) * 72 / self.fig.dpi

    def _text(self, x: float, y: float, text: str, *, size: float | None = None,
              weight: str = "normal", colour: str = _INK, ha: str = "left", va: str = "center"):
        from matplotlib.text import Text

        self.layer.add(partial(Text, x, y, _mathtext_safe(text), fontsize=size or self.size,
                               fontweight=weight, color=colour, ha=ha, va=va,
                               transform=self.transform, linespacing=1.2))

    def paragraph(self, text: str, *, weight: str = "normal", colour: str = _INK,
                  size: float | None = None, gap: float = 0.0) -> None:
        size = size or self.size
        if not text:
            return
        self.y -= gap
        wrapped = wrap_text(_mathtext_safe(text), width_px=self.width * self.fig.dpi / 72,
                            fontsize=size, dpi=self.fig.dpi, weight=weight)
        self._text(0, self.y, wrapped, size=size, weight=weight, colour=colour, va="top")
        self.y -= (wrapped.count("\n") + 1) * size * 1.2 * 1.2 + size * 0.15

    def inline(self, items: Sequence[tuple[float, float, object, str]]) -> None:
        """Glyph + text items left to right, wrapping to new rows: each item is (glyph width,
        glyph height, draw(x, y_centre), text), all in points."""
        gap, spacing = self.size * 0.45, self.size * 1.1
        x, row_h = 0.0, self.line
        rows: list[list] = [[]]
        for gw, gh, draw, text in items:
            room = self.width - gw - gap
            wrapped = wrap_text(_mathtext_safe(text), width_px=room * self.fig.dpi / 72,
                                fontsize=self.size, dpi=self.fig.dpi)
            tw = max(self._width(line, self.size) for line in wrapped.split("\n"))
            th = (wrapped.count("\n") + 1) * self.size * 1.2
            w = gw + gap + tw
            if rows[-1] and x + w > self.width:
                rows.append([])
                x = 0.0
            rows[-1].append((x, gw, gh, draw, wrapped, th))
            x += w + spacing
        for row in rows:
            row_h = max([self.line] + [max(gh, th) + self.size * 0.25
                                       for _, _, gh, _, _, th in row])
            centre = self.y - row_h / 2
            for x0, gw, _, draw, wrapped, _ in row:
                self.layer.add(partial(draw, x0, centre))
                self._text(x0 + gw + gap, centre, wrapped)
            self.y -= row_h

    def _box_width(self, boxes: int) -> float:
        """The width of each of ``boxes`` boxes of a class bar (a gap before ``none``)."""
        return (self.width - self.size * 0.5) / max(boxes, 1)

    def bar_fits(self, labels: Sequence[str]) -> bool:
        """Whether each class's range (and ``none``) fits under its box of a class bar."""
        labels = [*labels, "none"]
        box_w = self._box_width(len(labels))
        return all(self._width(lab, self.size * 0.9) <= box_w - 1.5 for lab in labels)

    def swatches(self, colours: Sequence[str], labels: Sequence[str], none_colour: str, *,
                 bar: bool) -> None:
        """Class colours as a bar with each class's range under its box (``bar``: see
        :meth:`bar_fits`), else as inline swatch items."""
        from matplotlib.patches import Rectangle

        h = self.size * 1.0
        colours, labels = [*colours, none_colour], [*labels, "none"]
        gap = self.size * 0.5
        box_w = self._box_width(len(colours))
        if not bar:
            def swatch(colour):
                return lambda x, y: [Rectangle((x, y - h / 2), h * 1.4, h, facecolor=colour,
                                               edgecolor="#8a8a8a", linewidth=0.3,
                                               transform=self.transform)]
            self.inline([(h * 1.4, h, swatch(c), lab)
                         for c, lab in zip(colours, labels, strict=True)])
            return
        top = self.y - self.size * 0.2
        for i, (colour, label) in enumerate(zip(colours, labels, strict=True)):
            x = i * box_w + (gap if i == len(colours) - 1 else 0)
            self.layer.add(partial(Rectangle, (x, top - h), box_w, h, facecolor=colour,
                                   edgecolor="#8a8a8a", linewidth=0.3, transform=self.transform))
            self._text(x + box_w / 2, top - h - self.size * 0.2, label, size=self.size * 0.9,
                       ha="center", va="top", colour=_MUTED)
        self.y = top - h - self.size * 0.2 - self.size * 0.9 * 1.25 - self.size * 0.2

    def height(self) -> float:
        return -self.y


def _line_glyph(transform, width_pt: float, colour: str, dash: tuple | None, length: float):
    from matplotlib.lines import Line2D

    def draw(x, y):
        return [Line2D([x, x + length], [y, y], linewidth=width_pt, color=colour,
                       linestyle=dash or "-", solid_capstyle="butt", dash_capstyle="butt",
                       transform=transform)]
    return draw


def _dot_glyph(transform, radius_pt: float, fill: str, stroke: str, hollow: bool = False):
    from matplotlib.patches import Circle

    def draw(x, y):
        return [Circle((x + radius_pt, y), radius_pt, facecolor="none" if hollow else fill,
                       edgecolor=stroke, linewidth=0.8, transform=transform)]
    return draw


def _dash(dash: str | None, width_pt: float, px_pt: float) -> tuple | None:
    """An SVG dash array in px (``"7 5"``) → a matplotlib dash pattern in points, never
    shorter than the line is wide (thick dashed legs stay readable as dashes)."""
    if not dash:
        return None
    parts = [float(v) * px_pt for v in re.split(r"[\s,]+", dash.strip()) if v]
    if len(parts) < 2:
        return None
    on, off = parts[0], parts[1]
    return (0, (max(on, 2.0 * width_pt, 2.0), max(off, 1.2 * width_pt, 1.5)))


def _legend(scene, fig, layer, *, width_pt: float, size: float, px_pt: float,
            notes: Sequence[str], parts: Sequence[str] = ("flows", "classes", "places")
            ) -> _Legend:
    """The scene's legend (or the ``parts`` of it): flow widths and route kinds, both
    choropleths, point symbols, then the notes on what is not drawn."""
    legend = _Legend(fig, layer, width_pt=width_pt, size=size, px_pt=px_pt)
    spec = scene.legend
    tr = legend.transform
    length = size * 3.0

    def heading(text: str) -> None:
        legend.paragraph(text, weight="bold", gap=size * 0.5 if legend.y < 0 else 0.0)

    if "flows" in parts and spec.widths:
        heading(spec.flow_title or "Flows (guns)")
        items = []
        for guns, px in spec.widths:
            w = max(px * px_pt, _MIN_LINE_PT)
            items.append((length, w, _line_glyph(tr, w, scene.flow_colour, None, length),
                          f"{round(guns):,}"))
        legend.inline(items)
        route_w = max(3.0 * px_pt, 1.0)
        legend.inline([(length, route_w,
                        _line_glyph(tr, route_w, scene.flow_colour,
                                    _dash(dash, route_w, px_pt), length), label)
                       for _, label, dash in spec.routes])
    if "classes" in parts:
        shown = [classes for classes in spec.classes if len(classes.colours)]
        # both choropleths in one form: bars only when every range fits under its box
        bar = all(legend.bar_fits(classes.labels) for classes in shown)
        for classes in shown:
            heading(classes.title)
            legend.swatches(classes.colours, classes.labels, classes.none_colour, bar=bar)
    if "places" in parts and spec.points:
        heading("Places")
        r = size * 0.45
        legend.inline([(2 * r, 2 * r, _dot_glyph(tr, r, fill, stroke, kind == "hollow"),
                        label) for kind, label, fill, stroke in spec.points])
    for note in notes:
        legend.paragraph(note, colour=_MUTED, size=size * 0.85,
                         gap=size * 0.3 if legend.y < 0 else 0.0)
    return legend


def _content(scene) -> tuple[np.ndarray, np.ndarray]:
    """Projected (lo, hi) corners of everything the scene draws (legs and points; else its
    bounds; else the whole base map)."""
    lonlat = [np.asarray(leg.coords, dtype=float).reshape(-1, 2) for leg in scene.legs]
    lonlat += [np.array([[p.lon, p.lat] for p in layer.points], dtype=float).reshape(-1, 2)
               for layer in scene.points]
    xy = project(np.concatenate(lonlat)) if lonlat else np.empty((0, 2))
    if len(xy):
        return np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
    if scene.bounds:
        (w, s), (e, n) = scene.bounds
        corners = project(np.array([[w, s], [w, n], [e, s], [e, n]], dtype=float))
        return corners.min(axis=0), corners.max(axis=0)
    base = base_map()
    return base.bounds[:, :2].min(axis=0), base.bounds[:, 2:].max(axis=0)


def _map_frame(content: tuple[np.ndarray, np.ndarray], box_w: float, box_h: float
               ) -> tuple[float, float, float, float]:
    """Projected limits (x0, x1, y0, y1) showing the ``content`` box, padded, with the map
    box's aspect ratio (so one metre is as long across as up)."""
    lo, hi = content
    centre = (lo + hi) / 2
    span = np.maximum((hi - lo) * (1 + 2 * _PAD), _MIN_SPAN_M)
    aspect = box_w / box_h
    if span[0] / span[1] < aspect:
        span[0] = span[1] * aspect
    else:
        span[1] = span[0] / aspect
    # room for the largest markers and a label at the edges: _EDGE_PT on every side
    span *= 1 + 2 * _EDGE_PT / (72 * min(box_w, box_h) - 2 * _EDGE_PT)
    return (centre[0] - span[0] / 2, centre[0] + span[0] / 2,
            centre[1] - span[1] / 2, centre[1] + span[1] / 2)


def _web_zoom(frame: Sequence[float], box_w_in: float) -> float:
    """The Web-Mercator zoom at which the web map would show this frame as wide as the still
    (so the scene's ``min_zoom`` decides which labels a still can carry)."""
    x0, x1, y0, y1 = frame
    mid = _transformer().transform((x0 + x1) / 2, (y0 + y1) / 2, direction="INVERSE")
    lat = float(mid[1])
    metres_per_px = (x1 - x0) / (box_w_in * _CSS_DPI)
    return float(np.log2(156543.03 * np.cos(np.radians(lat)) / metres_per_px))


def _states_layer(scene, layer_type, area, frame: Sequence[float]):
    """The state shapes that reach into ``frame`` (x0, x1, y0, y1; the others would only be
    clipped away) and the US–Mexico border."""
    from matplotlib.collections import PathCollection

    base = base_map()
    fills = {area.code: area.fill for area in scene.areas}
    layer = layer_type("states")
    x0, x1, y0, y1 = frame
    b = base.bounds
    shown = np.flatnonzero((b[:, 0] <= x1) & (b[:, 2] >= x0) & (b[:, 1] <= y1) & (b[:, 3] >= y0))
    states = PathCollection([base.paths[i] for i in shown],
                            facecolors=[fills.get(base.codes[i], _NO_DATA) for i in shown],
                            edgecolors=_STATE_EDGE, linewidths=0.3, transform=area.data)
    border = PathCollection(list(base.border), facecolors="none", edgecolors=_BORDER,
                            linewidths=0.7, transform=area.data)
    for artist in (states, border):
        layer.add(artist)
    return layer


def _flows_layer(scene, layer_type, area, *, px_pt: float, m_per_pt: float):
    from matplotlib.collections import LineCollection, PolyCollection

    layer = layer_type("flows")
    legs = [leg for leg in scene.legs if len(leg.coords) >= 2]
    if not legs:
        return layer
    lengths = np.array([len(leg.coords) for leg in legs])
    xy = project(np.concatenate([np.asarray(leg.coords, dtype=float) for leg in legs]))
    lines = np.split(xy, np.cumsum(lengths)[:-1])
    width = np.maximum(np.array([leg.width for leg in legs]) * px_pt, _MIN_LINE_PT)
    order = np.argsort(-width, kind="stable")  # thin legs drawn over thick ones
    lines = [lines[i] for i in order]
    legs = [legs[i] for i in order]
    width = width[order]
    styles = [_dash(leg.dash, w, px_pt) or "solid" for leg, w in zip(legs, width, strict=True)]
    colours = [leg.colour for leg in legs]
    casing = LineCollection(lines, linewidths=width + 0.9, colors="#ffffff", alpha=0.8,
                            linestyles=styles, capstyle="butt", joinstyle="round",
                            transform=area.data)
    strokes = LineCollection(lines, linewidths=width, colors=colours, linestyles=styles,
                             alpha=0.85, capstyle="butt", joinstyle="round",
                             transform=area.data)
    layer.add(casing)
    layer.add(strokes)
    heads = [(line, w, c) for line, w, c, leg in zip(lines, width, colours, legs, strict=True)
             if leg.arrow and len(line) >= 2]
    if heads:
        tips = np.array([h[0][-1] for h in heads])
        before = np.array([h[0][-2] for h in heads])
        w = np.array([h[1] for h in heads])
        direction = tips - before
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
        normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
        length = np.maximum(2.2 * w, 4.0)[:, None] * m_per_pt
        half = np.maximum(1.3 * w, 2.2)[:, None] * m_per_pt
        base = tips - direction * length
        triangles = np.stack([tips, base + normal * half, base - normal * half], axis=1)
        layer.add(PolyCollection(triangles, facecolors=[h[2] for h in heads],
                                 edgecolors="#ffffff", linewidths=0.3, alpha=0.95,
                                 transform=area.data))
    return layer


def _points_layers(scene, layer_type, area, *, px_pt: float):
    """(ports layer, places layer: recovery places and dealers) as scatter collections, and
    the radius (pt) of every point keyed by (kind, lon, lat) for the labels."""
    from matplotlib.collections import CircleCollection

    ports, places = layer_type("ports"), layer_type("places")
    radii: dict[tuple[str, float, float], float] = {}
    for point_layer in scene.points:
        pts = point_layer.points
        if not pts:
            continue
        lonlat = np.array([[p.lon, p.lat] for p in pts], dtype=float)
        xy = project(lonlat)
        r = np.array([p.radius for p in pts], dtype=float) * px_pt
        hollow = np.array([bool(p.hollow) for p in pts])
        faces = ["none" if h else p.fill for p, h in zip(pts, hollow, strict=True)]
        edges = [p.fill if h else p.stroke for p, h in zip(pts, hollow, strict=True)]
        lw = np.where(hollow, 1.0, 0.5 if point_layer.kind != "port" else 1.0)
        collection = CircleCollection(np.pi * r ** 2, offsets=xy, offset_transform=area.data,
                                      facecolors=faces, edgecolors=edges, linewidths=lw,
                                      alpha=0.9 if point_layer.kind != "port" else 1.0,
                                      gid=point_layer.kind)
        (ports if point_layer.kind == "port" else places).add(collection)
        for (lon, lat), radius in zip(lonlat, r, strict=True):
            radii[(point_layer.kind, round(lon, 3), round(lat, 3))] = float(radius)
    return ports, places, radii


def _labels_layers(scene, fig, area, layer_type, *, size: float, zoom: float,
                   radii: dict, port_boxes: np.ndarray):
    """(halo layer, label layer): the scene's labels that fit this still, highest priority
    first, none overlapping another or a port marker."""
    from matplotlib.text import Text
    from matplotlib.transforms import ScaledTranslation

    labels_layer, halos = layer_type("labels"), layer_type("halos")
    wanted = [lab for lab in scene.labels if lab.min_zoom <= zoom + 0.5 and lab.text]
    wanted.sort(key=lambda lab: -lab.priority)
    if not wanted:
        return halos, labels_layer
    lonlat = np.array([[lab.lon, lab.lat] for lab in wanted], dtype=float)
    xy = project(lonlat)
    anchors = area.data.transform(xy)
    styles, sizes, gaps = [], [], []
    px = fig.dpi / 72
    for lab in wanted:
        factor, weight, colour = _LABEL_KINDS.get(lab.kind, _LABEL_KINDS["dealer"])
        styles.append((_mathtext_safe(lab.text), size * factor, weight, colour))
        sizes.append(text_extent(styles[-1][0], size * factor, weight, fig.dpi))
        r = radii.get((lab.kind, round(lab.lon, 3), round(lab.lat, 3)), 1.5)
        gaps.append((r + 1.5) * px)
    frame = area.clip.extents
    chosen, boxes = place_labels(np.array(sizes), anchors, frame=frame, gaps=np.array(gaps),
                                 centred=np.array([lab.kind == "state" for lab in wanted]),
                                 obstacles=port_boxes)
    for i in np.flatnonzero(chosen != -1):
        x0, y0 = boxes[i, :2]
        # anchor the text by its box's lower-left corner: exactly the box placed
        offset = ScaledTranslation((x0 - anchors[i, 0]) / fig.dpi,
                                   (y0 - anchors[i, 1]) / fig.dpi, fig.dpi_scale_trans)
        text, fontsize, weight, colour = styles[i]
        common = {"fontsize": fontsize, "fontweight": weight, "ha": "left", "va": "bottom",
                  "transform": area.data + offset}
        halos.add(_halo_type()(*xy[i], text, color="#ffffff", halo_pt=size * 0.16, **common))
        labels_layer.add(Text(*xy[i], text, color=colour, gid=f"label-{wanted[i].kind}",
                              **common))
    return halos, labels_layer


def _still_note(note: str) -> str:
    """A legend note in a still's terms (widths there are not screen pixels)."""
    return re.sub(r"the [\d.]+ px minimum", "the thinnest width", note)


def _footer_lines(scene) -> list[str]:
    """Source and credit; data attribution (the web map's software credit left out: there
    is no Leaflet here), caveat and names note."""
    first = " · ".join(t for t in (scene.source, scene.credit) if t)
    attribution = "; ".join(a for a in scene.attribution if a.strip().lower() != "leaflet")
    second = " ".join(t.rstrip(".") + "." for t in (attribution, scene.caveat, scene.names_note)
                      if t)
    return [t for t in (first, second) if t]


def _footer_layer(fig, layer_type, lines: Sequence[str], *, x: float, width: float,
                  size: float) -> tuple[object, float]:
    """The foot texts stacked up from ``x``, 0 (moved later): the layer and its height."""
    layer = layer_type("source")
    y = 0.0
    for line in reversed(lines):
        y += _stack_text(fig, layer, x=x, y=y, text=line, size=size, width=width,
                         colour=_MUTED, va="bottom")
        y += 0.2 * size / 72
    return layer, y


def _lift(layer, dy: float, fig) -> None:
    """Move a layer of figure-inch texts up by ``dy`` inches."""
    from matplotlib.transforms import ScaledTranslation

    shift = ScaledTranslation(0, dy, fig.dpi_scale_trans)
    for child in layer.get_children():
        child.set_transform(child.get_transform() + shift)


def _layout_option(scene, fig, layer_type, size: StillSize, t: _Type, *, scale: float,
                   in_legend: bool, notes: Sequence[str], foot_wide: bool, m: float, gap: float,
                   top: float, legend_w: float, map_w: float, px_pt: float,
                   force: bool = False, legends: dict | None = None) -> dict | None:
    """One candidate layout below the title: the foot, the legend (placed by ``blocks``:
    (legend, x, top y) in inches) and the map box left over; None when it does not fit."""
    W = size.width_in
    foot = _footer_lines(scene)
    if not in_legend and notes:  # one run-on paragraph: no half-empty line per note
        foot = [*foot[:-1], " ".join([*foot[-1:], *notes])]
    source, foot_h = _footer_layer(fig, layer_type, foot, x=m,
                                   width=W - 2 * m if foot_wide else map_w, size=t.footer)
    legend_layer = layer_type("legend")
    kw = {"size": max(t.legend * scale, _MIN_TEXT_PT), "px_pt": px_pt}
    shown_notes = notes if in_legend else ()
    if size.landscape:
        if legends is not None and (scale, in_legend) in legends:
            legend, legend_layer = legends[(scale, in_legend)]  # the same for either foot
        else:
            legend = _legend(scene, fig, legend_layer, width_pt=legend_w * 72,
                             notes=shown_notes, **kw)
            if legends is not None:
                legends[(scale, in_legend)] = (legend, legend_layer)
        legend_h = legend.height() / 72
        floor = m + (foot_h + gap if foot_wide else 0.0)
        blocks = [(legend, W - m - legend_w, top)]
        map_box = [m, m + foot_h + gap, map_w, top - m - foot_h - gap]
        fits = legend_h <= top - floor
    else:
        col = (legend_w - gap) / 2 * 72
        left = _legend(scene, fig, legend_layer, width_pt=col, notes=(),
                       parts=("flows", "places"), **kw)
        right = _legend(scene, fig, legend_layer, width_pt=col, notes=shown_notes,
                        parts=("classes",), **kw)
        legend_h = max(left.height(), right.height()) / 72
        y = m + foot_h + gap + legend_h
        blocks = [(left, m, y), (right, m + legend_w / 2 + gap / 2, y)]
        map_box = [m, y + gap, map_w, top - y - gap]
        fits = True
    fits = fits and map_box[3] >= 0.35 * (top - m)
    if not (fits or force):
        return None
    return {"map_box": map_box, "source": source, "legend": legend_layer, "blocks": blocks}


def draw_scene(scene, *, size: StillSize | str = "wide", paper: str = "letter"):
    """The still of ``scene`` as a matplotlib Figure (Agg canvas; no pyplot), laid out for
    ``size`` (a :data:`SIZES` name or a :class:`StillSize`): synthetic banner, title and
    subtitle on top; the map with legs, points and labels; the legend in a column beside the
    map (landscape) or under it in two columns (portrait); source, credit, attribution and
    caveat at the foot."""
    size = still_size(size, paper=paper) if isinstance(size, str) else size
    layer_type = _layer_type()
    with _rc():
        fig = _new_figure(size)
        t = _Type(size.font_pt)
        W, H = size.width_in, size.height_in
        m = max(0.1, 1.4 * t.body / 72)
        gap = 0.8 * t.body / 72
        layers = []
        top = H
        if scene.synthetic:
            layers.append(_banner(scene, fig, layer_type, W, H, t))
            top -= 2.0 * t.body / 72
        top -= m
        title = layer_type("title")
        top -= _stack_text(fig, title, x=m, y=top, text=scene.title, size=t.title,
                           width=W - 2 * m, weight="bold")
        top -= 0.25 * t.body / 72
        top -= _stack_text(fig, title, x=m, y=top, text=scene.subtitle,
                           size=t.subtitle, width=W - 2 * m, colour="#333333")
        layers.append(title)
        top -= gap

        notes = tuple(_still_note(n) for n in scene.legend.notes)
        if size.landscape:
            legend_w = min(max(0.3 * W, 1.7), 3.2)
            map_w = W - 2 * m - legend_w - gap
        else:
            legend_w = map_w = W - 2 * m
        px_pt = max(map_w * 72 / _WEB_WIDTH_PX, 0.2)  # the scene's px → points on this still
        content = _content(scene)
        span = np.maximum((content[1] - content[0]) * (1 + 2 * _PAD), _MIN_SPAN_M)
        best = None
        legends: dict = {}
        # the layout that gives the map the most room, text shrinking only when that pays:
        # legend size, its notes in the legend or at the foot, the foot under the map only
        # or across the page (landscape); once the map is as wide as it can be, stop
        for scale in (1.0, 0.9, 0.8, 0.7):
            if (scale < 1 and t.legend * scale < _MIN_TEXT_PT) or (best and best[2]):
                break
            for in_legend in (True, False):
                for foot_wide in ((True, False) if size.landscape else (True,)):
                    option = _layout_option(
                        scene, fig, layer_type, size, t, scale=scale, in_legend=in_legend,
                        notes=notes, foot_wide=foot_wide, m=m, gap=gap, top=top,
                        legend_w=legend_w, map_w=map_w, px_pt=px_pt, legends=legends)
                    if option is None:
                        continue
                    box = option["map_box"]
                    fit = min(box[2] / span[0], box[3] / span[1])  # inches per metre
                    score = fit * scale ** 0.5 * (1.0 if in_legend else 0.97)
                    if best is None or score > best[0]:
                        best = (score, option, box[2] / span[0] <= box[3] / span[1])
        if best is None:  # nothing fits: the smallest legend, notes at the foot
            best = (0, _layout_option(
                scene, fig, layer_type, size, t, scale=0.7, in_legend=False, notes=notes,
                foot_wide=False, m=m, gap=gap, top=top, legend_w=legend_w, map_w=map_w,
                px_pt=px_pt, force=True), True)
        option = best[1]
        map_box, source, legend_layer = option["map_box"], option["source"], option["legend"]
        _lift(source, m, fig)
        for block, x, y in option["blocks"]:
            block.offset.translate(x, y)
        layers += [legend_layer, source]

        frame = _map_frame(content, map_box[2], map_box[3])
        area = _MapArea.of(fig, map_box, frame)
        m_per_pt = (frame[1] - frame[0]) / (map_box[2] * 72)
        for layer in layers:
            _adopt(layer, fig, None)
        ports, places, radii = _points_layers(scene, layer_type, area, px_pt=px_pt)
        halos, labels = _labels_layers(scene, fig, area, layer_type, size=t.label,
                                       zoom=_web_zoom(frame, map_box[2]), radii=radii,
                                       port_boxes=_port_boxes(scene, area, radii, fig.dpi))
        for layer in (_states_layer(scene, layer_type, area, frame),
                      _flows_layer(scene, layer_type, area, px_pt=px_pt, m_per_pt=m_per_pt),
                      places, ports, halos, labels):
            _adopt(layer, fig, area)
            layers.append(layer)
        for layer in layers:
            fig.add_artist(layer)
    return fig


@dataclass(frozen=True)
class _MapArea:
    """Where the map goes on the figure: ``data`` maps projected metres to display pixels
    (following the figure's dpi, which SVG output changes) and ``clip`` is the map's box."""

    data: object
    clip: object

    @classmethod
    def of(cls, fig, box: Sequence[float], frame: Sequence[float]) -> _MapArea:
        """The area of ``box`` (x, y, width, height in inches) showing ``frame`` (x0, x1,
        y0, y1 in metres)."""
        from matplotlib.transforms import Affine2D, Bbox, TransformedBbox

        x0, x1, y0, y1 = frame
        inches = (Affine2D().translate(-x0, -y0)
                  .scale(box[2] / (x1 - x0), box[3] / (y1 - y0)).translate(box[0], box[1]))
        return cls(inches + fig.dpi_scale_trans,
                   TransformedBbox(Bbox.from_bounds(*box), fig.dpi_scale_trans))


def _banner(scene, fig, layer_type, W: float, H: float, t: _Type):
    """The synthetic-data banner: a red band across the top (``<g id="synthetic">``)."""
    from matplotlib.patches import Rectangle
    from matplotlib.text import Text

    banner = layer_type("synthetic")
    band = 2.0 * t.body / 72
    banner.add(Rectangle((0, H - band), W, band, facecolor=_BANNER_FILL, edgecolor="none",
                         transform=fig.dpi_scale_trans))
    banner.add(Text(W / 2, H - band / 2, _mathtext_safe(scene.banner or "SYNTHETIC DATA"),
                    fontsize=t.body * 1.05, fontweight="bold", color="#ffffff", ha="center",
                    va="center_baseline", transform=fig.dpi_scale_trans))
    return banner


def _port_boxes(scene, area, radii: dict, dpi: float) -> np.ndarray:
    """Display-pixel boxes of the port markers (labels keep off them)."""
    ports = [p for layer in scene.points if layer.kind == "port" for p in layer.points]
    if not ports:
        return np.empty((0, 4))
    lonlat = np.array([[p.lon, p.lat] for p in ports], dtype=float)
    xy = area.data.transform(project(lonlat))
    r = np.array([radii.get(("port", round(p.lon, 3), round(p.lat, 3)), 2.0) for p in ports])
    r = r * dpi / 72
    return np.stack([xy[:, 0] - r, xy[:, 1] - r, xy[:, 0] + r, xy[:, 1] + r], axis=1)


def _adopt(layer, fig, area) -> None:
    """Give a layer's children the figure (and the map's clip box) they draw into."""
    for child in layer.get_children():
        child.set_figure(fig)
        if area is not None:
            child.set_clip_box(area.clip)


def render_still(scene, path: str | Path, *, size: StillSize | str = "social",
                 paper: str = "letter", fmt: str | None = None) -> Path:
    """Draw ``scene`` at ``size`` and write it to ``path`` as ``fmt`` (default: the file's
    extension: ``svg``, ``pdf`` or ``png``), atomically."""
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"cannot tell the still's format from {Path(path).name!r}: "
                          f"give one of {', '.join(FORMATS)}")
    return save_figure(draw_scene(scene, size=size, paper=paper), path, fmt)


#: The stills ``geoflow run`` writes beside map.html (and every batch entity folder).
RUN_STILLS = ("map.svg", "map.png")


def write_stills(scene, folder: str | Path, *, size: str = "wide") -> list[Path]:
    """``map.svg`` and ``map.png`` of ``scene`` (one drawing, two files) in ``folder``."""
    fig = draw_scene(scene, size=size)
    folder = Path(folder)
    return [save_figure(fig, folder / name) for name in RUN_STILLS]
