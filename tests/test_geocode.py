"""The offline geocoder places messy US and Mexican strings where they are, or says why not."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoflow.errors import GeocodeError, InputError
from geoflow.geocode import (
    CONFIDENT_SCORE,
    REPORT_COLUMNS,
    RESULT_COLUMNS,
    geocode,
    geocode_traces,
    load_gazetteer,
    load_overrides,
)
from geoflow.io import read_traces

DATA = Path(__file__).parent / "data"


def km(lat1, lon1, lat2, lon2):
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    h = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0 * np.arcsin(np.sqrt(h))


@pytest.fixture(scope="module")
def expected() -> pd.DataFrame:
    table = pd.read_csv(DATA / "geocode_expected.csv", comment="#", keep_default_na=False,
                        na_values={"lat": [""], "lon": [""]})
    parts = []
    for country, group in table.groupby("country", sort=False):
        got = geocode(group["query"], country=country)
        got.index = group.index
        parts.append(got.add_prefix("got_"))
    out = table.join(pd.concat(parts))
    dist = km(out["lat"], out["lon"], out["got_lat"], out["got_lon"])
    out["good"] = (dist <= out["tolerance_km"]) & (out["got_admin1"] == out["admin1"])
    return out


def test_expected_table_is_large_covers_the_kinds_and_says_where_values_came_from(expected):
    assert len(expected) >= 400
    assert set(expected["country"]) == {"US", "MX"}
    assert expected["query"].is_unique
    counts = expected["kind"].value_counts()
    for kind in ("small_us_town", "typo", "mx_locality", "shared_name", "abbreviation"):
        assert counts[kind] >= 50, kind
    assert (expected["source"].str.len() > 0).all()


def test_at_least_98_percent_within_tolerance_and_in_the_right_state(expected):
    misses = expected.loc[~expected["good"], ["query", "got_matched_name", "got_note"]]
    assert expected["good"].mean() >= 0.98, misses.to_string()
    for kind, good in expected.groupby("kind")["good"].mean().items():
        assert good >= 0.9, kind  # no kind of string is left behind


def test_no_wrong_answer_is_confident(expected):
    wrong = expected[~expected["good"] & (expected["got_score"] >= CONFIDENT_SCORE)]
    assert wrong.empty, wrong[["query", "got_matched_name", "got_score"]].to_string()


def test_no_answer_in_the_wrong_country(expected):
    placed = expected["got_admin1"].notna()
    assert (expected.loc[placed, "got_admin1"].str[:2] == expected.loc[placed, "country"]).all()


def test_names_shared_in_a_state_are_flagged_or_far_the_most_populous(expected):
    shared = expected[expected["kind"] == "shared_name"]
    flagged = shared["got_note"].str.contains("ambiguous|most populous of", regex=True)
    # (the source's older GeoNames release lists a few namesakes the shipped one merged)
    assert flagged.mean() >= 0.9, shared.loc[~flagged, ["query", "got_note"]].to_string()
    ambiguous = shared["got_candidates"] != ""
    assert (shared.loc[ambiguous, "got_score"] < CONFIDENT_SCORE).all()


@pytest.mark.parametrize(
    ("query", "place", "lat", "lon"),
    [  # the confident wrong answers of issue 14: a bigger place's alternate name won
        ("Colorado City, AZ", "Colorado City, AZ", 36.99, -112.98),  # not Yuma
        ("WOODSTOCK AL", "Woodstock, AL", 33.21, -87.15),  # not Anniston
        ("SAN LORENZO, PUE.", "San Lorenzo, Puebla", 20.35, -97.94),  # not Almecatla
        ("FAIRVIE CA", "Fairview, CA", 37.68, -122.05),  # a typo; not Costa Mesa
    ],
)
def test_an_own_name_beats_another_places_alternate_name(query, place, lat, lon):
    got = geocode([query]).iloc[0]
    assert got["matched_name"] == place, got["note"]
    assert km(lat, lon, got["lat"], got["lon"]) < 10
    assert got["form"] in ("name", "fuzzy name")


def test_bracketed_names_match_without_and_by_their_bracket():
    got = geocode(["MATANCILLAS, JAL.", "Village of Oak Creek, AZ",
                   "SAN ISIDRO MATANCILLAS, JAL."])
    assert got["matched_name"].tolist() == ["Matancillas (San Isidro Matancillas), Jalisco",
                                             "Village of Oak Creek (Big Park), AZ",
                                             "Matancillas (San Isidro Matancillas), Jalisco"]
    assert got["form"].tolist() == ["name without brackets", "name without brackets",
                                    "bracketed name"]
    assert (got["score"] >= CONFIDENT_SCORE).all()


def test_police_record_abbreviations_expand():
    got = geocode(["LAKELAND N WA", "V. DE ALVAREZ, COL.", "GRAL. ESCOBEDO, N.L.",
                   "H. CABORCA, SON.", "JOSE MA. MORELOS, Q. ROO", "SW RANCHES, FL"])
    assert got["matched_name"].str.split(",").str[0].tolist() == [
        "Lakeland North", "Ciudad de Villa de Álvarez", "Ciudad General Escobedo",
        "Heroica Caborca",
        "José María Morelos", "Southwest Ranches"]


def test_mich_is_told_apart_by_the_role():
    records = pd.DataFrame({"dealer_city": ["LANSING"], "dealer_state": ["MICH."],
                            "recovery_city": ["URUAPAN"], "recovery_state": ["MICH."]})
    out, _ = geocode_traces(records)
    assert out.loc[0, "dealer_admin1"] == "US-MI" and out.loc[0, "recovery_admin1"] == "MX-MIC"
    bare = geocode(["MICH.", "LANSING, MICH. 48933"])  # no role: a US ZIP decides
    assert bare.loc[0, "level"] == "" and "ambiguous" in bare.loc[0, "note"]
    assert bare.loc[1, "admin1"] == "US-MI"


def test_result_has_the_contract_columns_in_input_order_with_duplicates():
    got = geocode(["FT WORTH TX", "Tucson, Ariz.", "FT WORTH TX", None])
    assert tuple(got.columns) == RESULT_COLUMNS
    assert got["query"].tolist() == ["FT WORTH TX", "Tucson, Ariz.", "FT WORTH TX", ""]
    assert got.loc[0].equals(got.loc[2].rename(0))
    assert got["admin1"].iloc[:2].tolist() == ["US-TX", "US-AZ"]
    assert got.loc[3, "level"] == "" and got.loc[3, "note"] == "empty place"


@pytest.mark.parametrize(
    ("query", "name", "admin1"),
    [
        ("HEROICA MATAMOROS, TAMPS.", "Heroica Matamoros", "MX-TAM"),
        ("Culiacán Rosales, Sinaloa", "Culiacán", "MX-SIN"),
        ("DISTRITO FEDERAL", "Mexico City", "MX-CMX"),
        ("MEXICO, D.F.", "Mexico City", "MX-CMX"),
        ("CUAJIMALPA, D.F.", "Delegación Cuajimalpa", "MX-CMX"),
        ("MILPA ALTA, CDMX", "Milpa Alta", "MX-CMX"),
        ("VENUSTIANO CARRANZA, D.F.", "Venustiano Carranza", "MX-CMX"),
        ("TOLUCA, EDO. MEX.", "Toluca", "MX-MEX"),
        ("ECATEPEC, EDO. MEX.", "Ecatepec de Morelos", "MX-MEX"),
        ("NAUCALPAN, EDO. MEX.", "Naucalpan de Juárez", "MX-MEX"),
    ],
)
def test_alternate_and_historic_names(query, name, admin1):
    got = geocode([query], country="MX").iloc[0]
    assert got["admin1"] == admin1
    assert got["matched_name"].startswith(name)
    assert got["level"] in ("city", "municipality")


def test_accents_and_case_are_ignored():
    got = geocode(["Culiacán, Sin.", "CULIACAN, SIN.", "culiacan, sin"], country="MX")
    assert got["lat"].nunique() == 1 and got["score"].eq(100).all()


def test_ambiguous_names_without_a_state_are_reported_not_guessed():
    got = geocode(["Springfield", "Glendale"], country="US")
    assert (got["level"] == "").all()
    assert got["lat"].isna().all()
    assert got["note"].str.startswith("ambiguous").all()
    assert "SPRINGFIELD" in got.loc[0, "note"] and "US-IL" in got.loc[0, "note"]


def test_a_dominant_name_without_a_state_is_taken_with_a_low_score_and_a_note():
    got = geocode(["GUADALAJARA"], country="MX").iloc[0]
    assert got["admin1"] == "MX-JAL"
    assert got["score"] < 80
    assert "ambiguous" in got["note"] and "most populous" in got["note"]


def test_a_unique_name_without_a_state_is_placed_and_noted():
    got = geocode(["NVO LAREDO"], country="MX").iloc[0]
    assert got["admin1"] == "MX-TAM" and got["score"] == 90
    assert "no state given" in got["note"]


def test_same_named_places_in_one_state_are_ambiguous_with_their_candidates():
    gaz = load_gazetteer()
    index = gaz.names
    own = index[(index["key"] == "BENITO JUAREZ") & (index["admin1"] == "MX-CHH")
                & (index["form"] == "name")]
    named = gaz.places.loc[own["place"]]
    assert len(named) >= 2  # the gazetteer really has several, of similar size
    got = geocode(["BENITO JUAREZ, CHIH."]).iloc[0]
    biggest = named.sort_values("population").iloc[-1]
    assert (got["lat"], got["lon"]) == (biggest["lat"], biggest["lon"])
    assert got["note"].startswith(f"ambiguous: {len(named)} places named BENITO JUAREZ")
    assert got["score"] < CONFIDENT_SCORE
    assert got["candidates"].count("Benito Juárez, Chihuahua (") == len(named)


def test_a_far_more_populous_namesake_is_taken_with_a_note_not_as_ambiguous():
    got = geocode(["SPRINGFIELD, MO", "JUAREZ, CHIH."])
    assert got["matched_name"].tolist() == ["Springfield, MO", "Ciudad Juárez, Chihuahua"]
    assert (got["score"] >= CONFIDENT_SCORE).all() and (got["candidates"] == "").all()


def test_with_a_state_the_answer_lies_in_that_state():
    got = geocode(["NOGALES, SON.", "NOGALES, AZ", "NOGALES, VER.", "LAREDO, TAMPS."])
    assert got["admin1"].tolist()[:3] == ["MX-SON", "US-AZ", "MX-VER"]
    # Laredo is in Texas; in Tamaulipas there is none, so the state is all we can say.
    assert got.loc[3, "admin1"] == "MX-TAM"
    assert got.loc[3, "level"] in ("state", "city", "municipality")


def test_country_constrains_the_answer():
    got = geocode(["EL PASO, TX", "NOGALES"], country="MX")
    assert got.loc[0, "level"] == "" and "outside country MX" in got.loc[0, "note"]
    assert got.loc[1, "admin1"] == "MX-SON"
    assert geocode(["NOGALES"], country="US").loc[0, "admin1"] == "US-AZ"
    with pytest.raises(GeocodeError, match="country"):
        geocode(["X"], country="CA")


def test_fuzzy_match_stays_in_the_state_and_reports_its_score():
    got = geocode(["HERMOSILO, SON", "MONTERY, N.L.", "HERMOSILO, TX"])
    assert got.loc[0, "matched_name"] == "Hermosillo, Sonora"
    assert got.loc[1, "admin1"] == "MX-NLE" and got.loc[1, "matched_name"].startswith("Monterrey")
    assert got.loc[:1, "note"].str.contains("fuzzy").all()
    assert got.loc[:1, "score"].between(70, 95).all()
    assert got.loc[2, "admin1"] == "US-TX" and got.loc[2, "level"] == "state"


def test_zip_wins_and_a_zip_from_another_state_is_not_used():
    got = geocode(["AUSTIN, TX 78701", "AUSTIN, TX 60118"])
    assert got.loc[0, "level"] == "zip" and got.loc[0, "admin1"] == "US-TX"
    assert got.loc[1, "level"] == "city" and got.loc[1, "admin1"] == "US-TX"
    assert "60118 is in US-IL" in got.loc[1, "note"]
    mich = geocode(["DETROIT, MICH. 48201", "MORELIA, MICH. 58000"])  # no country given
    assert mich["admin1"].tolist() == ["US-MI", "MX-MIC"]
    assert mich.loc[0, "level"] == "zip" and mich.loc[1, "note"] == ""  # a código postal


def test_state_only_strings_get_the_state_point():
    got = geocode(["TAMAULIPAS", "S.L.P.", "B.C.S.", "Texas"])
    assert got["level"].eq("state").all()
    assert got["admin1"].tolist() == ["MX-TAM", "MX-SLP", "MX-BCS", "US-TX"]
    assert got["lat"].notna().all()


def test_unknown_place_in_a_known_state_falls_back_to_the_state_with_a_low_score():
    got = geocode(["QWERTYVILLE, CHIH."]).iloc[0]
    assert got["level"] == "state" and got["admin1"] == "MX-CHH" and got["score"] <= 30
    assert "not found" in got["note"]


def test_gazetteer_loads_fast_enough_and_is_indexed():
    import time

    load_gazetteer.cache_clear()
    start = time.perf_counter()
    gaz = load_gazetteer()
    assert time.perf_counter() - start < 2.0  # well under a second on a normal machine
    assert {"US", "MX"} <= set(gaz.places["country"])
    assert len(gaz.states) >= 83


# ----------------------------------------------------------------------------- overrides


def test_overrides_win_with_coordinates_or_a_replacement(tmp_path):
    path = tmp_path / "overrides.csv"
    path.write_text("place,lat,lon,replacement\n"
                    "\"Rancho El Sauz, Chih.\",28.5,-106.1,\n"
                    "\"LAREDO, TAMPS.\",,,\"NVO LAREDO, TAMPS\"\n"
                    "\"Houston, TX\",29.0,-95.0,\n", encoding="utf-8")
    overrides = load_overrides(path)
    got = geocode(["Rancho el Sauz, CHIH", "LAREDO, TAMPS.", "houston tx", "TUCSON, AZ"],
                  overrides=overrides)
    assert (got.loc[0, "lat"], got.loc[0, "lon"]) == (28.5, -106.1)
    assert got.loc[0, "source"] == "override" and got.loc[0, "level"] == "coordinates"
    assert got.loc[1, "matched_name"] == "Nuevo Laredo, Tamaulipas"
    assert got.loc[1, "source"] == "override" and "NVO LAREDO" in got.loc[1, "note"]
    assert (got.loc[2, "lat"], got.loc[2, "lon"]) == (29.0, -95.0)
    assert got.loc[3, "source"] == "offline"


def test_an_edited_report_can_be_passed_back_as_overrides(tmp_path):
    report = geocode(["QWERTYVILLE, CHIH.", "TUCSON, AZ"])
    report.loc[0, ["lat", "lon"]] = [28.1, -105.5]
    path = tmp_path / "report.csv"
    report.to_csv(path, index=False)
    got = geocode(["QWERTYVILLE, CHIH."], overrides=load_overrides(path)).iloc[0]
    assert (got["lat"], got["lon"], got["source"]) == (28.1, -105.5, "override")


def test_bad_overrides_name_file_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("place,lat,lon\nA,10,20\nB,north,20\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.csv.*line 3, column lat"):
        load_overrides(path)
    path.write_text("name,where\nA,B\n", encoding="utf-8")
    with pytest.raises(InputError, match="place"):
        load_overrides(path)
    with pytest.raises(InputError):
        load_overrides(tmp_path / "missing.csv")


# ----------------------------------------------------------------------------- traces


TRACES = """\
Trace Number,FFL Name,FFL City,FFL State,FFL Zip,Purchaser,Purchase Date,Recovery Date,\
Recovery City,Recovery State,Recovery Country,Recovery Lat,Recovery Lon
T1,GAT Guns,E DUNDEE,IL,60118,Rogelio Barajas,2007-01-02,2008-09-01,NVO. LAREDO,TAMPS.,,,
T2,GAT Guns,E DUNDEE,IL,60118,Rogelio Barajas,2007-02-02,2008-09-01,NVO. LAREDO,TAMPS.,,,
T3,GAT Guns,E DUNDEE,IL,60118,Rogelio Barajas,2007-03-02,2008-10-01,CULIACAN,SIN.,MEXICO,,
T4,Hart Brothers,ALBERT LEA,MN,56007,Paul De La Rosa,2007-01-02,2008-09-01,MEXICO,D.F.,MEX,,
T5,Invented Guns,FT WORTH,TX,,Jane Doe,2007-01-02,2008-09-01,JUAREZ,,,,
T6,Invented Guns,FT WORTH,TX,,Jane Doe,2007-01-02,2008-09-01,,,,25.68,-100.31
T7,Invented Guns,NOWHERESVILLE,TX,,Jane Doe,2007-01-02,2008-09-01,GUATEMALA CITY,,GUATEMALA,,
T8,Other Guns,,,,John Roe,2007-01-02,2008-09-01,QWERTYVILLE,CHIH.,,,
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "traces.csv"
    path.write_text(TRACES, encoding="utf-8")
    read = read_traces(path)
    return read.records, *geocode_traces(read.records)


