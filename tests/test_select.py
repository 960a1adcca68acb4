"""Filters (--state, --mx-state, --trafficker, --dealer, --from/--to) and batch entity lists."""

from __future__ import annotations

import pandas as pd
import pytest

from geoflow.errors import FilterError
from geoflow.privacy import pseudonym
from geoflow.select import filter_records, list_entities, parse_date_bound, resolve_states


@pytest.fixture
def records() -> pd.DataFrame:
    """Eight prepared records shaped like pipeline.prepare_records output (docs/internals.md)."""
    frame = pd.DataFrame(
        {
            "purchaser_name": ["Rogelio Barajas", "ROGELIO  BARAJAS", "Rogélio Barajas",
                               "José Núñez", "Ana Ruiz", "Ana Ruiz", "Mark Hill", None],
            "dealer_name": ["GAT Guns", "GAT Guns", "Lone Star Arms", "Lone Star Arms",
                            "Mesquite Creek Firearms", "Mesquite Creek Firearms",
                            "Mesquite Creek Firearms", "Desert Sun Guns"],
            "dealer_ffl": ["3-36-089-01-2A-11111", "3-36-089-01-2A-11111", "5-74-111-01-1B-22222",
                           "5-74-111-01-1B-22222", "5-74-222-01-1C-33333", "5-74-222-01-1C-33333",
                           "5-74-222-01-1C-33333", "9-86-333-01-1D-44444"],
            "dealer_id": ["D-gat", "D-gat", "D-lone", "D-lone", "D-mesq", "D-mesq", "D-mesq",
                          "D-desert"],
            "dealer_place": ["ZIP 60118 (East Dundee, IL)", "East Dundee, IL", "Houston, TX",
                             "Houston, TX",
                             "McAllen, TX", "McAllen, TX", "McAllen, TX", "Phoenix, AZ"],
            "dealer_state": ["IL", "ILL.", "TX", "Texas", "TX", "TX", "TX", "AZ"],
            "dealer_admin1": ["US-IL", "US-IL", "US-TX", "US-TX", "US-TX", "US-TX", pd.NA,
                              "US-AZ"],
            "recovery_state": ["TAMPS.", "TAMPS.", "N.L.", "TAMPS.", "CHIH.", "CHIH.", "SIN.",
                               "SON."],
            "recovery_admin1": ["MX-TAM", "MX-TAM", "MX-NLE", "MX-TAM", "MX-CHH", "MX-CHH",
                                "MX-SIN", pd.NA],
            "recovery_date": pd.to_datetime(
                ["2007-03-01", "2008-09-14", "2008-12-31", "2009-01-01", "2010-06-30",
                 None, "2008-02-29", "2009-07-04"]
            ),
        }
    )
    frame["purchaser_id"] = pseudonym(frame["purchaser_name"])
    return frame.astype({c: "string" for c in frame.columns if c != "recovery_date"})


def test_no_filter_returns_all_records_and_empty_description(records):
    out, description = filter_records(records)
    assert len(out) == len(records)
    assert description == ""


@pytest.mark.parametrize("given", ["TX", "tx", "US-TX", "us-tx"])
def test_us_state_by_code_counts_records_from_that_state(records, given):
    out, description = filter_records(records, us_states=[given])
    # three geocoded in Texas + one the geocoder left unplaced whose raw state says TX
    assert len(out) == 5
    assert "US-TX" in description


def test_unplaced_record_counts_under_its_raw_state(records):
    out, _ = filter_records(records, us_states=["TX"])
    assert "Mark Hill" in set(out["purchaser_name"])


def test_several_states_are_alternatives(records):
    out, description = filter_records(records, us_states=["IL", "AZ"])
    assert len(out) == 3
    assert description.startswith("US states:")


def test_mx_state_by_abbreviation_learnt_from_the_data(records):
    out, description = filter_records(records, mx_states=["Tamps."])
    assert len(out) == 3
    assert "MX-TAM" in description


def test_mx_state_by_iso_code_and_short_code(records):
    assert len(filter_records(records, mx_states=["MX-CHH"])[0]) == 2
    assert len(filter_records(records, mx_states=["chh"])[0]) == 2


def test_state_of_the_wrong_country_names_the_filter_that_takes_it(records):
    # a reporter's --state "Nuevo León" or --mx-state TX: the error says which side it is
    with pytest.raises(FilterError, match=r"'MX-TAM' is a Mexican state \(MX-TAM\), not a US "
                                          r"state: --mx-state 'MX-TAM' keeps the guns recovered"):
        filter_records(records, us_states=["MX-TAM"])
    with pytest.raises(FilterError, match=r"'Nuevo León' is a Mexican state \(MX-NLE\)"):
        filter_records(records, us_states=["Nuevo León"])
    with pytest.raises(FilterError, match=r"'tx' is a US state \(US-TX\), not a Mexican state: "
                                          r"--state 'tx' keeps the guns sold there"):
        filter_records(records, mx_states=["tx"])


