"""The map in a real browser: Debian's headless Chromium, driven over CDP, with no network.

One Chromium serves the whole module; each map is rendered once (module fixtures) and opened
once per screen size: 1400×900 (desktop) and 390×844 (phone). Without Chromium these tests
fail with a message saying how to install it, unless GEOFLOW_SKIP_BROWSER=1. Screenshots are
kept as tests/artifacts/map_<name>_<width>.png (git-ignored) for a person to look at.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
from browser import Browser, BrowserError
from click.testing import CliRunner

from geoflow.cli import cli
from geoflow.scene import contrast_ratio

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"
SIZES = {"desktop": (1400, 900), "phone": (390, 844)}
PAYLOADS = [
    "<img src=x onerror=document.title='pwned'>",
    "</script><script>window.pwned=1</script>",
    "`${alert(1)}` \\ ${window.pwned=2}",
]

#: One evaluation gathers what the tests check about a page at load.
MEASURE = """(() => {
  const box = el => { const r = el.getBoundingClientRect();
                      return {x: r.left, y: r.top, w: r.width, h: r.height}; };
  const map = geoflow.map.getContainer().getBoundingClientRect();
  const panels = [...document.querySelectorAll('.gf-panel, .leaflet-control, .gf-synthetic')]
    .filter(el => !el.parentElement.closest('.gf-panel'))
    .map(el => ({id: el.id || el.className, ...box(el)})).filter(r => r.w > 0 && r.h > 0);
  const inside = (p, r) => p.x >= r.x && p.x <= r.x + r.w && p.y >= r.y && p.y <= r.y + r.h;
  const markers = [...document.querySelectorAll('path.gf-dealer, path.gf-recovery, path.gf-port')]
    .map(el => { const r = box(el); return {cls: el.getAttribute('class'),
                                            x: r.x + r.w / 2, y: r.y + r.h / 2}; });
  const inView = markers.filter(p => p.x >= map.left && p.x <= map.right && p.y >= map.top &&
                                     p.y <= map.bottom);
  const hidden = inView.filter(p => panels.some(r => inside(p, r)));
  const legs = [...document.querySelectorAll('path.gf-flow')];
  const sample = document.querySelector('.gf-width-sample');
  const legData = [];
  geoflow.map.eachLayer(l => { if (l.feature && l.options.className &&
    l.options.className.startsWith('gf-flow')) legData.push(l.feature.properties); });
  return {
    panels, markers: markers.length, in_view: inView.length,
    hidden: hidden.map(p => p.cls + ' at ' + Math.round(p.x) + ',' + Math.round(p.y)),
    legs: legs.length, leg_guns: legData.map(p => p.guns), leg_widths: legData.map(p => p.w),
    dashed: legs.filter(p => p.getAttribute('stroke-dasharray')).length,
    modelled: legs.filter(p => p.classList.contains('gf-modelled')).length,
    flow_colours: [...new Set(legs.map(p => p.getAttribute('stroke')))],
    state_fills: [...new Set([...document.querySelectorAll('path.gf-state')]
                             .map(p => p.getAttribute('fill')))],
    legend_guns: sample ? +sample.dataset.guns : null,
    legend_width: sample ? +sample.dataset.width : null,
    labels: [...document.querySelectorAll('.gf-label[data-shown]')]
      .map(el => ({text: el.textContent, ...box(el)})),
    attribution: (document.querySelector('.leaflet-control-attribution') || {}).textContent,
    banner: (() => { const b = document.querySelector('.gf-synthetic');
                     return b && b.offsetHeight > 0 ? b.textContent : null; })(),
    hyphenated: (() => {  // each hyphenated word of the title panel, and its lines on screen
      const out = [], walker = document.createTreeWalker(
        document.getElementById('gf-title'), NodeFilter.SHOW_TEXT);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        for (const m of n.data.matchAll(/[^\\s-]+(?:-[^\\s-]+)+/g)) {
          const r = document.createRange();
          r.setStart(n, m.index);
          r.setEnd(n, m.index + m[0].length);
          out.push([m[0], new Set([...r.getClientRects()].map(x => Math.round(x.top))).size]);
        }
      }
      return out; })(),
    legend_open: document.getElementById('gf-legend').open,
    footer_open: document.getElementById('gf-footer').open,
    viewport: [innerWidth, innerHeight],
  };
})()"""


def test_a_missing_chromium_is_reported_with_how_to_install_it(tmp_path):
    with pytest.raises(BrowserError,
                       match=r"not found at .*apt-get install chromium.*GEOFLOW_SKIP_BROWSER=1"):
        Browser.launch(binary=str(tmp_path / "chromium"))


def _map(tmp_path_factory, name: str, args: list[str]) -> Path:
    out = tmp_path_factory.mktemp(name) / "map.html"
    result = CliRunner().invoke(cli, ["map", *args, "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exc_info)
    return out


def _open(browser: Browser, path: Path, size: str = "desktop"):
    width, height = SIZES[size]
    page = browser.new_page(offline=True)
    page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
              deviceScaleFactor=1, mobile=size == "phone")
    page.goto(path.as_uri())
    assert page.wait_for("!!document.querySelector('.leaflet-container path.gf-flow')")
    return page


MAPS = {
    "national": ["--sample", "--title", "Guns from the sample"],
    "barajas": ["--sample", "--trafficker", "barajas"],
    "texas": ["--sample", "--state", "TX"],
}


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    return {name: _map(tmp_path_factory, name, args) for name, args in MAPS.items()}


@pytest.fixture(scope="module")
def measured(browser, maps) -> dict[tuple[str, str], dict]:
    """Each map at each size, measured at load; screenshots kept as artefacts."""
    out = {}
    for name, size in itertools.product(MAPS, SIZES):
        page = _open(browser, maps[name], size)
        out[name, size] = page.evaluate(MEASURE)
        out[name, size]["errors"] = list(page.console_errors)
        out[name, size]["requests"] = page.external_requests()
        page.screenshot(ARTIFACTS / f"map_{name}_{SIZES[size][0]}.png")
        page.close()
    return out


CASES = list(itertools.product(MAPS, SIZES))


def _overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


@pytest.mark.parametrize(("name", "size"), CASES)
def test_no_marker_lies_under_a_panel_at_load(measured, name, size):
    m = measured[name, size]
    assert m["markers"] > 0 and m["in_view"] > 0
    assert m["hidden"] == []
    assert m["errors"] == [] and m["requests"] == []


@pytest.mark.parametrize(("name", "size"), CASES)
def test_labels_are_there_and_never_overlap_each_other_or_a_panel(measured, name, size):
    m = measured[name, size]
    texts = [lab["text"] for lab in m["labels"]]
    assert "Laredo" in texts
    for a, b in itertools.combinations(m["labels"], 2):
        assert not _overlap(a, b), (a, b)
    for label in m["labels"]:
        for panel in m["panels"]:
            assert not _overlap(label, panel), (label, panel)


@pytest.mark.parametrize(("name", "size"), CASES)
def test_panels_leave_every_map_control_in_reach(measured, name, size):
    """No panel covers a map control or another panel: the legend, however long, stops short
    of the zoom and layer buttons above it, so the reader can still switch layers."""
    m = measured[name, size]
    for a, b in itertools.combinations(m["panels"], 2):
        assert not _overlap(a, b), (a, b)


@pytest.mark.parametrize(("name", "size"), CASES)
def test_title_never_breaks_a_pseudonym_or_code_at_its_hyphen(measured, name, size):
    words = measured[name, size]["hyphenated"]
    assert all(lines == 1 for _, lines in words), words
    if name == "barajas":
        assert any(word.startswith("P-") for word, _ in words), words


def test_per_entity_maps_label_their_own_story(measured):
    barajas = [lab["text"] for lab in measured["barajas", "desktop"]["labels"]]
    assert "East Dundee, IL" in barajas and "Laredo" in barajas
    texas = [lab["text"] for lab in measured["texas", "desktop"]["labels"]]
    assert any(t.endswith(", TX") for t in texas)  # Texas dealer towns


def test_national_map_draws_few_legs_and_the_legend_reaches_the_largest(measured):
    m = measured["national", "desktop"]
    assert 0 < m["legs"] <= 150 and m["legs"] == len(m["leg_guns"])
    assert m["legend_guns"] == max(m["leg_guns"])
    assert m["legend_width"] == max(m["leg_widths"]) >= 16
    assert min(m["leg_widths"]) >= 1.5
    assert m["dashed"] == m["modelled"] > 0  # modelled legs dashed: readable in greyscale too
    assert m["legs"] - m["modelled"] > 0


@pytest.mark.parametrize("name", MAPS)
def test_flow_colour_contrasts_with_every_state_colour_on_the_page(measured, name):
    m = measured[name, "desktop"]
    assert len(m["flow_colours"]) == 1 and len(m["state_fills"]) >= 3
    for fill in m["state_fills"]:
        assert contrast_ratio(m["flow_colours"][0], fill) >= 3.0, fill


@pytest.mark.parametrize(("name", "size"), CASES)
def test_attribution_and_banner(measured, name, size):
    m = measured[name, size]
    assert "INEGI" in m["attribution"] and "GeoNames" in m["attribution"]
    assert "Census" in m["attribution"]
    assert m["banner"] == "SYNTHETIC DATA — not real trace records"


@pytest.mark.parametrize("name", MAPS)
def test_phone_layout_folds_panels_and_keeps_the_title_clear(measured, name):
    m = measured[name, "phone"]
    assert not m["legend_open"] and not m["footer_open"]
    assert measured[name, "desktop"]["legend_open"]
    width, height = m["viewport"]
    covered = sum(p["w"] * p["h"] for p in m["panels"])
    assert covered <= 0.25 * width * height, covered / (width * height)
    title = next(p for p in m["panels"] if p["id"] == "gf-title")
    assert title["x"] >= 0 and title["x"] + title["w"] <= width and title["y"] >= 0
    controls = [p for p in m["panels"] if "leaflet-control-zoom" in p["id"]
                or "leaflet-control-layers" in p["id"]]
    assert controls and not any(_overlap(title, c) for c in controls)


# --------------------------------------------------------------------------- other maps


@pytest.fixture(scope="module")
def payload_map(tmp_path_factory) -> Path:
    """A trace file whose purchasers, dealers and places are script payloads (places pinned
    by an overrides file, as a desk would fix them), drawn with --show-names."""
    folder = tmp_path_factory.mktemp("payloads")
    p0, p1, p2 = PAYLOADS
    rows = [
        ("T1", p0, p1, "Houston", p0, "Nuevo Leon", "Laredo"),
        ("T2", p2, p0, p2, p1, "Chihuahua", ""),
        ("T3", p1, p2, "Laredo", p2, "Sonora", ""),
    ]
    with open(folder / "traces.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trace_id", "purchaser_name", "dealer_name", "dealer_city",
                         "recovery_city", "recovery_state", "crossing"])
        writer.writerows(rows)
    with open(folder / "overrides.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["place", "lat", "lon"])
        writer.writerows([(f"{p0}, Nuevo Leon", 25.67, -100.31), (f"{p1}, Chihuahua", 28.63,
                          -106.07), (f"{p2}, Sonora", 29.07, -110.96), (p2, 29.42, -98.49)])
    return _map(tmp_path_factory, "payload-map", [
        str(folder / "traces.csv"), "--overrides", str(folder / "overrides.csv"),
        "--show-names", "--title", p1, "--credit", p2])


def _open_card(page, kind: str, key: str, value: str, *, how: str = "openPopup") -> str:
    """Open the popup/tooltip of the first ``kind`` feature whose ``key`` is ``value``."""
    return page.evaluate(f"""(() => {{
        let found = null;
        geoflow.map.eachLayer(l => {{
          if (!found && l.feature && l.options.className &&
              l.options.className.split(' ').includes({kind!r}) &&
              l.feature.properties[{key!r}] === {value!r}) found = l;
        }});
        if (!found) return null;
        found.{how}();
        const sel = {'.leaflet-popup-content' if how == 'openPopup' else '.leaflet-tooltip'!r};
        const el = document.querySelector(sel);
        const text = el ? el.textContent : null;
        found.closePopup(); found.closeTooltip();
        return text;
    }})()""")


def test_only_the_online_tile_layer_asks_for_the_network(browser, maps):
    page = _open(browser, maps["national"])
    assert page.external_requests() == []
    page.evaluate("""(() => {
        const label = [...document.querySelectorAll('.leaflet-control-layers label')]
          .find(l => l.textContent.includes('Online basemap'));
        label.querySelector('input').click();
    })()""")
    page.wait_for("document.querySelectorAll('img.leaflet-tile').length > 0")
    assert page.evaluate("geoflow.map.getPane('gfStates').style.opacity") == "0.55"
    requested = page.external_requests()
    assert requested and all("basemaps.cartocdn.com" in url for url in requested)
    # zooming in shows more labels, never overlapping
    before = page.evaluate("document.querySelectorAll('.gf-label[data-shown]').length")
    page.evaluate("void geoflow.map.setZoom(geoflow.map.getZoom() + 2, {animate: false})")
    after = page.evaluate("document.querySelectorAll('.gf-label[data-shown]').length")
    assert after > before
    page.close()


def test_script_payloads_in_names_show_as_text_and_run_nothing(browser, payload_map):
    page = _open(browser, payload_map)
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.title") == PAYLOADS[1]
    assert page.evaluate("document.querySelector('#gf-title h1').textContent") == PAYLOADS[1]
    assert PAYLOADS[2] in page.evaluate("document.querySelector('#gf-footer').textContent")
    assert page.evaluate("document.images.length") == 0
    assert page.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
    source_scripts = payload_map.read_text(encoding="utf-8").lower().count("<script")
    assert page.evaluate("document.scripts.length") == source_scripts == 4
    dealer_popup = _open_card(page, "gf-dealer", "dealer_name", PAYLOADS[0])
    assert PAYLOADS[0] in dealer_popup and PAYLOADS[2] in dealer_popup  # name, top purchaser
    flow_tooltip = _open_card(page, "gf-flow", "title", f"{PAYLOADS[1]} → Laredo",
                              how="openTooltip")
    assert flow_tooltip and PAYLOADS[1] in flow_tooltip
    place_popup = _open_card(page, "gf-recovery", "recovery_place", f"{PAYLOADS[2]}, Sonora")
    assert PAYLOADS[2] in place_popup
    labels = page.evaluate("[...document.querySelectorAll('.gf-label')].map(e => e.textContent)")
    assert PAYLOADS[2] in labels or PAYLOADS[1] in labels  # label text, not markup
    assert page.evaluate("document.querySelectorAll('.leaflet-popup-content img').length") == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.title") == PAYLOADS[1]
    assert page.evaluate("document.querySelector('.gf-synthetic')") is None  # not synthetic
    assert page.console_errors == []
    assert page.external_requests() == []
    page.close()
