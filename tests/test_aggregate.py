"""Tables, concentration, findings and pseudonyms on hand-made prepared records."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from handmade import PORTS, make_records

from geoflow.aggregate import (
    DUPLICATE_REASON,
    build_tables,
    by_crossing,
    by_mx_state,
    by_purchaser,
    by_trafficker,
    by_year,
    categorical_take,
    distinct_codes,
    findings,
    flag_counts,
    unplace_duplicates,
)
from geoflow.flows import build_dealers, build_flows, build_recoveries
from geoflow.privacy import normalise_names, pseudonym

TRAFFICKER_COLUMNS = [
    "purchaser",
    "guns",
    "dealers",
    "top_dealer",
    "top_dealer_guns",
    "top_dealer_share_frac",
    "hhi",
    "first_purchase",
    "last_purchase",
    "known_crossings",
    "modelled_crossings",
    "median_time_to_crime_days",
]
PURCHASER_COLUMNS = [*TRAFFICKER_COLUMNS[:2], "at_or_above_threshold", *TRAFFICKER_COLUMNS[2:]]


def _records(rows):
    records = make_records(rows)
    return records.assign(purchaser_label=records["purchaser_id"])


@pytest.fixture
def records():
    return _records(
        [
            # 12 guns, 9 from one store: concentrated (share 0.75)
            {
                "purchaser": "Ana Uno",
                "dealer": "Store A",
                "dealer_at": "dundee",
                "port": "2304",
                "kind": "known",
                "n": 9,
                "bought": "2007-02-01",
            },
            {
                "purchaser": "Ana Uno",
                "dealer": "Store B",
                "dealer_at": "houston",
                "n": 3,
                "bought": "2008-07-09",
                "port": "2305",
            },
            # 10 guns spread over two stores: not concentrated (0.5 is not "most")
            {"purchaser": "Beto Dos", "dealer": "Store A", "dealer_at": "dundee", "n": 5},
            {
                "purchaser": "Beto Dos",
                "dealer": "Store C",
                "dealer_at": "phoenix",
                "port": "2604",
                "n": 5,
                "recovered_at": "hermosillo",
                "weapon": "Rifle",
            },
            # small buyer, and a gun nobody is named for
            {
                "purchaser": "Caro Tres",
                "dealer": "Store C",
                "dealer_at": "phoenix",
                "port": "2604",
                "n": 2,
                "recovered_at": "hermosillo",
                "bought": "2001-01-01",
                "recovered": "2009-01-01",
            },
            {
                "purchaser": None,
                "dealer": "Store C",
                "dealer_at": "phoenix",
                "recovered_at": None,
                "n": 1,
            },
        ]
    )


def test_by_purchaser_contract_columns_and_concentration(records):
    table = by_purchaser(records, port_names={"2304": "Laredo", "2305": "Hidalgo/Pharr"})
    assert list(table.columns) == PURCHASER_COLUMNS
    assert table["at_or_above_threshold"].tolist() == (table["guns"] >= 10).tolist()
    assert table["at_or_above_threshold"].tolist() == [True, True, False]
    assert table["purchaser"].tolist() == [
        pseudonym(pd.Series([n])).iloc[0] for n in ("Ana Uno", "Beto Dos", "Caro Tres")
    ]
    ana = table.iloc[0]
    assert (ana["guns"], ana["dealers"], ana["top_dealer"], ana["top_dealer_guns"]) == (
        12,
        2,
        "Store A",
        9,
    )
    assert ana["top_dealer_share_frac"] == pytest.approx(0.75)
    assert ana["hhi"] == pytest.approx(0.75**2 + 0.25**2)
    assert (ana["first_purchase"], ana["last_purchase"]) == ("2007-02-01", "2008-07-09")
    # ports the records name apart from ports the route model chose
    assert (ana["known_crossings"], ana["modelled_crossings"]) == ("Laredo", "Hidalgo/Pharr")
    beto = table.iloc[1]
    assert beto["top_dealer_share_frac"] == pytest.approx(0.5) and beto["hhi"] == pytest.approx(0.5)
    assert table["guns"].sum() == records["purchaser_id"].notna().sum()


def test_by_trafficker_lists_only_purchasers_at_or_above_the_threshold(records):
    everyone = by_purchaser(records)
    table = by_trafficker(records)
    assert list(table.columns) == TRAFFICKER_COLUMNS
    assert table["purchaser"].tolist() == everyone["purchaser"].tolist()[:2]  # 10+ guns
    assert table.equals(everyone.iloc[:2].drop(columns="at_or_above_threshold"))
    lower = by_trafficker(records, threshold=1)
    assert lower["purchaser"].tolist() == everyone["purchaser"].tolist()
    higher = by_purchaser(records, threshold=12)["at_or_above_threshold"]
    assert higher.tolist() == [True, False, False]


def test_by_purchaser_details_only_purchasers_at_or_above_min_guns_and_counts_the_rest(records):
    everyone = by_purchaser(records)
    assert everyone.attrs["left_out"] == {"min_guns": 0, "purchasers": 0, "guns": 0}
    table = by_purchaser(records, min_guns=10)
    # the same rows, numbers and order as the full table, without the small purchaser
    assert table.equals(everyone.iloc[:2])
    assert table.attrs["left_out"] == {"min_guns": 10, "purchasers": 1, "guns": 2}
    assert by_purchaser(records, min_guns=100).empty


def test_crossings_of_many_purchasers_equal_a_sort_by_guns_then_code():
    # each purchaser's known crossings, most guns first, then port code, for many
    # purchasers with ties: the same strings as sorting each purchaser's counts in pandas
    import numpy as np

    rng = np.random.default_rng(3)
    ports = ["2304", "2305", "2604", "2402", "0208"]
    rows = [{"purchaser": f"P{int(p)}", "port": ports[int(q)], "kind": "known",
             "n": int(k)}
            for p, q, k in zip(rng.integers(0, 40, 160), rng.integers(0, 5, 160),
                               rng.integers(1, 4, 160), strict=True)]
    records = _records(rows)
    table = by_purchaser(records, port_names={"2304": "Laredo"})
    ids = dict(zip(records["purchaser_name"], records["purchaser_id"], strict=True))
    frame = pd.DataFrame(rows).assign(purchaser=lambda f: f["purchaser"].map(ids))
    frame = frame.groupby(["purchaser", "port"])["n"].sum().reset_index()
    frame = frame.sort_values(["purchaser", "n", "port"], ascending=[True, False, True])
    expected = frame.assign(name=frame["port"].replace({"2304": "Laredo"})).groupby(
        "purchaser")["name"].agg("; ".join)
    got = dict(zip(table["purchaser"], table["known_crossings"], strict=True))
    assert len(got) == 40 and got == expected.to_dict()


def test_crossings_of_a_purchaser_are_ordered_by_guns_then_port_code():
    rows = [{"purchaser": "Ana Uno", "port": port, "kind": "known", "n": n}
            for port, n in (("2604", 1), ("2304", 3), ("2305", 1))]
    rows.append({"purchaser": "Beto Dos", "port": "2305", "kind": "known", "n": 2})
    table = by_purchaser(_records(rows), port_names={"2304": "Laredo", "2305": "Hidalgo",
                                                     "2604": "Nogales"})
    assert table["known_crossings"].tolist() == ["Laredo; Hidalgo; Nogales", "Hidalgo"]
    assert table["modelled_crossings"].isna().all()
    assert str(table["known_crossings"].dtype) == "string"


def test_tables_cover_all_valid_records(records):
    tables = build_tables(records, ports=PORTS, state_names={"US-IL": "Illinois"})
    assert set(tables) == {
        "by_us_state",
        "by_mx_state",
        "state_matrix",
        "by_dealer",
        "by_purchaser",
        "by_trafficker",
        "by_crossing",
        "by_year",
    }
    n = len(records)
    for name in ("by_us_state", "by_mx_state", "state_matrix", "by_dealer"):
        assert tables[name]["guns"].sum() == n, name
    assert list(tables["by_us_state"].columns) == [
        "state", "state_name", "guns", "share_frac", "dealers", "purchasers",
        "median_time_to_crime_days"]
    assert list(tables["by_mx_state"].columns) == [
        "state", "state_name", "guns", "share_frac", "places", "purchasers"]
    us = tables["by_us_state"].set_index("state")
    assert us.loc["US-IL", "state_name"] == "Illinois"
    assert us.loc["US-IL", "guns"] == 14 and us.loc["US-IL", "dealers"] == 1
    assert us["share_frac"].sum() == pytest.approx(1.0)
    mx = tables["by_mx_state"].set_index("state")
    assert mx.loc["unknown", "guns"] == 1  # the unplaced record is counted, not dropped
    dealer = tables["by_dealer"].set_index("dealer_name").loc["Store A"]
    assert (dealer["guns"], dealer["purchasers"], dealer["top_purchaser_guns"]) == (14, 2, 9)
    assert dealer["top_purchaser_share_frac"] == pytest.approx(9 / 14)


def test_by_crossing_splits_known_and_modelled(records):
    table = by_crossing(records[records["placed"]], PORTS).set_index("code")
    assert table.loc["2304", ["guns", "guns_known", "guns_modelled"]].tolist() == [14, 9, 5]
    assert table.loc["2604", "name"] == "Nogales"
    assert table["share_frac"].sum() == pytest.approx(1.0)


def test_by_crossing_orders_ties_by_code_and_names_an_unknown_port_by_its_code(records):
    placed = records[records["placed"]]
    codes = placed["crossing_code"].astype(object).to_numpy().copy()
    codes[:3] = "9999"  # a code no shipped port has
    table = by_crossing(placed.assign(crossing_code=codes), PORTS)
    guns = table["guns"].tolist()
    assert guns == sorted(guns, reverse=True)
    for tied in table.groupby("guns")["code"]:
        assert tied[1].tolist() == sorted(tied[1])
    unknown = table.set_index("code").loc["9999"]
    assert unknown["name"] == "9999" and pd.isna(unknown["us_state"])
    assert table.index.tolist() == list(range(len(table)))
    without = by_crossing(placed, None)
    assert (without["name"] == without["code"]).all() and without["us_state"].isna().all()


def test_by_year_counts_purchases_and_recoveries_by_weapon_type(records):
    table = by_year(records).set_index(["year", "weapon_type"])
    assert table.loc[(2007, "pistol"), "purchased"] == 9
    assert table.loc[(2009, "rifle"), "recovered"] == 5
    assert table["purchased"].sum() == len(records) == table["recovered"].sum()


def test_the_prolific_purchasers_sentence_reads_right_for_one_and_for_none(records):
    """One purchaser above the threshold is not "1 of them", and none is said plainly."""
    tables = build_tables(records, ports=PORTS)
    texts = {n: next(f["text"] for f in findings(records, tables, min_guns=n)
                     if f["id"] == "prolific_purchasers") for n in (12, 13)}
    assert texts[12].startswith("1 purchaser is tied to 12 or more guns, and bought most of "
                                "them (more than half) at a single store. Largest: ")
    assert texts[13] == "No purchaser is tied to 13 or more guns."


def test_findings_state_numbers_behind_each_sentence(records):
    tables = build_tables(records, ports=PORTS)
    found = {f["id"]: f for f in findings(records, tables)}
    prolific = found["prolific_purchasers"]
    assert prolific["numbers"]["purchasers"] == 2
    assert prolific["numbers"]["mostly_one_store"] == 1
    assert "2 purchasers are tied to 10 or more guns" in prolific["text"]
    top = found["most_prolific_purchaser"]["numbers"]
    assert (top["guns"], top["top_dealer"], top["top_dealer_guns"]) == (12, "Store A", 9)
    ttc = found["short_time_to_crime"]["numbers"]
    assert (ttc["guns_short"], ttc["guns_with_dates"]) == (len(records) - 2, len(records))
    crossings = found["top_crossings"]
    assert crossings["numbers"]["crossings"][0]["name"] == "Laredo"
    assert "Laredo (14; 9 known, 5 modelled)" in crossings["text"]
    assert "Ana Uno" not in str(found)
    # where the guns were recovered, as where they were sold: the top Mexican states
    recovered = tables["by_mx_state"]
    recovered = recovered[recovered["state"] != "unknown"].head(3)
    states = found["top_recovery_states"]
    assert [s["state"] for s in states["numbers"]["states"]] == recovered["state"].tolist()
    first = recovered.iloc[0]
    assert states["text"].startswith(
        "Top Mexican states of recovery (guns recovered there, all valid records): "
        f"{first['state_name']} ({first['guns']:,}, {first['share_frac']:.0%})")
    ids = [f["id"] for f in found.values()]
    assert ids.index("top_source_states") + 1 == ids.index("top_recovery_states")


def test_pseudonyms_are_stable_normalised_and_keyed():
    names = pd.Series(["Rogelio Barajas", " rogelio  BARAJAS", "Rogélio Barajas", "Otro", None])
    ids = pseudonym(names)
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert pd.isna(ids[4])
    assert ids[0].startswith("P-") and len(ids[0]) == 8
    assert pseudonym(names)[0] == ids[0]  # stable across calls (and runs: fixed default key)
    assert pseudonym(names, key="newsroom secret")[0] != ids[0]
    assert normalise_names(pd.Series(["De La-Rosa,  Paul"])).iloc[0] == "de la rosa paul"


def test_recovery_before_purchase_is_left_out_of_time_to_crime():
    # one gun recovered after 100 days, two after ~5.5 years, two "recovered" 400 days before
    # they were bought (impossible dates the reader flags): counting those as fast guns would
    # give 3 of 5 short and a median of 100 days
    records = make_records([
        {"purchaser": "Ana Uno", "bought": "2008-01-01", "recovered": "2008-04-10"},
        {"purchaser": "Ana Uno", "bought": "2004-01-01", "recovered": "2009-06-23", "n": 2},
        {"purchaser": "Ana Uno", "bought": "2009-02-04", "recovered": "2008-01-01", "n": 2},
    ])
    assert (records["time_to_crime_days"] < 0).sum() == 2
    tables = build_tables(records, ports=PORTS)
    ttc = {f["id"]: f for f in findings(records, tables)}["short_time_to_crime"]
    numbers = ttc["numbers"]
    assert (numbers["guns_short"], numbers["guns_with_dates"]) == (1, 3)
    assert numbers["guns_impossible_dates"] == 2
    assert numbers["share_frac"] == pytest.approx(1 / 3)
    assert numbers["median_days"] == 2000.0
    assert "(1 of 3)" in ttc["text"]
    assert "2 records with a recovery date before the purchase date were left out" in ttc["text"]
    for name in ("by_us_state", "by_dealer", "by_purchaser"):
        assert tables[name]["median_time_to_crime_days"].tolist() == [2000.0], name
    flows = build_flows(records[records["placed"]], PORTS)
    assert flows["median_time_to_crime_days"].tolist() == [2000.0]
    assert build_dealers(records)["median_time_to_crime_days"].tolist() == [2000.0]


def test_time_to_crime_finding_does_not_mention_exclusions_when_there_are_none(records):
    ttc = {f["id"]: f for f in findings(records, build_tables(records, ports=PORTS))}
    assert ttc["short_time_to_crime"]["numbers"]["guns_impossible_dates"] == 0
    assert "left out" not in ttc["short_time_to_crime"]["text"]


def test_duplicate_trace_records_count_once_everywhere():
    # the same trace entered twice (the reader flags the second occurrence) is one gun
    records = _records([
        {"purchaser": "Ana Uno", "dealer": "Store A", "n": 3},
        {"purchaser": "Bo Dos", "dealer": "Store B", "n": 2},
    ])
    records["flag_duplicate"] = [False, True, True, False, False]
    tables = build_tables(records, ports=PORTS)
    for name in ("by_us_state", "by_mx_state", "by_dealer", "by_purchaser", "by_crossing"):
        assert tables[name]["guns"].sum() == 3, name
    assert tables["state_matrix"]["guns"].sum() == 3
    assert tables["by_year"]["purchased"].sum() == 3
    assert tables["by_purchaser"].set_index("purchaser")["guns"].to_dict() == {
        records["purchaser_id"].iloc[0]: 1, records["purchaser_id"].iloc[3]: 2}
    found = {f["id"]: f for f in findings(records, tables)}
    assert found["short_time_to_crime"]["numbers"]["guns_with_dates"] == 3
    marked = unplace_duplicates(records)
    assert marked["unplaced_reason"].tolist()[:3] == [pd.NA, DUPLICATE_REASON, DUPLICATE_REASON]
    assert "flag_duplicate" in records and records["placed"].all()  # input left alone
    placed = marked[marked["placed"]]
    assert len(placed) + (~marked["placed"]).sum() == len(records)
    assert build_flows(placed, PORTS)["guns"].sum() == len(placed) == 3
    assert build_flows(records, PORTS)["guns"].sum() == 3
    assert build_dealers(records)["guns"].sum() == 3
    assert flag_counts(records) == {"flag_duplicate": 2, "flag_future_date": 0,
                                    "flag_recovery_before_purchase": 0}


def test_future_dated_intervals_are_left_out_of_time_to_crime():
    # a recovery date typed as 2030 would give a 7,670-day time to crime
    records = _records([
        {"purchaser": "Ana Uno", "bought": "2009-01-01", "recovered": "2009-04-11"},
        {"purchaser": "Ana Uno", "bought": "2009-01-01", "recovered": "2030-01-01"},
    ])
    records["flag_future_date"] = [False, True]
    tables = build_tables(records, ports=PORTS)
    for name in ("by_us_state", "by_dealer", "by_purchaser"):
        assert tables[name]["median_time_to_crime_days"].tolist() == [100.0], name
    assert build_flows(records, PORTS)["median_time_to_crime_days"].tolist() == [100.0]
    ttc = {f["id"]: f for f in findings(records, tables)}["short_time_to_crime"]
    assert ttc["numbers"]["median_days"] == 100.0
    assert ttc["numbers"]["guns_future_dates"] == 1
    assert "1 record with a date in the future was left out" in ttc["text"]
    assert "count as unknown in every table" in ttc["text"]
    assert flag_counts(records)["flag_future_date"] == 1


def test_mx_state_places_count_coordinate_level_recoveries_like_the_map():
    # three recoveries in Tamaulipas given by bare coordinates (no place name): two sites
    records = _records([{"purchaser": "Ana Uno", "recovered_at": "reynosa", "n": 3},
                        {"purchaser": "Ana Uno", "recovered_at": "cdmx"}])
    records["recovery_place"] = pd.array([pd.NA, pd.NA, pd.NA, "Ciudad de México, CMX"],
                                         dtype="string")
    records["recovery_lat"] = [26.08, 26.08, 25.87, 19.433]
    records["recovery_lon"] = [-98.298, -98.298, -97.50, -99.133]
    places = by_mx_state(records).set_index("state")["places"].to_dict()
    assert places == {"MX-TAM": 2, "MX-CMX": 1}
    layer = build_recoveries(records)
    assert layer.groupby("recovery_state")["recovery_place"].size().to_dict() == places


def test_findings_never_print_na_for_a_missing_dealer_or_place():
    records = _records([
        # a dealer that was never geocoded (no place), and a purchaser with no dealer at all
        {"purchaser": "Ana Uno", "dealer": "Store X", "ffl": "1-11-111", "dealer_at": None,
         "n": 3},
        {"purchaser": "Bo Dos", "dealer": None, "dealer_at": None, "n": 4},
    ])
    assert records["dealer_id"].isna().sum() == 4
    found = {f["id"]: f for f in findings(records, build_tables(records, ports=PORTS),
                                          min_guns=1)}
    texts = " ".join(f["text"] for f in found.values())
    assert "<NA>" not in texts and "nan" not in texts
    assert "Store X (3)" in found["top_dealers"]["text"]
    assert "(4 guns, dealer unknown)" in found["prolific_purchasers"]["text"]
    assert "(3 guns, 3 from Store X)" in found["prolific_purchasers"]["text"]
    assert "tied to 4 guns, dealer unknown." in found["most_prolific_purchaser"]["text"]


def test_dealer_without_purchasers_has_no_top_purchaser_share_in_table_or_layer():
    records = _records([{"purchaser": None, "dealer": "Store A", "n": 2},
                        {"purchaser": "Ana Uno", "dealer": "Store B", "n": 3}])
    table = build_tables(records, ports=PORTS)["by_dealer"].set_index("dealer_name")
    layer = build_dealers(records).set_index("dealer_name")
    for frame in (table, layer):
        assert frame.loc["Store A", "purchasers"] == 0
        assert pd.isna(frame.loc["Store A", "top_purchaser_share_frac"])
        assert frame.loc["Store B", "top_purchaser_share_frac"] == 1.0


def test_a_modelled_crossing_is_never_stated_as_fact():
    # Dora: 10 guns, 1 through Nogales by record, 9 routed by the model via Laredo/Hidalgo
    records = _records([
        {"purchaser": "Dora", "dealer": "Store A", "port": "2604", "kind": "known", "n": 1},
        {"purchaser": "Dora", "dealer": "Store A", "port": "2304", "kind": "modelled", "n": 6},
        {"purchaser": "Dora", "dealer": "Store A", "port": "2305", "kind": "modelled", "n": 3},
    ])
    ports = {"2304": "Laredo", "2305": "Hidalgo/Pharr", "2604": "Nogales"}
    tables = build_tables(records, ports=PORTS)
    row = by_purchaser(records, port_names=ports).iloc[0]
    assert (row["known_crossings"], row["modelled_crossings"]) == (
        "Nogales", "Laredo; Hidalgo/Pharr")
    top = {f["id"]: f for f in findings(records, tables)}["most_prolific_purchaser"]
    assert top["text"].endswith(
        "; crossed at Nogales (named in the records); modelled crossings (shortest route, not "
        "a record): Laredo and Hidalgo/Pharr.")
    assert top["numbers"]["known_crossings"] == "Nogales"
    assert top["numbers"]["modelled_crossings"] == "Laredo; Hidalgo/Pharr"
    listed = {f["id"]: f for f in findings(records, tables)}["prolific_purchasers"]
    assert listed["numbers"]["top"][0]["modelled_crossings"] == "Laredo; Hidalgo/Pharr"
    only_modelled = _records([{"purchaser": "Eli", "port": "2304", "kind": "modelled"}])
    text = {f["id"]: f for f in findings(only_modelled, build_tables(only_modelled,
                                                                      ports=PORTS))}
    sentence = text["most_prolific_purchaser"]["text"]
    assert "crossed at" not in sentence
    assert sentence.endswith("; modelled crossing (shortest route, not a record): Laredo.")


def test_entity_findings_speak_of_the_entity_and_never_name_a_small_cell():
    from geoflow.aggregate import entity_findings

    records = _records([
        {"purchaser": "Dora", "dealer": "Store A", "port": "2604", "kind": "known", "n": 2},
        {"purchaser": "Dora", "dealer": "Store B", "port": "2304", "n": 1},
    ])
    tables = build_tables(records, ports=PORTS)
    label = tables["by_purchaser"]["purchaser"].iloc[0]
    found = entity_findings(findings(records, tables), tables, kind="trafficker", label=label)
    assert found[0]["text"].startswith(f"{label} is tied to 3 traced guns, 2 of them from "
                                       "Store A (67%), from 2 dealers, bought 2008-01-15;")
    assert [f["id"] for f in found if f["id"].endswith("purchaser")] == []
    assert all(f["text"].startswith(f"Among {label}'s guns: ") for f in found[1:])
    hidden = entity_findings(findings(records, tables, min_cell=5), tables, kind="trafficker",
                             label=label, min_cell=5)
    assert label not in json.dumps(hidden)  # fewer than --min-cell guns: never named
    assert hidden[0]["text"].startswith("This purchaser is tied to 3 traced guns")
    assert "purchaser" not in hidden[0]["numbers"]
    # a Mexican state's own set: its summary says where its guns were recovered
    mx = entity_findings(findings(records, tables), tables, kind="mx-state", label="Tamaulipas")
    assert [f["id"] for f in mx].count("top_recovery_states") == 0
    assert [f["id"] for f in mx].count("top_source_states") == 1
    # a US state's set keeps it, scoped, "Mexican" capitalised as a proper adjective
    us = entity_findings(findings(records, tables), tables, kind="state", label="Texas")
    scoped = next(f["text"] for f in us if f["id"] == "top_recovery_states")
    assert scoped.startswith("Among guns sold in Texas: top Mexican states of recovery (")


def test_top_item_in_blocks_of_item_codes_equals_one_pass(monkeypatch):
    # a large input counts (group, item) pairs a range of item codes at a time: the top
    # item, its count (ties to the lowest code) and distinct items must not change
    import numpy as np

    from geoflow import aggregate

    rng = np.random.default_rng(7)
    for trial in range(200):
        size, groups, items = rng.integers(1, 300), rng.integers(1, 10), rng.integers(1, 40)
        group, item = rng.integers(0, groups, size), rng.integers(-1, items, size)
        weights = rng.integers(0, 4, size) if trial % 2 else None
        monkeypatch.setattr(aggregate, "TOP_ITEM_BLOCK", 10**9)
        whole = aggregate.top_item(group, item, groups, weights)
        monkeypatch.setattr(aggregate, "TOP_ITEM_BLOCK", int(rng.integers(1, 40)))
        blocks = aggregate.top_item(group, item, groups, weights)
        for one, many in zip(whole, blocks, strict=True):
            assert one.tolist() == many.tolist(), trial


def test_purchasers_left_out_of_the_table_are_counted_as_not_listed(records):
    from geoflow.privacy import list_purchasers

    def listing(min_guns, min_cell):
        purchasers = by_purchaser(records, min_guns=min_guns)
        tables = {"by_purchaser": purchasers, "by_trafficker": by_trafficker(records)}
        return list_purchasers(tables, min_cell=min_cell)

    full_tables, full = listing(0, 11)
    cut_tables, cut = listing(11, 11)  # Beto (10 guns) and Caro (2) only counted
    assert cut.not_listed == full.not_listed == {"purchasers": 2, "guns": 12}
    assert cut_tables["by_purchaser"].equals(full_tables["by_purchaser"])
    with pytest.raises(ValueError, match="min-cell"):  # a table missing listable purchasers
        listing(11, 3)


def test_by_purchaser_lists_no_purchaser_the_records_do_not_name(records):
    # a chunked read's id categories hold every name of the file, possessors' too
    ids = records["purchaser_id"].astype("category")
    ids = ids.cat.add_categories(["P-000000", "P-ffffff"]).cat.reorder_categories(
        sorted([*ids.cat.categories, "P-000000", "P-ffffff"]))
    wider = records.assign(purchaser_id=ids, purchaser_label=ids)
    table = by_purchaser(wider)
    assert table.equals(by_purchaser(records))
    assert table.attrs["left_out"]["purchasers"] == 0
    assert by_purchaser(wider, min_guns=5).attrs["left_out"] == {
        "min_guns": 5, "purchasers": 1, "guns": 2}


def _random_text(rng, values: list, size: int) -> pd.Series:
    """``size`` text values drawn from ``values`` (None for NA)."""
    import numpy as np

    return pd.Series(rng.choice(np.array(values, dtype=object), size), dtype="string")


def _pandas_ngroup(keys: list[pd.Series]):
    """pandas' own group numbers over ``keys`` (first appearance, NA a value): the reference."""
    import numpy as np

    return pd.Series(np.zeros(len(keys[0]))).groupby(
        keys, sort=False, dropna=False, observed=True).ngroup().to_numpy()