def test_trace_records_get_coordinates_level_score_state_and_place(traced):
    records, out, _ = traced
    assert len(out) == len(records)
    for role in ("dealer", "recovery"):
        for suffix in ("lat", "lon", "geocode_level", "geocode_score", "admin1", "place"):
            assert f"{role}_{suffix}" in out.columns
    by_id = out.set_index("trace_id")
    assert by_id.loc["T1", "dealer_admin1"] == "US-IL"
    assert by_id.loc["T1", "recovery_place"] == "Nuevo Laredo, Tamaulipas"
    assert by_id.loc["T3", "recovery_admin1"] == "MX-SIN"
    assert by_id.loc["T4", "recovery_admin1"] == "MX-CMX"
    assert by_id.loc["T5", "dealer_place"] == "Fort Worth, TX"


def test_report_counts_interleaved_records_and_lists_their_first_five_lines(tmp_path):
    # Culiacan alternates with Tijuana; three recoveries share the query "TORREON, COAH" and
    # two of them give coordinates (two places, one report row of that level)
    rows = ["Trace Number,FFL Name,FFL City,FFL State,Purchase Date,Recovery Date,"
            "Recovery City,Recovery State,Recovery Lat,Recovery Lon"]
    for i in range(9):
        city = ("CULIACAN", "TIJUANA", "CULIACAN")[i % 3]
        state = "BC" if city == "TIJUANA" else "SIN"
        rows.append(f"T{i},Gun Shop,LAREDO,TX,2007-01-02,2008-09-01,{city},{state},,")
    rows += ["T9,Gun Shop,LAREDO,TX,2007-01-02,2008-09-01,TORREON,COAH,25.54,-103.41",
             "T10,Gun Shop,LAREDO,TX,2007-01-02,2008-09-01,TORREON,COAH,,",
             "T11,Gun Shop,LAREDO,TX,2007-01-02,2008-09-01,TORREON,COAH,25.50,-103.40"]
    path = tmp_path / "traces.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    _, report = geocode_traces(read_traces(path).records)
    rec = report[report["role"] == "recovery"].set_index(["query", "level"])
    culiacan = rec.loc[rec.index.get_level_values("query").str.startswith("CULIACAN")]
    # line 2 is the header's next line: T0 is line 2, T2 line 4 …
    assert culiacan["records"].tolist() == [6]
    assert culiacan["first_lines"].tolist() == ["2 4 5 7 8"]
    tijuana = rec.loc[rec.index.get_level_values("query").str.startswith("TIJUANA")]
    assert tijuana["records"].tolist() == [3] and tijuana["first_lines"].tolist() == ["3 6 9"]
    torreon = rec.loc[rec.index.get_level_values("query").str.startswith("TORREON")]
    given = torreon.xs("coordinates", level="level")
    assert given["records"].tolist() == [2] and given["first_lines"].tolist() == ["11 13"]
    assert given[["lat", "lon", "admin1"]].isna().all(axis=None)  # no one point for both
    named = torreon.drop("coordinates", level="level")
    assert named["records"].tolist() == [1] and named["first_lines"].tolist() == ["12"]
    assert rec["records"].sum() == 12
    dealer = report[report["role"] == "dealer"]
    assert dealer["records"].tolist() == [12]
    assert dealer["first_lines"].tolist() == ["2 3 4 5 6"]


