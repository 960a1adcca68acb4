"""The map page as text: self-contained, escaped, sized, labelled; its pure helpers.

What a browser makes of the page is tested in test_map_browser.py.
"""

from __future__ import annotations

import html
import json
import re

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from click.testing import CliRunner

from geoflow.cli import PALETTE_NAMES, cli
from geoflow.errors import ConfigError, OutputError
from geoflow.pipeline import run_pipeline
from geoflow.render import (
    DEFAULT_CAVEAT,
    PALETTES,
    MapOptions,
    escape_html,
    js_string,
    page_assets,
    render_map,
    script_json,
    write_map,
)
from geoflow.sample import sample_path

PAYLOADS = [
    "<img src=x onerror=document.title='pwned'>",
    "</script><script>window.pwned=1</script>",
    "`${alert(1)}` \\ ${window.pwned=2}",
    "\" onmouseover=\"alert(1)",
    "x\u2028y\u2029z",
    "{{ 7*7 }} {% if true %}jinja ran{% endif %} {# hidden #}",
]


@pytest.fixture(scope="module")
def sample_result():
    return run_pipeline(sample_path())


@pytest.fixture(scope="module")
def sample_html(sample_result):
    return render_map(sample_result, options=MapOptions())


def _flow_frame(guns, ports, kinds=None):
    """Hand-made flows (docs/internals.md columns) from Houston via ``ports`` to Monterrey."""
    n = len(guns)
    port_xy = {"2304": (-99.507, 27.5), "2402": (-106.451, 31.764)}
    px = np.array([port_xy[p][0] for p in ports])
    py = np.array([port_xy[p][1] for p in ports])
    frame = pd.DataFrame({
        "flow_id": [f"F-{i}" for i in range(n)],
        "dealer_name": [f"Dealer {i}" for i in range(n)],
        "dealer_place": ["Houston, TX"] * n,
        "crossing_code": ports,
        "crossing_name": ["Laredo" if p == "2304" else "El Paso" for p in ports],
        "recovery_place": ["Monterrey, NLE"] * n,
        "route_kind": kinds or ["known"] * n,
        "guns": guns,
        "purchasers": [1] * n,
        "dealer_lon": -95.369, "dealer_lat": 29.76,
        "port_lon": px, "port_lat": py,
        "recovery_lon": -100.31, "recovery_lat": 25.67,
    })
    geometry = shapely.linestrings(np.stack([
        np.column_stack([frame["dealer_lon"], frame["dealer_lat"]]), np.column_stack([px, py]),
        np.column_stack([frame["recovery_lon"], frame["recovery_lat"]])], axis=1))
    return gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:4326")


def _result(flows):
    """A RunResult-shaped object around hand-made flows (names may carry payloads)."""
    first = flows.iloc[0]
    point = shapely.points
    dealers = gpd.GeoDataFrame({
        "dealer_id": ["D-1"], "dealer_name": [first["dealer_name"]], "dealer_ffl": ["5-74-1"],
        "dealer_place": [first["dealer_place"]], "dealer_state": ["US-TX"],
        "guns": [int(flows["guns"].sum())], "purchasers": [2], "top_purchaser": [PAYLOADS[2]],
        "top_purchaser_share_frac": [0.5]}, geometry=[point(-95.369, 29.76)], crs="EPSG:4326")
    recoveries = gpd.GeoDataFrame({
        "recovery_place": [first["recovery_place"]], "recovery_state": ["MX-NLE"],
        "guns": [int(flows["guns"].sum())], "purchasers": [2]},
        geometry=[point(-100.31, 25.67)], crs="EPSG:4326")
    crossings = gpd.GeoDataFrame({
        "code": ["2304"], "name": ["Laredo"], "us_state": ["US-TX"], "mx_city": ["Nuevo Laredo"],
        "guns": [int(flows["guns"].sum())], "guns_known": [1], "guns_modelled": [0]},
        geometry=[point(-99.507, 27.5)], crs="EPSG:4326")
    states = gpd.GeoDataFrame({
        "code": ["US-TX", "US-OK", "MX-NLE"], "name": [PAYLOADS[0], "Oklahoma", "Nuevo León"],
        "country": ["US", "US", "MX"],
        "guns_sourced": pd.array([int(flows["guns"].sum()), 0, None], dtype="Int64"),
        "guns_recovered": pd.array([None, None, 3], dtype="Int64"),
        "share_frac": [1.0, 0.0, 1.0]},
        geometry=[shapely.box(-106, 26, -94, 36), shapely.box(-103, 34, -94.4, 37),
                  shapely.box(-101, 23, -98, 27.5)], crs="EPSG:4326")

    class Result:
        pass

    result = Result()
    result.flows, result.dealers, result.recoveries = flows, dealers, recoveries
    result.crossings, result.states, result.description = crossings, states, ""
    result.manifest = {"input": {"path": "/data/traces.csv"}}
    return result