def test_recovery_codes_number_places_as_a_groupby_in_first_seen_order():
    # one key at a time, without pandas' grouper: the same codes (NA a value like any other,
    # −1 only with neither a place nor coordinates), for text and categorical places
    import numpy as np

    from geoflow.aggregate import recovery_codes, recovery_keys

    rng = np.random.default_rng(3)
    for trial in range(100):
        size = int(rng.integers(1, 150))
        place = _random_text(rng, ["a", "b", "c", None], size)
        frame = pd.DataFrame({
            "recovery_place": place.astype("category") if trial % 2 else place,
            "recovery_lat": rng.choice([19.43261, 19.43264, 25.7, np.nan], size),
            "recovery_lon": rng.choice([-99.1, -98.123456, np.nan], size)})
        unknown = frame.isna().all(axis=1).to_numpy()
        expected = np.where(unknown, -1, _pandas_ngroup(recovery_keys(frame)))
        assert recovery_codes(frame).tolist() == expected.tolist(), trial


def test_first_seen_codes_pass_over_keys_without_any_value():
    # a file without coordinates: its all-empty latitude and longitude part no rows, and are
    # not hashed; the codes stay a groupby's
    import numpy as np

    from geoflow.aggregate import first_seen_codes

    rng = np.random.default_rng(5)
    text = _random_text(rng, ["x", "y", None], 60)
    empty_text = pd.Series([None] * 60, dtype="str")
    for keys in ([text, pd.Series(np.full(60, np.nan)), empty_text, text.str.upper()],
                 [pd.Series(np.full(60, np.nan)), empty_text],
                 [empty_text.astype("category"), text]):
        assert first_seen_codes(keys).tolist() == _pandas_ngroup(keys).tolist()