def test_nonsense_state_is_a_filter_error_naming_it(records):
    with pytest.raises(FilterError, match="unknown Mexican state 'Atlantis'"):
        filter_records(records, mx_states=["Atlantis"])


def test_trafficker_by_name_ignores_accents_case_and_spacing(records):
    out, description = filter_records(records, traffickers=["rogelio barajas"])
    assert len(out) == 3
    # the description carries the pseudonym, never the name, unless show_names
    assert "Barajas" not in description
    assert out["purchaser_id"].iloc[0] in description


def test_trafficker_by_pseudonym(records):
    pid = records["purchaser_id"].iloc[3]
    out, _ = filter_records(records, traffickers=[pid.lower()])
    assert out["purchaser_name"].tolist() == ["José Núñez"]


def test_trafficker_by_part_of_a_unique_name(records):
    out, _ = filter_records(records, traffickers=["NUNEZ"])
    assert out["purchaser_name"].tolist() == ["José Núñez"]


def test_trafficker_names_shown_only_with_show_names(records):
    _, description = filter_records(records, traffickers=["Ana Ruiz"], show_names=True)
    assert description == "purchaser: Ana Ruiz"


def test_unknown_trafficker_is_a_filter_error(records):
    with pytest.raises(FilterError, match="no purchaser 'Nobody Known' in the data"):
        filter_records(records, traffickers=["Nobody Known"])


def test_ambiguous_part_of_a_name_is_a_filter_error():
    frame = pd.DataFrame({"purchaser_name": ["Ana Ruiz", "Luis Ruiz"]})
    frame["purchaser_id"] = pseudonym(frame["purchaser_name"])
    with pytest.raises(FilterError, match="ambiguous: it matches 2 purchasers"):
        filter_records(frame, traffickers=["ruiz"])


@pytest.mark.parametrize("coded", [False, True])
def test_traffickers_match_the_same_from_text_or_categoricals(records, coded):
    # names and ids are matched over their distinct values (a prepared file's ids are a
    # categorical, its names text or codes); an id no record holds (a category left over,
    # as a chunked read's id space keeps them) selects nothing, and a record without a name
    # is never selected
    if coded:
        records = records.assign(
            purchaser_name=records["purchaser_name"].astype("category"),
            purchaser_id=records["purchaser_id"].astype(pd.CategoricalDtype(
                [*records["purchaser_id"].dropna().unique(), "P-0000aa"])))
    barajas, _ = filter_records(records, traffickers=["ROGELIO BARAJAS"])
    assert barajas["purchaser_name"].astype(str).tolist() == [
        "Rogelio Barajas", "ROGELIO  BARAJAS", "Rogélio Barajas"]
    by_id, _ = filter_records(records, traffickers=[records["purchaser_id"].iloc[4].upper()])
    assert by_id["purchaser_name"].astype(str).tolist() == ["Ana Ruiz", "Ana Ruiz"]
    with pytest.raises(FilterError, match="no purchaser 'P-0000aa' in the data"):
        filter_records(records, traffickers=["P-0000aa"])


def test_dealer_by_ffl_with_or_without_dashes(records):
    assert len(filter_records(records, dealers=["3-36-089-01-2A-11111"])[0]) == 2
    out, description = filter_records(records, dealers=["336089012a11111"])
    assert len(out) == 2
    assert description == "dealer: GAT Guns (FFL 3-36-089-01-2A-11111)"


def test_dealer_by_name_or_part_of_it(records):
    assert len(filter_records(records, dealers=["gat guns"])[0]) == 2
    assert len(filter_records(records, dealers=["mesquite"])[0]) == 3


def test_unknown_dealer_is_a_filter_error(records):
    with pytest.raises(FilterError, match="no dealer 'Acme' in the data"):
        filter_records(records, dealers=["Acme"])


def test_year_bounds_are_inclusive_of_the_whole_year(records):
    out, description = filter_records(records, date_from="2008", date_to="2008")
    assert sorted(out["recovery_date"].dt.strftime("%m-%d")) == ["02-29", "09-14", "12-31"]
    assert description == "recovered 2008-01-01 to 2008-12-31"


def test_month_and_day_bounds(records):
    assert len(filter_records(records, date_from="2008-12-31", date_to="2009-01")[0]) == 2
    assert len(filter_records(records, date_to="2008-02")[0]) == 2  # 2007-03-01, 2008-02-29