def _script_texts(page: str) -> list[str]:
    return re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S | re.I)


# --------------------------------------------------------------------------- escaping


@pytest.mark.parametrize("payload", PAYLOADS)
def test_escape_html_shows_payloads_as_text_and_cannot_break_js_templates(payload):
    escaped = escape_html(payload)
    assert html.unescape(escaped) == payload
    for char in "<>\"'`$\\{}":
        assert char not in escaped


def test_escape_html_turns_missing_values_into_empty_text():
    assert escape_html(None) == escape_html(pd.NA) == escape_html(float("nan")) == ""
    assert escape_html(12) == "12"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_script_json_keeps_values_and_cannot_close_a_script(payload):
    value = {"name": payload, "n": [1, None, 2.5]}
    text = script_json(value)
    assert json.loads(text) == value
    assert "</" not in text and "<" not in text and "`" not in text and "$" not in text
    assert "\u2028" not in text and "\u2029" not in text
    assert "{{" not in text and "{%" not in text and "{#" not in text  # folium runs Jinja
    assert json.loads(js_string(payload)) == payload


def test_state_outlines_are_written_as_script_json_writes_the_whole_collection(sample_result):
    """The areas' text is made of pieces (geometry texts cached per process): the bytes of
    ``script_json`` of the whole FeatureCollection, whatever the names hold, on every page."""
    from dataclasses import replace

    from geoflow.render import _areas_geojson, _geometry_json
    from geoflow.scene import build_scene

    scene = build_scene(sample_result, options=MapOptions())
    hostile = replace(scene, areas=[replace(area, name=PAYLOADS[i % len(PAYLOADS)] + "{{x}}")
                                    for i, area in enumerate(scene.areas)])
    for drawn in (scene, hostile, scene):  # the second time from the cache
        for country in ("US", "MX"):
            areas = [a for a in drawn.areas if a.country == country]
            plain = {"type": "FeatureCollection", "features": [
                {"type": "Feature",
                 "properties": {"name": a.name, "code": a.code, "guns": a.guns,
                                "pct": a.share, "fill": a.fill},
                 "geometry": _geometry_json(a.geometry)}
                for a in areas]}
            text = _areas_geojson(drawn, country)
            assert text == script_json(plain)
            assert len(json.loads(text)["features"]) == len(areas) > 30
            assert "<" not in text and "{{" not in text


def test_script_json_refuses_nan_and_js_string_blanks_na():
    with pytest.raises(ValueError):
        script_json({"x": float("nan")})
    assert js_string(pd.NA) == js_string(None) == '""'


def test_payload_names_reach_the_page_only_as_escaped_data():
    flows = _flow_frame([5, 2], ["2304", "2304"])
    flows["dealer_name"] = [PAYLOADS[1], PAYLOADS[0]]
    flows["recovery_place"] = [PAYLOADS[2], PAYLOADS[2]]
    flows["top_purchaser"] = [PAYLOADS[0], None]
    for style in ("legs", "paths"):
        page = render_map(_result(flows), options=MapOptions(
            title=PAYLOADS[1], credit=PAYLOADS[2], subtitle=PAYLOADS[0], top_n=1,
            flow_style=style))
        if style == "paths":
            assert "And 1 smaller flow (2 guns) not drawn." in page
        assert "window.pwned" in page  # the text is there …
        assert "<img src=x" not in page  # … but never as markup
        assert page.count("<script>window.pwned") == 0
        assert "${alert" not in page and "${window" not in page
        # Every <script> still parses as one element: payload text cannot close one early.
        for text in _script_texts(page):
            assert "<script" not in text.lower()
        title = re.search(r"<title>(.*?)</title>", page, flags=re.S).group(1)
        assert html.unescape(title) == PAYLOADS[1]
        assert f"<h1>{escape_html(PAYLOADS[1])}</h1>" in page
        assert escape_html(PAYLOADS[2]) in page