def test_first_seen_codes_number_rows_as_a_groupby_over_several_keys():
    # the flows' and layers' group codes, one key at a time: the same numbers as pandas'
    # grouper (first appearance, NA a value), for categorical, text, float and int keys
    import numpy as np

    from geoflow.aggregate import first_rows, first_seen_codes

    rng = np.random.default_rng(11)
    for trial in range(100):
        size = int(rng.integers(1, 200))
        text = _random_text(rng, ["x", "y", "z", None], size)
        keys = [text.astype("category") if trial % 2 else text,
                pd.Series(rng.choice([0.5, -2.25, np.nan], size)),
                pd.Series(rng.integers(0, 3, size)),
                text.str.upper().astype("category")][: 1 + trial % 4]
        codes = first_seen_codes(keys)
        assert codes.tolist() == _pandas_ngroup(keys).tolist(), trial
        # the first row of each group, found without a sort, is the sorting way's answer
        n = int(codes.max()) + 1
        assert first_rows(codes, n).tolist() == np.unique(codes, return_index=True)[1].tolist()
        shuffled = rng.permutation(n)[codes]  # codes not in order of first appearance
        assert (first_rows(shuffled, n).tolist()
                == np.unique(shuffled, return_index=True)[1].tolist()), trial
        # codes with gaps, or −1 (left out) among them: the first row of each code present
        for other in (shuffled * 3, np.where(shuffled == 0, -1, shuffled)):
            assert (first_rows(other, n).tolist()
                    == np.unique(other, return_index=True)[1].tolist()), trial
    # keys whose codes together pass int64 (3,001^6 > 2^63): renumbered on the way
    wide = [pd.Series(pd.Categorical.from_codes(rng.integers(-1, 3000, 5000),
                                                categories=[f"c{i}" for i in range(3000)]))
            for _ in range(6)]
    # (rows all apart once renumbered: numbered in row order at once; or rows repeated,
    # followed alone through the other keys, renumbered again among themselves)
    repeated = [pd.concat([key, key.iloc[2000:2100]], ignore_index=True) for key in wide]
    for keys in (wide, [wide[0], pd.Series(rng.choice([0.5, np.nan], 5000)), *wide[1:]],
                 repeated, repeated * 2):
        assert first_seen_codes(keys).tolist() == _pandas_ngroup(keys).tolist()
    # five keys of 2^16 values (NA one of them): two rows differing in the first key only
    # would get one code if the digits wrapped past 2^64
    many = pd.Index([f"v{i}" for i in range(2**16 - 1)])
    keys = [pd.Series(pd.Categorical.from_codes([0, 1], categories=many))] + [
        pd.Series(pd.Categorical.from_codes([5, 5], categories=many)) for _ in range(4)]
    assert first_seen_codes(keys).tolist() == [0, 1]