def test_coordinates_in_the_input_are_kept(traced):
    _, out, _ = traced
    row = out.set_index("trace_id").loc["T6"]
    assert (row["recovery_lat"], row["recovery_lon"]) == (25.68, -100.31)
    assert row["recovery_geocode_level"] == "coordinates"
    assert row["recovery_admin1"] == "MX-NLE"  # the state the point lies in


def test_report_lists_every_string_unmatched_first_and_accounts_for_every_record(traced):
    records, out, report = traced
    assert tuple(report.columns) == REPORT_COLUMNS
    for role in ("dealer", "recovery"):
        assert report.loc[report["role"] == role, "records"].sum() == len(records)
    unmatched = report["level"] == ""
    assert unmatched.any()
    assert unmatched.to_numpy()[: unmatched.sum()].all()  # unmatched rows come first
    placed = report[~unmatched]
    assert placed["score"].is_monotonic_increasing
    dundee = report[(report["role"] == "dealer") & report["query"].str.contains("DUNDEE")].iloc[0]
    assert dundee["records"] == 3 and dundee["first_lines"] == "2 3 4"
    notes = report.set_index(["role", "query"])["note"]
    assert "ambiguous" in notes["recovery", "JUAREZ"]
    assert "not covered: GUATEMALA" in notes["recovery", "GUATEMALA CITY"]
    assert notes["dealer", ""] == "empty place"
    assert (out["recovery_geocode_level"] == "").sum() == report.loc[
        (report["role"] == "recovery") & unmatched, "records"].sum()


