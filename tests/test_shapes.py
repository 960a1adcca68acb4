"""Shipped state polygons and names: complete, valid, small, and where the states really are."""

from __future__ import annotations

import json
import re
import unicodedata
from importlib.resources import files

import numpy as np
import pytest
import shapely
from pyproj import Geod

from geoflow.errors import InputError
from geoflow.shapes import data_file, load_state_names, load_states

US_POSTAL = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN",
    "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH",
    "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VT", "VA", "WA", "WV", "WI", "WY",
)
MX_ISO = (
    "AGU", "BCN", "BCS", "CAM", "CHP", "CHH", "CMX", "COA", "COL", "DUR", "GUA", "GRO", "HID",
    "JAL", "MEX", "MIC", "MOR", "NAY", "NLE", "OAX", "PUE", "QUE", "ROO", "SLP", "SIN", "SON",
    "TAB", "TAM", "TLA", "VER", "YUC", "ZAC",
)


@pytest.fixture(scope="module")
def states():
    return load_states()


def _compact(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return re.sub(r"[^0-9a-z]", "", plain.casefold())


def test_every_us_state_dc_and_mexican_state_once(states):
    assert states["code"].is_unique
    us = set(states.loc[states["country"] == "US", "code"])
    mx = set(states.loc[states["country"] == "MX", "code"])
    assert {f"US-{s}" for s in US_POSTAL} <= us and len(us) >= 51
    assert mx == {f"MX-{s}" for s in MX_ISO}
    assert set(states["country"]) == {"US", "MX"}
    assert list(states.columns) == ["code", "name", "country", "geometry"]
    assert states.crs.to_epsg() == 4326


def test_mexican_names_keep_their_accents(states):
    names = dict(zip(states["code"], states["name"], strict=True))
    assert names["MX-NLE"] == "Nuevo León"
    assert names["MX-CMX"] == "Ciudad de México"
    assert names["MX-MEX"] == "Estado de México"
    assert names["MX-SLP"] == "San Luis Potosí"
    assert names["US-TX"] == "Texas"


def test_geometries_valid_polygonal_and_counter_clockwise(states):
    geoms = states.geometry.to_numpy()
    assert shapely.is_valid(geoms).all()
    assert (~shapely.is_empty(geoms)).all()
    assert set(shapely.get_type_id(geoms)) <= {3, 6}  # Polygon, MultiPolygon
    polygons = shapely.get_parts(geoms)
    assert shapely.is_ccw(shapely.get_exterior_ring(polygons)).all()
    x, y = shapely.get_coordinates(geoms).T
    assert (np.abs(y) <= 90).all() and (np.abs(x) <= 180).all()


def test_states_do_not_overlap_and_the_border_is_shared(states):
    geoms = states.geometry.to_numpy()
    # A valid coverage: no overlaps and every shared edge identical on both sides.
    assert shapely.coverage_is_valid(geoms)
    us = shapely.union_all(geoms[(states["country"] == "US").to_numpy()])
    mx = shapely.union_all(geoms[(states["country"] == "MX").to_numpy()])
    border = shapely.intersection(us.boundary, mx.boundary)
    # The land border is about 3,100 km with every meander; simplified it must still be one
    # shared line from the Pacific to the Gulf, with no gap between the two countries.
    merged = shapely.line_merge(border)
    km = Geod(ellps="WGS84").geometry_length(border) / 1000
    assert 2400 < km < 3300
    assert shapely.get_num_geometries(merged) <= 3
    west, _, east, _ = border.bounds
    assert west < -117.0 and east > -97.3


def test_file_is_small_and_coordinates_rounded():
    raw = files("geoflow.shapes_data").joinpath("states.geojson").read_text(encoding="utf-8")
    assert len(raw.encode("utf-8")) < 500_000
    data = json.loads(raw)
    assert "crs" not in data
    decimals = re.findall(r"-?\d+\.(\d+)", raw)
    assert decimals and max(len(d) for d in decimals) <= 6


@pytest.mark.parametrize(
    ("lon", "lat", "code"),
    [
        (-95.3698, 29.7604, "US-TX"),  # Houston
        (-87.6298, 41.8781, "US-IL"),  # Chicago
        (-88.2787, 42.0989, "US-IL"),  # East Dundee
        (-93.3683, 43.6480, "US-MN"),  # Albert Lea
        (-106.4850, 31.7700, "US-TX"),  # El Paso, downtown
        (-106.4245, 31.6904, "MX-CHH"),  # Ciudad Juárez
        (-99.5075, 27.5306, "US-TX"),  # Laredo
        (-99.5160, 27.4764, "MX-TAM"),  # Nuevo Laredo
        (-117.0382, 32.5149, "MX-BCN"),  # Tijuana
        (-117.0300, 32.5550, "US-CA"),  # San Ysidro
        (-99.1332, 19.4326, "MX-CMX"),  # Mexico City
        (-99.6557, 19.2826, "MX-MEX"),  # Toluca
        (-107.3940, 24.8091, "MX-SIN"),  # Culiacán
        (-100.3161, 25.6866, "MX-NLE"),  # Monterrey
        (-77.0369, 38.9072, "US-DC"),  # Washington
        (-157.8583, 21.3069, "US-HI"),  # Honolulu
    ],
)
def test_places_fall_in_the_right_state(states, lon, lat, code):
    hit = states.loc[shapely.contains_xy(states.geometry.to_numpy(), lon, lat), "code"]
    assert hit.tolist() == [code]


def test_load_states_returns_independent_copies():
    first = load_states()
    first.loc[0, "name"] = "changed"
    assert load_states().loc[0, "name"] != "changed"


def test_state_names_cover_every_state_and_name_one_state_each(states):
    names = load_state_names()
    assert list(names.columns) == [
        "code", "name", "country", "number", "abbreviations", "alternate_names",
    ]
    assert names["code"].tolist() == states["code"].tolist()
    mx = names[names["country"] == "MX"]
    assert sorted(mx["number"]) == [f"{n:02d}" for n in range(1, 33)]
    owner: dict[str, set[str]] = {}
    for column in ("code", "name", "abbreviations", "alternate_names"):
        for code, cell in names[["code", column]].dropna().itertuples(index=False):
            for alias in cell.split("|"):
                owner.setdefault(_compact(alias), set()).add(code)
    clashes = {alias: codes for alias, codes in owner.items() if len(codes) > 1}
    assert clashes == {}


@pytest.mark.parametrize(
    ("written", "code"),
    [
        ("CHIH.", "MX-CHH"), ("TAMPS.", "MX-TAM"), ("N.L.", "MX-NLE"), ("EDO. MEX.", "MX-MEX"),
        ("D.F.", "MX-CMX"), ("B.C.S.", "MX-BCS"), ("B.C.", "MX-BCN"), ("S.L.P.", "MX-SLP"),
        ("Distrito Federal", "MX-CMX"), ("Michoacán de Ocampo", "MX-MIC"), ("MICH.", "MX-MIC"),
        ("Tex.", "US-TX"), ("TX", "US-TX"), ("Calif.", "US-CA"), ("Washington D.C.", "US-DC"),
    ],
)  # fmt: skip
def test_state_names_know_how_records_write_states(written, code):
    names = load_state_names()
    lookup = {}
    for column in ("code", "name", "abbreviations", "alternate_names"):
        for state, cell in names[["code", column]].dropna().itertuples(index=False):
            lookup.update({_compact(alias): state for alias in cell.split("|")})
    assert lookup[_compact(written)] == code


def test_missing_data_file_is_a_clear_error():
    with pytest.raises(InputError, match=r"nope\.geojson.*missing"):
        data_file("nope.geojson")
