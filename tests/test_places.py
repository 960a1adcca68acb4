"""Place strings from US and Mexican records split into place, state and ZIP."""

import pandas as pd
import pytest

from geoflow.places import STATE_ALIASES, compact, normalise_country, normalise_place, parse_places


def parse_one(text: str) -> dict:
    return parse_places(pd.Series([text])).iloc[0].to_dict()


@pytest.mark.parametrize(
    ("text", "place", "states", "zip_code"),
    [
        ("E DUNDEE, IL 60118", "EAST DUNDEE", "US-IL", "60118"),
        ("Mc Allen, Tex.", "MCALLEN", "US-TX", None),
        ("FT WORTH TX", "FORT WORTH", "US-TX", None),
        ("ST LOUIS, MISSOURI", "SAINT LOUIS", "US-MO", None),
        ("N LAS VEGAS", "NORTH LAS VEGAS", None, None),
        ("SAN ANTONIO TX 78201-1234", "SAN ANTONIO", "US-TX", "78201"),
        ("LAS FLORES, CA 92688.", "LAS FLORES", "US-CA", "92688"),
        ("MT VERNON, WA", "MOUNT VERNON", "US-WA", None),
        ("PT ARTHUR TX", "PORT ARTHUR", "US-TX", None),
        ("LAS CRUCES, N. MEX.", "LAS CRUCES", "US-NM", None),
        ("CD. JUAREZ, CHIH.", "CIUDAD JUAREZ", "MX-CHH", None),
        ("NVO. LAREDO, TAMPS.", "NUEVO LAREDO", "MX-TAM", None),
        ("NVO LAREDO", "NUEVO LAREDO", None, None),
        ("MEXICO, D.F.", "MEXICO", "MX-CMX", None),
        ("TOLUCA, EDO. MEX.", "TOLUCA", "MX-MEX", None),
        ("CULIACÁN ROSALES, SIN.", "CULIACAN ROSALES", "MX-SIN", None),
        ("GDL, JAL.", "GUADALAJARA", "MX-JAL", None),
        ("SN LUIS RIO COLORADO, SON.", "SAN LUIS RIO COLORADO", "MX-SON", None),
        ("STA. CATARINA, N.L.", "SANTA CATARINA", "MX-NLE", None),
        ("GRAL. ESCOBEDO, N.L.", "GENERAL ESCOBEDO", "MX-NLE", None),
        ("H. MATAMOROS, TAMPS", "MATAMOROS", "MX-TAM", None),
        ("CANCUN, Q. ROO", "CANCUN", "MX-ROO", None),
        ("tijuana baja california", "TIJUANA", "MX-BCN", None),
        ("LA PAZ BAJA CALIFORNIA SUR", "LA PAZ", "MX-BCS", None),
    ],
)
def test_us_and_mexican_strings_split_into_place_state_and_zip(text, place, states, zip_code):
    got = parse_one(text)
    assert got["place_key"] == place
    assert (None if pd.isna(got["states"]) else got["states"]) == states
    assert (None if pd.isna(got["zip"]) else got["zip"]) == zip_code


@pytest.mark.parametrize(
    ("text", "state"),
    [("S.L.P.", "MX-SLP"), ("B.C.S.", "MX-BCS"), ("TAMAULIPAS", "MX-TAM"), ("Edo. Méx.", "MX-MEX"),
     ("N.L.", "MX-NLE"), ("Texas", "US-TX"), ("MX-CHH", "MX-CHH")],
)
def test_a_bare_state_is_a_state_without_a_place(text, state):
    got = parse_one(text)
    assert got["states"] == state
    assert got["place_key"] == ""
    assert got["state_only"]


def test_mexico_city_named_as_a_state_is_the_city():
    got = parse_one("Ciudad de México")
    assert got["place_key"] == "CIUDAD DE MEXICO"
    assert not got["state_only"]


def test_a_trailing_state_word_without_comma_keeps_the_whole_string_as_an_alternative():
    got = parse_one("SAN LUIS RIO COLORADO")
    assert got["states"] == "US-CO"  # read as "San Luis Rio" in Colorado first …
    assert got["whole_key"] == "SAN LUIS RIO COLORADO"  # … and as the whole name otherwise


def test_accents_case_and_punctuation_do_not_matter():
    keys = normalise_place(pd.Series(["Culiacán", "CULIACAN", "culiacan", " Culiacán. "]))
    assert keys.nunique() == 1


def test_abbreviations_of_both_countries_expand():
    keys = normalise_place(pd.Series(
        ["Cd. Obregón", "Sta. Ana", "Sto. Domingo", "Sn. Pedro", "Gral. Terán", "Ft Smith",
         "St. George", "Mt. Pleasant", "Pt. Lavaca", "Kew Gdns Hts", "E Dundee", "W Palm Beach"]))
    assert keys.tolist() == [
        "CIUDAD OBREGON", "SANTA ANA", "SANTO DOMINGO", "SAN PEDRO", "GENERAL TERAN",
        "FORT SMITH", "SAINT GEORGE", "MOUNT PLEASANT", "PORT LAVACA", "KEW GARDENS HEIGHTS",
        "EAST DUNDEE", "WEST PALM BEACH"]


@pytest.mark.parametrize(("text", "key"), [
    ("LAKELAND N", "LAKELAND NORTH"), ("SW RANCHES", "SOUTHWEST RANCHES"),
    ("NO. LAS VEGAS", "NORTH LAS VEGAS"), ("V. DE ALVAREZ", "VILLA DE ALVAREZ"),
    ("V. HIDALGO", "VILLA HIDALGO"), ("JOSE MA. MORELOS", "JOSE MARIA MORELOS"),
    ("STA. MA. DEL ORO", "SANTA MARIA DEL ORO"), ("H. CD. JUAREZ", "CIUDAD JUAREZ"),
    ("NVA. ROSITA", "NUEVA ROSITA"), ("FCO. I. MADERO", "FRANCISCO I MADERO"),
    ("LIC. BENITO JUAREZ", "LICENCIADO BENITO JUAREZ"), ("DR. ARROYO", "DOCTOR ARROYO"),
    ("EST. DELICIAS", "ESTACION DELICIAS"), ("MT. JULIET", "MOUNT JULIET"),
    ("W", "W"), ("E ST LOUIS", "EAST SAINT LOUIS"),  # a lone letter is left alone
])
def test_police_record_abbreviations_expand(text, key):
    assert normalise_place(pd.Series([text])).tolist() == [key]


def test_michoacan_and_michigan_share_an_abbreviation():
    assert set(STATE_ALIASES[compact("Mich.")].split("|")) == {"US-MI", "MX-MIC"}


def test_countries_normalise():
    got = normalise_country(
        pd.Series(["México", "MEX", "usa", "Estados Unidos", "Guatemala", None]))
    assert got.tolist()[:4] == ["MX", "MX", "US", "US"]
    assert got.iloc[4:].isna().all()


def test_missing_values_parse_to_empty_places():
    got = parse_places(pd.Series([None, "", "   "]))
    assert (got["place_key"] == "").all()
    assert got["states"].isna().all()
