"""The still renderer's parts that need no scene: sizes, projection, base map, label
placement, the colour-blind check, and what the saved files contain."""

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from geoflow.errors import ConfigError
from geoflow.static import (
    FORMATS,
    SIZES,
    base_map,
    boxes_disjoint,
    cvd_delta_e,
    draw_scene,
    figure_bytes,
    place_labels,
    project,
    save_figure,
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


def test_base_map_border_is_the_overlay_union_border():
    """base_map unions each country with the (quicker) coverage union: the shipped states
    are a clean coverage, so the border is exactly the one the overlay union gives."""
    import shapely

    from geoflow.shapes import load_states
    from geoflow.static import CRS, SIMPLIFY_M, _ring_path

    states = load_states().to_crs(CRS)
    geoms = shapely.make_valid(shapely.coverage_simplify(states.geometry.to_numpy(),
                                                         SIMPLIFY_M))
    country = states["country"].to_numpy()
    us, mx = (shapely.union_all(geoms[country == c]) for c in ("US", "MX"))
    border = shapely.line_merge(shapely.intersection(shapely.boundary(us), shapely.boundary(mx)))
    expected = _ring_path(border)
    got = base_map().border[0]
    assert np.array_equal(got.vertices, expected.vertices)
    assert np.array_equal(got.codes, expected.codes)


def test_font_file_is_findfonts_choice_for_each_weight():
    """The per-process font lookup picks what findfont picks: the bold file for bold text,
    whatever the size, family given by name or by the generic family of the stills' rc."""
    from matplotlib.font_manager import FontProperties, findfont

    from geoflow.static import FONT, _font_file, _rc

    with _rc():
        for weight in ("normal", "bold", 700):
            for size in (5.0, 12.25):
                for family in (FONT, "sans-serif"):
                    prop = FontProperties(family=family, weight=weight, size=size)
                    assert _font_file(prop) == findfont(prop)
    bold = _font_file(FontProperties(family=FONT, weight="bold"))
    assert bold != _font_file(FontProperties(family=FONT)) and "Bold" in bold


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


# --------------------------------------------------------------------------- the scene drawn

ARTIFACTS = Path(__file__).parent / "artifacts"
LAYER_IDS = ("states", "flows", "ports", "places", "labels", "legend", "title", "source")
#: A small real-looking (not synthetic) trace file: Texas and Arizona dealers, known crossings.
SMALL_CSV = """Dealer Name,Dealer City,Dealer State,Recovery City,Recovery State,Crossing
Lone Star Guns,Houston,TX,Monterrey,Nuevo León,Laredo
Lone Star Guns,Houston,TX,Monterrey,Nuevo León,Laredo
Lone Star Guns,Houston,TX,Reynosa,Tamaulipas,Hidalgo
Desert Arms,Phoenix,AZ,Hermosillo,Sonora,Nogales
Desert Arms,Phoenix,AZ,Culiacán,Sinaloa,
"""


@pytest.fixture(scope="module")
def sample_result():
    from geoflow.pipeline import run_pipeline
    from geoflow.sample import sample_path

    return run_pipeline(sample_path())


@pytest.fixture(scope="module")
def sample_scene(sample_result):
    from geoflow.scene import MapOptions, build_scene

    return build_scene(sample_result, options=MapOptions(title="Guns from the sample <&>"))


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    from geoflow.pipeline import run_pipeline
    from geoflow.scene import build_scene

    path = tmp_path_factory.mktemp("small") / "traces.csv"
    path.write_text(SMALL_CSV, encoding="utf-8")
    return build_scene(run_pipeline(path))


@pytest.fixture(scope="module")
def social(sample_scene):
    """The sample drawn once at ``social`` size, saved in the three formats as artefacts."""
    fig = draw_scene(sample_scene, size="social")
    ARTIFACTS.mkdir(exist_ok=True)
    return fig, {fmt: save_figure(fig, ARTIFACTS / f"still_social.{fmt}") for fmt in FORMATS}


def _groups(svg: bytes) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    return {g.get("id"): g for g in root.iter(f"{SVG}g") if g.get("id")}


def _texts(element: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in element.iter(f"{SVG}text")]


def _label_boxes(fig) -> tuple[list[str], np.ndarray]:
    renderer = fig.canvas.get_renderer()
    layer = next(a for a in fig.findobj() if a.get_gid() == "labels")
    texts = layer.get_children()
    return ([t.get_text() for t in texts],
            np.array([t.get_window_extent(renderer).extents for t in texts]).reshape(-1, 4))


def test_svg_is_xml_with_named_layers_and_real_text(social):
    _, files = social
    groups = _groups(files["svg"].read_bytes())
    assert set(LAYER_IDS) <= set(groups)
    assert _texts(groups["title"])[0] == "Guns from the sample <&>"   # escaped, still text
    assert "Laredo" in _texts(groups["labels"])
    assert any("INEGI" in t and "GeoNames" in t for t in _texts(groups["source"]))
    # plain fills on the state shapes (no gradients or patterns a designer must undo)
    assert b"<linearGradient" not in files["svg"].read_bytes()
    assert "synthetic" in groups and _texts(groups["synthetic"]) == [
        "SYNTHETIC DATA — not real trace records"]


def test_labels_are_pairwise_disjoint_on_every_size(sample_scene, social):
    texts, boxes = _label_boxes(social[0])
    assert "Laredo" in texts and len(texts) >= 8
    assert boxes_disjoint(boxes)
    for name in ("story", "column", "wide"):
        texts, boxes = _label_boxes(draw_scene(sample_scene, size=name))
        assert "Laredo" in texts and boxes_disjoint(boxes), name


@pytest.mark.parametrize("name", ["square", "story", "column", "two-column", "page"])
def test_png_matches_each_preset(sample_scene, name):
    from PIL import Image

    size = still_size(name)
    png = Image.open(io.BytesIO(figure_bytes(draw_scene(sample_scene, size=size), "png")))
    assert png.size == size.pixels
    assert png.info.get("dpi", (0,))[0] == pytest.approx(size.dpi, abs=1)


def test_png_is_opaque_rgb_with_the_pixels_matplotlib_draws(social):
    """The PNG drops the (all-opaque) alpha channel and nothing else: every pixel is what
    matplotlib's own savefig draws."""
    from PIL import Image

    fig, _ = social
    png = Image.open(io.BytesIO(figure_bytes(fig, "png")))
    assert png.mode == "RGB"
    reference = io.BytesIO()
    fig.savefig(reference, format="png", dpi=fig.dpi, facecolor="white")
    drawn = np.asarray(Image.open(reference))
    assert (drawn[..., 3] == 255).all()
    assert np.array_equal(np.asarray(png), drawn[..., :3])


def test_svg_is_byte_for_byte_what_matplotlib_writes(social):
    """The SVG writer's shortcuts (text extents cached per process, its own loop over legs,
    arrowheads, states and places) change how fast it is, not one byte of the file
    matplotlib's ``savefig`` writes (halos hidden and the halo CSS added, as in SVG)."""
    from geoflow.static import _SVG_STYLE, _rc

    fig, files = social
    halos = [a for a in fig.artists if a.get_gid() == "halos"]
    reference = io.BytesIO()
    with _rc():
        for layer in halos:
            layer.set_visible(False)
        try:
            fig.savefig(reference, format="svg", metadata={"Date": None}, facecolor="white")
        finally:
            for layer in halos:
                layer.set_visible(True)
    expected = reference.getvalue().replace(b"</style>", _SVG_STYLE.encode() + b"\n  </style>",
                                            1)
    assert files["svg"].read_bytes() == expected


def test_pdf_opens_with_fonts_embedded_and_text_searchable(social):
    from pypdf import PdfReader

    reader = PdfReader(social[1]["pdf"])
    page = reader.pages[0]
    assert float(page.mediabox.width) == pytest.approx(6.0 * 72)
    fonts = [f.get_object() for f in page["/Resources"]["/Font"].values()]
    assert fonts and all("DejaVuSans" in str(f["/BaseFont"]) for f in fonts)
    for font in fonts:
        descendant = font.get("/DescendantFonts")
        descriptor = (descendant[0].get_object() if descendant else font)["/FontDescriptor"]
        assert "/FontFile2" in descriptor.get_object()
    text = page.extract_text()
    assert "Laredo" in text and "SYNTHETIC DATA" in text


def test_scene_palettes_pass_the_colour_blind_check(sample_result):
    """Every pair of neighbouring classes in each legend: ΔE ≥ 10 under simulated
    deuteranopia and protanopia, for the palette constants and the classes as drawn
    (lightened so the flows keep their contrast)."""
    from geoflow.scene import PALETTES, MapOptions, build_scene

    def check(colours, what):
        for kind in ("deuteranopia", "protanopia"):
            worst = cvd_delta_e(colours, kind).min(initial=np.inf)
            assert worst >= 10, f"{what} under {kind}: ΔE {worst:.1f} < 10 ({colours})"

    for name, (us, mx) in PALETTES.items():
        check(us, f"{name} US")
        check(mx, f"{name} MX")
        scene = build_scene(sample_result, options=MapOptions(palette=name))
        assert len(scene.classes) == 2
        for classes in scene.classes:
            check(classes.colours, f"{name} {classes.country} as drawn")


@pytest.mark.parametrize("name", list(SIZES))
def test_both_choropleth_legends_take_one_form(sample_scene, name):
    """The US and the Mexican class legends are both bars or both rows of swatches (the
    story still had the US ranges, 69–1,237 too wide for a bar's boxes, as swatches beside
    a Mexican bar). The sample's two legends have as many classes, so one form gives their
    boxes one width."""
    from matplotlib.patches import Rectangle

    us, mx = sample_scene.legend.classes
    assert len(us.colours) == len(mx.colours)
    fig = draw_scene(sample_scene, size=name)
    legend = next(a for a in fig.findobj() if a.get_gid() == "legend")
    boxes = [a for a in legend.findobj(Rectangle) if a.get_linewidth() == 0.3]
    assert len(boxes) == 2 * (len(us.colours) + 1)  # each class and "none", twice
    assert len({round(box.get_width(), 6) for box in boxes}) == 1


def test_no_banner_for_real_input_and_a_small_map_frames_its_story(small_scene):
    assert not small_scene.synthetic
    fig = draw_scene(small_scene, size="square")
    svg = figure_bytes(fig, "svg")
    groups = _groups(svg)
    assert "synthetic" not in groups and b"SYNTHETIC" not in svg
    texts, boxes = _label_boxes(fig)
    assert {"Laredo", "Houston, TX", "Monterrey"} <= set(texts)
    assert boxes_disjoint(boxes)
    save_figure(fig, ARTIFACTS / "still_small_square.png")


@pytest.mark.browser
def test_svg_renders_in_headless_chromium(social, browser):
    page = browser.new_page()
    try:
        page.goto(social[1]["svg"].resolve().as_uri())
        found = page.evaluate("""(() => {
            const labels = [...document.querySelectorAll('#labels text')];
            return {root: document.documentElement.tagName,
                    width: document.documentElement.getBoundingClientRect().width,
                    labels: labels.map(t => t.textContent),
                    boxes: labels.map(t => { const b = t.getBBox();
                                             return [b.x, b.y, b.x + b.width, b.y + b.height]; }),
                    errors: document.querySelectorAll('parsererror').length};
        })()""")
        assert page.console_errors == [] and page.external_requests() == []
    finally:
        page.close()
    assert found["root"] == "svg" and found["errors"] == 0
    assert found["width"] == pytest.approx(6.0 * 96, abs=1)   # 6 in = 432 pt = 576 CSS px
    assert "Laredo" in found["labels"]
    # DejaVu Sans in the browser too: its own text boxes do not overlap either
    assert boxes_disjoint(np.array(found["boxes"]))


# --------------------------------------------------------------------------- the command


def _png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _geoflow(*args):
    from click.testing import CliRunner

    from geoflow.cli import cli

    return CliRunner().invoke(cli, ["-q", *map(str, args)], obj={})


def test_cli_size_names_match_the_module():
    from geoflow.cli import STILL_FORMATS, STILL_SIZES

    assert tuple(SIZES) == STILL_SIZES and STILL_FORMATS == FORMATS


def test_static_command_with_filters_and_texts(tmp_path):
    out = tmp_path / "texas.png"
    result = _geoflow("static", "--sample", "--state", "TX", "--size", "square",
                      "--title", "Texas guns", "-o", out)
    assert result.exit_code == 0, result.output
    assert _png_size(out) == (1080, 1080)
    assert "square" in result.output and "1080×1080 px" in result.output
    svg = tmp_path / "texas.svg"
    (tmp_path / "geoflow.toml").write_text('credit = "Graphic: Data desk"\n', encoding="utf-8")
    result = _geoflow("static", "--sample", "--state", "TX", "--config",
                      tmp_path / "geoflow.toml", "--format", "svg", "-o", svg)
    assert result.exit_code == 0, result.output
    groups = _groups(svg.read_bytes())
    title = _texts(groups["title"])
    assert "US state: Texas" in " ".join(title)      # the filter joins the subtitle
    assert any("Graphic: Data desk" in t for t in _texts(groups["source"]))   # from the config


def test_static_command_refuses_an_unknown_format(tmp_path):
    result = _geoflow("static", "--sample", "-o", tmp_path / "map.jpg")
    assert result.exit_code == 2 and "--format svg|pdf|png" in result.output
    result = _geoflow("static", "--sample", "--format", "pdf", "-o", tmp_path / "map.png")
    assert result.exit_code == 2 and "does not match" in result.output
    assert not list(tmp_path.iterdir())


def test_batches_write_stills_for_every_entity(tmp_path):
    traces = tmp_path / "traces.csv"
    traces.write_text(SMALL_CSV, encoding="utf-8")
    result = _geoflow("run", traces, "--per", "state", "-o", tmp_path / "by-state")
    assert result.exit_code == 0, result.output
    folders = sorted(p.parent for p in (tmp_path / "by-state").rglob("map.html"))
    assert len(folders) == 2                          # Texas, Arizona
    for folder in folders:
        assert _png_size(folder / "map.png") == (1600, 1000)
        assert "labels" in _groups((folder / "map.svg").read_bytes())
