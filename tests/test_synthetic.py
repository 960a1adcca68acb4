"""Synthetic stays synthetic: the flag and banner follow synthetic input into every output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from geoflow.cli import cli
from geoflow.schema import SYNTHETIC_LABEL, map_headers, marks_synthetic


def _run(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["-q", *args], obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _flags(out: Path) -> dict[str, object]:
    """The synthetic flag of every output that carries one."""
    flags: dict[str, object] = {"manifest.json": json.loads(
        (out / "manifest.json").read_text(encoding="utf-8"))["synthetic"]}
    for path in sorted(out.glob("*.geojson")):
        flags[path.name] = json.loads(path.read_text(encoding="utf-8"))["synthetic"]
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert findings
    flags["findings.json"] = {item["synthetic"] for item in findings}
    return flags


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic")
    _run(["sample", "-o", str(folder / "f.csv"), "--rows", "400"])
    _run(["run", str(folder / "f.csv"), "-o", str(folder / "out")])
    return folder / "out"


def test_a_saved_sample_is_flagged_synthetic_everywhere(sample_run):
    flags = _flags(sample_run)
    assert set(flags) >= {"manifest.json", "flows.geojson", "dealers.geojson",
                          "recoveries.geojson", "crossings.geojson", "states.geojson"}
    assert all(v is True or v == {True} for v in flags.values()), flags
    assert SYNTHETIC_LABEL in (sample_run / "findings.md").read_text(encoding="utf-8")
    page = (sample_run / "map.html").read_text(encoding="utf-8")
    assert 'class="gf-synthetic"' in page and SYNTHETIC_LABEL in page


def test_real_looking_input_is_not_flagged(tmp_path):
    rows = [("T1", "Ann Buyer", "Shop A", "Houston", "TX", "Monterrey", "Nuevo Leon", "Laredo"),
            ("T2", "Bob Buyer", "Shop B", "Phoenix", "AZ", "Hermosillo", "Sonora", "")]
    with open(tmp_path / "traces.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trace_id", "purchaser_name", "dealer_name", "dealer_city",
                         "dealer_state", "recovery_city", "recovery_state", "crossing"])
        writer.writerows(rows)
    _run(["run", str(tmp_path / "traces.csv"), "-o", str(tmp_path / "out")])
    flags = _flags(tmp_path / "out")
    assert all(v is False or v == {False} for v in flags.values()), flags
    assert SYNTHETIC_LABEL not in (tmp_path / "out" / "findings.md").read_text(encoding="utf-8")
    assert 'class="gf-synthetic"' not in (tmp_path / "out" / "map.html").read_text(encoding="utf-8")


def test_dataset_column_aliases_and_markers():
    mapped = map_headers(["Trace Number", "Fuente de datos"])
    assert mapped["Fuente de datos"] == "dataset"
    assert map_headers(["Data Source"])["Data Source"] == "dataset"
    assert marks_synthetic(["SYNTHETIC SAMPLE"]) and marks_synthetic(["datos sintéticos"])
    assert marks_synthetic([None, "ATF 2009", "Simulated records"])
    assert not marks_synthetic(["ATF trace records 2009", None])


def test_a_batch_index_of_synthetic_input_carries_the_banner(tmp_path):
    _run(["sample", "-o", str(tmp_path / "f.csv"), "--rows", "300"])
    _run(["run", str(tmp_path / "f.csv"), "-o", str(tmp_path / "out"), "--per", "state",
          "--min-guns", "40"])
    index = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert 'class="gf-synthetic"' in index and SYNTHETIC_LABEL in index
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["synthetic"] is True
    maps = list((tmp_path / "out").rglob("map.html"))
    assert maps and all(SYNTHETIC_LABEL in p.read_text(encoding="utf-8") for p in maps)