def test_hyphenated_words_of_the_title_are_kept_whole_and_stay_text():
    """A pseudonym or code in the title panel is one unbreakable span (a browser may break a
    line after a hyphen); text with hyphens and markup in it is still only escaped text."""
    subtitle = "Purchaser: P-77d6ca; US state: Texas (US-TX) <img src=x-y onerror=z-1>"
    page = render_map(_result(_flow_frame([5, 2], ["2304", "2304"])),
                      options=MapOptions(title="Cross-border guns", subtitle=subtitle))
    panel = re.search(r'<div class="gf-panel gf-title" id="gf-title">(.*?)</div>', page).group(1)
    spans = re.findall(r'<span class="gf-nobreak">(.*?)</span>', panel)
    assert spans == ["Cross-border", "P-77d6ca;", "(US-TX)", "src=x-y", "onerror=z-1&gt;"]
    assert "<img" not in panel
    assert html.unescape(re.sub(r"<[^>]+>", "", panel)) == "Cross-border guns" + subtitle


def test_names_in_the_data_are_never_run_as_templates():
    """folium renders page scripts through Jinja: a dealer or place named like a template
    stays text (before, ``{{ 7*7 }}`` in a dealer name became 49 on the map)."""
    payload = PAYLOADS[-1]
    flows = _flow_frame([5, 2], ["2304", "2304"])
    flows["dealer_name"] = [payload, payload]
    flows["recovery_place"] = [payload, payload]
    for style in ("legs", "paths"):
        page = render_map(_result(flows), options=MapOptions(flow_style=style))
        assert "jinja ran" not in page.replace(script_json(payload)[1:-1], "")
        assert "49 " not in page
        assert script_json(payload)[1:-1] in page


def test_map_options_refuse_unknown_palettes_and_bad_thresholds():
    with pytest.raises(ConfigError, match="palette"):
        MapOptions(palette="rainbow")
    with pytest.raises(ConfigError, match="top_n"):
        MapOptions(top_n=0)
    assert set(PALETTE_NAMES) == set(PALETTES)
    assert MapOptions().caveat == DEFAULT_CAVEAT


def test_same_result_gives_the_same_page():
    result = _result(_flow_frame([5, 2], ["2304", "2402"], kinds=["known", "modelled"]))
    first = render_map(result, options=MapOptions())
    assert first == render_map(result, options=MapOptions())
    assert not re.search(r"_[0-9a-f]{32}\b", first)  # no random folium ids


def test_a_result_with_nothing_placed_still_gives_a_finished_page():
    result = _result(_flow_frame([5], ["2304"]))
    for name in ("flows", "dealers", "recoveries", "crossings"):
        setattr(result, name, getattr(result, name).iloc[:0])
    result.states = result.states.assign(guns_sourced=0, guns_recovered=0)
    page = render_map(result, options=MapOptions())
    assert "<p>0 traced guns</p>" in page  # no "from 0 US dealers … to 0 places"
    assert "No flows to draw." in page
    assert '"features":[]' in page


