"""The map in a real browser: Debian's headless Chromium, driven over CDP, with no network.

One Chromium serves the whole module. Without Chromium these tests fail with a message saying
how to install it, unless GEOFLOW_SKIP_BROWSER=1. The sample's screenshot is kept as
tests/artifacts/map_sample.png.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
from browser import Browser, BrowserError
from click.testing import CliRunner

from geoflow.cli import cli

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"
PAYLOADS = [
    "<img src=x onerror=document.title='pwned'>",
    "</script><script>window.pwned=1</script>",
    "`${alert(1)}` \\ ${window.pwned=2}",
]


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("GEOFLOW_SKIP_BROWSER") == "1":
        pytest.skip("GEOFLOW_SKIP_BROWSER=1")
    try:
        chromium = Browser.launch()
    except BrowserError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield chromium
    chromium.close()


def test_a_missing_chromium_is_reported_with_how_to_install_it(tmp_path):
    with pytest.raises(BrowserError,
                       match=r"not found at .*apt-get install chromium.*GEOFLOW_SKIP_BROWSER=1"):
        Browser.launch(binary=str(tmp_path / "chromium"))


def _map(tmp_path_factory, name: str, args: list[str]) -> Path:
    out = tmp_path_factory.mktemp(name) / "map.html"
    result = CliRunner().invoke(cli, ["map", *args, "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exc_info)
    return out


@pytest.fixture(scope="module")
def sample_map(tmp_path_factory) -> Path:
    return _map(tmp_path_factory, "sample", ["--sample", "--title", "Guns from the sample"])


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


def _open(browser: Browser, path: Path):
    page = browser.new_page(offline=True)
    page.goto(path.as_uri())
    assert page.wait_for("!!document.querySelector('.leaflet-container path.gf-flow')")
    return page


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


def test_sample_map_draws_every_flow_of_its_data_offline(browser, sample_map):
    page = _open(browser, sample_map)
    data_flows = page.evaluate("geoflow.counts.flows")
    drawn = page.evaluate("document.querySelectorAll('.leaflet-container path.gf-flow').length")
    assert data_flows == drawn == 300
    dashed = page.evaluate(
        "[...document.querySelectorAll('path.gf-modelled')]"
        ".filter(p => p.getAttribute('stroke-dasharray')).length")
    known = page.evaluate("document.querySelectorAll('path.gf-known').length")
    assert dashed + known == drawn and dashed > 0 and known > 0
    arrows = page.evaluate(
        "[...document.querySelectorAll('path.gf-flow')].filter(p => "
        "/^url\\(#gf-arrow-[sml]\\)$/.test(p.getAttribute('marker-end'))).length")
    assert arrows == drawn
    assert page.evaluate("document.querySelectorAll('marker[id^=gf-arrow]').length") == 3
    counts = page.evaluate("geoflow.counts")
    for kind in ("dealer", "recovery", "port"):
        assert page.evaluate(f"document.querySelectorAll('path.gf-{kind}').length") == counts[
            kind] > 0
    assert page.evaluate("document.querySelectorAll('path.gf-state').length") >= 80
    assert page.evaluate("document.title") == "Guns from the sample"
    assert page.evaluate("document.querySelector('#gf-title h1').textContent") == (
        "Guns from the sample")
    legend = page.evaluate("document.querySelector('#gf-legend.leaflet-control').textContent")
    assert "US states: guns sourced" in legend and "Mexican states: guns recovered" in legend
    assert re.search(r"and [\d,]+ (more|smaller) flows", legend) and "modelled crossing" in legend
    footer = page.evaluate("document.querySelector('#gf-footer.leaflet-control').textContent")
    assert "submitted for tracing" in footer and "synthetic sample" in footer
    assert page.evaluate("document.querySelectorAll('.leaflet-control-layers').length") == 1
    # The initial view is fitted to the drawn flows: it holds them all, as closely as it can.
    fitted = page.evaluate("""(() => {
        const b = L.latLngBounds([]);
        geoflow.map.eachLayer(l => { if (l.feature && l.options.className &&
          l.options.className.startsWith('gf-flow')) b.extend(l.getBounds()); });
        const m = geoflow.map;
        return [m.getBounds().pad(0.01).contains(b), m.getZoom(), m.getBoundsZoom(b)];
    })()""")
    assert fitted[0] and fitted[1] >= fitted[2] - 1
    text = _open_card(page, "gf-dealer", "dealer_name", page.evaluate(
        "(() => { let n = null; geoflow.map.eachLayer(l => { if (!n && l.feature && "
        "l.feature.properties.dealer_name && l.options.className === 'gf-dealer') "
        "n = l.feature.properties.dealer_name; }); return n; })()"))
    assert text and "Guns" in text and "Purchasers" in text
    page.screenshot(ARTIFACTS / "map_sample.png")
    assert (ARTIFACTS / "map_sample.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.console_errors == []
    assert page.external_requests() == []


def test_only_the_online_tile_layer_asks_for_the_network(browser, sample_map):
    page = _open(browser, sample_map)
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
    assert page.evaluate("geoflow.counts.flows") == 3
    dealer_popup = _open_card(page, "gf-dealer", "dealer_name", PAYLOADS[0])
    assert PAYLOADS[0] in dealer_popup and PAYLOADS[2] in dealer_popup  # name, top purchaser
    flow_tooltip = _open_card(page, "gf-flow", "dealer_name", PAYLOADS[1], how="openTooltip")
    assert PAYLOADS[1] in flow_tooltip
    place_popup = _open_card(page, "gf-recovery", "recovery_place", f"{PAYLOADS[2]}, Sonora")
    assert PAYLOADS[2] in place_popup
    assert page.evaluate("document.querySelectorAll('.leaflet-popup-content img').length") == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.title") == PAYLOADS[1]
    assert page.console_errors == []
    assert page.external_requests() == []
