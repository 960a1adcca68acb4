"""Analysts' formats: flowmap.blue and kepler.gl CSVs, the GeoPackage, GeoParquet, shapefiles
and --excel CSVs, read back with pandas and GDAL (pyogrio) and checked against the flows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest

from geoflow.formats import SHAPEFILE_FIELDS, flowmap_tables, shapefile_names
from geoflow.pipeline import RunOptions, analyse, prepare_records, write_outputs
from geoflow.sample import sample_path
from geoflow.shapes import load_state_points

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
LAYERS = ("flows", "dealers", "recoveries", "crossings", "states")
TABLES = ("by_us_state", "by_mx_state", "state_matrix", "by_dealer", "by_purchaser",
          "by_trafficker", "by_crossing", "by_year")


@pytest.fixture(scope="module")
def prepared():
    return prepare_records(sample_path())


@pytest.fixture(scope="module")
def place_run(prepared, tmp_path_factory):
    result = analyse(prepared)
    out = tmp_path_factory.mktemp("formats") / "place"
    write_outputs(result, out, write_map=False, formats=("geoparquet", "shapefile"), excel=True)
    return result, out


@pytest.fixture(scope="module")
def state_run(prepared, tmp_path_factory):
    result = analyse(prepared, options=RunOptions(flow_level="state"))
    out = tmp_path_factory.mktemp("formats") / "state"
    write_outputs(result, out, write_map=False)
    return result, out


def _flowmap(out: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(out / "flowmap" / f"{name}.csv", encoding="utf-8-sig",
                              dtype={"id": str, "origin": str, "dest": str})
            for name in ("locations", "flows", "flows_dealer_port", "flows_port_place")}


@pytest.mark.parametrize("run", ["place_run", "state_run"])
def test_flowmap_tables_read_back_and_add_up_to_the_flows(run, request):
    result, out = request.getfixturevalue(run)
    tables = _flowmap(out)
    placed = result.manifest["counts"]["rows_placed"]
    assert int(result.flows["guns"].sum()) == placed
    locations = tables["locations"]
    assert list(locations.columns) == ["id", "name", "lat", "lon"]
    assert locations["id"].is_unique and locations["name"].notna().all()
    assert locations["lat"].between(14, 72).all() and locations["lon"].between(-180, -60).all()
    for name in ("flows", "flows_dealer_port", "flows_port_place"):
        flows = tables[name]
        assert list(flows.columns) == ["origin", "dest", "count"]
        assert flows["count"].sum() == placed, name
        assert flows["origin"].isin(locations["id"]).all() and flows["dest"].isin(
            locations["id"]).all()
        assert not flows.duplicated(["origin", "dest"]).any()
        assert (flows["count"] > 0).all() and flows["count"].is_monotonic_decreasing
    assert tables["flows_dealer_port"]["dest"].str.startswith("port-").all()
    assert tables["flows_port_place"]["origin"].str.startswith("port-").all()


def test_flowmap_whole_flows_sum_a_dealers_routes_over_ports(place_run):
    result, out = place_run
    whole = _flowmap(out)["flows"]
    gat = result.flows[result.flows["dealer_name"] == "GAT Guns"]
    dealer = gat["dealer_id"].iloc[0]
    assert whole.loc[whole["origin"] == dealer, "count"].sum() == gat["guns"].sum()
    # one flowmap flow per (dealer, recovery place) however many ports carried it
    pairs = result.flows.groupby(["dealer_id", "recovery_place", "recovery_lat"]).ngroups
    assert len(whole) == pairs


def test_state_level_flowmap_has_one_location_per_state(state_run):
    _, out = state_run
    locations = _flowmap(out)["locations"].set_index("id")
    points = load_state_points().set_index("code")
    states = locations[~locations.index.str.startswith("port-")]
    assert states.index.str.fullmatch(r"(US|MX)-[A-Z]{2,3}").all()
    assert np.allclose(states["lat"], points.loc[states.index, "lat"])
    assert np.allclose(states["lon"], points.loc[states.index, "lon"])
    assert locations.loc["US-TX", "name"] == "Texas"


@pytest.mark.parametrize("run", ["place_run", "state_run"])
def test_kepler_csv_has_arc_columns_and_the_flows_guns(run, request):
    result, out = request.getfixturevalue(run)
    kepler = pd.read_csv(out / "flowmap" / "kepler_flows.csv", encoding="utf-8-sig")
    for column in ("origin_lat", "origin_lon", "dest_lat", "dest_lon", "guns"):
        assert kepler[column].notna().all(), column
    assert kepler["guns"].sum() == result.manifest["counts"]["rows_placed"]
    flows = pd.DataFrame(result.flows.drop(columns="geometry"))
    merged = kepler.merge(flows, on="flow_id", suffixes=("", "_layer"), validate="1:1")
    assert len(merged) == len(flows)
    assert (merged["guns"] == merged["guns_layer"]).all()
    assert np.allclose(merged["origin_lat"], merged["dealer_lat"])
    assert np.allclose(merged["dest_lon"], merged["recovery_lon"])
    assert set(kepler["route_kind"]) <= {"known", "modelled"}


def test_geopackage_holds_every_layer_and_table_with_their_values(place_run):
    result, out = place_run
    path = out / "geoflow.gpkg"
    layers = dict(pyogrio.list_layers(path))
    assert set(layers) == set(LAYERS) | set(TABLES)
    assert layers["flows"] == "LineString" and layers["dealers"] == "Point"
    assert all(layers[t] is None for t in TABLES)  # attribute tables, no geometry
    for name in LAYERS:
        info = pyogrio.read_info(path, layer=name)
        layer = getattr(result, name)
        assert info["features"] == len(layer), name
        assert list(info["fields"]) == [c for c in layer.columns if c != "geometry"], name
        assert info["crs"] == "EPSG:4326"
    flows = pyogrio.read_dataframe(path, layer="flows")
    assert flows["flow_id"].tolist() == result.flows["flow_id"].tolist()
    assert flows["guns"].tolist() == result.flows["guns"].tolist()
    assert flows.geometry.geom_equals_exact(result.flows.geometry, 1e-9).all()
    assert flows["recovery_place"].tolist() == result.flows["recovery_place"].tolist()
    by_dealer = pyogrio.read_dataframe(path, layer="by_dealer", read_geometry=False)
    csv = pd.read_csv(out / "tables" / "by_dealer.csv", encoding="utf-8-sig")
    assert by_dealer["dealer_id"].tolist() == csv["dealer_id"].tolist()
    assert by_dealer["guns"].tolist() == csv["guns"].tolist()
    assert np.allclose(by_dealer["share_frac"], csv["share_frac"])
    mx = pyogrio.read_dataframe(path, layer="by_mx_state", read_geometry=False)
    assert "Michoacán" in set(mx["state_name"])


def test_every_vector_output_opens_in_gdal(place_run):
    result, out = place_run
    vectors = [*out.glob("*.geojson"), *out.glob("shapefile/*.shp")]
    assert len(vectors) == 10
    for path in vectors:
        info = pyogrio.read_info(path)
        assert info["features"] == len(getattr(result, path.stem)), path
        assert info["crs"] == "EPSG:4326", path
    for path in out.glob("geoparquet/*.parquet"):
        frame = gpd.read_parquet(path)
        layer = getattr(result, path.stem)
        assert frame.crs == "EPSG:4326" and len(frame) == len(layer)
        assert list(frame.columns) == list(layer.columns)
        guns = "guns_placed" if path.stem == "states" else "guns"
        assert frame[guns].tolist() == layer[guns].tolist()


def test_shapefile_fields_are_readable_short_names(place_run):
    result, out = place_run
    fields = pd.read_csv(out / "shapefile" / "fields.csv", encoding="utf-8-sig")
    flows = pyogrio.read_dataframe(out / "shapefile" / "flows.shp")
    assert "recov_lat" in flows.columns and "recov_lon" in flows.columns
    assert "recovery_l" not in flows.columns
    assert np.allclose(flows["recov_lat"], result.flows["recovery_lat"])
    assert flows["dealer_nm"].tolist() == result.flows["dealer_name"].tolist()
    for name in LAYERS:
        columns = [c for c in getattr(result, name).columns if c != "geometry"]
        missing = [c for c in columns if c not in SHAPEFILE_FIELDS]
        assert not missing, f"add {missing} to geoflow.formats.SHAPEFILE_FIELDS and docs"
        rows = fields[fields["layer"] == name]
        assert rows["column"].tolist() == columns
        assert (rows["field"].str.len() <= 10).all() and rows["field"].is_unique
    assert len(set(SHAPEFILE_FIELDS.values())) == len(SHAPEFILE_FIELDS)


def test_shapefile_mapping_is_the_documented_one():
    text = DOC.read_text(encoding="utf-8")
    documented = dict(re.findall(r"^\| `(\w+)` \| `(\w+)` \|$", text, flags=re.M))
    assert documented == SHAPEFILE_FIELDS


def test_unlisted_columns_get_unique_ten_character_names():
    names = shapefile_names(["recovery_lat", "a_very_long_column", "a_very_long_column_2"])
    assert names["recovery_lat"] == "recov_lat"
    assert set(map(len, names.values())) <= set(range(1, 11))
    assert len(set(names.values())) == 3


def test_excel_csvs_carry_a_bom_and_default_ones_do_not(place_run, state_run):
    _, excel = place_run
    _, plain = state_run
    for name in ("tables/by_mx_state.csv", "flowmap/locations.csv", "rejects.csv"):
        assert (excel / name).read_bytes().startswith(b"\xef\xbb\xbf"), name
        assert not (plain / name).read_bytes().startswith(b"\xef\xbb\xbf"), name
    mx = pd.read_csv(excel / "tables" / "by_mx_state.csv", encoding="utf-8-sig")
    assert mx.columns[0] == "state" and "Michoacán" in set(mx["state_name"])
    manifest = json.loads((excel / "manifest.json").read_text(encoding="utf-8"))
    assert "geoflow.gpkg" in manifest["files"] and "flowmap/flows.csv" in manifest["files"]


def test_flowmap_cells_are_formula_safe():
    flows = gpd.GeoDataFrame({
        "flow_id": ["F-1"], "dealer_id": ["D-1"], "dealer_name": ["=HYPERLINK(\"x\")"],
        "dealer_place": ["+Town"], "dealer_state": ["US-TX"], "crossing_code": ["2304"],
        "crossing_name": ["Laredo"], "recovery_place": ["@Place"], "recovery_state": ["MX-TAM"],
        "route_kind": ["known"], "guns": [3], "dealer_lon": [-98.0], "dealer_lat": [29.0],
        "port_lon": [-99.5], "port_lat": [27.5], "recovery_lon": [-99.0], "recovery_lat": [26.0],
    }, geometry=gpd.points_from_xy([0], [0]), crs="EPSG:4326")
    from geoflow.export import formula_safe

    names = formula_safe(flowmap_tables(flows)["locations"])["name"].tolist()
    assert names[0].startswith("'=") and names[-1] == "'@Place"


def test_geopackage_bytes_do_not_depend_on_when_it_was_written(place_run, tmp_path):
    from geoflow.formats import flow_level_note, write_geopackage

    result, out = place_run
    layers = {name: getattr(result, name) for name in LAYERS}
    about = {"flows": flow_level_note("place", shown=len(result.flows), total=len(result.flows))}
    again = write_geopackage(layers, result.tables, tmp_path / "again.gpkg", about=about)
    assert again.read_bytes() == (out / "geoflow.gpkg").read_bytes()


def test_every_flows_copy_says_its_level_and_holds_what_flows_geojson_holds(place_run):
    result, out = place_run
    info = pyogrio.read_info(out / "geoflow.gpkg", layer="flows")
    assert info["layer_metadata"]["flow_level"] == "place"
    assert info["layer_metadata"]["flows_total"] == str(len(result.flows))
    assert "flow_level: place" in (out / "flowmap" / "README.txt").read_text(encoding="utf-8")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["flow_levels"] == {
        "flows_full.parquet": "place", "flows.geojson": "place", "geoflow.gpkg": "place",
        "flowmap/": "place", "geoparquet/": "place", "shapefile/": "place"}


def test_too_many_flows_put_state_level_flows_in_gpkg_flowmap_and_kepler(
        prepared, tmp_path, monkeypatch):
    from geoflow import pipeline

    monkeypatch.setattr(pipeline, "FLOWS_GEOJSON_MAX", 100)
    result = analyse(prepared)
    overview, level = result.flows_geojson
    assert level == "state" and len(result.flows) > 100 and len(overview) < len(result.flows)
    out = write_outputs(result, tmp_path / "big", write_map=False, formats=("shapefile",))
    placed = result.manifest["counts"]["rows_placed"]
    gpkg = pyogrio.read_dataframe(out / "geoflow.gpkg", layer="flows")
    assert gpkg["flow_id"].tolist() == overview["flow_id"].tolist()
    assert gpkg["dealer_id"].isna().all() and int(gpkg["guns"].sum()) == placed
    about = pyogrio.read_info(out / "geoflow.gpkg", layer="flows")["layer_metadata"]
    assert (about["flow_level"], about["flows"], about["flows_total"]) == (
        "state", str(len(overview)), str(len(result.flows)))
    assert "flows_full.parquet" in about["DESCRIPTION"]
    assert pyogrio.read_info(out / "shapefile" / "flows.shp")["features"] == len(overview)
    kepler = pd.read_csv(out / "flowmap" / "kepler_flows.csv")
    assert kepler["flow_id"].tolist() == overview["flow_id"].tolist()
    assert kepler["guns"].sum() == placed
    tables = _flowmap(out)
    states = tables["locations"]["id"][~tables["locations"]["id"].str.startswith("port-")]
    assert states.str.fullmatch(r"(US|MX)-([A-Z]{2,3}|unknown)").all()
    assert tables["flows"]["count"].sum() == placed
    readme = (out / "flowmap" / "README.txt").read_text(encoding="utf-8")
    assert "flow_level: state" in readme and f"{len(result.flows):,} place-level" in readme
    full = gpd.read_parquet(out / "flows_full.parquet")  # every place-level flow stays here
    assert full["flow_id"].tolist() == result.flows["flow_id"].tolist()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["flow_levels"] == {
        "flows_full.parquet": "place", "flows.geojson": "state", "geoflow.gpkg": "state",
        "flowmap/": "state", "shapefile/": "state"}


def test_flow_tables_sum_known_pairs_most_guns_first_then_by_name():
    # flowmap.blue's flow tables: a pair with an unknown end is left out (as a groupby drops
    # NA keys), equal counts go by origin then destination in code point order
    import numpy as np
    import pandas as pd

    from geoflow.formats import _summed

    ends = pd.DataFrame({
        "origin": pd.array(["b", "a", None, "Á", "a", "b", "z"], dtype="string"),
        "dest": pd.array(["x", "y", "x", "x", None, "x", "é"], dtype="string"),
        "count": np.array([2, 2, 5, 2, 9, 1, 3], dtype=np.int64)})
    table = _summed(ends, "origin", "dest")
    assert table.values.tolist() == [["b", "x", 3], ["z", "é", 3], ["a", "y", 2],
                                     ["Á", "x", 2]]
    assert list(table.columns) == ["origin", "dest", "count"]
    assert table["count"].dtype == np.int64 and table.index.equals(pd.RangeIndex(4))
