"""The renderer-independent scene: legs, scales, classes, labels, legend, texts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import shapely

from geoflow.errors import ConfigError
from geoflow.pipeline import run_pipeline
from geoflow.sample import sample_path
from geoflow.scene import (
    ATTRIBUTION,
    MODELLED_DASH,
    NO_DATA,
    SYNTHETIC_BANNER,
    WIDTH_RANGE,
    MapOptions,
    ShapeCache,
    build_scene,
    choose_level,
    contrast_ratio,
    lighten,
    quantile_bins,
    relative_luminance,
    side_legs,
)
from geoflow.select import filter_records


@pytest.fixture(scope="module")
def sample_result():
    return run_pipeline(sample_path())


@pytest.fixture(scope="module")
def scene(sample_result):
    return build_scene(sample_result)


def test_national_sample_draws_state_level_legs_within_budget_and_counts_the_rest(
        sample_result, scene):
    assert scene.levels == {"us": "state", "mx": "state"}
    assert 0 < len(scene.legs) <= 150
    placed = int(sample_result.manifest["counts"]["rows_placed"])
    for side, noun in (("us", "US leg"), ("mx", "Mexican leg")):
        drawn = sum(leg.guns for leg in scene.legs if leg.side == side)
        note = next(n for n in scene.legend.notes if f"smaller {noun}" in n)
        hidden = int(note.split("(")[1].split(" gun")[0].replace(",", ""))
        assert drawn + hidden == placed  # every placed gun is drawn or counted
    # one leg per (state, port, route kind): Texas → Laredo is a leg, not 100 lines
    laredo = [leg for leg in scene.legs if leg.side == "us" and leg.origin == "Texas"
              and leg.port_name == "Laredo"]
    assert laredo and len({leg.route_kind for leg in laredo}) == len(laredo)


def test_leg_geometry_runs_from_the_fixed_state_point_to_the_port(scene):
    leg = next(leg for leg in scene.legs if leg.side == "us" and leg.origin == "Texas")
    assert leg.coords[0] == pytest.approx((-99.3, 31.5), abs=1.5)  # gazetteer_states point
    mx = next(leg for leg in scene.legs if leg.side == "mx")
    assert mx.arrow and not leg.arrow  # arrowheads only where guns end up


def test_widths_are_proportional_and_the_legend_reaches_the_real_maximum(scene):
    biggest = max(scene.legs, key=lambda leg: leg.guns)
    assert biggest.width == WIDTH_RANGE[1] >= 16
    assert min(leg.width for leg in scene.legs) >= WIDTH_RANGE[0]
    assert scene.legend.widths[0] == (biggest.guns, biggest.width)
    for leg in scene.legs:
        if leg.width > WIDTH_RANGE[0]:
            assert leg.width == pytest.approx(biggest.width * leg.guns / biggest.guns, abs=0.01)


def test_modelled_legs_are_dashed_known_legs_solid(scene):
    kinds = {leg.route_kind for leg in scene.legs}
    assert kinds == {"known", "modelled"}
    for leg in scene.legs:
        assert (leg.dash == MODELLED_DASH) == (leg.route_kind == "modelled")


def test_flow_colour_contrasts_with_every_class_it_crosses(scene):
    for classes in scene.classes:
        assert classes.colours and len(set(classes.colours)) == len(classes.colours)
        for colour in classes.colours:
            assert contrast_ratio(scene.flow_colour, colour) >= 3.0
        lums = [relative_luminance(c) for c in classes.colours]
        assert lums == sorted(lums, reverse=True)  # still light → dark
    fills = {area.fill for area in scene.areas}
    assert fills <= {c for k in scene.classes for c in k.colours} | {NO_DATA}


def test_classes_come_from_mapclassify_quantiles(scene, sample_result):
    import mapclassify

    us = scene.classes[0]
    guns = sample_result.states.query("country == 'US' and guns_sourced > 0")[
        "guns_sourced"].to_numpy()
    expected = np.unique(np.floor(mapclassify.Quantiles(guns, k=5).bins))
    assert list(us.bins) == expected.tolist()
    for k in (2, 3, 4, 5):  # geoflow's own quantiles (no mapclassify import) are the same
        assert quantile_bins(guns, k).tolist() == mapclassify.Quantiles(guns, k=k).bins.tolist()
    assert us.labels[-1].endswith(f"{int(guns.max()):,}")
    for classes in scene.classes:  # whole-number classes that never share a bound
        highs = [int(lab.split("–")[-1].replace(",", "")) for lab in classes.labels]
        lows = [int(lab.split("–")[0].replace(",", "")) for lab in classes.labels]
        assert all(lo == hi + 1 for hi, lo in zip(highs, lows[1:], strict=False))


def test_labels_name_the_top_ports_dealer_towns_and_places(scene):
    by_kind = {}
    for label in scene.labels:
        by_kind.setdefault(label.kind, []).append(label)
    assert {"port", "dealer", "recovery", "state"} <= set(by_kind)
    always = [lab.text for lab in by_kind["port"] if lab.min_zoom == 0]
    assert "Laredo" in always and len(always) == 5
    priorities = [lab.priority for lab in scene.labels]
    assert priorities == sorted(priorities, reverse=True)
    assert any(lab.text == "Culiacán" for lab in by_kind["recovery"])


def test_town_labels_sum_a_towns_places_at_its_first_point_most_guns_first():
    # three dealers in Laredo (9 guns), one in Tucson (5) and one with no town: Laredo
    # first at its first dealer's point, then Tucson; the unnamed dealer is not labelled
    import geopandas as gpd

    from geoflow.scene import _labels

    dealers = gpd.GeoDataFrame(
        {"dealer_place": ["Tucson, AZ", "Laredo, TX", None, "Laredo, TX", "Laredo, TX"],
         "guns": [5, 2, 50, 3, 4]},
        geometry=shapely.points([(-110.9, 32.2), (-99.5, 27.5), (-98.0, 29.0),
                                 (-99.4, 27.6), (-99.6, 27.4)]), crs="EPSG:4326")
    empty = gpd.GeoDataFrame({"guns": []}, geometry=[], crs="EPSG:4326")
    result = SimpleNamespace(crossings=empty, dealers=dealers, recoveries=empty)
    towns = [lab for lab in _labels(result, [], []) if lab.kind == "dealer"]
    assert [(lab.text, lab.lon, lab.lat) for lab in towns] == [
        ("Laredo, TX", -99.5, 27.5), ("Tucson, AZ", -110.9, 32.2)]
    assert [lab.priority for lab in towns] == [3.0 + 1.0, 3.0 + 5 / 9]


def test_texts_attribution_and_synthetic_banner(scene):
    assert scene.synthetic and scene.banner == SYNTHETIC_BANNER
    assert any("INEGI" in a for a in ATTRIBUTION) and any("GeoNames" in a for a in ATTRIBUTION)
    assert scene.attribution == ATTRIBUTION
    assert "2,9" in scene.subtitle and "synthetic" in scene.source
    assert scene.names_note == "Purchasers are shown as pseudonyms (P-xxxxxx), not names."


def test_points_placed_only_at_state_level_are_hollow(sample_result, scene):
    layer = next(p for p in scene.points if p.kind == "recovery")
    levels = sample_result.recoveries["geocode_level"].astype("string")
    assert (levels == "state").sum() > 0
    hollow = [p for p in layer.points if p.hollow]
    assert len(hollow) == (levels == "state").sum()
    assert all(p.properties["geocode_level"] == "state" for p in hollow)


def test_a_trafficker_scene_draws_dealers_and_places(sample_result):
    from geoflow.pipeline import analyse, prepare_records

    prepared = prepare_records(sample_path())
    records, description = filter_records(prepared.records, traffickers=["barajas"])
    result = analyse(prepared, records=records, description=description)
    scene = build_scene(result)
    assert scene.levels == {"us": "place", "mx": "place"}
    assert any(leg.origin == "GAT Guns" for leg in scene.legs)
    assert any(lab.text == "East Dundee, IL" for lab in scene.labels)
    west, south = scene.bounds[0]
    east, north = scene.bounds[1]
    assert west < -88.3 < east and south < 27.5 < north  # dealer and port both framed


def test_paths_style_keeps_one_line_per_flow(sample_result):
    scene = build_scene(sample_result, options=MapOptions(flow_style="paths", top_n=40))
    assert len(scene.legs) == 40 and {leg.side for leg in scene.legs} == {"path"}
    first = scene.legs[0]
    flow = sample_result.flows.iloc[0]
    assert first.coords[0] == pytest.approx((flow.dealer_lon, flow.dealer_lat), abs=1e-4)
    assert first.coords[-1] == pytest.approx((flow.recovery_lon, flow.recovery_lat), abs=1e-4)
    xy = np.asarray(first.coords)
    assert np.min(np.hypot(*(xy - [flow.port_lon, flow.port_lat]).T)) < 1e-4
    assert any("smaller flow" in n for n in scene.legend.notes)
    # the sample's largest flow is 7 guns: full width needs 50, so small flows stay thin
    assert first.guns < 50 and first.width == pytest.approx(18.0 * first.guns / 50, abs=0.01)
    assert scene.legend.widths[0] == (first.guns, first.width)
    with pytest.raises(ConfigError, match="flow style"):
        MapOptions(flow_style="hairball")


def test_min_guns_leaves_small_flows_out_and_counts_them(sample_result):
    scene = build_scene(sample_result, options=MapOptions(min_guns=3))
    flows = sample_result.flows
    small = flows[flows["guns"] < 3]
    note = (f"{len(small):,} flows of fewer than 3 guns ({int(small['guns'].sum()):,} guns) "
            "left out.")
    assert note in scene.legend.notes
    drawn = sum(leg.guns for leg in scene.legs if leg.side == "mx")
    hidden = sum(int(n.split("(")[1].split(" gun")[0].replace(",", ""))
                 for n in scene.legend.notes if "smaller Mexican leg" in n)
    assert drawn + hidden + int(small["guns"].sum()) == int(flows["guns"].sum())


def test_colour_helpers():
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert lighten("#000000", 1.0) == "#ffffff" and lighten("#336699", 0) == "#336699"
    assert relative_luminance("#ffffff") == pytest.approx(1.0)


def test_areas_carry_simplified_geometry(scene):
    texas = next(a for a in scene.areas if a.code == "US-TX")
    assert texas.cls == len(scene.classes[0].colours) - 1 and shapely.area(texas.geometry) > 50


def test_legend_says_what_the_small_count_rule_withheld(sample_result, scene):
    small = sample_result.suppression["small_flows"]["flows"]
    assert sample_result.suppression["enabled"] and small > 0
    withheld = [note for note in scene.legend.notes if "fewer than 3 guns" in note]
    assert len(withheld) == 1, scene.legend.notes
    assert f"{sample_result.suppression['cells']['flows']['rows']:,} flows" in withheld[0]
    hidden = sample_result.suppression["purchasers_not_listed"]["purchasers"]
    assert f"{hidden:,} purchasers are counted only in totals" in withheld[0]


def test_legend_says_why_guns_are_not_on_the_map_by_reason():
    """Several reasons: the guns of each, most first, in words (a gun recovered in
    Guatemala is not 'unknown'); no unplaced rows to read: the reasons in general."""
    from geoflow.scene import _unplaced_note

    manifest = {"counts": {"guns_unplaced": 12}}
    unplaced = pd.DataFrame({
        "reason": ["recovered outside Mexico", "no recovery location", "no dealer location",
                   "no recovery location", "duplicate trace record"],
        "guns": [2, 5, 1, 3, 1]})
    assert _unplaced_note(manifest, unplaced) == (
        "12 traced guns are not drawn as flows (8 recovery place unknown, 2 recovered outside "
        "Mexico, 1 repeated trace record, 1 dealer place unknown; listed in unplaced.csv); the "
        "state shading counts every gun whose state is known.")
    assert "(dealer, recovery place or crossing unknown;" in _unplaced_note(manifest)
    assert _unplaced_note({"counts": {"guns_unplaced": 0}}, unplaced) == ""


def test_legend_counts_the_guns_that_are_not_on_the_map(sample_result, scene):
    counts = sample_result.manifest["counts"]
    assert counts["guns_unplaced"] > 0  # the sample has records without a place or crossing
    mapped = int(sample_result.flows["guns"].sum())
    assert f"{mapped:,} traced guns" in scene.subtitle
    assert mapped + counts["guns_unplaced"] == counts["guns_valid"] - counts["guns_filtered_out"]
    note = [n for n in scene.legend.notes if "not drawn as flows" in n]
    # the sample's unplaced guns all lack a recovery place: the legend says that, no more
    assert set(sample_result.unplaced["reason"]) == {"no recovery location"}
    assert note == [f"{counts['guns_unplaced']:,} traced guns are not drawn as flows (recovery "
                    "place unknown; listed in unplaced.csv); the state shading counts every "
                    "gun whose state is known."]
    for guns, expected in ((1, "1 traced gun is not drawn as flows"), (0, None)):
        result = SimpleNamespace(
            flows=sample_result.flows, dealers=sample_result.dealers,
            recoveries=sample_result.recoveries, crossings=sample_result.crossings,
            states=sample_result.states,
            manifest={"counts": {**counts, "guns_unplaced": guns}})
        found = [n for n in build_scene(result).legend.notes if "not drawn as flows" in n]
        if expected is None:
            assert found == []
        else:
            assert len(found) == 1 and found[0].startswith(expected)


def test_shape_cache_derives_once_per_shape_object_and_stays_bounded():
    made = []

    def areas(todo):
        made.append(len(todo))
        return shapely.area(todo).tolist()

    cache = ShapeCache(limit=3)
    small, big = shapely.box(0, 0, 1, 1), shapely.box(0, 0, 2, 2)
    assert cache.get([small, big], areas) == [1.0, 4.0]
    assert cache.get([big, small], areas) == [4.0, 1.0]
    assert made == [2]  # the second call derived nothing
    twin = shapely.box(0, 0, 1, 1)  # equal, but another object: derived afresh
    assert cache.get([twin, small], areas) == [1.0, 1.0] and made == [2, 1]
    assert cache.get([shapely.box(0, 0, 3, 3)], areas) == [9.0]  # full: cleared first
    assert cache.get([small], areas) == [1.0] and made == [2, 1, 1, 1]


def test_batch_entities_share_the_simplified_state_outlines(sample_result):
    """Two entities' scenes draw the same simplified outline objects (made once per
    process), simpler than the shipped shapes."""
    from geoflow.pipeline import analyse, prepare_records
    from geoflow.select import entity_keys

    prepared = prepare_records(sample_path())
    keys = entity_keys(prepared.records, "state")
    scenes = [build_scene(analyse(prepared, records=prepared.records[
        (keys == code).to_numpy(dtype=bool)])) for code in ("US-TX", "US-AZ")]
    texas, arizona = ({a.code: a.geometry for a in scene.areas} for scene in scenes)
    assert texas.keys() == arizona.keys()
    assert all(texas[code] is arizona[code] for code in texas)
    shipped = sample_result.states.set_index("code").geometry
    assert shapely.get_num_coordinates(texas["US-TX"]) < shapely.get_num_coordinates(
        shipped["US-TX"])


def _legs_by_pandas(flows, side, level):
    """side_legs as a pandas groupby computes it (first of each text, mean of the points)."""
    from geoflow.scene import _ends, _guns, _text

    ends = _ends(flows, side, level)
    frame = pd.DataFrame({
        "key": ends["key"], "name": ends["name"], "lon": ends["lon"], "lat": ends["lat"],
        "port_code": _text(flows["crossing_code"]), "port_name": _text(flows["crossing_name"]),
        "port_lon": flows["port_lon"].to_numpy(dtype=float),
        "port_lat": flows["port_lat"].to_numpy(dtype=float),
        "route_kind": _text(flows["route_kind"]).where(
            lambda kind: kind == "known", "modelled").array,
        "guns": _guns(flows["guns"].to_numpy()),
    })
    frame = frame[np.isfinite(frame["lon"]) & np.isfinite(frame["lat"])]
    grouped = (frame.groupby(["key", "port_code", "route_kind"], sort=False)
               .agg(name=("name", "first"), lon=("lon", "mean"), lat=("lat", "mean"),
                    port_name=("port_name", "first"), port_lon=("port_lon", "first"),
                    port_lat=("port_lat", "first"), guns=("guns", "sum"))
               .reset_index())
    order = np.lexsort((pd.factorize(grouped["key"].array, sort=True)[0],
                        -grouped["guns"].to_numpy()))
    return grouped.iloc[order].reset_index(drop=True)


def test_side_legs_sum_each_end_port_and_route_as_a_groupby_would(sample_result):
    flows = pd.DataFrame(sample_result.flows.drop(columns="geometry"))
    # dealers of one town at different points (given coordinates), and points unknown
    moved = flows.copy()
    moved.loc[moved.index[::3], "dealer_lon"] += 0.25
    moved.loc[moved.index[::7], ["dealer_lon", "recovery_lat"]] = np.nan
    # every flow of some dealers and places without a point: ends that draw no leg
    pointless = flows.iloc[:120].copy()
    pointless.loc[pointless["dealer_id"].isin(pointless["dealer_id"].unique()[:15]),
                  "dealer_lon"] = np.nan
    pointless.loc[pointless["recovery_place"].isin(
        pointless["recovery_place"].unique()[:15]), "recovery_lat"] = np.nan
    for frame in (flows, moved, flows.iloc[:40], pointless, flows.iloc[:1], flows.iloc[0:0]):
        for side in ("us", "mx"):
            for level in ("place", "town", "state"):
                legs, expected = side_legs(frame, side, level), _legs_by_pandas(
                    frame, side, level)
                assert len(legs) == len(expected) and (len(legs) > 0) == (len(frame) > 0)
                for column in ("key", "port_code", "route_kind", "name", "port_name"):
                    assert legs[column].tolist() == expected[column].tolist(), column
                for column in ("lon", "lat", "port_lon", "port_lat", "guns"):
                    np.testing.assert_allclose(legs[column].to_numpy(dtype=float),
                                               expected[column].to_numpy(dtype=float),
                                               rtol=0, atol=1e-9, err_msg=column)
                assert legs["guns"].sum() == expected["guns"].sum()
        # the finest level whose legs fit the budget (a level is skipped on its far ends)
        for side, levels in (("us", ("place", "town")), ("mx", ("place",))):
            counts = {level: len(_legs_by_pandas(frame, side, level)) for level in levels}
            exact = [n + step for n in counts.values() for step in (-1, 0)]
            for budget in {1, 75, 10_000, *(n for n in exact if n >= 1)}:
                fitting = [level for level in levels if counts[level] <= budget]
                assert choose_level(frame, side, budget) == (fitting or ["state"])[0]