def test_stable_order_is_a_stable_argsort_of_codes():
    # the geocode report's first lines and the medians put records in this order: equal
    # codes keep their record order, however wide the codes
    from geoflow.aggregate import stable_order

    rng = np.random.default_rng(5)
    for high in (1, 3, 20_000, 2**16, 2**16 + 1, 2**40, 2**62):  # 16-bit codes: a radix sort
        codes = rng.integers(0, high, 5_000, dtype=np.int64)
        codes[::7] = codes[0]  # many ties
        codes[1] = high - 1
        assert stable_order(codes).tolist() == np.argsort(codes, kind="stable").tolist(), high
    assert stable_order(np.zeros(0, dtype=np.int64)).tolist() == []


def test_weighted_median_by_distinct_value_and_by_sorting_is_the_plain_median():
    # few groups are counted in a (group, value) table, many are sorted: both must give
    # numpy's median of the values repeated by their weights (NaN and weight 0 left out)
    import numpy as np

    from geoflow.aggregate import weighted_median

    rng = np.random.default_rng(5)
    for trial in range(300):
        size, groups = int(rng.integers(1, 60)), int(rng.integers(1, 5))
        # whole days are coded by offset; fractions or a range past DENSE_VALUES are hashed
        values = rng.choice([1.0, 2.0, 3.0, 5.0, 8.0, np.nan, 100.0] if trial % 4 else
                            [0.5, 2.25, 3.0, np.nan, 1e6, -7.0], size)
        # every third trial one record per gun: the keys are sorted with no order to carry
        weights = rng.integers(0, 4, size) if trial % 3 else np.ones(size, dtype=np.int64)
        group = rng.integers(0, groups, size)
        ok = np.isfinite(values) & (weights > 0)
        expected = [np.median(np.repeat(values[ok & (group == g)], weights[ok & (group == g)]))
                    if (ok & (group == g)).any() else np.nan for g in range(groups)]
        table = weighted_median(group, values, weights, groups)
        sorting = weighted_median(group, values, weights, 70_000)[:groups]  # too many groups
        np.testing.assert_array_equal(table, expected, err_msg=str(trial))
        np.testing.assert_array_equal(sorting, expected, err_msg=str(trial))


