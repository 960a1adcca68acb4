"""Count tables as input: small tables shaped like ATF's published ones (guns by source state;
by state and year; by US state and Mexican state), run end to end through the CLI, with the
accounting in rows and guns, the flows, the maps' layers and the analyst files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import pytest
from click.testing import CliRunner
from handmade import output_text
from test_outputs_doc import DOC, undocumented

from geoflow.aggregate import plural, weighted_median
from geoflow.cli import cli
from geoflow.counts import BORDER_PLACE
from geoflow.errors import SchemaError
from geoflow.io import parse_counts, read_traces

# "Firearms Recovered and Traced in Mexico", by US source state (ATF's published layout:
# a Total row at the bottom, thousands separators)
STATE_TABLE = """Source State,Firearms Traced
Texas,"1,234"
Arizona,567
California,300
New Mexico,abc
Florida,-3
Illinois,12.5
Total,"2,101"
,40
"""
STATE_YEAR_TABLE = """State,Year,Firearms
TX,2009,700
TX,2010,534
AZ,2009,300
AZ,2010,267
CA,2010,0
NM,20x0,9
"""
# US state × Mexican state, Spanish headers as Mexican releases write them
STATE_STATE_TABLE = """estado de origen,estado,número de armas
Texas,Tamaulipas,400
Texas,Chihuahua,250
Arizona,Sonora,320
Arizona,Sinaloa,80
California,Baja California,150
Texas,Nuevo León,-
"""


def _run(tmp_path: Path, name: str, text: str, *args: str) -> tuple[Path, dict]:
    source = tmp_path / f"{name}.csv"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / f"out-{name}"
    result = CliRunner().invoke(cli, ["-q", "run", str(source), "-o", str(out), *args],
                                obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _geojson(out: Path, name: str) -> list[dict]:
    return [f["properties"] for f in
            json.loads((out / f"{name}.geojson").read_text(encoding="utf-8"))["features"]]


def _check_accounting(out: Path, counts: dict) -> None:
    """Rows and guns add up, and every published total is in guns."""
    assert counts["rows_read"] == counts["rows_valid"] + counts["rows_rejected"]
    assert counts["rows_valid"] == counts["rows_placed"] + counts["rows_unplaced"]
    assert counts["guns_read"] == (counts["guns_placed"] + counts["guns_unplaced"]
                                   + counts["guns_rejected"])
    assert sum(f["guns"] for f in _geojson(out, "flows")) == counts["guns_placed"]
    kepler = pd.read_csv(out / "flowmap" / "kepler_flows.csv")
    assert kepler["guns"].sum() == counts["guns_placed"]
    for name in ("flows", "flows_dealer_port", "flows_port_place"):
        table = pd.read_csv(out / "flowmap" / f"{name}.csv")
        assert table["count"].sum() == counts["guns_placed"], name
    crossings = _geojson(out, "crossings")
    assert sum(c["guns"] for c in crossings) == counts["guns_placed"]
    assert (counts["guns_known_crossing"] + counts["guns_modelled_crossing"]
            == counts["guns_placed"])
    gpkg = pyogrio.read_dataframe(out / "geoflow.gpkg", layer="flows")
    assert gpkg["guns"].sum() == counts["guns_placed"]


def test_state_count_table_maps_the_us_side_and_flows_to_the_border(tmp_path):
    out, manifest = _run(tmp_path, "by_state", STATE_TABLE)
    counts = manifest["counts"]
    assert manifest["input"]["count_column"] == "Firearms Traced"
    # 8 rows: 3 good; abc, -3, 12.5 unreadable counts; the Total row; a row with no state
    assert (counts["rows_read"], counts["rows_valid"], counts["rows_rejected"]) == (8, 3, 5)
    assert (counts["guns_valid"], counts["guns_placed"], counts["guns_unplaced"]) == (
        2101, 2101, 0)
    # readable counts of rejected rows: the Total row's 2,101 and the stateless row's 40
    assert counts["guns_rejected"] == 2141 and counts["rows_rejected_count_unreadable"] == 3
    assert counts["guns_read"] == 4242
    _check_accounting(out, counts)
    rejects = pd.read_csv(out / "rejects.csv")
    reasons = dict(zip(rejects["line"], rejects["reason"], strict=True))
    assert reasons[5] == "count is not a non-negative integer: abc"
    assert reasons[6].endswith(": -3") and reasons[7].endswith(": 12.5")
    assert reasons[8].startswith("a totals row")
    assert set(rejects.loc[rejects["line"] == 5, "column"]) == {"Firearms Traced"}
    # the US side: choropleth in guns; no Mexican state, no recovery point is invented
    states = {s["code"]: s for s in _geojson(out, "states")}
    assert (states["US-TX"]["guns_sourced"], states["US-AZ"]["guns_sourced"],
            states["US-CA"]["guns_sourced"]) == (1234, 567, 300)
    assert all(s["guns_recovered"] == 0 for s in states.values() if s["country"] == "MX")
    assert _geojson(out, "recoveries") == [] and counts["recoveries"] == 0
    assert _geojson(out, "dealers") == []  # a bare state is no dealer
    flows = _geojson(out, "flows")
    assert sorted(f["guns"] for f in flows) == [300, 567, 1234]
    for flow in flows:  # each flow ends at its port: the border, no further
        assert flow["recovery_place"] == BORDER_PLACE
        assert (flow["recovery_lon"], flow["recovery_lat"]) == (flow["port_lon"],
                                                                 flow["port_lat"])
        assert flow["route_kind"] == "modelled" and flow["recovery_state"] == "unknown"
    table = pd.read_csv(out / "tables" / "by_us_state.csv")
    assert table.set_index("state")["guns"].to_dict() == {"US-TX": 1234, "US-AZ": 567,
                                                          "US-CA": 300}
    findings = {f["id"]: f for f in json.loads((out / "findings.json").read_text())}
    for key in ("prolific_purchasers", "short_time_to_crime", "top_dealers"):
        assert "not available in a count table" in findings[key]["text"], key
        assert findings[key]["numbers"] == {"available": False}
    assert "most_prolific_purchaser" not in findings
    assert "Texas (1,234" in findings["top_source_states"]["text"]
    summary = (out / "findings.md").read_text(encoding="utf-8")
    assert ("guns read 4,242; placed on the map 2,101; unplaced 0; in rejected rows 2,141"
            in summary)
    # the map says what it shows: states and ports, no "0 US dealers … to 0 places", and
    # its legend lists only the symbols drawn (ports)
    page = output_text(out / "map.html")
    ports = plural(counts["crossings"], "port")
    assert f"<p>2,101 traced guns from 3 US states, through {ports} of entry</p>" in page
    assert "port of entry (area" in page and "US dealer (circle" not in page
    assert "recovery place (area" not in page
    # its flows end at the border: no Mexican leg (a point at the port), no arrowhead saying
    # guns were recovered there, and the legend's title stops at the port
    assert "<h2>Guns by leg: US origin → port of entry</h2>" in page
    assert "arrowheads" not in page and "Mexican leg" not in page
    paths = tmp_path / "paths.html"  # one line per flow: none ends in an arrowhead either
    drawn = CliRunner().invoke(cli, ["-q", "map", str(tmp_path / "by_state.csv"), "-o",
                                     str(paths), "--flow-style", "paths"], obj={})
    assert drawn.exit_code == 0, drawn.output
    page = output_text(paths)
    assert "<h2>Flows: dealer → port of entry (guns)</h2>" in page and "arrowheads" not in page
    # a count table names no purchaser: its flows of hundreds of guns are no small cells,
    # and neither the map nor findings.md says they withhold one
    assert manifest["suppression"]["cells"]["flows"] == {"rows": 0, "guns": 0}
    for text in (page, (out / "findings.md").read_text(encoding="utf-8")):
        assert "show no purchaser" not in text and "Cells of fewer than" not in text
    # nor how it would show purchasers it does not have; the footer has no empty lines
    assert "pseudonym" not in page and "gf-names" not in page
    assert '"gf-source">Source: by_state.csv' in page and '"></p>' not in page
    # every column a count table adds (rejects' guns, findings' "available") is documented
    assert undocumented(out, DOC.read_text(encoding="utf-8")) == []


def test_state_year_table_counts_guns_per_year(tmp_path):
    out, manifest = _run(tmp_path, "by_state_year", STATE_YEAR_TABLE)
    counts = manifest["counts"]
    assert (counts["rows_read"], counts["rows_valid"], counts["rows_rejected"]) == (6, 6, 0)
    assert counts["guns_read"] == counts["guns_valid"] == 1801 + 9
    assert counts["guns_placed"] == 1810
    _check_accounting(out, counts)
    # the same state in two years is two rows, not a duplicate
    assert manifest["quality"]["flags"]["flag_duplicate"] == 0
    assert manifest["quality"]["reader_warnings"] == {"Year: unparseable year": 1}
    years = pd.read_csv(out / "tables" / "by_year.csv")
    recovered = years.groupby("year")["recovered"].sum().to_dict()
    assert recovered == {2009: 1000, 2010: 801}  # NM's unreadable year counts in no year
    assert years["purchased"].sum() == 0
    table = pd.read_csv(out / "tables" / "by_us_state.csv").set_index("state")["guns"]
    assert table.to_dict() == {"US-TX": 1234, "US-AZ": 567, "US-NM": 9}  # CA: 0 guns
    flows = _geojson(out, "flows")
    assert {f["dealer_state"] for f in flows} == {"US-TX", "US-AZ", "US-NM"}
    # with no purchaser to count, a flow's guns alone make it a small cell: NM's 9 guns
    # under --min-cell 10 (its year cut to the year is all a count table has anyway)
    _, strict = _run(tmp_path, "by_state_year_strict", STATE_YEAR_TABLE, "--min-cell", "10")
    assert strict["suppression"]["cells"]["flows"] == {"rows": 1, "guns": 9}
    assert strict["suppression"]["text"][0].startswith(
        "1 flow tied to fewer than 10 guns or 10 purchasers shows no purchaser")


def test_us_state_by_mexican_state_table_draws_state_flows(tmp_path):
    out, manifest = _run(tmp_path, "state_matrix", STATE_STATE_TABLE, "--flow-level",
                         "state")
    counts = manifest["counts"]
    assert manifest["input"]["count_column"] == "número de armas"
    assert (counts["rows_valid"], counts["rows_rejected"]) == (5, 1)
    assert counts["guns_placed"] == 1200 and counts["guns_rejected"] == 0
    assert counts["rows_rejected_count_unreadable"] == 1
    _check_accounting(out, counts)
    page = output_text(out / "map.html")  # flows into Mexico: Mexican legs, arrowheads
    assert "<h2>Guns by leg: US origin → port of entry → Mexican destination</h2>" in page
    assert "arrowheads: where the guns were recovered" in page
    # its Mexican ends are states (rings at each state's point): counted as states, and each
    # labelled once, by its point's label, not again by a state label beside it
    assert "<p>1,200 traced guns from 3 US states, through " in page
    assert page.count(" ports of entry, to 5 Mexican states</p>") == 1
    labels = re.findall(r'\{"t":"([^"]+)","lon":[-\d.]+,"lat":[-\d.]+,"k":"(\w+)"', page)
    named = [text for text, kind in labels if text in ("Sonora", "Tamaulipas")]
    assert sorted(named) == ["Sonora", "Tamaulipas"] and ("Texas", "state") in labels
    matrix = pd.read_csv(out / "tables" / "state_matrix.csv")
    pairs = {(r.us_state, r.mx_state): r.guns for r in matrix.itertuples()}
    assert pairs == {("US-TX", "MX-TAM"): 400, ("US-TX", "MX-CHH"): 250,
                     ("US-AZ", "MX-SON"): 320, ("US-AZ", "MX-SIN"): 80,
                     ("US-CA", "MX-BCN"): 150}
    states = {s["code"]: s["guns_sourced"] if s["country"] == "US" else s["guns_recovered"]
              for s in _geojson(out, "states")}
    assert (states["US-TX"], states["MX-TAM"], states["MX-SIN"]) == (650, 400, 80)
    mx = pd.read_csv(out / "tables" / "by_mx_state.csv").set_index("state")["guns"]
    assert mx.sum() == 1200 and mx["MX-CHH"] == 250
    flows = _geojson(out, "flows")
    texas = {(f["dealer_lon"], f["dealer_lat"]) for f in flows if f["dealer_state"] == "US-TX"}
    assert len(texas) == 1  # one fixed point per state
    recoveries = _geojson(out, "recoveries")
    assert {r["geocode_level"] for r in recoveries} == {"state"}  # a state's point, a guess
    assert sum(r["guns"] for r in recoveries) == 1200
    locations = pd.read_csv(out / "flowmap" / "locations.csv")
    assert {"US-TX", "MX-CHH", "MX-BCN"} <= set(locations["id"])


def test_count_column_option_names_an_unusual_header(tmp_path):
    text = "Source State,Armas rastreadas\nTexas,10\nArizona,5\n"
    out, manifest = _run(tmp_path, "custom", text, "--count-column", "Armas rastreadas")
    assert manifest["input"]["count_column"] == "Armas rastreadas"
    assert manifest["counts"]["guns_placed"] == 15
    _check_accounting(out, manifest["counts"])


# ATF's Mexico tables: a column per calendar year, no count column
WIDE_TABLE = """Source State,CY 2017,CY 2018,CY 2019
Texas,"1,000",-,1300
Arizona,500,abc,700
New Mexico,,,
Total,1500,600,2000
California,1,2,3
"""


def test_a_table_with_a_column_per_year_counts_the_sum_of_its_years(tmp_path):
    out, manifest = _run(tmp_path, "wide", WIDE_TABLE)
    counts = manifest["counts"]
    assert manifest["input"]["count_column"] == "CY 2017–CY 2019"
    # Texas: 1,000 + "-" (no data: 0) + 1,300; California 6; Arizona's "abc" and New
    # Mexico's empty row are rejected saying where; the Total row is not counted twice
    table = pd.read_csv(out / "tables" / "by_us_state.csv").set_index("state")["guns"]
    assert table.to_dict() == {"US-TX": 2300, "US-CA": 6}
    assert (counts["rows_read"], counts["rows_valid"], counts["rows_rejected"]) == (5, 2, 3)
    _check_accounting(out, counts)
    rejects = pd.read_csv(out / "rejects.csv")
    reasons = dict(zip(rejects["line"], rejects["reason"], strict=True))
    assert reasons[3] == "count is not a non-negative integer: abc (in CY 2018)"
    assert reasons[4] == "count is not a non-negative integer: (empty)"
    assert reasons[5].startswith("a totals row")
    # the years are summed, and said to be: no year to filter or tabulate by, no header
    # left unread
    warnings = pd.read_csv(out / "warnings.csv", dtype=str, keep_default_na=False)
    assert warnings[["line", "column"]].values.tolist() == [["1", "CY 2017–CY 2019"]]
    assert warnings["reason"].iloc[0].startswith("a column per year (3): each row's guns are "
                                                 "their sum")
    # the manifest names the years, and the map's subtitle their span
    assert manifest["input"]["year_columns"] == ["CY 2017", "CY 2018", "CY 2019"]
    assert ("<p>2,306 traced guns in CY 2017–CY 2019, from 2 US states, through "
            in output_text(out / "map.html"))
    # a batch of it counts guns, not rows: the index and each folder's own sentence
    batch = tmp_path / "wide-batch"
    ran = CliRunner().invoke(cli, ["-q", "run", str(tmp_path / "wide.csv"), "--per", "state",
                                   "-o", str(batch), "--jobs", "1"], obj={},
                             catch_exceptions=False)
    assert ran.exit_code == 0, ran.output
    top = json.loads((batch / "manifest.json").read_text(encoding="utf-8"))
    assert [(e["key"], e["guns"]) for e in top["entities"]] == [("US-TX", 2300), ("US-CA", 6)]
    assert top["counts"]["records"] == top["counts"]["guns_in_entities"] == 2306
    index = (batch / "index.html").read_text(encoding="utf-8")
    assert "2 US states · 2,306 guns in the records analysed" in index
    assert ">Purchasers<" not in index and ">Dealers<" not in index  # none named: no columns
    texas = next((batch / "state").glob("texas-*")) / "findings.md"
    assert "- 2,300 traced guns were first sold in Texas.\n" in texas.read_text(
        encoding="utf-8")  # no "by 0 dealers to 0 purchasers"
    # a trace file's column headed like a year is no count: a row is still one gun
    _, traces = _run(tmp_path, "traces_2019", "FFL Name,FFL State,Serial Number,2019\n"
                                              "Shop,TX,A1,x\nShop,TX,A2,y\n")
    assert traces["input"]["count_column"] is None and traces["counts"]["guns_valid"] == 2
    assert "2019: header not recognised" in next(iter(traces["quality"]["reader_warnings"]))
    # one year column is the count of that year
    _, one = _run(tmp_path, "one_year", "Estado,Año 2019\nSonora,40\nSinaloa,12\n")
    assert one["counts"]["guns_valid"] == 52 and one["quality"]["reader_warnings"] == {}
    years = pd.read_csv(tmp_path / "out-one_year" / "tables" / "by_year.csv")
    assert years.groupby("year")["recovered"].sum().to_dict() == {2019: 52}


def test_a_published_table_with_a_title_above_its_header_is_read_below_it(tmp_path):
    text = ("Mexico: Top Source States for Firearms Recovered and Traced,,,\n,,,\n"
            + WIDE_TABLE + "Source: ATF eTrace,,,\n")
    out, manifest = _run(tmp_path, "titled", text)
    counts = manifest["counts"]
    assert manifest["input"]["count_column"] == "CY 2017–CY 2019"
    assert (counts["rows_read"], counts["rows_valid"], counts["rows_rejected"]) == (6, 2, 4)
    _check_accounting(out, counts)
    # lines are the file's: the title's two lines come first
    reasons = pd.read_csv(out / "rejects.csv").groupby("line")["reason"].first().to_dict()
    assert reasons[5].endswith("abc (in CY 2018)") and reasons[7].startswith("a totals row")
    assert reasons[9] == "count is not a non-negative integer: (empty)"  # the source note
    warnings = pd.read_csv(out / "warnings.csv", dtype=str, keep_default_na=False)
    title = warnings[warnings["reason"].str.contains("above the header")]
    assert title.values.tolist() == [[
        "1", "", "Mexico: Top Source States for Firearms Recovered and Traced",
        "lines 1-2 above the header skipped (a title or note)"]]
    # a spreadsheet's title rows too
    sheet = tmp_path / "titled.xlsx"
    pd.DataFrame([["Firearms traced to Mexico, by source state", None, None],
                  [None, None, None], ["State", "CY2018", "CY2019"], ["Texas", 1200, 1300],
                  ["Arizona", "x", 700]]).to_excel(sheet, header=False, index=False)
    read = read_traces(sheet)
    assert read.records["guns"].tolist() == [2500]
    assert read.rejects["line"].tolist() == [5]  # the sheet's row
    assert "lines 1-2 above the header skipped (a title or note)" in set(
        read.warnings["reason"])
    # a file naming no trace column on any line is still refused, saying what it saw
    with pytest.raises(SchemaError, match="no recognisable trace columns"):
        read_traces(_write(tmp_path, "notes.csv", "Notes\nsome text\nmore text\n"))


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


def test_mexican_state_table_shades_mexico_and_names_its_top_states(tmp_path):
    text = "Estado,Armas\nTamaulipas,400\nChihuahua,250\nSonora,320\nJalisco,80\n"
    out, manifest = _run(tmp_path, "mx_states", text)
    assert manifest["counts"]["guns_valid"] == 1050 and manifest["counts"]["flows"] == 0
    findings = {f["id"]: f for f in json.loads((out / "findings.json").read_text())}
    assert findings["top_recovery_states"]["text"] == (
        "Top Mexican states of recovery (guns recovered there, all valid records): "
        "Tamaulipas (400, 38%), Sonora (320, 30%), Chihuahua (250, 24%).")
    states = {s["code"]: s["guns_recovered"] for s in _geojson(out, "states")}
    assert (states["MX-TAM"], states["MX-JAL"]) == (400, 80)
    # no flow to draw: the title panel counts what the shading shows (was "0 traced guns to
    # 4 Mexican states")
    page = output_text(out / "map.html")
    assert "<p>1,050 traced guns recovered in 4 Mexican states</p>" in page


def test_the_closing_line_counts_one_flow_in_the_singular(tmp_path):
    source = tmp_path / "one.csv"
    source.write_text("State,Firearms Traced\nTexas,10\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["-q", "run", str(source), "-o", str(tmp_path / "out")],
                                obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ": 1 flow; rows read 1, valid 1," in result.output


def test_trace_files_count_one_gun_per_row(tmp_path):
    text = ("FFL Name,FFL City,FFL State,Recovery City,Recovery State\n"
            "Shop A,Houston,TX,Reynosa,Tamaulipas\nShop A,Houston,TX,Reynosa,Tamaulipas\n"
            "Shop B,Phoenix,AZ,Hermosillo,Sonora\n")
    out, manifest = _run(tmp_path, "traces", text)
    counts = manifest["counts"]
    assert manifest["input"]["count_column"] is None
    assert counts["guns_read"] == counts["rows_read"] == 3
    # the repeated row is a duplicate trace record: unplaced, one gun
    assert counts["guns_placed"] == counts["rows_placed"] == 2
    assert counts["guns_unplaced"] == counts["rows_unplaced"] == 1
    _check_accounting(out, counts)
    unplaced = pd.read_csv(out / "unplaced.csv")
    assert list(unplaced.columns[:3]) == ["line", "reason", "guns"]


def test_reader_keeps_counts_as_a_weight_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Source State,Total\nTexas,3\nTexas,3\n", encoding="utf-8")
    read = read_traces(path)
    assert read.records["guns"].tolist() == [3, 3]
    assert read.records["guns"].dtype == np.int64
    assert read.records["flag_duplicate"].tolist() == [False, True]  # identical rows


def test_parse_counts_accepts_whole_numbers_only():
    numbers, bad = parse_counts(pd.Series(["3", " 1,234 ", "1 234", "7.0", "0", "-1", "2.5",
                                           "1.234", "x", None, ""]))
    assert bad.tolist() == [False] * 5 + [True] * 6
    assert numbers[:5].tolist() == [3, 1234, 1234, 7, 0]


@pytest.mark.parametrize(("values", "weights", "expected"), [
    ([1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1], 2.5),
    ([1.0, 2.0, 3.0], [1, 1, 5], 3.0),
    ([10.0, 20.0], [3, 3], 15.0),
    ([5.0, np.nan, 7.0], [1, 9, 1], 6.0),
])
def test_weighted_median_counts_each_value_weight_times(values, weights, expected):
    values, weights = np.array(values), np.array(weights)
    got = weighted_median(np.zeros(len(values), np.int64), values, weights, 1)
    assert got[0] == pytest.approx(expected)
    finite = np.isfinite(values)
    assert got[0] == pytest.approx(np.median(np.repeat(values[finite], weights[finite])))
