"""Flows, point layers and great-circle geometry from hand-made prepared records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
from handmade import PLACES, PORTS, make_records

from geoflow.flows import (
    FLOW_COLUMNS,
    build_crossings,
    build_dealers,
    build_flows,
    build_recoveries,
    dealer_ids,
    flow_ids,
    flow_lines,
    great_circle_points,
)
from geoflow.shapes import load_state_points

SPHERE = pyproj.Geod(ellps="sphere")


def _xy(place: str) -> list[float]:
    return [PLACES[place][2], PLACES[place][3]]


def _placed(rows):
    records = make_records(rows)
    placed = records[records["placed"]]
    return placed.assign(purchaser_label=placed["purchaser_id"])


def test_flow_line_starts_at_dealer_passes_port_ends_at_recovery():
    dealer = np.array([_xy("dundee"), _xy("phoenix")])
    port = PORTS[["geometry"]].geometry.get_coordinates().to_numpy()[[0, 1]]
    recovery = np.array([_xy("cdmx"), _xy("hermosillo")])
    lines = flow_lines(dealer, port, recovery)
    for line, d, p, r in zip(lines, dealer, port, recovery, strict=True):
        xy = shapely.get_coordinates(line)
        assert xy[0] == pytest.approx(d) and xy[-1] == pytest.approx(r)
        # the port is an exact vertex, and lon comes before lat
        assert np.isclose(xy, p).all(axis=1).any()
        assert ((xy[:, 0] > -125) & (xy[:, 0] < -85)).all()
        assert ((xy[:, 1] > 14) & (xy[:, 1] < 50)).all()
        # densified: no straight segment longer than ~200 km
        _, _, dist = SPHERE.inv(xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1])
        assert dist.max() <= 201_000


def test_densified_points_lie_on_the_great_circle():
    # Chicago → Mexico City: compare with pyproj's own great-circle points on a sphere
    lon, lat = great_circle_points(
        np.full(3, -87.63),
        np.full(3, 41.88),
        np.full(3, -99.13),
        np.full(3, 19.43),
        np.array([0.25, 0.5, 0.75]),
    )
    expected = np.array(SPHERE.npts(-87.63, 41.88, -99.13, 19.43, 3))
    assert np.column_stack([lon, lat]) == pytest.approx(expected, abs=1e-6)


def test_flows_aggregate_per_dealer_port_place_and_route_kind():
    placed = _placed(
        [
            {
                "purchaser": "A",
                "dealer": "GAT Guns",
                "dealer_at": "dundee",
                "recovered_at": "reynosa",
                "port": "2304",
                "kind": "known",
                "n": 4,
                "bought": "2007-03-01",
            },
            {
                "purchaser": "B",
                "dealer": "GAT Guns",
                "dealer_at": "dundee",
                "recovered_at": "reynosa",
                "port": "2304",
                "kind": "known",
                "n": 1,
                "bought": "2009-05-02",
            },
            {
                "purchaser": "A",
                "dealer": "GAT Guns",
                "dealer_at": "dundee",
                "recovered_at": "reynosa",
                "port": "2304",
                "kind": "modelled",
                "n": 2,
            },
            {
                "purchaser": "C",
                "dealer": "Desert Arms",
                "dealer_at": "phoenix",
                "recovered_at": "hermosillo",
                "port": "2604",
                "n": 3,
            },
        ]
    )
    flows = build_flows(placed, PORTS)
    assert list(flows.columns) == [*FLOW_COLUMNS, "geometry"]
    assert flows["guns"].sum() == len(placed)
    assert flows.crs.to_epsg() == 4326
    known = flows[(flows["dealer_name"] == "GAT Guns") & (flows["route_kind"] == "known")]
    assert len(known) == 1
    row = known.iloc[0]
    assert (row["guns"], row["purchasers"]) == (5, 2)
    assert row["crossing_name"] == "Laredo" and row["recovery_state"] == "MX-TAM"
    assert (row["first_purchase"], row["last_purchase"]) == ("2007-03-01", "2009-05-02")
    assert row["top_purchaser"].startswith("P-")
    assert len(flows[flows["dealer_name"] == "GAT Guns"]) == 2  # known and modelled apart
    assert flows["flow_id"].is_unique
    # ids are stable across runs
    assert build_flows(placed, PORTS)["flow_id"].tolist() == flows["flow_id"].tolist()


def test_state_level_flows_merge_dealers_of_a_state():
    placed = _placed(
        [
            {
                "purchaser": "A",
                "dealer": "One",
                "dealer_at": "houston",
                "recovered_at": "reynosa",
                "n": 2,
            },
            {
                "purchaser": "B",
                "dealer": "Two",
                "ffl": "5-74-123",
                "dealer_at": "houston",
                "recovered_at": "reynosa",
                "n": 3,
            },
            {
                "purchaser": "C",
                "dealer": "Three",
                "dealer_at": "phoenix",
                "recovered_at": "culiacan",
                "port": "2604",
                "n": 1,
            },
        ]
    )
    place = build_flows(placed, PORTS)
    state = build_flows(placed, PORTS, level="state", state_names={"US-TX": "Texas"})
    assert len(place) == 3 and len(state) == 2
    top = state.iloc[0]
    assert (top["dealer_state"], top["recovery_state"], top["guns"]) == ("US-TX", "MX-TAM", 5)
    assert top["dealer_place"] == "Texas" and pd.isna(top["dealer_id"])
    assert state["guns"].sum() == len(placed)
    with pytest.raises(ValueError, match="flow level"):
        build_flows(placed, PORTS, level="city")


def test_state_level_flows_share_one_fixed_point_per_state():
    rows = [{"purchaser": "A", "dealer": "One", "dealer_at": "houston", "recovered_at": "reynosa",
             "n": 2},
            {"purchaser": "B", "dealer": "Two", "dealer_at": "dundee", "recovered_at": "reynosa",
             "n": 1},
            {"purchaser": "C", "dealer": "Three", "dealer_at": "houston",
             "recovered_at": "culiacan", "port": "2604", "n": 1}]
    state = build_flows(_placed(rows), PORTS, level="state")
    points = load_state_points().set_index("code")
    assert len(state) == 3
    for _, flow in state.iterrows():
        dealer, recovery = points.loc[flow["dealer_state"]], points.loc[flow["recovery_state"]]
        assert (flow["dealer_lon"], flow["dealer_lat"]) == (dealer["lon"], dealer["lat"])
        assert (flow["recovery_lon"], flow["recovery_lat"]) == (recovery["lon"], recovery["lat"])
        start, end = shapely.get_coordinates(flow.geometry)[[0, -1]]
        assert tuple(start) == pytest.approx((dealer["lon"], dealer["lat"]))
        assert tuple(end) == pytest.approx((recovery["lon"], recovery["lat"]))
    # Texas flows to two Mexican states start at one point, not at the records' mean
    texas = state[state["dealer_state"] == "US-TX"]
    assert len(texas) == 2 and texas[["dealer_lon", "dealer_lat"]].nunique().max() == 1




def test_dealer_ids_prefer_ffl_and_ignore_case_and_accents():
    frame = pd.DataFrame(
        {
            "dealer_ffl": pd.array(["5-74-00001", "574 00001", None, None, None], dtype="string"),
            "dealer_name": pd.array(
                ["X", "Y", "Armería Sur", "ARMERIA  SUR", None], dtype="string"
            ),
            "dealer_city": pd.array(["A", "B", "Laredo", "laredo", None], dtype="string"),
            "dealer_state": pd.array(["TX", "TX", "TX", "tx", None], dtype="string"),
        }
    )
    ids = dealer_ids(frame)
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    assert ids[0].startswith("D-") and len(ids[0]) == 10
    assert pd.isna(ids[4])


def test_dealer_recovery_and_crossing_layers():
    placed = _placed(
        [
            {
                "purchaser": "A",
                "dealer": "GAT Guns",
                "dealer_at": "dundee",
                "recovered_at": "cdmx",
                "port": "2304",
                "kind": "known",
                "n": 3,
            },
            {
                "purchaser": "B",
                "dealer": "GAT Guns",
                "dealer_at": "dundee",
                "recovered_at": "reynosa",
                "port": "2305",
                "n": 1,
            },
        ]
    )
    dealers = build_dealers(placed)
    assert len(dealers) == 1
    gat = dealers.iloc[0]
    assert (gat["guns"], gat["purchasers"], gat["top_purchaser_share_frac"]) == (4, 2, 0.75)
    assert shapely.get_coordinates(gat.geometry).tolist() == [_xy("dundee")]
    recoveries = build_recoveries(placed)
    assert recoveries.set_index("recovery_place")["guns"].to_dict() == {
        "Ciudad de México, CMX": 3,
        "Reynosa, TAM": 1,
    }
    crossings = build_crossings(placed, PORTS)
    assert crossings[["code", "guns", "guns_known", "guns_modelled"]].values.tolist() == [
        ["2304", 3, 3, 0],
        ["2305", 1, 0, 1],
    ]


def test_crossings_tied_in_guns_go_by_code_and_a_code_no_port_has_is_left_out():
    rows = [{"purchaser": "A", "dealer": "GAT Guns", "dealer_at": "dundee",
             "recovered_at": "cdmx", "port": port, "kind": kind, "n": n}
            for port, kind, n in (("2305", "known", 2), ("2304", "modelled", 2),
                                  ("2401", "known", 5))]
    placed = _placed(rows)
    placed = placed.assign(crossing_code=placed["crossing_code"].astype(object))
    placed.loc[placed["crossing_code"] == "2401", "crossing_code"] = "9999"  # no such port
    crossings = build_crossings(placed, PORTS)
    assert crossings[["code", "guns", "guns_known", "guns_modelled"]].values.tolist() == [
        ["2304", 2, 0, 2], ["2305", 2, 2, 0]]
    assert crossings.index.tolist() == [0, 1]
    assert crossings["name"].tolist() == [
        PORTS.set_index("code").loc[code, "name"] for code in ("2304", "2305")]


def test_no_placed_records_give_empty_layers():
    placed = _placed([{"purchaser": "A", "dealer_at": None, "n": 2}])
    assert len(build_flows(placed, PORTS)) == 0
    assert len(build_dealers(placed)) == 0
    assert len(build_crossings(placed, PORTS)) == 0


def test_flow_ids_are_stable_hex_and_depend_on_every_key():
    keys = pd.DataFrame({
        "dealer_id": ["D-1", "D-1", "D-1", None],
        "crossing_code": ["2304", "2304", "2402", "2304"],
        "route_kind": ["known", "modelled", "known", "known"],
    })
    ids = flow_ids(keys)
    assert ids.tolist() == flow_ids(keys.copy()).tolist()
    assert len(set(ids)) == 4
    assert all(len(i) == 12 and i.startswith("F-") and int(i[2:], 16) >= 0 for i in ids)


def test_flow_ids_of_categorical_keys_equal_those_of_their_text():
    # build_flows hashes the records' categoricals (each category once): the ids must be
    # the very ids of the same keys as text, NA hashed as "" whether "" is a category or not
    from geoflow.flows import _flow_hash, _hex_ids

    text = pd.DataFrame({
        "dealer_id": pd.array(["D-1", None, "D-2", "D-1", ""], dtype="string"),
        "crossing_code": pd.array(["LRD", "LRD", None, "NOG", "NOG"], dtype="string"),
        "route_kind": pd.array(["known", "modelled", "known", None, "known"], dtype="string"),
    })
    coded = text.astype("category")
    coded["crossing_code"] = coded["crossing_code"].cat.add_categories(["ELP", "zz"])  # unused
    assert "" in coded["dealer_id"].cat.categories  # NA joins an existing "" category
    assert "" not in coded["crossing_code"].cat.categories  # … or a new one
    assert list(_hex_ids(_flow_hash(coded))) == list(flow_ids(text))
    assert list(_hex_ids(_flow_hash(coded.iloc[[4, 1, 0]]))) == list(flow_ids(text).take([4, 1, 0]))
    assert len(set(flow_ids(text))) == 5


def test_states_name_guns_sourced_and_recovered_apart_and_say_which_are_placed(tmp_path):
    import json

    from geoflow.aggregate import build_tables
    from geoflow.export import write_geojson
    from geoflow.flows import build_states, state_guns
    from geoflow.shapes import load_states

    records = make_records([
        {"dealer_at": "houston", "recovered_at": "reynosa", "n": 2},
        {"dealer_at": "houston", "recovered_at": None, "n": 1},  # Texas gun, not on the map
        {"dealer_at": "phoenix", "recovered_at": "reynosa", "n": 1},
    ])
    records = records.assign(purchaser_label=records["purchaser_id"])
    tables = build_tables(records, ports=PORTS)
    states = build_states(records[records["placed"]], load_states(),
                          sourced=tables["by_us_state"].set_index("state")["guns"],
                          recovered=tables["by_mx_state"].set_index("state")["guns"])
    write_geojson(states, tmp_path / "states.geojson")
    features = {f["properties"]["code"]: f["properties"]
                for f in json.loads((tmp_path / "states.geojson").read_text())["features"]}
    texas, tamaulipas = features["US-TX"], features["MX-TAM"]
    assert "guns" not in texas and "share" not in texas  # no word with two meanings
    # all valid records, as in by_us_state and the findings; the map's count apart
    assert (texas["guns_sourced"], texas["guns_placed"], texas["guns_recovered"]) == (3, 2, None)
    assert texas["share_frac"] == 0.75  # as by_us_state.share_frac
    us_table = tables["by_us_state"].set_index("state")
    assert texas["share_frac"] == us_table.loc["US-TX", "share_frac"]
    assert (tamaulipas["guns_recovered"], tamaulipas["guns_sourced"]) == (3, None)
    assert tamaulipas["guns_placed"] == 3
    assert features["US-AZ"]["guns_sourced"] == 1 and features["MX-SIN"]["guns_recovered"] == 0
    assert state_guns(states).sum() == 4 + 3  # sourced on one side, recovered on the other


def test_output_order_is_the_lexsort_of_guns_then_hash():
    # most guns first, then hash; flows sharing both (a hash collision) in their order; guns
    # too many to go beside the hash sorted by lexsort
    from geoflow.flows import _output_order

    rng = np.random.default_rng(31)
    for trial in range(200):
        size = int(rng.integers(0, 200))
        hashes = rng.integers(0, 1 << 40, size).astype(np.uint64)
        if trial % 3 == 0 and size:  # shared hashes, some with the same guns
            hashes = rng.choice(hashes[:4], size)
        guns = rng.integers(0, 6, size) * (1 << 30 if trial % 7 == 0 else 1)
        expected = np.lexsort((hashes, -guns))
        assert _output_order(guns, hashes).tolist() == expected.tolist()


def test_hex_ids_are_f_and_ten_hex_digits_of_each_40_bit_value():
    from geoflow.flows import _hex_ids

    values = np.array([0, 1, 0xABCDEF0123, (1 << 40) - 1, 1 << 39], dtype=np.uint64)
    assert list(_hex_ids(values)) == [f"F-{int(v):010x}" for v in values]


def test_flows_of_categorical_places_equal_those_of_text_places():
    # the flows' hash reads a categorical of place names as it is (each name hashed once),
    # and places given by bare coordinates as their "lat, lon" label: same ids, same table
    placed = _placed([
        {"dealer_at": "dundee", "recovered_at": "reynosa", "port": "2304", "n": 2},
        {"dealer_at": "phoenix", "recovered_at": "hermosillo", "port": "2604", "n": 3},
        {"dealer_at": "houston", "recovered_at": "cdmx", "port": "2304", "kind": "known"},
    ])
    text = placed.assign(recovery_place=placed["recovery_place"].astype("string"))
    unnamed = text.assign(recovery_place=text["recovery_place"].mask(
        text["recovery_place"] == text["recovery_place"].iloc[0]))
    for frame in (text, unnamed):
        expected = build_flows(frame, PORTS, lines=False)
        coded = frame.assign(recovery_place=frame["recovery_place"].astype("category"))
        pd.testing.assert_frame_equal(build_flows(coded, PORTS, lines=False), expected)
    assert build_flows(unnamed, PORTS, lines=False)["recovery_place"].str.contains(", ").any()
