"""What the command line says and returns (issue 11): exit codes as the README documents them,
folder modes, and the small wording irritants (plurals, proper names, hidden rows)."""

from __future__ import annotations

import os
import re
import shlex
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli import write_small

from geoflow.cli import SUMMARY_TOP, cli

ROOT = Path(__file__).resolve().parents[1]


def geoflow(*args: str | Path, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], obj={}, **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_small(tmp_path_factory.mktemp("input") / "small.csv")


def _readme_tour() -> list[str]:
    """The shell lines of the README's "Command tour" code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Command tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_geocode_tour_example_works_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tour = _readme_tour()
    wanted = [line for line in tour if line.split()[1] in ("sample", "geocode")]
    assert [line.split()[1] for line in wanted] == ["sample", "geocode"]
    for line in wanted:  # the sample first: the geocode example reads the file it writes
        result = geoflow(*shlex.split(line)[1:])
        assert result.exit_code == 0, (line, result.output, result.stderr)
    out = shlex.split(wanted[1])[shlex.split(wanted[1]).index("-o") + 1]
    assert (tmp_path / out).stat().st_size > 0


def test_geocode_of_a_missing_file_is_an_input_error(tmp_path):
    result = geoflow("geocode", tmp_path / "places.csv", "-o", tmp_path / "out.csv")
    assert result.exit_code == 3  # README: input missing, unreadable or empty
    assert "places.csv: no such file" in result.stderr


def test_output_path_that_is_a_file_exits_7(small, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    result = geoflow("run", small, "-o", target)
    assert result.exit_code == 7, result.stderr
    assert "exists and is not a folder" in result.stderr
    assert target.read_text() == "not a folder"


def test_debug_keeps_the_documented_exit_code(small, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    result = geoflow("--debug", "run", small, "-o", target)
    assert result.exit_code == 7
    assert "Traceback" in result.stderr and "OutputError" in result.stderr


@pytest.mark.parametrize(("head", "kind"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a PNG image"),
    (b"%PDF-1.7\n%\xe2\xe3", "a PDF document"),
    (b"\x1f\x8b\x08\x00", "a gzip-compressed file"),
])
def test_binary_input_says_what_the_file_is(tmp_path, head, kind):
    path = tmp_path / "traces.csv"
    path.write_bytes(head + bytes(range(256)) * 4)
    result = geoflow("summary", path)
    assert result.exit_code == 3
    assert f"this is {kind}, not a trace table" in result.stderr
    assert "quoting" not in result.stderr


def test_output_folders_follow_the_umask(small, tmp_path):
    previous = os.umask(0o022)
    try:
        result = geoflow("run", small, "-o", tmp_path / "out", "--no-tiles")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.stderr
    for folder in (tmp_path / "out", tmp_path / "out" / "tables"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, oct(folder.stat().st_mode)


# --------------------------------------------------------------------------- irritants


def test_progress_lines_format_numbers_and_name_the_sample_not_its_cache(small):
    result = geoflow("summary", small, "--by", "crossing")
    assert result.exit_code == 0, result.stderr
    assert "read small.csv: 56 rows, 54 valid, 2 rejected; " in result.stderr
    assert str(small.parent) not in result.stderr  # the file name, not the path
    assert "built 0 flows" not in result.stderr and "built" not in result.stderr
    sample = geoflow("summary", "--sample", "--by", "crossing")
    assert "read the synthetic sample: 2,922 rows, 2,922 valid" in sample.stderr
    assert ".cache" not in sample.stderr and "2922" not in sample.stderr


def test_run_says_one_port_not_one_ports(tmp_path):
    source = tmp_path / "one.csv"
    source.write_text("Purchaser,FFL Name,FFL City,FFL State,Recovery City,Recovery State,"
                      "Crossing\nAna,Store A,HOUSTON,TX,REYNOSA,TAMPS.,LAREDO\n", encoding="utf-8")
    result = geoflow("run", source, "-o", tmp_path / "out", "--no-tiles")
    assert result.exit_code == 0, result.stderr
    assert "built 1 flow through 1 port\n" in result.stderr


def test_summary_table_shows_a_default_top_and_says_how_many_are_hidden():
    result = geoflow("summary", "--sample", "--by", "purchaser")  # hundreds of rows
    assert result.exit_code == 0, result.stderr
    hidden = re.search(r"([\d,]+) more rows not shown: --top 0 shows all ([\d,]+)", result.stdout)
    assert hidden, result.output[-500:]
    total = int(hidden.group(2).replace(",", ""))
    assert int(hidden.group(1).replace(",", "")) == total - SUMMARY_TOP
    assert result.stdout.count("│ P-") == SUMMARY_TOP  # one table row per purchaser shown
    everything = geoflow("summary", "--sample", "--by", "purchaser", "--format", "csv")
    assert len(everything.stdout.strip().splitlines()) == total + 1  # csv: all, plus header


def test_run_says_on_the_terminal_what_warnings_csv_holds(tmp_path):
    source = tmp_path / "es.csv"
    source.write_text(
        "armería,ciudad armería,estado armería,comprador,fecha de compra,municipio,estado,"
        "aduana,Notas\n"
        "Armas del Norte,Laredo,TX,Ana,2019-01-05,Nuevo Laredo,Tamaulipas,Laredo,x\n"
        "Armas del Norte,Laredo,TX,Ana,ayer,Reynosa,Tamaulipas,,y\n", encoding="utf-8")
    for args in ([], ["--per", "state"]):
        result = geoflow("-q", "run", source, "-o", tmp_path / f"out{len(args)}", *args)
        assert result.exit_code == 0, result.stderr
        assert ("warning: warnings.csv: fecha de compra: unparseable date (1); 1 header not "
                "used: Notas (--column-map can name them)\n") in result.stderr
    # "aduana" is the crossing: the first gun crossed at Laredo as the record says
    crossings = (tmp_path / "out0" / "tables" / "by_crossing.csv").read_text(encoding="utf-8")
    assert crossings.splitlines()[1].startswith("2304,Laredo,US-TX,2,1,1,")
    clean = geoflow("-q", "run", "--sample", "-o", tmp_path / "sample")
    assert "warning" not in clean.stderr
    # commands that write no warnings.csv say the same, without naming it
    for command in (["summary"], ["map", "-o", tmp_path / "m.html"],
                    ["static", "-o", tmp_path / "m.png"]):
        said = geoflow("-q", *command[:1], source, *command[1:])
        assert said.exit_code == 0, said.stderr
        assert ("warning: fecha de compra: unparseable date (1); 1 header not used: Notas "
                "(--column-map can name them)\n") in said.stderr


def test_summary_of_purchasers_says_who_is_not_listed_and_why(tmp_path):
    source = tmp_path / "one.csv"
    source.write_text("Purchaser,FFL Name,FFL City,FFL State,Recovery City,Recovery State\n"
                      "Ana,Store A,HOUSTON,TX,REYNOSA,TAMPS.\n", encoding="utf-8")
    one = geoflow("summary", source, "--by", "purchaser")  # an empty table, explained
    assert one.exit_code == 0, one.stderr
    assert "read one.csv: 1 row, 1 valid, 0 rejected" in one.stderr
    assert ("1 purchaser tied to fewer than 3 guns (1 gun) is counted in the totals but not "
            "listed (--min-cell).") in one.stdout
    assert "Every purchaser is listed." in geoflow("summary", source, "--by", "purchaser",
                                                   "--min-cell", "1").stdout
    traffickers = geoflow("summary", "--sample", "--by", "trafficker").stdout
    assert ("Listed: purchasers tied to 10 or more guns (--trafficker-min-guns), a count, not "
            "proof of trafficking.") in traffickers
    stricter = geoflow("summary", "--sample", "--by", "trafficker", "--min-cell", "12").stdout
    hidden = re.search(r"; ([\d,]+) purchasers tied to fewer than 12 guns", stricter)
    assert hidden and int(hidden.group(1).replace(",", "")) > 1000
    csv = geoflow("summary", source, "--by", "purchaser", "--format", "csv").stdout
    assert "listed" not in csv  # csv and json stay data only


def test_batch_line_leaves_out_clauses_that_would_say_zero(small, tmp_path):
    result = geoflow("run", small, "--per", "state", "-o", tmp_path / "states", "--no-tiles")
    assert result.exit_code == 0, result.stderr
    assert "below --min-guns" not in result.output  # every state is written
    assert "4 output sets (--per state) and index.html (54 guns); rows read 56" in result.stdout
    fewer = geoflow("run", small, "--per", "state", "--min-guns", "11", "-o",
                    tmp_path / "big", "--no-tiles")
    assert "(34 guns; 20 guns of 2 US states below --min-guns 11)" in fewer.stdout, fewer.stdout
    purchasers = geoflow("run", small, "--per", "trafficker", "-o", tmp_path / "p", "--no-tiles")
    assert "4 guns of 1 purchaser below --min-guns 10" in purchasers.stdout, purchasers.stdout
    assert "trafficker" not in purchasers.stdout.replace("--per trafficker", "")


def test_index_title_keeps_proper_names(small, tmp_path):
    result = geoflow("run", small, "--per", "state", "-o", tmp_path / "states", "--no-tiles")
    assert result.exit_code == 0, result.stderr
    html = (tmp_path / "states" / "index.html").read_text(encoding="utf-8")
    assert "<h1>Guns traced to Mexico by US state</h1>" in html
    assert "by us state" not in html


def test_min_flow_guns_thins_the_map_and_min_guns_is_the_batch_threshold(small, tmp_path):
    drawn = geoflow("map", small, "-o", tmp_path / "m.html", "--min-flow-guns", "3",
                    "--no-tiles", "--flow-style", "paths")
    assert drawn.exit_code == 0, drawn.stderr
    everything = geoflow("map", small, "-o", tmp_path / "all.html", "--no-tiles",
                         "--flow-style", "paths")
    count = re.compile(r"([\d,]+) of ([\d,]+) flows drawn")
    few, all_ = count.search(drawn.output), count.search(everything.output)
    assert few.group(2) == all_.group(2) and int(few.group(1)) < int(all_.group(1))
    old_name = geoflow("map", small, "-o", tmp_path / "x.html", "--min-guns", "3")
    assert old_name.exit_code == 2 and "No such option" in old_name.stderr
    run_without_per = geoflow("run", small, "--min-guns", "3", "-o", tmp_path / "r")
    assert run_without_per.exit_code == 2 and "--min-flow-guns" in run_without_per.stderr


# --------------------------------------------------------------------------- batches


def test_entity_findings_are_about_the_entity_and_reports_list_its_own_places(small, tmp_path):
    import json

    import pandas as pd

    out = tmp_path / "by"
    result = geoflow("run", small, "--per", "trafficker", "-o", out, "--no-tiles",
                     "--show-names")
    assert result.exit_code == 0, result.stderr
    national = geoflow("run", small, "-o", tmp_path / "all", "--no-tiles")
    assert national.exit_code == 0
    whole = pd.read_csv(tmp_path / "all" / "geocode_report.csv", keep_default_na=False)
    manifest = json.loads((out / "manifest.json").read_text())
    for entity in manifest["entities"]:
        folder = out / entity["folder"]
        found = json.loads((folder / "findings.json").read_text())
        assert found[0]["id"] == "entity", found[0]
        assert found[0]["text"].startswith(f"{entity['label']} is tied to 10 traced guns, ")
        assert found[0]["numbers"]["purchaser"] == entity["label"]
        ids = [f["id"] for f in found]
        assert "prolific_purchasers" not in ids and "most_prolific_purchaser" not in ids
        assert all(f["text"].startswith(f"Among {entity['label']}'s guns: ")
                   for f in found[1:])
        assert "1 purchaser is tied" not in (folder / "findings.md").read_text()
        report = pd.read_csv(folder / "geocode_report.csv", keep_default_na=False)
        # its own places: each of its 10 records once per role, a subset of the national rows
        assert report.groupby("role")["records"].sum().to_dict() == {
            "dealer": 10, "recovery": 10}
        keys = ["role", "query", "level"]
        assert set(map(tuple, report[keys].to_numpy())) <= set(
            map(tuple, whole[keys].to_numpy()))
        assert len(report) < len(whole)
    crossing = found[0]["numbers"]
    assert set(crossing) >= {"known_crossings", "modelled_crossings"}


def test_state_and_dealer_batches_open_with_a_sentence_about_the_entity(small, tmp_path):
    import json

    for kind, start in (("state", "traced guns were first sold in "),
                        ("dealer", " sold "), ("mx-state", "traced guns were recovered in ")):
        out = tmp_path / kind
        result = geoflow("run", small, "--per", kind, "--min-guns", "1", "-o", out,
                         "--no-tiles")
        assert result.exit_code == 0, result.stderr
        entity = json.loads((out / "manifest.json").read_text())["entities"][0]
        found = json.loads((out / entity["folder"] / "findings.json").read_text())
        assert found[0]["id"] == "entity" and start in found[0]["text"], found[0]
        assert found[0]["numbers"]["kind"] == kind
        assert entity["label"].split(" (")[0] in found[0]["text"]
