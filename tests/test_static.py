"""The still renderer's parts that need no scene: sizes, projection, base map, label
placement, the colour-blind check, and what the saved files contain."""

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from geoflow.errors import ConfigError
from geoflow.static import (
    SIZES,
    base_map,
    boxes_disjoint,
    cvd_delta_e,
    figure_bytes,
    place_labels,
    project,
    still_size,
)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("name", "pixels"), [
    ("social", (1200, 675)), ("square", (1080, 1080)), ("story", (1080, 1920)),
    ("wide", (1600, 1000)), ("column", (1005, 1440)), ("two-column", (2100, 1500)),
])
def test_sizes_in_pixels(name, pixels):
    assert still_size(name).pixels == pixels


def test_print_sizes_are_300_dpi_and_page_follows_paper():
    assert still_size("column").width_in == 3.35 and still_size("column").dpi == 300
    assert still_size("two-column").width_in == 7.0
    assert still_size("page").pixels == (3300, 2550)                  # Letter, landscape
    assert still_size("page", paper="a4").pixels == (3507, 2481)      # A4, landscape
    with pytest.raises(ConfigError, match="unknown still size 'poster'"):
        still_size("poster")
    with pytest.raises(ConfigError, match="unknown paper"):
        still_size("page", paper="legal")


def test_projection_is_the_fitted_albers_conic():
    xy = project(np.array([[-100.0, 30.0], [-99.5, 27.5], [-99.5, 47.5]]))
    assert np.allclose(xy[0], 0.0, atol=1e-6)          # the projection's origin
    assert xy[1, 1] < 0 < xy[2, 1]                      # north is up
    # equal-area: a degree cell near the border and one in the north have their true areas
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    for lat in (27.0, 45.0):
        lon = np.array([-100.0, -99.0, -99.0, -100.0])
        la = np.array([lat, lat, lat + 1, lat + 1])
        p = project(np.stack([lon, la], axis=1))
        planar = 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1))
                           - np.dot(p[:, 1], np.roll(p[:, 0], 1)))
        true = abs(geod.polygon_area_perimeter(lon, la)[0])
        assert planar == pytest.approx(true, rel=0.01)


def test_base_map_has_every_state_and_the_border():
    base = base_map()
    assert len(base.codes) == len(base.paths) == 84
    assert {"US-TX", "MX-TAM", "US-AK", "MX-CMX"} <= set(base.codes)
    border = base.border[0].vertices
    lonlat = np.array([[-117.1, 32.54], [-97.1, 25.9]])  # Tijuana/San Diego, Matamoros
    ends = project(lonlat)
    # the border line runs from the Pacific to the Gulf
    assert np.linalg.norm(border - ends[0], axis=1).min() < 20_000
    assert np.linalg.norm(border - ends[1], axis=1).min() < 20_000
    assert base_map() is base  # built once per process


def test_label_placement_never_overlaps():
    rng = np.random.default_rng(7)
    n = 200
    sizes = np.stack([rng.uniform(20, 90, n), rng.uniform(8, 14, n)], axis=1)
    anchors = rng.uniform(0, 400, (n, 2))
    obstacle = np.array([[180.0, 180.0, 220.0, 220.0]])
    chosen, boxes = place_labels(sizes, anchors, frame=(0, 0, 400, 400),
                                 gaps=np.full(n, 3.0), obstacles=obstacle)
    placed = boxes[chosen != -1]
    assert 10 < len(placed) < n          # dense: some are left out, many fit
    assert boxes_disjoint(placed)
    assert boxes_disjoint(np.vstack([placed, obstacle]))
    assert (placed[:, :2] >= 0).all() and (placed[:, 2:] <= 400).all()
    # the first (highest priority) label always gets its preferred spot: upper right
    assert chosen[0] == 0


def test_boxes_disjoint_detects_overlap():
    assert boxes_disjoint(np.array([[0, 0, 10, 10], [10, 0, 20, 10]]))   # touching is fine
    assert not boxes_disjoint(np.array([[0, 0, 10, 10], [9, 9, 20, 20]]))


def test_cvd_delta_e_matches_known_values():
    assert cvd_delta_e(["#ffffff", "#000000"]).round(1).tolist() == [100.0]
    # reference values from colorspacious (sRGB1+CVD, severity 100, then CIELab)
    reference = {("#d62728", "#2ca02c"): (7.316, 37.620),   # red/green: lost to deutans
                 ("#deebf7", "#9ecae1"): (17.301, 14.372),
                 ("#fdae6b", "#fd8d3c"): (15.483, 15.846)}
    for pair, (deutan, protan) in reference.items():
        assert cvd_delta_e(pair, "deuteranopia")[0] == pytest.approx(deutan, abs=0.02)
        assert cvd_delta_e(pair, "protanopia")[0] == pytest.approx(protan, abs=0.02)
    assert cvd_delta_e(["#d62728", "#2ca02c"])[0] > 80   # normal vision tells them apart
    # grey stays grey under both simulations (rows of the Machado matrices sum to 1)
    for kind in ("deuteranopia", "protanopia"):
        assert cvd_delta_e(["#777777", "#777777"], kind)[0] < 0.01


def _layered_figure():
    from matplotlib.text import Text

    from geoflow.static import _adopt, _layer_type, _new_figure, _rc

    with _rc():
        fig = _new_figure(SIZES["social"])
        layer = _layer_type()("title")
        layer.add(Text(0.5, 3.0, "Guns <&> to $Mexico", transform=fig.dpi_scale_trans))
        fig.add_artist(layer)
        _adopt(layer, fig, None)
    return fig


def test_svg_keeps_text_and_named_groups():
    data = figure_bytes(_layered_figure(), "svg")
    root = ET.fromstring(data)  # noqa: S314 (our own output)
    group = next(g for g in root.iter(f"{SVG}g") if g.get("id") == "title")
    texts = ["".join(t.itertext()) for t in group.iter(f"{SVG}text")]
    assert texts == ["Guns <&> to $Mexico"]
    assert b"paint-order:stroke" in data      # the label halo is CSS, not outlines


def test_pdf_embeds_truetype_and_png_has_the_preset_size():
    from PIL import Image
    from pypdf import PdfReader

    fig = _layered_figure()
    png = Image.open(io.BytesIO(figure_bytes(fig, "png")))
    assert png.size == (1200, 675)
    reader = PdfReader(io.BytesIO(figure_bytes(fig, "pdf")))
    fonts = [f.get_object() for f in reader.pages[0]["/Resources"]["/Font"].values()]
    assert any("DejaVuSans" in str(f["/BaseFont"]) for f in fonts)
    for font in fonts:
        descendant = font.get("/DescendantFonts")
        descriptor = (descendant[0].get_object() if descendant else font)["/FontDescriptor"]
        assert "/FontFile2" in descriptor.get_object()   # TrueType program embedded
    assert "Guns <&> to $Mexico" in reader.pages[0].extract_text()
    with pytest.raises(ConfigError, match="unknown still format"):
        figure_bytes(fig, "gif")