def test_trace_overrides_from_a_file_win(tmp_path, traced):
    records, _, _ = traced
    path = tmp_path / "fix.csv"
    path.write_text("place,lat,lon\n\"JUAREZ\",31.7,-106.4\n", encoding="utf-8")
    out, report = geocode_traces(records, overrides=path)
    row = out.set_index("trace_id").loc["T5"]
    assert (row["recovery_lat"], row["recovery_lon"]) == (31.7, -106.4)
    assert report.set_index(["role", "query"]).loc[("recovery", "JUAREZ"), "source"] == "override"


# ----------------------------------------------------------------------------- CLI


def test_cli_geocodes_a_trace_file_and_writes_the_report(tmp_path):
    from click.testing import CliRunner

    from geoflow.cli import cli

    path = tmp_path / "traces.csv"
    path.write_text(TRACES, encoding="utf-8")
    out = tmp_path / "out" / "geocoded.csv"
    result = CliRunner().invoke(cli, ["geocode", str(path), "-o", str(out)], obj={})
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    report = pd.read_csv(out.parent / "geocode_report.csv", keep_default_na=False)
    assert len(rows) == 8 and {"dealer_lat", "recovery_geocode_level"} <= set(rows.columns)
    assert report["level"].iloc[0] == ""  # unmatched first
    assert report.groupby("role")["records"].sum().tolist() == [8, 8]
    assert "warning" not in result.output
    # a title above the header is skipped, and said, as run and summary say it
    titled = tmp_path / "titled.csv"
    titled.write_text("Traced firearms, 2019\n" + TRACES, encoding="utf-8")
    said = CliRunner().invoke(cli, ["geocode", str(titled), "-o", str(out)], obj={})
    assert said.exit_code == 0, said.output
    assert "warning: line 1 above the header skipped (a title or note)" in said.output
    assert len(pd.read_csv(out)) == 8


