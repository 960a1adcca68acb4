"""``geoflow run`` and ``geoflow summary`` on the shipped sample and on hand-written files."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from click.testing import CliRunner
from handmade import output_text

from geoflow import pipeline
from geoflow.cli import cli
from geoflow.privacy import pseudonym

BARAJAS = pseudonym(pd.Series(["Rogelio Barajas"])).iloc[0]
DE_LA_ROSA = pseudonym(pd.Series(["Paul Giovanni De La Rosa"])).iloc[0]


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), obj={}, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sample"
    result = _invoke("-q", "run", "--sample", "-o", str(out))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_run_sample_writes_everything_and_accounts_for_every_row(sample_run):
    out, output = sample_run
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["rows_read"] == 2922
    assert counts["rows_read"] == counts["rows_valid"] + counts["rows_rejected"]
    assert counts["rows_valid"] == counts["rows_placed"] + counts["rows_unplaced"]
    flows = json.loads((out / "flows.geojson").read_text())
    assert sum(f["properties"]["guns"] for f in flows["features"]) == counts["rows_placed"]
    assert f"rows read {counts['rows_read']:,}" in output
    for name in ("by_us_state", "by_mx_state", "state_matrix", "by_dealer", "by_trafficker",
                 "by_crossing", "by_year"):
        assert (out / "tables" / f"{name}.csv").is_file()
    from PIL import Image

    with Image.open(out / "map.png") as still:                    # the stills beside map.html
        assert still.size == (1600, 1000)
    assert b'<g id="flows">' in (out / "map.svg").read_bytes()


def test_sample_tables_reproduce_the_reporting(sample_run):
    out, _ = sample_run
    traffickers = pd.read_csv(out / "tables" / "by_trafficker.csv", dtype={"purchaser": str})
    big = traffickers[traffickers["guns"] >= 10]
    assert len(big) == 11
    assert (big["top_dealer_share_frac"] > 0.5).sum() == 9
    top = traffickers.iloc[0]
    assert top["purchaser"] == BARAJAS
    assert top["top_dealer"] == "GAT Guns" and top["top_dealer_guns"] >= 69
    assert top["known_crossings"].split("; ")[0] == "Laredo"
    rosa = traffickers.set_index("purchaser").loc[DE_LA_ROSA]
    assert (rosa["guns"], rosa["top_dealer"], rosa["top_dealer_guns"]) == (
        34, "Hart Brothers", 28)
    assert "Laredo" in rosa["known_crossings"]
    findings = {f["id"]: f for f in json.loads((out / "findings.json").read_text())}
    numbers = findings["prolific_purchasers"]["numbers"]
    assert (numbers["purchasers"], numbers["mostly_one_store"]) == (11, 9)
    prolific = findings["most_prolific_purchaser"]
    assert prolific["numbers"]["top_dealer"] == "GAT Guns"
    assert "GAT Guns" in prolific["text"] and BARAJAS in prolific["text"]
    states = pd.read_csv(out / "tables" / "by_us_state.csv")
    assert set(states["state"].head(3)) <= {"US-TX", "US-AZ", "US-CA"}


def test_sample_outputs_hold_no_real_names(sample_run):
    out, _ = sample_run
    for path in out.rglob("*"):
        if path.is_file():
            text = output_text(path).casefold()
            assert "barajas" not in text and "de la rosa" not in text, path.name


def test_rerun_into_own_folder_and_refuse_foreign(sample_run, tmp_path):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.docx").write_text("precious")
    result = CliRunner().invoke(cli, ["run", "--sample", "-o", str(foreign)], obj={})
    assert result.exit_code == 7
    assert "not written by geoflow" in result.output and "--force" in result.output
    assert (foreign / "chapter1.docx").read_text() == "precious"


def test_summary_trafficker_json_and_findings(sample_run):
    result = _invoke("-q", "summary", "--sample", "--by", "trafficker", "--format", "json",
                     "--top", "11")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == 11 and rows[0]["purchaser"] == BARAJAS
    assert list(rows[0]) == [
        "purchaser", "guns", "dealers", "top_dealer", "top_dealer_guns", "top_dealer_share_frac",
        "hhi", "first_purchase", "last_purchase", "known_crossings", "modelled_crossings",
        "median_time_to_crime_days"]
    findings = _invoke("-q", "summary", "--sample", "--by", "crossing", "--format", "csv",
                       "--findings")
    table_text, _, findings_text = findings.output.partition("id,text")
    assert "11 purchasers are tied to 10 or more guns each; 9 of them" in findings_text
    table = pd.read_csv(io.StringIO(table_text))
    assert list(table.columns) == ["code", "name", "us_state", "guns", "guns_known",
                                   "guns_modelled", "share_frac"]
    assert (table["guns_known"] + table["guns_modelled"] == table["guns"]).all()


def test_summary_by_state_is_the_us_states_as_run_per_state_names_them(sample_run):
    state = _invoke("-q", "summary", "--sample", "--by", "state", "--format", "csv")
    us_state = _invoke("-q", "summary", "--sample", "--by", "us-state", "--format", "csv")
    assert state.exit_code == 0 and state.output == us_state.output
    assert pd.read_csv(io.StringIO(state.output))["state"].iloc[0] == "US-TX"


def test_summary_labels_synthetic_findings_in_every_format(tmp_path):
    """Findings copied from ``summary`` say what the data are, as findings.md and
    findings.json do: the banner line as text, ``synthetic`` in CSV and JSON; real input
    gets no banner and ``synthetic`` false."""
    from geoflow.schema import SYNTHETIC_LABEL

    text = _invoke("-q", "summary", "--sample").output
    assert text.splitlines()[0] == SYNTHETIC_LABEL and text.count(SYNTHETIC_LABEL) == 1
    assert _invoke("-q", "summary", "--sample", "--by", "us-state").output.startswith(
        SYNTHETIC_LABEL + "\n")
    items = json.loads(_invoke("-q", "summary", "--sample", "--format", "json").output)
    assert items and all(item["synthetic"] is True for item in items)
    rows = pd.read_csv(io.StringIO(_invoke("-q", "summary", "--sample", "--format",
                                           "csv").output))
    assert list(rows.columns) == ["id", "text", "synthetic"] and rows["synthetic"].all()

    real = tmp_path / "t.csv"
    real.write_text("Purchaser,FFL Name,FFL City,FFL State,Recovery City,Recovery State\n"
                    "Ana,Gun Shop,HOUSTON,TX,REYNOSA,TAMPS.\n", encoding="utf-8")
    assert SYNTHETIC_LABEL not in _invoke("-q", "summary", str(real)).output
    items = json.loads(_invoke("-q", "summary", str(real), "--format", "json").output)
    assert items and all(item["synthetic"] is False for item in items)


def test_summary_table_of_a_file_with_formula_names(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "Purchaser,FFL Name,FFL City,FFL State,Recovery City,Recovery State\n"
        "Ana,=cmd|' /C calc'!A0,HOUSTON,TX,REYNOSA,TAMPS.\n",
        encoding="utf-8",
    )
    result = _invoke("-q", "summary", str(path), "--by", "dealer", "--format", "csv")
    assert result.exit_code == 0
    assert "'=cmd" in result.output
    table = _invoke("-q", "summary", str(path), "--by", "us-state")
    assert "US-TX" in table.output and "Texas" in table.output


def test_run_needs_input_or_sample(tmp_path):
    result = CliRunner().invoke(cli, ["run", "-o", str(tmp_path / "x")], obj={})
    assert result.exit_code == 2 and "missing INPUT" in result.output
    missing = CliRunner().invoke(cli, ["run", str(tmp_path / "nope.csv")], obj={})
    assert missing.exit_code != 0 and "nope.csv" in missing.output


def test_run_defaults_to_maps_input_stem_and_state_level(tmp_path, monkeypatch):
    source = tmp_path / "border traces.csv"
    source.write_text(
        "Purchaser,FFL Name,FFL City,FFL State,Recovery City,Recovery State,Crossing\n"
        "Ana,Store A,HOUSTON,TX,REYNOSA,TAMPS.,\n"
        "Ana,Store B,SAN ANTONIO,TX,MONTERREY,N.L.,LAREDO\n"
        "Beto,Store C,PHOENIX,AZ,HERMOSILLO,SON.,\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    result = _invoke("-q", "run", str(source), "--flow-level", "state")
    assert result.exit_code == 0, result.output
    out = tmp_path / "maps" / "border traces"
    flows = json.loads((out / "flows.geojson").read_text())["features"]
    pairs = {(f["properties"]["dealer_state"], f["properties"]["recovery_state"],
              f["properties"]["route_kind"]) for f in flows}
    assert pairs == {("US-TX", "MX-TAM", "modelled"), ("US-TX", "MX-NLE", "known"),
                     ("US-AZ", "MX-SON", "modelled")}
    assert json.loads((out / "manifest.json").read_text())["options"]["flow_level"] == "state"


def test_run_compacts_only_what_it_analyses_unless_a_filter_takes_the_rows(monkeypatch,
                                                                           tmp_path):
    # a whole file's run leaves the columns its analysis drops as read (0.45 s of CPU at
    # 1M records); a filter copies every column of the rows it keeps, cheaper from codes
    # (one state of 1M records: 0.21 s, 0.5-0.7 s from text left as read)
    asked = []
    prepare = pipeline.prepare_records
    monkeypatch.setattr(pipeline, "prepare_records",
                        lambda source, **kw: asked.append(kw["compact"]) or prepare(source, **kw))
    for extra in ([], ["--state", "TX"], ["--from", "2010"]):
        result = _invoke("-q", "run", "--sample", "-o", str(tmp_path / str(len(asked))),
                         *extra)
        assert result.exit_code == 0, result.output
    assert asked == [pipeline.ANALYSED_COLUMNS, None, None]