def test_page_size_is_bounded_by_what_is_drawn_not_by_the_data():
    """A million-record run has ~700,000 flows and ~12,000 dealers; the page stays light."""
    rng = np.random.default_rng(5)
    n, n_dealers, n_places = 200_000, 20_000, 5_000
    flows = _flow_frame([1] * n, ["2304"] * n)
    flows["guns"] = rng.integers(1, 60, n)
    flows["dealer_lon"] = rng.uniform(-120, -80, n)
    flows["dealer_lat"] = rng.uniform(28, 45, n)
    flows["recovery_lon"] = rng.uniform(-110, -90, n)
    flows["recovery_lat"] = rng.uniform(16, 30, n)
    flows["dealer_place"] = [f"Town {i % 3000}" for i in range(n)]
    flows["recovery_place"] = [f"Place {i % 2000}" for i in range(n)]
    flows["dealer_state"] = rng.choice(["US-TX", "US-AZ", "US-CA", "US-IL"], n)
    flows["recovery_state"] = rng.choice(["MX-CHH", "MX-SIN", "MX-JAL"], n)
    result = _result(flows)
    result.dealers = gpd.GeoDataFrame(
        {"dealer_name": [f"Dealer {i}" for i in range(n_dealers)],
         "guns": rng.integers(1, 500, n_dealers)},
        geometry=shapely.points(rng.uniform(-120, -80, n_dealers), rng.uniform(28, 45, n_dealers)),
        crs="EPSG:4326")
    result.recoveries = gpd.GeoDataFrame(
        {"recovery_place": [f"Place {i}" for i in range(n_places)],
         "guns": rng.integers(1, 500, n_places)},
        geometry=shapely.points(rng.uniform(-110, -90, n_places), rng.uniform(16, 30, n_places)),
        crs="EPSG:4326")
    page = render_map(result, options=MapOptions())
    assert len(page.encode("utf-8")) < 5_000_000
    (legs,) = _layer_data(page, "flows")  # state-level legs through Laredo: 4 US, 3 MX
    assert len(legs["features"]) == 4 + 3
    for side in ("us", "mx"):
        assert sum(f["properties"]["guns"] for f in legs["features"]
                   if f["properties"]["side"] == side) == flows["guns"].sum()
    assert f"And {n_dealers - 1500:,} smaller dealers" in page
    assert f"And {n_places - 1500:,} smaller recovery places" in page


# --------------------------------------------------------------------------- the sample's page


def test_sample_map_is_self_contained(sample_html):
    page = sample_html
    external = re.findall(r"""(?:src|srcset)\s*=\s*["']?\s*(?:https?:)?//""", page, flags=re.I)
    links = [m for m in re.findall(r"<link\b[^>]*>", page, flags=re.I)
             if re.search(r"href\s*=\s*[\"']?\s*(?:https?:)?//", m, flags=re.I)]
    assert external == [] and links == []
    assert not re.search(r"@import|url\(\s*[\"']?(?:https?:)?//", page, flags=re.I)
    assert "$(" not in page and "jquery" not in page.lower() and "bootstrap" not in page.lower()
    assert "Leaflet 1.9.4" in page  # inlined
    assert "sourceMappingURL" not in page


def _layer_data(page: str, kind: str) -> list[dict]:
    """The GeoJSON handed to ``geoflow.<kind>(map, data, options)`` in the page."""
    found = re.findall(rf"geoflow\.{kind}\([^,]+,\s*(\{{\"type\":\"FeatureCollection\".*?\}}), "
                       r"\{", page, flags=re.S)
    return [json.loads(text) for text in found]


def test_sample_map_draws_the_scene_legs_and_says_what_is_not_drawn(sample_result, sample_html):
    page = sample_html
    assert len(page.encode("utf-8")) < 1_500_000
    (flows,) = _layer_data(page, "flows")
    legs = flows["features"]
    assert 0 < len(legs) <= 150
    assert {f["properties"]["side"] for f in legs} == {"us", "mx"}
    guns = [f["properties"]["guns"] for f in legs]
    assert guns == sorted(guns, reverse=True)
    assert {f["properties"]["k"] for f in legs} == {"known", "modelled"}
    assert re.search(r"And [\d,]+ smaller US legs \([\d,]+ guns, at most \d+ each\) not drawn",
                     page)
    assert f'data-guns="{guns[0]}"' in page  # the legend's widest sample is the largest leg
    for text in ("US states: guns sourced", "Mexican states: guns recovered",
                 "modelled crossing (dashed", "synthetic sample", escape_html(DEFAULT_CAVEAT),
                 "pseudonyms", "Guns traced from US dealers to Mexico", "gf-synthetic",
                 "SYNTHETIC DATA — not real trace records", "INEGI", "GeoNames"):
        assert text in page
    paths = render_map(sample_result, options=MapOptions(flow_style="paths", min_guns=2,
                                                         top_n=1000))
    (drawn,) = _layer_data(paths, "flows")
    above = int((sample_result.flows["guns"] >= 2).sum())
    assert len(drawn["features"]) == min(above, 1000)
    assert "smaller flows" in paths