def test_cli_geocodes_one_column_formula_safe_and_names_a_missing_column(tmp_path):
    from click.testing import CliRunner

    from geoflow.cli import cli

    path = tmp_path / "places.csv"
    path.write_text('id,city\n1,"CD. JUAREZ, CHIH."\n2,"=HYPERLINK(""x"")"\n3,NOGALES\n',
                    encoding="utf-8")
    out = tmp_path / "places_out.csv"
    runner = CliRunner()
    result = runner.invoke(cli, ["geocode", str(path), "--column", "city", "--country", "MX",
                                 "-o", str(out)], obj={})
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert rows["admin1"].tolist() == ["MX-CHH", "", "MX-SON"]
    assert not rows["city"].str.startswith("=").any()  # formula-safe cells
    result = runner.invoke(cli, ["geocode", str(path), "--column", "town", "-o", str(out)],
                           obj={})
    assert result.exit_code == 4
    assert "places.csv" in result.output and "'town'" in result.output


def test_cli_geocodes_a_list_with_a_broken_row_and_accounts_for_it(tmp_path):
    # a one-column list, cp1252, semicolons, a blank line and a ragged row: the trace
    # reader's parser reads it; the ragged row is rejected with its line, not the file
    from click.testing import CliRunner

    from geoflow.cli import cli

    path = tmp_path / "lugares.csv"
    path.write_bytes("id;lugar\n1;Culiacán, Sin.\n\n2;Reynosa;TAMPS\n3;Tijuana, B.C.\n"
                     .encode("cp1252"))
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["geocode", str(path), "--column", "lugar", "-o",
                                      str(out)], obj={})
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out, dtype=str)
    assert rows["lugar"].tolist() == ["Culiacán, Sin.", "Tijuana, B.C."]
    assert rows["admin1"].tolist() == ["MX-SIN", "MX-BCN"]
    report = pd.read_csv(tmp_path / "geocode_report.csv", dtype=str).set_index("query")
    assert report.loc["Tijuana, B.C.", "first_lines"] == "5"  # its line in the file
    rejects = pd.read_csv(tmp_path / "out_rejects.csv")
    assert list(rejects.columns) == ["line", "column", "reason"]  # no raw line: no names
    assert (rejects["line"].tolist(), rejects["reason"].tolist()) == (
        [4], ["expected 2 fields, found 3"])
    assert ("warning: 1 row could not be read and is not in out.csv (line 4: expected 2 "
            "fields, found 3): listed in") in result.output
    # a trace file's rejected rows are accounted for the same way
    traces = tmp_path / "traces.csv"
    traces.write_text("FFL Name,FFL City,FFL State,Recovery City,Recovery State\n"
                      "A,Houston,TX,Reynosa,Tamaulipas\nB,Phoenix,AZ\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["geocode", str(traces), "-o", str(tmp_path / "t.csv")],
                                obj={})
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "t.csv")) == 1
    assert pd.read_csv(tmp_path / "t_rejects.csv")["line"].tolist() == [3]
    assert "1 row could not be read and is not in t.csv (line 3: expected 5" in result.output


