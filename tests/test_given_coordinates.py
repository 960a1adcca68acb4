"""Given coordinates that contradict their role or row are not published as given (issue 15):
a Mexican recovery at Houston's coordinates, a US dealer at Mexico City's, a Texas dealer at a
point in Oklahoma. Each is placed from its place string instead, and the report says why."""

from __future__ import annotations

import csv
import json

import pandas as pd
from click.testing import CliRunner

from geoflow.cli import cli

HEADER = ["Trace Number", "Purchaser Name", "FFL Name", "Dealer City", "Dealer State",
          "Dealer Latitude", "Dealer Longitude", "Recovery City", "Recovery State",
          "Recovery Latitude", "Recovery Longitude"]
ROWS = [
    # recovery given at Houston, TX: contradicts a Mexican recovery in Culiacán, Sinaloa
    ["T1", "Ana Ruiz", "Gun Shop A", "Laredo", "TX", "", "", "Culiacán", "Sinaloa",
     "29.7604", "-95.3698"],
    # dealer given at Mexico City: contradicts a US dealer in Phoenix, AZ
    ["T2", "Ana Ruiz", "Gun Shop B", "Phoenix", "AZ", "19.4326", "-99.1332", "Hermosillo",
     "Sonora", "", ""],
    # dealer given in Oklahoma City while the row says Texas (Dallas)
    ["T3", "Ana Ruiz", "Gun Shop C", "Dallas", "TX", "35.4676", "-97.5164", "Monterrey",
     "Nuevo León", "", ""],
    # consistent coordinates are kept as given
    ["T4", "Ana Ruiz", "Gun Shop D", "El Paso", "TX", "31.7619", "-106.4850", "Chihuahua",
     "Chihuahua", "28.6353", "-106.0889"],
]


def test_contradicting_coordinates_fall_back_to_the_place_string(tmp_path):
    source = tmp_path / "traces.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([HEADER, *ROWS])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(source), "-o", str(out)], obj={})
    assert result.exit_code == 0, result.output

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rows_placed"] == 4

    mx = pd.read_csv(out / "tables" / "by_mx_state.csv", dtype=str)
    assert not mx.iloc[:, 0].str.startswith("US-").any(), mx  # no Mexican state named US-TX
    assert set(mx.iloc[:, 0]) == {"MX-SIN", "MX-SON", "MX-NLE", "MX-CHH"}
    us = pd.read_csv(out / "tables" / "by_us_state.csv", dtype=str)
    assert set(us.iloc[:, 0]) == {"US-TX", "US-AZ"}  # no MX-CMX dealer state, no Oklahoma

    dealers = json.loads((out / "dealers.geojson").read_text())["features"]
    by_name = {f["properties"]["dealer_name"]: f for f in dealers}
    phoenix = by_name["Gun Shop B"]["geometry"]["coordinates"]
    assert abs(phoenix[0] + 112.07) < 0.3 and abs(phoenix[1] - 33.45) < 0.3
    dallas = by_name["Gun Shop C"]["geometry"]["coordinates"]
    assert abs(dallas[0] + 96.8) < 0.3 and abs(dallas[1] - 32.78) < 0.3
    kept = by_name["Gun Shop D"]["geometry"]["coordinates"]
    assert kept == [-106.485, 31.7619]

    report = pd.read_csv(out / "geocode_report.csv", dtype=str).fillna("")
    notes = " | ".join(report["note"])
    assert "given coordinates lie in US-TX, not in MX" in notes
    assert "given coordinates lie in MX-CMX, not in US" in notes
    assert "given coordinates lie in US-OK, not in US-TX" in notes


def test_progress_lines_carry_no_library_chatter(tmp_path):
    """GDAL/pyogrio's "Created N records" per GeoPackage layer stays off the terminal."""
    source = tmp_path / "traces.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([HEADER, *ROWS])
    result = CliRunner().invoke(cli, ["run", str(source), "-o", str(tmp_path / "out")], obj={})
    assert result.exit_code == 0, result.output
    assert "Created" not in result.output
    assert "built 4 flows" in result.output