def test_page_script_and_styles_come_from_the_package_files(sample_html):
    js, css = page_assets()
    assert "function placeLabels" in js and ".gf-label" in css
    assert js in sample_html and css in sample_html
    assert "RUNTIME_JS" not in sample_html


def test_tile_layer_is_offered_off_by_default_or_left_out(sample_result, sample_html):
    assert "basemaps.cartocdn.com" in sample_html
    add_calls = re.findall(r"(tile_layer_\w+)\.addTo\(", sample_html)
    assert add_calls == []  # offered in the layer control, not switched on
    bare = render_map(sample_result, options=MapOptions(tiles=False, top_n=20))
    assert "cartocdn" not in bare and "= L.tileLayer(" not in bare
    assert "= L.tileLayer(" in sample_html
    # the layer Leaflet gets: CARTO's URL with its four subdomains, credited to OSM and CARTO
    url, given = re.search(r'L\.tileLayer\(\s*"([^"]+)",\s*(\{.*?\})\s*\);', sample_html,
                           re.S).groups()
    given = json.loads(re.sub(r",\s*}$", "}", given))  # folium's JS object: a trailing comma
    assert url == "https://{s}.basemaps.cartocdn.com/light_all/{z}/{x}/{y}{r}.png"
    assert (given["subdomains"], given["minZoom"], given["maxZoom"]) == ("abcd", 0, 20)
    assert "OpenStreetMap" in given["attribution"] and "CARTO" in given["attribution"]


def test_show_names_changes_the_wording(sample_result):
    page = render_map(sample_result, options=MapOptions(show_names=True, max_legs=5,
                                                        source="Source: my desk"))
    assert "shown as they appear in the records" in page and "Source: my desk" in page


# --------------------------------------------------------------------------- writing


def test_write_map_replaces_a_file_and_refuses_a_folder(tmp_path):
    target = tmp_path / "deep" / "map.html"
    write_map("<p>one</p>", target)
    write_map("<p>two</p>", target)
    assert target.read_text(encoding="utf-8") == "<p>two</p>"
    assert [p.name for p in target.parent.iterdir()] == ["map.html"]
    with pytest.raises(OutputError, match="folder"):
        write_map("x", tmp_path)


def test_map_command_writes_the_map_with_the_desk_labels(tmp_path):
    out = tmp_path / "sample.html"
    result = CliRunner().invoke(cli, [
        "map", "--sample", "-o", str(out), "--title", "Guns <to> Mexico", "--credit",
        "Graphic: Desk", "--caveat", "Only traced guns.", "--flow-style", "paths", "--top-n",
        "50", "--no-tiles",
        "--palette", "viridis"])
    assert result.exit_code == 0, result.output
    assert "50 of" in result.output
    page = out.read_text(encoding="utf-8")
    assert "<h1>Guns &lt;to&gt; Mexico</h1>" in page
    assert "Graphic: Desk" in page and "Only traced guns." in page and "cartocdn" not in page
    assert PALETTES["viridis"][0][-1] in page


@pytest.mark.parametrize("text", ["var a = 1;\n", "a\r\nb\r\n\n", "x\ry", "", "\n",
                                  "{{ 6 * 7 }} {% if true %}t{% endif %}{# c #}\n"])
def test_macro_text_goes_into_the_page_as_branca_renders_it(text):
    # branca compiles each element's script as a Jinja template; geoflow puts it in as the
    # same text, without compiling: line ends read as \n, one final line end dropped
    import branca.element

    from geoflow.render import _as_compiled

    assert _as_compiled(text) == branca.element.Element(text).render()


def test_folium_elements_give_the_page_branca_would_build(sample_result, sample_html,
                                                         monkeypatch):
    # the map, its layer control and each layer's "add to map" put their script in without
    # a Jinja compilation; branca's own render of the same elements gives the same page
    import branca.element

    from geoflow import render

    monkeypatch.setattr(render._RawMacro, "render", branca.element.MacroElement.render)
    assert render_map(sample_result, options=MapOptions()) == sample_html
    tiled = render_map(sample_result, options=MapOptions(tiles=True))
    monkeypatch.undo()
    assert render_map(sample_result, options=MapOptions(tiles=True)) == tiled