def test_records_without_source_lines_zip_lost_zeros_and_state_only_dealers():
    records = pd.DataFrame({
        "dealer_city": ["BOSTON", None, "HOUSTON"],
        "dealer_state": ["MA", "TX", None],
        "dealer_zip": ["2134", "78701-1234", None],
        "recovery_city": ["TIJUANA", None, "Culiacan"],
        "recovery_state": ["B.C.", None, None],
        "recovery_country": [None, "US", "México"],
    })
    out, report = geocode_traces(records)
    assert out["dealer_geocode_level"].tolist() == ["zip", "zip", "city"]
    # the ZIP's centroid (Allston), named after the town the record gives
    assert out.loc[0, "dealer_place"] == "Boston, MA"
    assert out.loc[1, "dealer_place"] == "ZIP 78701 (Austin, TX)"  # no town given
    assert out.loc[2, "dealer_admin1"] == "US-TX" and out.loc[2, "dealer_geocode_score"] == 70
    houston = report.set_index(["role", "query"]).loc[("dealer", "HOUSTON"), "note"]
    assert "(US-TX, " in houston  # the chosen state is named first
    assert out.loc[2, "recovery_admin1"] == "MX-SIN"
    assert report.loc[report["role"] == "recovery", "records"].sum() == 3
    assert report["first_lines"].str.len().gt(0).all()  # lines count from 2 without source_line


def test_zip_match_keeps_zip_coordinates_but_names_the_town_of_the_record():
    got = geocode(["E DUNDEE, IL 60118", "FAKETOWN, TX 78201", "DALLAS, TX 60118"])
    assert got["level"].tolist() == ["zip", "zip", "city"]
    assert got.loc[0, "matched_name"] == "East Dundee, IL"
    assert abs(got.loc[0, "lat"] - 42.10) < 0.1 and abs(got.loc[0, "lon"] + 88.27) < 0.1
    assert got.loc[1, "matched_name"] == "ZIP 78201 (San Antonio, TX)"  # town unknown
    # a ZIP from another state is not trusted: the town is placed, and the note says why
    assert got.loc[2, "matched_name"] == "Dallas, TX"
    assert "not the given state" in got.loc[2, "note"]


def test_misspelt_town_without_a_state_is_corrected_only_among_big_towns():
    got = geocode(["TIJUNA", "SPRINGFEILD", "HOUSTN"], country=None)
    assert got.loc[0, "matched_name"] == "Tijuana, Baja California"
    assert "fuzzy match without a state" in got.loc[0, "note"] and got.loc[0, "score"] <= 80
    assert got.loc[1, "level"] == "" and got.loc[1, "note"].startswith("ambiguous")
    assert got.loc[2, "admin1"] == "US-TX" and got.loc[2, "score"] <= 70


def test_cli_geocodes_a_column_of_an_xlsx_table(tmp_path):
    from click.testing import CliRunner

    from geoflow.cli import cli

    path = tmp_path / "places.xlsx"
    pd.DataFrame({"lugar": ["NVO. LAREDO, TAMPS.", "TOLUCA, EDO. MEX."]}).to_excel(path,
                                                                               index=False)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["geocode", str(path), "--column", "lugar", "-o",
                                      str(out)], obj={})
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["admin1"].tolist() == ["MX-TAM", "MX-MEX"]
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"PK\x03\x04 not really a workbook")
    result = CliRunner().invoke(cli, ["geocode", str(broken), "--column", "lugar", "-o",
                                      str(out)], obj={})
    assert result.exit_code == 3 and "broken.xlsx" in result.output


def test_cli_geocode_column_finds_its_sheet_and_skips_a_title(tmp_path):
    """--column names the header wanted: a workbook is read from the first sheet naming it
    (not from a note or a traces sheet before it), a CSV's title lines above it are
    skipped, and stderr says so, as for a trace file."""
    from click.testing import CliRunner

    from geoflow.cli import cli

    book = tmp_path / "release.xlsx"
    with pd.ExcelWriter(book) as writer:
        pd.DataFrame({"Notes": ["places to check"]}).to_excel(writer, sheet_name="README",
                                                              index=False)
        pd.DataFrame({"Trace Number": ["T1"], "FFL City": ["Houston"]}).to_excel(
            writer, sheet_name="traces", index=False)
        pd.DataFrame({"lugar": ["NVO. LAREDO, TAMPS.", "TOLUCA, EDO. MEX."]}).to_excel(
            writer, sheet_name="lugares", index=False)
    titled = tmp_path / "titled.csv"
    titled.write_text('Places recovered, 2019\n\nlugar,armas\n"NVO. LAREDO, TAMPS.",3\n'
                      '"TOLUCA, EDO. MEX.",1\n', encoding="utf-8")
    for path, said in ((book, "sheet 'lugares' read; sheets 'README', 'traces' name no "
                              "column 'lugar'"),
                       (titled, "lines 1-2 above the header skipped (a title or note)")):
        out = tmp_path / f"{path.stem}.csv.out"
        result = CliRunner().invoke(cli, ["geocode", str(path), "--column", "lugar", "-o",
                                          str(out)], obj={})
        assert result.exit_code == 0, result.output
        assert said in result.output
        assert pd.read_csv(out)["admin1"].tolist() == ["MX-TAM", "MX-MEX"]


