"""Ports of entry, crossing matching and the crossing-choice model."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import shapely

from geoflow.crossings import (
    TIER_PENALTY_KM,
    assign_crossings,
    choose_ports,
    haversine_km,
    load_ports,
    match_crossing,
    unmatched_crossings,
)
from geoflow.shapes import load_states

#: The 25 main land ports from San Ysidro to Brownsville with their CBP port codes.
MAIN_PORTS = {
    "2504": "San Ysidro", "2506": "Otay Mesa", "2505": "Tecate", "2503": "Calexico",
    "2507": "Calexico East", "2502": "Andrade", "2608": "San Luis", "2602": "Lukeville",
    "2606": "Sasabe", "2604": "Nogales", "2603": "Naco", "2601": "Douglas", "2406": "Columbus",
    "2408": "Santa Teresa", "2402": "El Paso", "2404": "Tornillo", "2403": "Presidio",
    "2302": "Del Rio", "2303": "Eagle Pass", "2304": "Laredo", "2310": "Roma",
    "2307": "Rio Grande City", "2305": "Hidalgo", "2309": "Progreso", "2301": "Brownsville",
}  # fmt: skip

# (lon, lat) of city centres.
HOUSTON = (-95.3698, 29.7604)
PHOENIX = (-112.0740, 33.4484)
CHICAGO = (-87.6298, 41.8781)
EL_PASO = (-106.4850, 31.7619)
SAN_DIEGO = (-117.1611, 32.7157)
LOS_ANGELES = (-118.2437, 34.0522)
REYNOSA = (-98.2978, 26.0508)
HERMOSILLO = (-110.9559, 29.0729)
CULIACAN = (-107.3940, 24.8091)
JUAREZ = (-106.4245, 31.6904)
TIJUANA = (-117.0382, 32.5149)


@pytest.fixture(scope="module")
def ports():
    return load_ports()


@pytest.fixture(scope="module")
def states():
    return load_states()


def _km_to(geom, points) -> np.ndarray:
    """Distance in km from each point to ``geom`` (on a local equidistant projection)."""
    import geopandas as gpd

    crs = "+proj=aeqd +lat_0=30 +lon_0=-105 +datum=WGS84"
    target = gpd.GeoSeries([geom], crs=4326).to_crs(crs).iloc[0]
    return gpd.GeoSeries(points, crs=4326).to_crs(crs).distance(target).to_numpy() / 1000


def _route_km(dealer, recovery, code, ports) -> float:
    port = ports.set_index("code").geometry[code]
    return float(haversine_km(dealer, (port.x, port.y)) + haversine_km((port.x, port.y), recovery))


# ----------------------------------------------------------------------------- the table


def test_the_main_ports_are_there_with_their_codes(ports):
    assert ports["code"].is_unique
    assert ports["code"].str.fullmatch(r"\d{4}").all()
    names = dict(zip(ports["code"], ports["name"], strict=True))
    assert {code: names.get(code) for code in MAIN_PORTS} == MAIN_PORTS
    assert ports.crs.to_epsg() == 4326
    assert {"code", "name", "us_state", "mx_city", "mx_state", "geometry"} <= set(ports.columns)
    assert set(ports["tier"]) <= set(TIER_PENALTY_KM)
    assert ports[["name", "us_state", "mx_city", "mx_state", "source"]].notna().all().all()


def test_each_port_sits_on_the_border(ports, states):
    geoms = states.geometry.to_numpy()
    us = shapely.union_all(geoms[(states["country"] == "US").to_numpy()])
    mx = shapely.union_all(geoms[(states["country"] == "MX").to_numpy()])
    border = shapely.intersection(us.boundary, mx.boundary)
    distance = _km_to(border, ports.geometry.to_numpy())
    far = dict(zip(ports["name"], distance.round(1), strict=True))
    assert (distance < 10).all(), {k: v for k, v in far.items() if v >= 10}


def test_each_port_is_in_or_next_to_its_states(ports, states):
    by_code = states.set_index("code").geometry
    for column in ("us_state", "mx_state"):  # ~25 ports × 2 sides
        for name, code, point in zip(ports["name"], ports[column], ports.geometry, strict=True):
            km = _km_to(by_code[code], [point])[0]
            assert km < 3, f"{name} is {km:.1f} km from {code}"


def test_us_state_of_each_port_is_the_nearest_us_state(ports, states):
    us = states[states["country"] == "US"]
    for code, point in zip(ports["us_state"], ports.geometry, strict=True):
        nearest = us.iloc[int(np.argmin(shapely.distance(us.geometry.to_numpy(), point)))]
        assert nearest["code"] == code


def test_ports_run_from_san_ysidro_to_brownsville(ports):
    # San Ysidro is the westernmost port and Brownsville the easternmost.
    x = ports.geometry.x
    assert ports["name"][x.idxmin()] == "San Ysidro"
    assert ports["name"][x.idxmax()] == "Brownsville"


def test_load_ports_returns_independent_copies():
    first = load_ports()
    first.loc[0, "code"] = "0000"
    assert "0000" not in set(load_ports()["code"])


# ----------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("written", "code"),
    [
        ("Laredo", "2304"), ("LAREDO, TX", "2304"), ("Laredo Tx", "2304"), ("2304", "2304"),
        ("laredo texas", "2304"), ("LAREDO TEXS", "2304"), ("Laredo, TX 78040", "2304"),
        ("Nuevo Laredo", "2304"), ("NVO. LAREDO, TAMPS.", "2304"), ("World Trade Bridge", "2304"),
        ("Port of Entry 2304", "2304"), ("CD. JUAREZ, CHIH.", "2402"), ("Ciudad Juárez", "2402"),
        ("El Paso", "2402"), ("Bridge of the Americas", "2402"), ("TIJUANA", "2504"),
        ("san ysidro, ca", "2504"), ("Otay Mesa", "2506"), ("Mexicali II", "2507"),
        ("Nogales, AZ", "2604"), ("Agua Prieta", "2601"), ("Piedras Negras", "2303"),
        ("Ciudad Acuña", "2302"), ("Ojinaga", "2403"), ("Reynosa", "2305"), ("McAllen", "2305"),
        ("Hidalgo/Pharr", "2305"), ("Matamoros, Tamps.", "2301"), ("B&M Bridge", "2301"),
        ("Nuevo Progreso", "2309"), ("Puerto Palomas", "2406"), ("Tornillo/Fabens", "2404"),
    ],
)  # fmt: skip
def test_crossing_strings_match_their_port(written, code):
    assert match_crossing(pd.Series([written])).tolist() == [code]


@pytest.mark.parametrize(
    "written", ["Atlantis", "Columbus, Ohio", "San Luis Potosí", "9999", "", "   ", "TX"]
)
def test_strings_naming_no_port_stay_unmatched(written):
    assert match_crossing(pd.Series([written])).isna().all()


def test_match_crossing_keeps_index_and_missing_values():
    values = pd.Series(["LAREDO", None, "laredo", pd.NA], index=[10, 20, 30, 40])
    result = match_crossing(values)
    assert result.index.tolist() == [10, 20, 30, 40]
    assert result.dtype == "string"
    assert result.tolist() == ["2304", pd.NA, "2304", pd.NA]


def test_no_alias_names_two_ports(ports):
    # Every port's own name, sister city and aliases match that port and no other.
    for row in ports.itertuples(index=False):
        names = pd.Series([row.name, row.mx_city, *row.aliases.split("|")])
        assert set(match_crossing(names)) == {row.code}, row.name


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize(
    ("dealer", "recovery", "allowed"),
    [
        (HOUSTON, REYNOSA, {"2305", "2309", "2301"}),  # the Rio Grande valley
        (PHOENIX, HERMOSILLO, {"2604"}),  # Nogales, not Sasabe on its dirt road
        (EL_PASO, JUAREZ, {"2402"}),
        (SAN_DIEGO, TIJUANA, {"2504", "2506"}),
        (LOS_ANGELES, CULIACAN, {"2503", "2507", "2502", "2608", "2604"}),  # not by sea
    ],
)
def test_model_picks_the_plausible_port(dealer, recovery, allowed):
    assert choose_ports([dealer], [recovery])[0] in allowed


def test_long_haul_goes_through_a_sensible_port(ports):
    code = choose_ports([CHICAGO], [CULIACAN])[0]
    port = ports.set_index("code").loc[code]
    assert port["us_state"] in {"US-CA", "US-AZ", "US-NM", "US-TX"}
    # Never a port that makes the trip absurdly long: within 5 % of the straight line.
    ratio = _route_km(CHICAGO, CULIACAN, code, ports) / float(haversine_km(CHICAGO, CULIACAN))
    assert ratio < 1.05


def test_model_is_the_shortest_detour_per_pair(ports):
    # The vectorised choice equals a plain per-pair search over all ports (penalties included)
    # for dealers and recovery sites spread over both countries, with repeated pairs.
    rng = np.random.default_rng(7)
    dealers = np.column_stack([rng.uniform(-123, -75, 40), rng.uniform(26, 47, 40)])
    sites = np.column_stack([rng.uniform(-106, -90, 40), rng.uniform(17, 27, 40)])
    dealer = dealers[rng.integers(0, 40, 400)]
    recovery = sites[rng.integers(0, 40, 400)]
    chosen = choose_ports(dealer, recovery)
    xy = np.column_stack([ports.geometry.x, ports.geometry.y])
    penalty = ports["tier"].map(TIER_PENALTY_KM).to_numpy()
    # These sites are all east of the Gulf of California (mainland Mexico or the Gulf of
    # Mexico), so the Baja ports' Mexican leg goes round the head of the Gulf.
    for i in range(0, 400, 37):
        total = haversine_km(dealer[i], xy) + penalty + haversine_km(xy, recovery[i])
        baja = ports["mx_state"].eq("MX-BCN").to_numpy()
        head = np.array([-114.77, 32.45])
        total[baja] = (
            haversine_km(dealer[i], xy[baja]) + penalty[baja]
            + haversine_km(xy[baja], head) + haversine_km(head, recovery[i])
        )  # fmt: skip
        assert chosen[i] == ports["code"].iloc[int(np.argmin(total))]


def test_pairs_scored_in_chunks_choose_the_same_ports(monkeypatch):
    """The distinct (dealer, recovery) pairs are scored a chunk at a time (under 1 MB each):
    chunks of any size, cutting the pairs anywhere, give every row the same port."""
    from geoflow import crossings

    rng = np.random.default_rng(11)
    dealer = np.column_stack([rng.uniform(-123, -75, 500), rng.uniform(26, 47, 500)])
    recovery = np.column_stack([rng.uniform(-117, -87, 500), rng.uniform(15, 32, 500)])
    rows = rng.integers(0, 500, 3000)  # repeated pairs
    whole = choose_ports(dealer[rows], recovery[rows])
    assert len(set(whole)) > 5
    for size in (1, 7, 499):
        monkeypatch.setattr(crossings, "_CHUNK", size)
        assert choose_ports(dealer[rows], recovery[rows]).tolist() == whole.tolist()


def test_rows_without_coordinates_get_no_port():
    result = choose_ports([[np.nan, 30.0], list(HOUSTON)], [list(REYNOSA), list(REYNOSA)])
    assert result[0] is None and result[1] in {"2305", "2309", "2301"}


def test_haversine_known_distance():
    # El Paso → Chicago is about 2,010 km on the sphere.
    assert haversine_km(EL_PASO, CHICAGO) == pytest.approx(2010, rel=0.02)
    assert haversine_km(HOUSTON, HOUSTON) == 0


# ----------------------------------------------------------------------------- assignment


def _records(**columns) -> pd.DataFrame:
    base = {
        "dealer_lon": [EL_PASO[0], HOUSTON[0], np.nan, PHOENIX[0], CHICAGO[0]],
        "dealer_lat": [EL_PASO[1], HOUSTON[1], np.nan, PHOENIX[1], CHICAGO[1]],
        "recovery_lon": [JUAREZ[0], REYNOSA[0], REYNOSA[0], HERMOSILLO[0], CULIACAN[0]],
        "recovery_lat": [JUAREZ[1], REYNOSA[1], REYNOSA[1], HERMOSILLO[1], CULIACAN[1]],
        "crossing": pd.array(["LAREDO, TX", None, "Nogales", "Atlantis", None], dtype="string"),
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_known_crossing_wins_over_the_model():
    out = assign_crossings(_records())
    # El Paso → Juárez would be modelled through El Paso, but the record says Laredo.
    assert out.loc[0, ["crossing_code", "crossing_name", "route_kind"]].tolist() == [
        "2304", "Laredo", "known",
    ]
    assert out.loc[1, "route_kind"] == "modelled"
    assert out.loc[1, "crossing_code"] in {"2305", "2309", "2301"}


def test_known_crossing_is_kept_for_a_record_without_coordinates():
    out = assign_crossings(_records())
    assert out.loc[2, ["crossing_code", "route_kind"]].tolist() == ["2604", "known"]


def test_unplaced_record_without_known_crossing_gets_na():
    records = _records(crossing=pd.array([None] * 5, dtype="string"))
    out = assign_crossings(records)
    assert out.loc[2, ["crossing_code", "crossing_name", "route_kind"]].isna().all()
    # text held once per port or kind, not per record
    for column in ("crossing_code", "crossing_name", "route_kind"):
        assert isinstance(out[column].dtype, pd.CategoricalDtype)
        assert out[column].cat.categories.dtype == "string"
    assert out["route_kind"].cat.categories.tolist() == ["modelled"]  # only the kinds used


def test_unknown_crossing_is_modelled_and_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="geoflow.crossings"):
        out = assign_crossings(_records())
    assert out.loc[3, ["crossing_code", "route_kind"]].tolist() == ["2604", "modelled"]
    assert out.loc[3, "crossing"] == "Atlantis"
    assert "'Atlantis' (1)" in caplog.text


def test_assign_without_crossing_column_models_all_and_leaves_input_alone():
    records = _records().drop(columns="crossing")
    before = records.copy()
    out = assign_crossings(records)
    pd.testing.assert_frame_equal(records, before)
    assert out["route_kind"].tolist() == ["modelled", "modelled", pd.NA, "modelled", "modelled"]
    assert out.loc[0, "crossing_code"] == "2402"


def test_assign_dedupes_many_rows_to_the_same_answer():
    records = pd.concat([_records()] * 2000, ignore_index=True)
    out = assign_crossings(records)
    first = assign_crossings(_records())
    expected = pd.concat([first] * 2000, ignore_index=True)
    pd.testing.assert_series_equal(out["crossing_code"], expected["crossing_code"])
    pd.testing.assert_series_equal(out["route_kind"], expected["route_kind"])


def test_assign_on_an_empty_frame_adds_the_columns():
    out = assign_crossings(_records().iloc[0:0])
    assert len(out) == 0
    assert {"crossing_code", "crossing_name", "route_kind"} <= set(out.columns)


def test_a_custom_ports_table_is_used_for_matching_and_the_model(ports):
    two = ports[ports["code"].isin(["2304", "2402"])].reset_index(drop=True)
    out = assign_crossings(_records(), two)
    # Houston → Reynosa can only go through Laredo or El Paso now; Nogales is unknown here.
    assert out.loc[1, "crossing_code"] == "2304"
    assert pd.isna(out.loc[2, "route_kind"]) and pd.isna(out.loc[2, "crossing_code"])
    assert match_crossing(pd.Series(["Nogales", "Juárez"]), ports=two).tolist() == [pd.NA, "2402"]


def test_cli_lists_ports_and_explains_matches():
    import io

    from click.testing import CliRunner

    from geoflow.cli import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["ports", "--format", "csv"])
    assert listed.exit_code == 0, listed.output
    table = pd.read_csv(io.StringIO(listed.output), dtype={"code": str})
    assert len(table) == len(load_ports()) and "2304" in set(table["code"])
    matched = runner.invoke(
        cli, ["ports", "--format", "csv", "--match", "NVO. LAREDO, TAMPS.", "--match", "Atlantis"]
    )
    assert matched.exit_code == 0, matched.output
    rows = pd.read_csv(io.StringIO(matched.output), dtype=str, keep_default_na=False)
    assert rows.values.tolist() == [["NVO. LAREDO, TAMPS.", "2304", "Laredo"], ["Atlantis", "", ""]]


def test_unmatched_crossings_lists_each_text_naming_no_port_with_its_count():
    records = pd.concat([_records()] * 3, ignore_index=True)
    records.loc[0, "crossing"] = "Narnia"
    records.loc[1, "crossing"] = "  "
    out = assign_crossings(records)
    found = unmatched_crossings(out)
    assert found.to_dict("records") == [{"crossing": "Atlantis", "records": 3},
                                        {"crossing": "Narnia", "records": 1}]
    assert found["records"].dtype == "int64"
    assert unmatched_crossings(assign_crossings(_records().drop(columns="crossing"))).empty
    assert list(unmatched_crossings(out.iloc[0:0]).columns) == ["crossing", "records"]


def test_unmatched_crossings_count_each_stripped_text_as_value_counts_would():
    # counted per distinct text: texts equal once stripped add up, blank and known ones go,
    # categoricals and plain text give the same table as pandas over every record
    rng = np.random.default_rng(5)
    texts = np.array(["Laredo", " Laredo ", "Atlantis", "  ", "", "Narnia", None], dtype=object)
    for _ in range(60):
        size = int(rng.integers(0, 80))
        crossing = pd.array(rng.choice(texts, size), dtype="string")
        kind = pd.array(rng.choice(["known", "modelled", None], size), dtype="string")
        records = pd.DataFrame({"crossing": crossing, "route_kind": kind})
        given = records["crossing"].str.strip()
        keep = given.fillna("").ne("") & (records["route_kind"] != "known").fillna(True)
        expected = (given[keep].value_counts().rename_axis("crossing")
                    .reset_index(name="records").astype({"records": "int64"})
                    .sort_values(["records", "crossing"], ascending=[False, True],
                                 kind="stable").reset_index(drop=True))
        for frame in (records, records.astype({"crossing": "category"})):
            got = unmatched_crossings(frame)
            assert len(got) == len(expected)
            if len(expected):
                pd.testing.assert_frame_equal(got, expected)
            assert got["crossing"].dtype == "string" and got["records"].dtype == "int64"


def test_a_categorical_crossing_column_matches_as_its_texts_do(caplog):
    """The run makes the crossing texts a categorical as soon as they are read: the ports,
    route kinds and the warning about texts naming no port are those of the plain texts (a
    categorical's unused texts are not listed)."""
    texts = pd.Series(["LAREDO", None, "Atlantis", "laredo", "Atlantis", "Nogales"],
                      dtype="string")
    coded = texts.astype(pd.CategoricalDtype(["Atlantis", "LAREDO", "Nogales", "Unused port",
                                              "laredo"]))
    assert match_crossing(coded).tolist() == match_crossing(texts).tolist()
    records = pd.DataFrame({"crossing": coded, "dealer_lon": HOUSTON[0],
                            "dealer_lat": HOUSTON[1], "recovery_lon": REYNOSA[0],
                            "recovery_lat": REYNOSA[1]})
    with caplog.at_level(logging.WARNING, logger="geoflow.crossings"):
        from_codes = assign_crossings(records)
    warned = caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geoflow.crossings"):
        from_texts = assign_crossings(records.assign(crossing=texts))
    for column in ("crossing_code", "crossing_name", "route_kind"):
        assert from_codes[column].astype("string").tolist() == \
            from_texts[column].astype("string").tolist()
    assert warned == caplog.text
    assert "2 records name a crossing" in warned and "'Atlantis' (2)" in warned
    assert "Unused port" not in warned