def test_pair_counts_in_place_equal_the_sorted_count():
    # few distinct keys (state pairs, ports) are counted with bincount: the same distinct
    # keys, in the same order, with the same counts or guns as np.unique gives
    import numpy as np

    from geoflow.aggregate import _pair_counts, weighted_count

    rng = np.random.default_rng(9)
    for trial in range(200):
        size, high = int(rng.integers(0, 300)), int(rng.choice([3, 50, 10**9]))
        keys = rng.integers(0, high, size).astype(np.int64)
        weights = rng.integers(0, 5, size) if trial % 2 else None
        pairs, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if weights is not None:
            counts = weighted_count(inverse, weights, len(pairs))
        got = _pair_counts(keys, weights)
        assert got[0].tolist() == pairs.tolist() and got[1].tolist() == counts.tolist()


def test_top_item_equals_a_groupby_of_the_pairs():
    # the most frequent item per group (records, or guns with weights; a tie to the lowest
    # code), its count and the distinct items, against pandas counting the same pairs
    import numpy as np

    from geoflow.aggregate import top_item

    rng = np.random.default_rng(11)
    for trial in range(300):
        size, groups = int(rng.integers(1, 400)), int(rng.integers(1, 30))
        items = int(rng.choice([3, 40, 5_000_000]))
        group, item = rng.integers(0, groups, size), rng.integers(-1, items, size)
        item[rng.random(size) < 0.3] = item[0]  # repeated items, hence ties and real tops
        weights = rng.integers(0, 4, size) if trial % 2 else None
        frame = pd.DataFrame({"g": group, "i": item,
                              "w": 1 if weights is None else weights})[item >= 0]
        counts = frame.groupby(["g", "i"])["w"].sum().reset_index()
        best = counts.sort_values(["g", "w", "i"], ascending=[True, False, True])
        best = best.drop_duplicates("g").set_index("g")
        expected_top = best["i"].reindex(range(groups), fill_value=-1)
        expected_count = best["w"].reindex(range(groups), fill_value=0)
        expected_distinct = counts.groupby("g").size().reindex(range(groups), fill_value=0)
        top, top_count, distinct = top_item(group, item, groups, weights)
        assert top.tolist() == expected_top.tolist(), trial
        assert top_count.tolist() == expected_count.tolist(), trial
        assert distinct.tolist() == expected_distinct.tolist(), trial