def test_frames_with_only_dealer_columns_geocode():
    out, report = geocode_traces(pd.DataFrame({"dealer_city": ["FT WORTH"],
                                               "dealer_state": ["TX"]}))
    assert out.loc[0, "dealer_place"] == "Fort Worth, TX"
    assert out.loc[0, "recovery_geocode_level"] == ""
    assert report.set_index("role").loc["recovery", "note"] == "empty place"


def test_report_row_for_given_coordinates_names_no_single_state():
    records = pd.DataFrame({
        "dealer_city": ["HOUSTON", "PHOENIX"], "dealer_state": ["TX", "AZ"],
        "recovery_city": [None, None], "recovery_state": [None, None],
        "recovery_lat": [25.68, 21.16], "recovery_lon": [-100.31, -86.85],
    })
    out, report = geocode_traces(records)
    assert out["recovery_admin1"].tolist() == ["MX-NLE", "MX-ROO"]
    row = report[(report["role"] == "recovery") & (report["level"] == "coordinates")]
    assert len(row) == 1 and row["records"].item() == 2
    assert pd.isna(row["admin1"].item())  # two states: the report must not pick one


def test_geocoded_columns_stay_on_their_records_whatever_the_index():
    records = pd.DataFrame({
        "dealer_city": ["HOUSTON", "PHOENIX", "HOUSTON"], "dealer_state": ["TX", "AZ", "TX"],
        "recovery_city": ["REYNOSA", "HERMOSILLO", "CULIACAN"],
        "recovery_state": ["TAMPS.", "SON.", "SIN."],
    }, index=[10, 3, 7])  # a filtered or reordered frame, not 0..n-1
    out, _ = geocode_traces(records)
    assert out["dealer_admin1"].tolist() == ["US-TX", "US-AZ", "US-TX"]
    assert out["recovery_admin1"].tolist() == ["MX-TAM", "MX-SON", "MX-SIN"]
    assert out["dealer_lat"].notna().all() and list(out.index) == [10, 3, 7]


def test_records_without_place_columns_are_all_unmatched():
    out, report = geocode_traces(pd.DataFrame({"serial_number": ["A1", "B2"]}))
    assert out["dealer_geocode_level"].tolist() == ["", ""]
    assert report.groupby("role")["records"].sum().to_dict() == {"dealer": 2, "recovery": 2}


SMALL_TOWNS = """\
Trace Number,FFL Name,FFL City,FFL State,FFL Zip,Purchaser,Purchase Date,Recovery Date,\
Recovery City,Recovery State,Recovery Country
T1,Desert Arms,COLORADO CITY,AZ,,Ann Buyer,2019-01-02,2019-06-01,MATANCILLAS,JAL.,
T2,Desert Arms,COLORADO CITY,AZ,,Ann Buyer,2019-01-09,2019-06-01,BENITO JUAREZ,CHIH.,
T3,Bibb Guns,WOODSTOCK,AL,,Bo Buyer,2019-02-02,2019-07-01,SAN LORENZO,PUE.,
T4,Bibb Guns,WOODSTOCK,AL,,Bo Buyer,2019-02-09,2019-07-01,,TAMPS.,
"""


@pytest.fixture(scope="module")
def small_town_run(tmp_path_factory):
    from click.testing import CliRunner

    from geoflow.cli import cli

    base = tmp_path_factory.mktemp("small")
    path = base / "traces.csv"
    path.write_text(SMALL_TOWNS, encoding="utf-8")
    result = CliRunner().invoke(cli, ["-q", "run", str(path), "-o", str(base / "out")], obj={})
    assert result.exit_code == 0, result.output
    return base / "out"


def _features(path: Path, key: str) -> dict:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    return {f["properties"][key]: f for f in data["features"]}


def test_run_maps_a_small_town_named_like_a_bigger_places_alternate(small_town_run):
    dealers = _features(small_town_run / "dealers.geojson", "dealer_name")
    for name, (lat, lon) in {"Desert Arms": (36.99, -112.98),  # Colorado City, not Yuma
                             "Bibb Guns": (33.21, -87.15)}.items():  # Woodstock, not Anniston
        lon_got, lat_got = dealers[name]["geometry"]["coordinates"]
        assert km(lat, lon, lat_got, lon_got) < 10, name
        props = dealers[name]["properties"]
        assert props["geocode_level"] == "city" and props["geocode_score"] == 100


def test_run_point_layers_carry_level_and_score_guesses_look_like_guesses(small_town_run):
    recoveries = _features(small_town_run / "recoveries.geojson", "recovery_place")
    matancillas = recoveries["Matancillas (San Isidro Matancillas), Jalisco"]["properties"]
    assert (matancillas["geocode_level"], matancillas["geocode_score"]) == ("city", 100)
    ambiguous = recoveries["Benito Juárez, Chihuahua"]["properties"]
    assert ambiguous["geocode_level"] == "city"
    assert ambiguous["geocode_score"] < CONFIDENT_SCORE
    state = recoveries["Tamaulipas"]["properties"]
    assert state["geocode_level"] == "state" and state["geocode_score"] < CONFIDENT_SCORE


