"""Header aliases: English ATF-style and Spanish headers, variants, and user column maps."""

import pytest

from geoflow import schema
from geoflow.errors import SchemaError

ATF_HEADERS = {
    "Trace Number": "trace_id",
    "Serial Number": "serial_number",
    "Manufacturer": "manufacturer",
    "Model": "model",
    "Caliber": "caliber",
    "Weapon Type": "weapon_type",
    "Purchaser Name": "purchaser_name",
    "Purchase Date": "purchase_date",
    "FFL Name": "dealer_name",
    "FFL Number": "dealer_ffl",
    "FFL Address": "dealer_address",
    "FFL City": "dealer_city",
    "FFL State": "dealer_state",
    "FFL Zip": "dealer_zip",
    "Recovery Date": "recovery_date",
    "Recovery City": "recovery_city",
    "Recovery State": "recovery_state",
    "Recovery Country": "recovery_country",
    "Possessor Name": "possessor_name",
    "Port of Entry": "crossing",
}

SPANISH_HEADERS = {
    "Número de rastreo": "trace_id",
    "Número de serie": "serial_number",
    "Marca": "manufacturer",
    "Modelo": "model",
    "Calibre": "caliber",
    "Tipo de arma": "weapon_type",
    "Comprador": "purchaser_name",
    "Fecha de compra": "purchase_date",
    "Armería": "dealer_name",
    "Ciudad de la armería": "dealer_city",
    "Estado de la armería": "dealer_state",
    "Fecha de aseguramiento": "recovery_date",
    "Municipio": "recovery_city",
    "Estado": "recovery_state",
    "País": "recovery_country",
    "Poseedor": "possessor_name",
    "Cruce": "crossing",
}


def test_english_atf_headers_map_to_canonical_columns():
    assert schema.map_headers(list(ATF_HEADERS)) == ATF_HEADERS


def test_spanish_headers_map_to_canonical_columns():
    assert schema.map_headers(list(SPANISH_HEADERS)) == SPANISH_HEADERS


@pytest.mark.parametrize(
    ("header", "canonical"),
    [
        ("ARMERIA", "dealer_name"),
        ("  armería. ", "dealer_name"),
        ("FECHA_DE_ASEGURAMIENTO", "recovery_date"),
        ("fecha-de-aseguramiento", "recovery_date"),
        ("Fecha De Compra", "purchase_date"),
        ("ffl_zip", "dealer_zip"),
        ("FFL ZIP CODE", "dealer_zip"),
        ("Trace #", "trace_id"),
        ("SERIAL NO.", "serial_number"),
        ("purchaser-name", "purchaser_name"),
        ("POSEEDOR", "possessor_name"),
        ("\ufeffTrace Number", "trace_id"),
    ],
)
def test_header_variants_in_case_accents_and_punctuation(header, canonical):
    assert schema.map_headers([header]) == {header: canonical}


def test_unknown_headers_keep_a_normalised_name():
    assert schema.map_headers(["Notas del Agente", "Weight (lbs)"]) == {
        "Notas del Agente": "notas_del_agente",
        "Weight (lbs)": "weight_lbs",
    }


def test_second_header_claiming_a_column_keeps_its_own_name():
    mapping = schema.map_headers(["FFL Name", "Armería"])
    assert mapping == {"FFL Name": "dealer_name", "Armería": "armeria"}


def test_user_mapping_wins_over_aliases_and_accepts_loose_spelling():
    mapping = schema.map_headers(
        ["Vendedor Final", "Estado"], {"vendedor final": "Dealer Name", "ESTADO": "dealer_state"}
    )
    assert mapping == {"Vendedor Final": "dealer_name", "Estado": "dealer_state"}


def test_unknown_canonical_column_in_a_mapping_is_named_with_a_hint():
    with pytest.raises(SchemaError, match=r"'dealer_nmae'.*did you mean dealer_name"):
        schema.validate_column_map({"Tienda": "dealer_nmae"})
    with pytest.raises(SchemaError, match="'colour'"):
        schema.map_headers(["Tienda"], {"Tienda": "colour"})


def test_usable_columns_are_canonical():
    assert set(schema.USABLE_COLUMNS) <= set(schema.CANONICAL_COLUMNS)
    for example in schema.HEADER_EXAMPLES:  # the examples quoted in error messages work
        assert schema.map_headers([example])[example] in schema.CANONICAL_COLUMNS