def test_groups_of_one_record_give_the_same_tops_medians_and_spans():
    # place-level flows: most groups hold one record, which is its own top item, median
    # and date span (no sort); the answers equal pandas' and numpy's over every group
    import numpy as np

    from geoflow.aggregate import alone_in_group, date_span, top_item, weighted_median

    rng = np.random.default_rng(17)
    short = 0
    for trial in range(200):
        size = int(rng.integers(4, 400))
        groups = int(size * rng.choice([0.5, 2.0, 3.0]))
        group = rng.integers(0, groups, size)
        item = rng.integers(-1, int(rng.choice([3, 50, 5_000_000])), size)
        weights = rng.integers(0, 4, size) if trial % 2 else None
        guns = np.ones(size, dtype=np.int64) if weights is None else weights
        short += alone_in_group(group, item >= 0, groups) is not None
        frame = pd.DataFrame({"g": group, "i": item, "w": guns})[item >= 0]
        counts = frame.groupby(["g", "i"])["w"].sum().reset_index()
        best = counts.sort_values(["g", "w", "i"], ascending=[True, False, True])
        best = best.drop_duplicates("g").set_index("g")
        top, top_count, distinct = top_item(group, item, groups, weights)
        assert top.tolist() == best["i"].reindex(range(groups), fill_value=-1).tolist()
        assert top_count.tolist() == best["w"].reindex(range(groups), fill_value=0).tolist()
        assert distinct.tolist() == counts.groupby("g").size().reindex(
            range(groups), fill_value=0).tolist()
        values = rng.choice([1.0, 2.0, 7.0, np.nan, 40.0] if trial % 3 else
                            [0.5, 2.25, np.nan, 1e6], size)
        ok = np.isfinite(values) & (guns > 0)
        expected = [np.median(np.repeat(values[ok & (group == g)], guns[ok & (group == g)]))
                    if (ok & (group == g)).any() else np.nan for g in range(groups)]
        np.testing.assert_array_equal(weighted_median(group, values, guns, groups), expected,
                                      err_msg=str(trial))
        days = rng.integers(0, 3000, size).astype("timedelta64[D]")
        dates = (np.datetime64("2010-01-01") + days).astype("datetime64[ns]")
        dates[rng.random(size) < 0.2] = np.datetime64("NaT")
        first, last = date_span(group, dates, groups)
        known = pd.Series(dates).notna().to_numpy()
        span = pd.DataFrame({"g": group[known], "d": dates[known]}).groupby("g")["d"]
        assert pd.Series(first).equals(span.min().reindex(range(groups)).reset_index(drop=True))
        assert pd.Series(last).equals(span.max().reindex(range(groups)).reset_index(drop=True))
    assert short > 100  # most trials took the short path
    # a grouping with few groups never tests for lone records
    assert alone_in_group(np.zeros(100, dtype=np.int64), np.ones(100, dtype=bool), 3) is None