def test_run_report_marks_ambiguous_rows_with_their_candidates(small_town_run):
    report = pd.read_csv(small_town_run / "geocode_report.csv", keep_default_na=False)
    assert {"form", "candidates"} <= set(report.columns)
    ambiguous = report[report["note"].str.startswith("ambiguous")]
    assert ambiguous["query"].tolist() == ["BENITO JUAREZ, CHIH."]
    row = ambiguous.iloc[0]
    assert row["score"] < CONFIDENT_SCORE and row["candidates"].count("Benito Juárez") == 2
    assert (report.loc[report["candidates"] == "", "note"].str.startswith("ambiguous") == 0).all()
    forms = report.set_index("query")["form"]
    assert forms["MATANCILLAS, JAL."] == "name without brackets"
    assert forms["COLORADO CITY, AZ"] == "name"


def test_report_for_counts_records_without_a_place_and_an_empty_subset():
    # a batch entity whose records have no dealer place at all (missing query and level, an
    # empty text alike) is counted on the report's unmatched dealer row, not an error
    from geoflow.geocode import report_for

    report = pd.DataFrame({c: [pd.NA, pd.NA] for c in REPORT_COLUMNS}).assign(
        role=["dealer", "recovery"], query=["", "Juárez, CHIH"], level=["", "city"],
        score=[0, 80], records=[9, 9], first_lines=["x", "x"])
    records = pd.DataFrame({
        "dealer_geocode_query": pd.Categorical([None, "", None]),
        "dealer_geocode_level": pd.Categorical([None, None, ""]),
        "recovery_geocode_query": pd.Categorical(["Juárez, CHIH"] * 3),
        "recovery_geocode_level": pd.Categorical(["city"] * 3),
        "source_line": [4, 7, 9],
    })
    got = report_for(report, records)
    assert got[["role", "query", "level", "records", "first_lines"]].values.tolist() == [
        ["dealer", "", "", 3, "4 7 9"], ["recovery", "Juárez, CHIH", "city", 3, "4 7 9"]]
    assert report_for(report, records.iloc[0:0]).empty
    nothing = records.assign(dealer_geocode_query=pd.Categorical([None] * 3),
                             dealer_geocode_level=pd.Categorical([None] * 3))
    pd.testing.assert_frame_equal(report_for(report, nothing), got)
    # another report (its keys are kept for the last one asked about): its own rows
    other = report.assign(query=["", "Reynosa, TAM"], score=[0, 90])
    moved = records.assign(recovery_geocode_query=pd.Categorical(["Reynosa, TAM"] * 3))
    assert report_for(other, moved)[["query", "score"]].values.tolist() == [
        ["", 0], ["Reynosa, TAM", 90]]
    assert report_for(other, records)["query"].tolist() == [""]  # Juárez: not in ``other``
    pd.testing.assert_frame_equal(report_for(report, records), got)


def test_set_writes_the_rows_named_and_refuses_others():
    from geoflow.geocode import _empty_result, _set

    result = _empty_result(pd.Series(["A", "B", "C"], index=[10, 20, 30]))
    _set(result, pd.Index([30, 10]), {"level": "city", "score": 90,
                                      "lat": pd.Series([3.0, 1.0], index=[30, 10])})
    assert result["level"].tolist() == ["city", "", "city"]
    assert result["lat"].tolist()[::2] == [1.0, 3.0] and np.isnan(result["lat"].iloc[1])
    with pytest.raises(KeyError):  # a row not in the result: no write to another one
        _set(result, pd.Index([40]), {"level": "zip"})
    assert result["level"].tolist() == ["city", "", "city"]


def test_entity_reports_give_each_entity_the_report_of_its_own_records():
    # a batch's reports at once: each entity's rows, counts, first lines and order are those
    # report_for gives its records alone, also where the report repeats a key (both rows go
    # to every entity using it) and for an entity whose places the report lacks
    from geoflow.geocode import entity_reports, report_for

    report = pd.DataFrame({c: [pd.NA] * 4 for c in REPORT_COLUMNS}).assign(
        role=["recovery", "dealer", "recovery", "recovery"],
        query=["Juárez, CHIH", "Laredo, TX", "Reynosa, TAM", "Juárez, CHIH"],
        level=["city", "city", "city", "city"], score=[80, 95, 90, 70], records=[1] * 4,
        first_lines=["x"] * 4)
    places = ["Juárez, CHIH", "Reynosa, TAM", "Juárez, CHIH", "Nuevo Laredo, TAM",
              "Reynosa, TAM", "Juárez, CHIH", None]
    records = pd.DataFrame({
        "dealer_geocode_query": pd.Categorical(["Laredo, TX", None, "Laredo, TX", "Laredo, TX",
                                                "Austin, TX", None, "Laredo, TX"]),
        "dealer_geocode_level": pd.Categorical(["city", None, "city", "city", "city", None,
                                                "city"]),
        "recovery_geocode_query": pd.Categorical(places),
        "recovery_geocode_level": pd.Categorical(["city"] * 6 + [None]),
        "source_line": [12, 3, 40, 41, 8, 99, 7],
    })
    entities = np.array([1, 0, 1, 2, 0, 1, 2])
    made, owners = entity_reports(report, records, entities)
    assert owners.tolist() == sorted(owners.tolist())  # entity by entity
    for entity in range(3):
        own = report_for(report, records[entities == entity])
        mine = made[owners == entity].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, own)
    juarez = made[(owners == 1) & (made["query"] == "Juárez, CHIH").to_numpy()]
    assert juarez[["score", "records", "first_lines"]].values.tolist() == [
        [70, 3, "12 40 99"], [80, 3, "12 40 99"]]  # both of the key's rows, by score
    assert entity_reports(report, records.drop(columns=[
        c for c in records.columns if "query" in c]), entities) is None