def test_records_without_recovery_date_are_left_out_by_date_filters(records):
    out, _ = filter_records(records, date_from="2000")
    assert len(out) == len(records) - 1


@pytest.mark.parametrize("bad", ["yesterday", "2008-13", "2008-02-30", "08/09/2008"])
def test_unreadable_dates_are_filter_errors(bad):
    with pytest.raises(FilterError, match="cannot read date"):
        parse_date_bound(bad)


def test_from_after_to_is_a_filter_error(records):
    with pytest.raises(FilterError, match="is after"):
        filter_records(records, date_from="2010", date_to="2009")


def test_filters_combine_and_describe_each_part(records):
    out, description = filter_records(
        records, us_states=["TX"], mx_states=["MX-CHH"], date_from="2010"
    )
    assert out["purchaser_name"].tolist() == ["Ana Ruiz"]
    assert description.count(";") == 2
    assert description.endswith("recovered from 2010-01-01")


def test_known_state_without_records_says_no_records_match(records):
    # AZ is in the data, but none of its records was recovered in Chihuahua
    with pytest.raises(FilterError, match="no records match all filters together"):
        filter_records(records, us_states=["AZ"], mx_states=["CHH"])


def test_list_entities_counts_and_orders_by_guns(records):
    table = list_entities(records, "state")
    assert table["key"].tolist() == ["US-TX", "US-IL", "US-AZ"]
    assert table["guns"].tolist() == [5, 2, 1]
    assert table["guns"].sum() == records["dealer_state"].notna().sum()


def test_list_entities_traffickers_are_pseudonyms_unless_show_names(records):
    hidden = list_entities(records, "trafficker", min_guns=2)
    assert hidden["label"].tolist() == hidden["key"].tolist()
    assert all(label.startswith("P-") for label in hidden["label"])
    shown = list_entities(records, "trafficker", min_guns=2, show_names=True)
    assert shown["guns"].tolist() == [3, 2]
    assert shown["label"].tolist() == ["Rogelio Barajas", "Ana Ruiz"]


def test_list_entities_dealers_labelled_with_their_place(records):
    table = list_entities(records, "dealer", min_guns=2)
    assert table["label"].tolist() == [
        "Mesquite Creek Firearms (McAllen, TX)", "GAT Guns (East Dundee, IL)",
        "Lone Star Arms (Houston, TX)",
    ]


def test_list_entities_min_guns_drops_small_entities(records):
    assert list_entities(records, "mx-state", min_guns=2)["key"].tolist() == ["MX-TAM", "MX-CHH"]


def test_unknown_batch_kind_is_a_filter_error(records):
    with pytest.raises(FilterError, match="unknown batch kind 'city'"):
        list_entities(records, "city")


def test_resolve_states_keeps_each_given_spelling(records):
    assert resolve_states(["tx", "US-AZ"], country="US", records=records) == {
        "tx": "US-TX", "US-AZ": "US-AZ"}


@pytest.mark.parametrize("given", ["Tamaulipas", "TAMAULIPAS", "tamps", "Tamps.", "MX-TAM"])
def test_mx_state_by_shipped_name_or_abbreviation(records, given):
    out, description = filter_records(records, mx_states=[given])
    assert len(out) == 3
    assert description == "Mexican state: Tamaulipas (MX-TAM)"


@pytest.mark.parametrize("given", ["Nuevo León", "nuevo leon", "N.L.", "NL"])
def test_accented_state_names_and_dotted_abbreviations(records, given):
    assert resolve_states([given], country="MX", records=records) == {given: "MX-NLE"}


def test_us_state_by_name_and_old_abbreviation(records):
    assert resolve_states(["texas", "Ill.", "Ariz."], country="US") == {
        "texas": "US-TX", "Ill.": "US-IL", "Ariz.": "US-AZ"}


def test_a_code_the_data_hold_for_no_country_is_an_unknown_state():
    # a recovery state the geocoder wrote as it found it ("XX"): asked for, it is unknown,
    # not a state of the other country
    records = pd.DataFrame({"recovery_state": ["XX"], "recovery_admin1": ["XX"]})
    with pytest.raises(FilterError, match="unknown Mexican state 'XX'"):
        resolve_states(["XX"], country="MX", records=records)


@pytest.mark.parametrize("given", ["US", "MX", "Texas City", "01"])
def test_countries_and_numbers_are_not_states(given):
    with pytest.raises(FilterError, match="unknown US state"):
        resolve_states([given], country="US")


def test_real_state_with_no_guns_in_the_data_says_no_records_match(records):
    with pytest.raises(FilterError, match=r"no records match US state: Wyoming \(US-WY\)"):
        filter_records(records, us_states=["WY"])