def test_pair_counts_of_keys_too_large_to_pack_with_positions():
    # keys × records past int64 are ordered by an argsort instead: the same sums
    import numpy as np

    from geoflow.aggregate import _pair_counts

    keys = np.array([2**62, 5, 2**62, 7, 5, 2**62 + 1], dtype=np.int64)
    weights = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
    pairs, guns = _pair_counts(keys, weights)
    assert pairs.tolist() == [5, 7, 2**62, 2**62 + 1]
    assert guns.tolist() == [7, 4, 4, 6]


def test_positions_in_look_up_text_and_categoricals_alike():
    # each value's row in an index (−1: NA or absent), for text and for a categorical with
    # unused categories, at all rows or some: the answer of looking up each value's text
    from geoflow.aggregate import positions_in

    index = pd.Index(["MX-SON", "US-TX", "MX-CHH"])
    text = pd.Series(["US-TX", None, "MX-CHH", "US-ZZ", "US-TX"], dtype="string")
    coded = text.astype(pd.CategoricalDtype(["US-AZ", "US-TX", "US-ZZ", "MX-CHH"]))
    expected = [1, -1, 2, -1, 1]
    for values in (text, coded):
        assert positions_in(index, values).tolist() == expected
        assert positions_in(index, values, np.array([4, 1, 2])).tolist() == [1, -1, 2]


def test_categorical_take_holds_the_values_taken_once_each_sorted():
    values = pd.Series(["Tijuana", None, "Agua Prieta", "Nogales", "Tijuana"], dtype="string")
    index = np.array([0, 3, -1, 1, 4, 0, 3])
    taken = pd.Series(categorical_take(values, index))
    expected = values.array.take(index, allow_fill=True)
    assert taken.astype("string").tolist() == list(expected)  # the values, NA for -1 and None
    assert taken.cat.categories.tolist() == ["Nogales", "Tijuana"]  # used only, sorted
    assert taken.cat.categories.dtype == "string"
    assert taken.astype("string").equals(pd.Series(expected).astype("category").astype("string"))
    assert taken.cat.categories.equals(pd.Series(expected).astype("category").cat.categories)


def test_weighted_count_equals_a_groupby_sum_with_unit_and_other_weights():
    # unit weights are counted without float sums; codes < 0 are left out either way
    import numpy as np

    from geoflow.aggregate import weighted_count

    rng = np.random.default_rng(13)
    for trial in range(200):
        size, n = int(rng.integers(0, 300)), int(rng.integers(1, 40))
        codes = rng.integers(-2 if trial % 3 else 0, n, size)
        weights = (np.ones(size, dtype=np.int64) if trial % 2
                   else rng.integers(0, 5, size).astype(rng.choice([np.int64, float])))
        kept = codes >= 0
        expected = (pd.Series(weights[kept]).groupby(codes[kept]).sum()
                    .reindex(range(n), fill_value=0).to_numpy())
        got = weighted_count(codes, weights, n)
        assert got.dtype == np.int64 and got.tolist() == expected.astype(np.int64).tolist()


def test_day_codes_number_the_distinct_days_in_order_and_iso_dates_format_them():
    # dates of any time of day, NaT and days before 1970 against pandas' factorize of days
    import numpy as np

    from geoflow.aggregate import _years, day_codes, iso_dates

    rng = np.random.default_rng(17)
    for trial in range(100):
        size = int(rng.integers(0, 60))
        low = -30_000 if trial % 2 else 15_000
        ns = rng.integers(low * 86_400, 20_000 * 86_400, size) * 10**9 + rng.integers(0, 10**9)
        dates = ns.astype("datetime64[ns]")
        dates[rng.random(size) < 0.2] = np.datetime64("NaT")
        codes, days = day_codes(dates)
        expected, uniques = pd.factorize(dates.astype("datetime64[D]"), sort=True)
        assert codes.tolist() == expected.tolist()
        assert days.tolist() == np.asarray(uniques, dtype="datetime64[D]").tolist()
        text = iso_dates(pd.Series(dates))
        assert text.dtype == "string"
        assert text.tolist() == [pd.NA if pd.isna(d) else str(d)[:10] for d in dates]
        years = _years(pd.DataFrame({"purchase_date": dates}), "purchase_date")
        assert np.array_equal(years, pd.Series(dates).dt.year.to_numpy(dtype=float),
                              equal_nan=True)


def test_codes_of_a_categorical_are_pandas_sorted_factorize():
    # a categorical with sorted categories (some unused, NA) is coded from its own codes;
    # unsorted ones and plain text by pandas: the same codes and uniques either way
    import numpy as np

    from geoflow.aggregate import _codes

    rng = np.random.default_rng(29)
    words = ["US-TX", "MX-SON", "unknown", "a", "b b", "Zoë"]
    for trial in range(100):
        values = pd.Series(pd.array(rng.choice([*words, None], int(rng.integers(0, 50))),
                                    dtype="string"))
        categories = sorted(words) if trial % 2 else list(rng.permutation(words))
        for frame in (values, values.astype(pd.CategoricalDtype(categories))):
            codes, uniques = _codes(frame)
            expected, expected_uniques = pd.factorize(frame, sort=True)
            assert codes.dtype == np.int64 and codes.tolist() == expected.tolist()
            pd.testing.assert_index_equal(uniques, pd.Index(expected_uniques))


def test_recode_takes_each_code_through_the_table_and_keeps_na():
    # table[codes] with every negative code −1, an empty table giving −1 throughout, and the
    # table's integer type kept
    import numpy as np

    from geoflow.aggregate import recode

    rng = np.random.default_rng(43)
    for trial in range(100):
        size, width = int(rng.integers(0, 50)), int(rng.integers(0, 20))
        dtype = np.int32 if trial % 2 else np.int64
        table = rng.integers(0, 1000, width).astype(dtype)
        codes = rng.integers(-3, width, size) if width else rng.integers(-2, 3, size)
        expected = [-1 if c < 0 or not width else table[c] for c in codes]
        got = recode(codes, table)
        assert got.tolist() == expected
        assert got.dtype == (dtype if width else np.int64)


def test_hex_digits_are_the_lower_case_hex_of_each_row():
    import numpy as np

    from geoflow.aggregate import hex_digits

    rng = np.random.default_rng(47)
    octets = rng.integers(0, 256, (300, 8)).astype(np.uint8)
    octets[0], octets[1] = 0, 255
    for width in (2, 8, 10, 16):
        digits = hex_digits(octets, width)
        assert [bytes(row).decode() for row in digits] == [
            bytes(row).hex()[:width] for row in octets]


