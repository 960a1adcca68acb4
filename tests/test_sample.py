"""The synthetic sample: its headline facts, computed from the written file (not from the
generator's constants), read back with pandas and with the project's own reader/geocoder."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from geoflow.cli import cli
from geoflow.crossings import match_crossing
from geoflow.errors import GeoflowError, OutputError
from geoflow.geocode import geocode_traces
from geoflow.io import read_traces
from geoflow.places import normalise_country
from geoflow.privacy import normalise_names
from geoflow.sample import make_sample, sample_path, write_sample

LAREDO_PORT = "2304"


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample") / "traces.csv")


@pytest.fixture(scope="module")
def raw(sample_file):
    """The file as plain text cells, as any CSV tool would see it."""
    return pd.read_csv(sample_file, dtype=str, keep_default_na=False, encoding="utf-8")


@pytest.fixture(scope="module")
def records(sample_file):
    return read_traces(sample_file)


@pytest.fixture(scope="module")
def geocoded(records):
    return geocode_traces(records.records)[0]


def purchases(frame: pd.DataFrame, *, buyer: str, store: str) -> pd.DataFrame:
    """Guns per purchaser (names compared accent/case/space-insensitively) and their top store."""
    who = normalise_names(frame[buyer].replace("", pd.NA))
    per_store = frame.assign(who=who).groupby(["who", store]).size()
    table = pd.DataFrame({
        "guns": per_store.groupby(level="who").sum(),
        "top_store_guns": per_store.groupby(level="who").max(),
    })
    table["top_share"] = table["top_store_guns"] / table["guns"]
    return table


def rifle_share(frame: pd.DataFrame, year: int) -> float:
    years = pd.to_datetime(frame["Recovery Date"], format="%m/%d/%Y").dt.year
    return float((frame.loc[years == year, "Weapon Type"] == "RIFLE").mean())


# --- the headline facts ------------------------------------------------------------------------

def test_default_size_all_recovered_in_mexico_2007_to_2010(raw, records):
    assert len(raw) == 2922
    assert records.source["rows_read"] == 2922 and len(records.rejects) == 0
    assert (normalise_country(raw["Recovery Country"]) == "MX").all()
    years = records.records["recovery_date"].dt.year
    assert years.between(2007, 2010).all()
    assert set(years) == {2007, 2008, 2009, 2010}


def test_every_record_is_labelled_synthetic_with_unique_trace_numbers(raw):
    assert (raw["Dataset"] == "SYNTHETIC SAMPLE").all()
    assert raw["Trace Number"].is_unique
    assert raw["Trace Number"].str.fullmatch(r"T20(07|08|09|10)\d{7}").all()
    assert raw["Serial Number"].str.fullmatch(r"[A-Z]{3}\d{6}").all()


def test_the_reader_maps_every_header_to_a_canonical_column(records):
    mapped = set(records.source["header_map"].values())
    assert {"trace_id", "purchaser_name", "dealer_name", "dealer_ffl", "dealer_zip",
            "recovery_city", "recovery_state", "crossing", "recovery_date"} <= mapped
    rec = records.records
    assert rec["purchase_date"].notna().all() and rec["recovery_date"].notna().all()
    # A few data-entry slips (purchase after recovery) are flagged, not dropped.
    slips = int(rec["flag_recovery_before_purchase"].sum())
    assert 0 < slips < 0.01 * len(rec)


def test_eleven_purchasers_with_ten_or_more_guns_nine_mostly_at_one_store(records):
    table = purchases(records.records, buyer="purchaser_name", store="dealer_ffl")
    heavy = table[table["guns"] >= 10]
    assert len(heavy) == 11
    assert int((heavy["top_share"] > 0.5).sum()) == 9
    # Everyone else bought at most nine: no accidental heavy buyer from invented names.
    assert table.loc[table["guns"] < 10, "guns"].max() == 9


def test_rogelio_barajas_gat_guns_east_dundee_laredo(raw):
    mine = raw[normalise_names(raw["Purchaser Name"]) == "rogelio barajas"]
    gat = mine[mine["FFL Name"] == "GAT Guns"]
    assert len(gat) >= 69 and len(mine) > len(gat)  # a few guns from other stores too
    assert set(gat["FFL City"]) == {"E DUNDEE"}
    assert set(gat["FFL State"]) == {"IL"} and set(gat["FFL Zip"]) == {"60118"}
    assert (match_crossing(mine["Crossing"]) == LAREDO_PORT).all()
    assert mine["Crossing"].nunique() > 1  # written in more than one way
    # DOMAIN.md: a rifle of his was recovered in Mexico in September 2008.
    sept_2008 = mine[mine["Recovery Date"].str.match(r"09/\d\d/2008")]
    assert (sept_2008["Weapon Type"] == "RIFLE").any()


def test_paul_giovanni_de_la_rosa_hart_brothers_albert_lea_laredo(raw):
    mine = raw[normalise_names(raw["Purchaser Name"]) == "paul giovanni de la rosa"]
    assert len(mine) == 34
    hart = mine[mine["FFL Name"] == "Hart Brothers"]
    assert len(hart) == 28
    assert set(hart["FFL City"]) == {"ALBERT LEA"} and set(hart["FFL State"]) == {"MN"}
    assert (match_crossing(mine["Crossing"]) == LAREDO_PORT).all()
    five_seven = (mine["Manufacturer"] == "FN Herstal") & (mine["Model"] == "Five-seveN")
    assert five_seven.sum() >= 15


def test_only_the_documented_cases_carry_published_names(raw):
    names = normalise_names(raw["Purchaser Name"]).dropna().unique()
    others = [n for n in names if n not in ("rogelio barajas", "paul giovanni de la rosa")]
    assert not [n for n in others if "barajas" in n or "de la rosa" in n]
    dealers = set(raw["FFL Name"]) - {"GAT Guns", "Hart Brothers"}
    assert not [d for d in dealers if "GAT" in d.split() or "Hart" in d.split()]
    assert len(names) > 1000


# --- the rest looks like trace data ------------------------------------------------------------

def test_hundreds_of_dealers_mostly_texas_arizona_california(raw):
    assert raw["FFL Number"].nunique() >= 200
    assert raw["FFL Number"].str.fullmatch(r"\d-\d\d-\d{3}-0[12]-\d[A-M]-\d{5}").all()
    assert raw.groupby("FFL Number")["FFL Name"].nunique().max() == 1
    share = raw["FFL State"].value_counts(normalize=True)
    assert share[["TX", "AZ", "CA"]].sum() > 0.6
    assert share.index[0] == "TX"
    assert {"IL", "MN"} <= set(share.index)  # the long-haul routes
    top = set(raw["FFL City"].value_counts().index[:6])
    assert len(top & {"HOUSTON", "TUCSON", "PHOENIX", "EL PASO", "SAN ANTONIO"}) >= 4
    missing_zip = (raw["FFL Zip"] == "").mean()
    assert 0.01 < missing_zip < 0.25


def test_place_strings_are_written_the_messy_ways_records_write_them(raw):
    us_cities = set(raw["FFL City"])
    assert {"FT WORTH", "E DUNDEE", "ST LOUIS", "MC ALLEN"} <= us_cities
    mx_cities = set(raw["Recovery City"])
    assert {"CD. JUAREZ", "NVO LAREDO", "CULIACAN"} <= mx_cities
    assert any(re.fullmatch(r"[^,]+, [A-Z. ]+\.", c) for c in mx_cities)  # "REYNOSA, TAMPS."
    assert {"CHIH.", "TAMPS.", "D.F.", "EDO. MEX.", "N.L."} <= set(raw["Recovery State"])


def test_recoveries_geocode_across_most_mexican_states_with_every_accounting_path(geocoded):
    states = geocoded["recovery_admin1"].dropna()
    assert states.str.startswith("MX-").all()
    assert states.nunique() >= 25
    levels = geocoded["recovery_geocode_level"].fillna("").value_counts()
    assert levels.get("city", 0) > 0.95 * len(geocoded)
    assert levels.get("state", 0) > 0  # a recovery state but no city
    assert levels.get("", 0) > 0  # an unknown place: unplaced, not lost
    assert (geocoded["dealer_admin1"].str.startswith("US-")).all()
    dealer_levels = set(geocoded["dealer_geocode_level"])
    assert {"zip", "city"} <= dealer_levels


def test_rifles_gain_on_pistols(raw):
    first, last = rifle_share(raw, 2007), rifle_share(raw, 2010)
    assert 0.2 < first < 0.36
    assert last > first + 0.05


def test_time_to_crime_is_realistic(records):
    years = records.records["time_to_crime_days"] / 365.25
    assert 1 <= years.median() <= 3
    assert (years < 1).mean() > 0.1  # the trafficking tail
    assert (years > 10).mean() > 0.02


def test_crossing_known_for_a_minority_and_possessors_often_empty(raw):
    assert 0.02 < (raw["Crossing"] != "").mean() < 0.3
    assert match_crossing(raw.loc[raw["Crossing"] != "", "Crossing"]).notna().all()
    assert 0.3 < (raw["Possessor Name"] == "").mean() < 0.9


# --- scaling, determinism, files ------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_records(tmp_path, sample_file):
    again = write_sample(tmp_path / "again.csv")
    assert again.read_bytes() == sample_file.read_bytes()
    other = write_sample(tmp_path / "other.csv", seed=7)
    assert other.read_bytes() != sample_file.read_bytes()


def test_make_sample_is_what_write_sample_writes(tmp_path):
    frame = make_sample(rows=800, seed=3)
    written = pd.read_csv(write_sample(tmp_path / "s.csv", rows=800, seed=3), dtype="string")
    pd.testing.assert_frame_equal(frame, written)


def test_more_rows_keep_the_shape(tmp_path):
    raw = pd.read_csv(write_sample(tmp_path / "big.csv", rows=20_000), dtype=str,
                      keep_default_na=False)
    assert len(raw) == 20_000 and raw["Trace Number"].is_unique
    table = purchases(raw, buyer="Purchaser Name", store="FFL Number")
    heavy = table[table["guns"] >= 10]
    expected = round(11 * 20_000 / 2922)
    assert len(heavy) == expected
    assert abs((heavy["top_share"] > 0.5).mean() - 9 / 11) < 0.05
    assert table.loc[table["guns"] < 10, "guns"].max() == 9
    assert raw["FFL Number"].nunique() > 1000
    share = raw["FFL State"].value_counts(normalize=True)
    assert share[["TX", "AZ", "CA"]].sum() > 0.6
    assert rifle_share(raw, 2010) > rifle_share(raw, 2007) + 0.05


def test_small_samples_work(tmp_path):
    frame = make_sample(rows=1, seed=0)
    assert len(frame) == 1 and frame["Dataset"].iloc[0] == "SYNTHETIC SAMPLE"
    small = make_sample(rows=300)
    assert len(small) == 300 and small["Purchaser Name"].notna().all()


def test_bad_options_and_unwritable_paths_raise_geoflow_errors(tmp_path):
    with pytest.raises(GeoflowError, match="rows"):
        make_sample(rows=0)
    with pytest.raises(GeoflowError, match="seed"):
        make_sample(seed=-1)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="file"):
        write_sample(blocker / "traces.csv", rows=10)
    with pytest.raises(OutputError):
        sample_path(blocker, rows=10)


def test_sample_path_writes_once_and_reuses_the_file(tmp_path, sample_file):
    first = sample_path(tmp_path)
    assert first.parent == tmp_path
    assert first.read_bytes() == sample_file.read_bytes()
    stamp = first.stat().st_mtime_ns
    assert sample_path(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
    assert sample_path(tmp_path, rows=700) != first


def test_sample_path_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOFLOW_CACHE_DIR", str(tmp_path / "cache"))
    path = sample_path(rows=600)
    assert path.parent == tmp_path / "cache" and path.is_file()


def test_cli_sample_writes_the_file(tmp_path):
    out = tmp_path / "out" / "traces.csv"
    result = CliRunner().invoke(cli, ["sample", "-o", str(out), "--rows", "700", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output
    assert out.read_bytes() == write_sample(tmp_path / "api.csv", rows=700, seed=3).read_bytes()
    assert len(pd.read_csv(out)) == 700


def test_cli_sample_help_says_synthetic_and_rejects_bad_rows(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["sample", "--help"]).output
    assert "SYNTHETIC" in help_text and "Example:" in help_text
    bad = runner.invoke(cli, ["sample", "-o", str(tmp_path / "x.csv"), "--rows", "0"])
    assert bad.exit_code == 2 and not (tmp_path / "x.csv").exists()


def test_names_are_unique_per_purchaser_even_at_scale():
    frame = make_sample(rows=60_000, seed=11)
    table = purchases(frame, buyer="Purchaser Name", store="FFL Number")
    assert table.loc[table["guns"] < 10, "guns"].max() <= 9
    assert len(table[table["guns"] >= 10]) == round(11 * 60_000 / 2922)
    assert np.isin(["rogelio barajas"], table.index).all()


def test_shipped_place_list_is_complete_and_real():
    from importlib.resources import files

    with files("geoflow.shapes_data").joinpath("sample_places.csv").open("rb") as handle:
        places = pd.read_csv(handle, dtype=str, keep_default_na=False)
    weights = places.groupby("kind")["weight"].apply(lambda w: w.astype(float).sum())
    assert set(weights.index) == {"us_town", "mx_city", "mx_state"}
    assert np.allclose(weights, 1.0, atol=1e-4)
    assert places["written"].str.len().gt(0).all()
    towns = places[places["kind"] == "us_town"]
    assert towns["zips"].str.fullmatch(r"\d{5}( \d{5}){0,3}").all()
    assert towns["code"].str.fullmatch(r"US-[A-Z]{2}").all()
    for name, code in [("East Dundee", "US-IL"), ("Albert Lea", "US-MN"), ("Houston", "US-TX"),
                       ("Tucson", "US-AZ"), ("McAllen", "US-TX")]:
        assert ((towns["name"] == name) & (towns["code"] == code)).any(), name
    cities = places[places["kind"] == "mx_city"]
    assert cities["code"].nunique() == 32
    # The geocoder (its own gazetteer, built separately) finds every spelling of a Mexican
    # city in the right state.
    spelled = cities.assign(spelling=cities["written"].str.split("|")).explode("spelling")
    found = geocode_traces(pd.DataFrame({
        "recovery_city": spelled["spelling"].to_numpy(),
        "recovery_state": spelled["code"].to_numpy(),
        "recovery_country": "MX",
    }))[0]
    assert (found["recovery_admin1"].to_numpy() == spelled["code"].to_numpy()).all()
    assert found["recovery_geocode_level"].isin(["city", "municipality"]).all()
    # And every ATF-style spelling of a US town, without its ZIP.
    spelled = towns.assign(spelling=towns["written"].str.split("|")).explode("spelling")
    found = geocode_traces(pd.DataFrame({
        "dealer_city": spelled["spelling"].to_numpy(),
        "dealer_state": spelled["code"].str[3:].to_numpy(),
    }))[0]
    assert (found["dealer_admin1"].to_numpy() == spelled["code"].to_numpy()).all()
    assert (found["dealer_geocode_level"] == "city").all()