def test_sorted_categories_are_told_once_per_categories_object_and_forgotten_with_it():
    """A batch's entities share their columns' categories (hundreds of thousands of
    pseudonyms at a million records): whether they are sorted is found once and remembered
    only while they live, so a long batch does not keep them, and a new object is asked anew."""
    import gc

    from geoflow import aggregate

    ordered = pd.Index(["P-0a", "P-1b", "P-2c"], dtype="string[pyarrow]")
    unordered = pd.Index(["P-1b", "P-0a", "P-2c"], dtype="string[pyarrow]")
    numbers = pd.Index([3, 1, 2])
    for _ in range(2):
        assert aggregate._ascending(ordered) and not aggregate._ascending(unordered)
        assert not aggregate._ascending(numbers)
    ids = {id(ordered), id(unordered), id(numbers)}
    assert ids <= set(aggregate._ASCENDING)
    del ordered, unordered, numbers
    gc.collect()
    assert not ids & set(aggregate._ASCENDING)  # entries of other tests may go too
    again = pd.Index(["b", "a"], dtype="string[pyarrow]")  # possibly at a freed one's id
    assert not aggregate._ascending(again)


@pytest.mark.parametrize("categorical", [False, True])
def test_distinct_codes_give_each_value_back_from_its_code(categorical):
    """Text or categorical, each value is its code's distinct value, NA is −1, and a category
    no value holds is listed but never coded."""
    values = pd.Series(["Laredo", None, "Nogales", "Laredo", "El Paso"], dtype="string")
    if categorical:
        values = values.astype(pd.CategoricalDtype(["El Paso", "Laredo", "Nogales", "Unused"]))
    codes, distinct = distinct_codes(values)
    assert codes[1] == -1
    got = [None if c < 0 else distinct[c] for c in codes]
    assert got == ["Laredo", None, "Nogales", "Laredo", "El Paso"]
    assert ("Unused" in set(distinct)) is categorical
    assert "Unused" not in {distinct[c] for c in codes if c >= 0}


def test_python_values_are_the_cells_as_python_values_with_none_for_missing():
    # what the GeoPackage stores and the map's properties hold: None for NA and NaN, numbers
    # and flags as Python's own; an object column's cells are not changed in the frame
    import numpy as np

    from geoflow.aggregate import python_values

    frame = pd.DataFrame({
        "text": pd.array(["a", None, "c"], dtype="string"),
        "objects": pd.Series(["x", None, np.nan], dtype=object),
        "floats": [1.5, np.nan, 3.0], "ints": [1, 2, 3], "flags": [True, False, True],
        "nullable": pd.array([1, None, 3], dtype="Int64"),
        "category": pd.Categorical(["k", None, "k"])})
    values = {column: python_values(frame[column]) for column in frame.columns}
    assert values == {"text": ["a", None, "c"], "objects": ["x", None, None],
                      "floats": [1.5, None, 3.0], "ints": [1, 2, 3],
                      "flags": [True, False, True], "nullable": [1, None, 3],
                      "category": ["k", None, "k"]}
    assert [type(values[c][0]) for c in ("floats", "ints", "flags", "nullable")] == [
        float, int, bool, int]
    assert frame["objects"].isna().tolist() == [False, True, True]
    assert frame["objects"][2] is not None and frame["text"].isna().tolist() == [
        False, True, False]


def test_purchaser_tables_of_a_batch_made_at_once_are_each_entitys_own():
    # two entities buying from one store (one licence) that their records spell apart: each
    # entity's top dealer is named as its own first record names it, its purchasers ranked
    # and counted over its records alone, and what the floor leaves out counted per entity
    import numpy as np

    from geoflow.aggregate import build_tables, entity_tables, table_records

    records = table_records(make_records([
        {"purchaser": "Ann", "dealer": "Gun Shop", "ffl": "5-74-1", "n": 2},
        {"purchaser": "Bob", "dealer": "GUN SHOP INC", "ffl": "5-74-1", "n": 4},
        {"purchaser": "Ann", "dealer": "GUN SHOP INC", "ffl": "5-74-1", "n": 3},
        {"purchaser": "Cy", "dealer": "Other Store", "ffl": "9-11-2", "n": 1},
        {"purchaser": "Bob", "dealer": "Gun Shop", "ffl": "5-74-1", "n": 1},
        {"purchaser": "Dee", "dealer": "Other Store", "ffl": "9-11-2", "n": 1}]))
    entity = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1])
    made = entity_tables(records.assign(batch=entity), by="batch", ports=PORTS,
                         trafficker_min_guns=3, purchaser_min_guns=2)
    table, left = made["by_purchaser"], made["purchasers_left_out"]
    for code in (0, 1):
        own = build_tables(records[entity == code], ports=PORTS, trafficker_min_guns=3,
                           purchaser_min_guns=2)["by_purchaser"]
        mine = table[table["batch"] == code].drop(columns="batch").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, own, check_column_type=False)
        counted = left[left["batch"] == code]
        assert own.attrs["left_out"] == {"min_guns": 2,
                                         "purchasers": int(counted["purchasers"].sum()),
                                         "guns": int(counted["guns"].sum())}
    assert table.loc[table["batch"] == 0, "top_dealer"].tolist() == ["Gun Shop"]
    assert table.loc[table["batch"] == 1, "top_dealer"].tolist() == ["GUN SHOP INC"] * 2
    assert left["purchasers"].tolist() == [1, 1] and left["guns"].tolist() == [1, 1]  # Cy, Dee


def test_sorted_keys_sorts_as_numpy_does_below_and_above_32_bits():
    """Keys under 2³² are sorted as 32-bit numbers: the same order and values as numpy's sort
    of the int64 keys, at the edges of the range too."""
    from geoflow.aggregate import _pair_counts, sorted_keys

    rng = np.random.default_rng(7)
    for high in (2, 1 << 20, (1 << 32) - 1, 1 << 32, 1 << 40):
        keys = rng.integers(0, high, 50_000, dtype=np.int64)
        keys[:3] = [0, high - 1, high - 1]
        got = sorted_keys(keys)
        assert got.dtype == np.int64
        assert np.array_equal(got, np.sort(keys))
        pairs, counts = _pair_counts(keys, None)
        want_pairs, want_counts = np.unique(keys, return_counts=True)
        assert np.array_equal(pairs, want_pairs) and np.array_equal(counts, want_counts)
    assert len(sorted_keys(np.zeros(0, dtype=np.int64))) == 0
    assert [len(a) for a in _pair_counts(np.zeros(0, dtype=np.int64), None)] == [0, 0]
