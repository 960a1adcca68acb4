"""The command line as a user meets it: filters, batches, config, progress, errors, help.

Most tests run on a small hand-written trace file (four US states, hostile purchaser names, two
broken lines, one unplaceable recovery); a few run on the shipped sample, once per module.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from handmade import output_text
from rich.console import Console

from geoflow import __version__
from geoflow.cli import cli
from geoflow.cli_options import BATCH_KINDS
from geoflow.privacy import pseudonym
from geoflow.progress import bar, progress_enabled, stage
from geoflow.select import ENTITY_KINDS

BARAJAS = pseudonym(pd.Series(["Rogelio Barajas"])).iloc[0]
DE_LA_ROSA = pseudonym(pd.Series(["Paul Giovanni De La Rosa"])).iloc[0]

HEADER = ["Trace Number", "Serial Number", "Manufacturer", "Model", "Caliber", "Weapon Type",
          "Purchaser Name", "Purchase Date", "FFL Name", "FFL Number", "FFL City", "FFL State",
          "FFL Zip", "Recovery Date", "Recovery City", "Recovery State", "Recovery Country",
          "Possessor Name", "Crossing"]
DEALERS = {
    "TX": ("Lone Star Test Arms", "5-74-001-01-1A-00001", "HOUSTON", "TX", "77002"),
    "AZ": ("Desert Test Guns", "9-86-002-01-1A-00002", "PHOENIX", "AZ", "85004"),
    "IL": ("GAT Guns", "3-36-003-01-1A-00003", "E DUNDEE", "IL", "60118"),
    "CA": ("Harbor Test Sports", "9-95-004-01-1A-00004", "LOS ANGELES", "CA", "90001"),
}
RECOVERY = [("CD. JUAREZ", "CHIH."), ("NVO. LAREDO", "TAMPS."), ("CULIACAN", "SIN.")]
LONG_NAME = "Z" * 300
#: purchaser, dealer state, guns: hostile names for folder names, two that slug alike
PEOPLE = [("../../x", "TX", 10), ("CON", "AZ", 10), (LONG_NAME, "IL", 10),
          ("Straße Müller", "CA", 10), ("Strasse Muller", "TX", 10), ("Ana Ruiz", "AZ", 3)]
PER_STATE = {"US-TX": 21, "US-AZ": 13, "US-IL": 10, "US-CA": 10}  # incl. the unplaced one


def write_small(path: Path) -> Path:
    rows, n = [], 0
    for name, state, guns in PEOPLE:
        for _ in range(guns):
            city, mx_state = RECOVERY[n % 3]
            bought, found = f"0{1 + n % 9}/15/2007", f"0{1 + n % 9}/20/{2008 + n % 3}"
            rows.append([f"T{n:05d}", f"S{n:05d}", "Glock", "17", "9mm", "PISTOL", name, bought,
                         *DEALERS[state], found, city, mx_state, "MEXICO", "",
                         "LAREDO, TX" if n % 4 == 0 else ""])
            n += 1
    rows.append([f"T{n:05d}", "S-lost", "Colt", "AR-15", ".223", "RIFLE", "Ana Ruiz",
                 "03/01/2008", *DEALERS["TX"], "05/05/2009", "ATLANTIS", "", "MEXICO", "", ""])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
        handle.write("T99998,too,few,fields\n")  # line 56: wrong field count
        handle.write(",,,,,,,,,,,,,,,,,,\n")  # line 57: nothing usable
    return path


def geoflow(*args: str | Path, env: dict | None = None, **kw):
    """Invoke the CLI in-process (stdout and stderr kept apart)."""
    return CliRunner(env=env).invoke(cli, [str(a) for a in args], obj={}, **kw)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output + result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_small(tmp_path_factory.mktemp("input") / "small.csv")


@pytest.fixture(scope="module")
def small_run(small, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "all"
    result = geoflow("run", small, "-o", out)
    assert result.exit_code == 0, result.stderr
    return out, result


# --------------------------------------------------------------------------- basics


def test_version():
    result = geoflow("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"geoflow, version {__version__}"


def test_the_command_starts_without_metadata_lookups_or_the_progress_display():
    """Every command imports geoflow.cli before it can start its work (``geoflow run`` before
    it begins reading its input): the version is a literal, not looked up in the installed
    packages' metadata, and rich is loaded only when a progress display is shown."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, geoflow.cli; "
         "print(sorted(m for m in ('rich', 'importlib.metadata') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert re.match(r"\d+(\.\d+)+", __version__)  # a release number, not "unknown"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help_with_an_example(name):
    result = geoflow(name, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert f"geoflow {name}" in result.output.split("Example:", 1)[1]


def test_group_help_lists_the_commands_and_global_options():
    result = geoflow("--help")
    assert result.exit_code == 0
    for word in ("run", "summary", "--quiet", "--verbose", "--debug", "--version"):
        assert word in result.output


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_script(shell):
    result = CliRunner().invoke(cli, [], prog_name="geoflow",
                                env={"_GEOFLOW_COMPLETE": f"{shell}_source"})
    assert result.exit_code == 0
    assert "_GEOFLOW_COMPLETE" in result.output


def test_batch_kinds_on_the_command_line_match_the_selectors():
    assert tuple(ENTITY_KINDS) == BATCH_KINDS


# --------------------------------------------------------------------------- partial data


def test_partial_data_still_writes_outputs_and_accounts_in_one_line(small_run):
    out, result = small_run
    assert result.exit_code == 0
    assert "rows read 56, valid 54, rejected 2, placed 53, unplaced 1" in result.output
    counts = manifest(out)["counts"]
    assert (counts["rows_read"], counts["rows_rejected"], counts["rows_unplaced"]) == (56, 2, 1)
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects["line"].tolist() == [56, 57]
    assert (out / "map.html").is_file()


def test_quiet_prints_no_progress_or_info(small, tmp_path):
    result = geoflow("-q", "run", small, "-o", tmp_path / "q")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert "rows read 56" in result.output  # the accounting line stays


def test_default_logs_stages_and_verbose_logs_more(small, tmp_path):
    config = write_toml(tmp_path / "v.toml", 'title = "x"\n')
    normal = geoflow("summary", small, "--state", "TX", "--config", config)
    verbose = geoflow("-v", "summary", small, "--config", config)
    assert "filter: US state: Texas (US-TX) (21 of 54 records)" in normal.stderr
    assert "defaults from" not in normal.stderr
    assert f"defaults from {config}" in verbose.stderr


# --------------------------------------------------------------------------- filters


def test_state_filter_writes_the_filtered_set_with_its_description(small, tmp_path):
    out = tmp_path / "tx"
    result = geoflow("run", small, "--state", "Texas", "-o", out)
    assert result.exit_code == 0, result.stderr
    data = manifest(out)
    assert data["description"] == "US state: Texas (US-TX)"
    counts = data["counts"]
    assert counts["rows_valid"] - counts["rows_filtered_out"] == PER_STATE["US-TX"]
    assert "(33 left out by filters)" in result.output
    assert "US state: Texas (US-TX)" in output_text(out / "map.html")
    states = pd.read_csv(out / "tables" / "by_us_state.csv")
    assert states["state"].tolist() == ["US-TX"]


def test_mx_state_filter_accepts_abbreviations(small):
    # every spelling (codes, names, "Tamps.", "N.L." …) is covered in test_select.py
    result = geoflow("summary", small, "--mx-state", "Tamps.", "--by", "mx-state",
                     "--format", "json")
    assert result.exit_code == 0, result.stderr
    table = json.loads(result.stdout)
    assert [row["state"] for row in table] == ["MX-TAM"]
    assert table[0]["guns"] == 18


def test_repeated_state_options_are_alternatives(small):
    result = geoflow("summary", small, "--state", "AZ", "--state", "US-CA", "--by", "us-state",
                     "--format", "csv")
    assert result.exit_code == 0, result.stderr
    table = pd.read_csv(io.StringIO(result.stdout))
    assert dict(zip(table["state"], table["guns"], strict=True)) == {"US-AZ": 13, "US-CA": 10}


def test_trafficker_by_name_or_pseudonym_gives_the_same_records(small):
    by_name = geoflow("summary", small, "--trafficker", "strasse muller", "--by", "dealer",
                      "--format", "json")
    pid = pseudonym(pd.Series(["Strasse Muller"])).iloc[0]
    by_id = geoflow("summary", small, "--trafficker", pid, "--by", "dealer", "--format", "json")
    assert by_name.exit_code == by_id.exit_code == 0
    assert json.loads(by_name.stdout) == json.loads(by_id.stdout)
    assert json.loads(by_name.stdout)[0]["guns"] == 10
    assert "Strasse" not in by_name.stdout  # pseudonymised by default


def test_trafficker_names_only_with_show_names(small, tmp_path):
    out = tmp_path / "ana"
    assert geoflow("run", small, "--trafficker", "ANA RUIZ", "-o", out).exit_code == 0
    assert "Ana Ruiz" not in (out / "map.html").read_text(encoding="utf-8")
    assert manifest(out)["description"].startswith("purchaser: P-")
    assert geoflow("run", small, "--trafficker", "ana ruiz", "--show-names", "-o",
                   out).exit_code == 0
    assert manifest(out)["description"] == "purchaser: Ana Ruiz"


def test_dealer_filter_by_ffl(small):
    # matching by name and by part of a name is covered in test_select.py
    by_ffl = geoflow("summary", small, "--dealer", "336003011A00003", "--by", "dealer",
                     "--format", "json")
    assert by_ffl.exit_code == 0, by_ffl.stderr
    assert [row["dealer_name"] for row in json.loads(by_ffl.stdout)] == ["GAT Guns"]


def test_date_filters_bound_the_recovery_year(small):
    result = geoflow("summary", small, "--from", "2009", "--to", "2009-12", "--by", "year",
                     "--format", "json")
    assert result.exit_code == 0, result.stderr
    recovered = {row["year"] for row in json.loads(result.stdout) if row["recovered"]}
    assert recovered == {2009}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--state", "XX"], "unknown US state 'XX'"),
        (["--trafficker", "Juan Nadie"], "no purchaser 'Juan Nadie' in the data"),
        (["--state", "WY"], "no records match US state: Wyoming (US-WY)"),
        (["--state", "IL", "--mx-state", "CHH", "--from", "2010-06"],
         "no records match all filters together"),
        (["--from", "last year"], "cannot read date 'last year'"),
    ],
)
def test_filter_errors_are_one_line_with_exit_code_6(small, tmp_path, args, needle):
    result = geoflow("run", small, *args, "-o", tmp_path / "never")
    assert_one_line_error(result, 6, needle)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("args", [["--from", "2020", "--to", "2019"], ["--from", "last year"]])
def test_filter_dates_fail_before_the_input_is_read(tmp_path, args):
    """An empty date range or a date typo is said at once, not after reading a large file:
    the input here does not even exist, and the error is the dates'."""
    result = geoflow("run", tmp_path / "missing.csv", *args, "-o", tmp_path / "never")
    assert_one_line_error(result, 6, "is after --to 2019" if "2019" in args else "last year")
    assert "not found" not in result.stderr


def test_dates_are_read_day_first_when_they_show_it_unless_told(tmp_path):
    """A Mexican file's dates: day-first without a word from the user (stderr says so),
    month-first with --monthfirst (13/02/2019 then cannot be read), day-first with
    --dayfirst (no detection warning: the user said it)."""
    path = tmp_path / "mx.csv"
    path.write_text(
        "Número de rastreo,Ciudad armería,Estado armería,Fecha de compra,Municipio,Estado\n"
        "R1,Houston,TX,13/02/2019,Reynosa,Tamaulipas\n"
        "R2,Laredo,TX,05/04/2019,Monterrey,Nuevo León\n"
        "R3,Laredo,TX,25/03/2019,Saltillo,Coahuila\n", encoding="utf-8")
    read = {}  # flag → (dates unread, the manifest's dayfirst)
    for flag in ("", "--monthfirst", "--dayfirst"):
        out = tmp_path / f"out{flag}"
        result = geoflow("run", path, *([flag] if flag else []), "--min-cell", "1", "-o", out)
        assert result.exit_code == 0, result.stderr
        assert ("dates read day-first" in result.stderr) == (flag == "")
        warnings = pd.read_csv(out / "warnings.csv")
        read[flag] = (warnings["reason"].str.startswith("unparseable date").sum(),
                      manifest(out)["options"]["dayfirst"])
    assert read == {"": (0, None), "--monthfirst": (2, False), "--dayfirst": (0, True)}


def test_sheet_chooses_the_workbook_sheet_and_the_manifest_names_it(tmp_path):
    """A release with a sheet per year: the first traces sheet by default (a warning names
    the others), --sheet NAME reads another (a sheet named 2019 is a name, not a number);
    an unknown sheet, or --sheet on a CSV, is a one-line error."""
    rows = {"2018": ("Houston", "Reynosa"), "2019": ("Phoenix", "Hermosillo")}
    path = tmp_path / "release.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"Notes": ["FOIA release"]}).to_excel(writer, sheet_name="README",
                                                           index=False)
        for sheet, (dealer, recovery) in rows.items():
            pd.DataFrame({"Trace Number": ["T1", "T2"], "FFL City": [dealer] * 2,
                          "FFL State": ["TX" if dealer == "Houston" else "AZ"] * 2,
                          "Recovery City": [recovery] * 2}).to_excel(
                writer, sheet_name=sheet, index=False)
    first = geoflow("run", path, "-o", tmp_path / "first")
    assert first.exit_code == 0, first.stderr
    assert "sheet '2019' also holds trace columns and is not read (--sheet NAME reads it)" in (
        first.stderr)
    chosen = geoflow("run", path, "--sheet", "2019", "-o", tmp_path / "chosen")
    assert chosen.exit_code == 0, chosen.stderr
    assert "not read" not in chosen.stderr  # the user chose: nothing to say about others
    for out, sheet, given in ((tmp_path / "first", "2018", None),
                              (tmp_path / "chosen", "2019", "2019")):
        data = manifest(out)
        assert (data["input"]["sheet"], data["options"]["sheet"]) == (sheet, given)
        dealers = pd.read_csv(out / "tables" / "by_dealer.csv", dtype=str).fillna("")
        assert rows[sheet][0].upper() in " ".join(dealers.values.ravel()).upper()
    missing = geoflow("run", path, "--sheet", "2021", "-o", tmp_path / "never")
    assert_one_line_error(missing, 3, "no sheet '2021'; sheets are: README, 2018, 2019")
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("Trace Number,FFL City,FFL State\nT1,Houston,TX\n", encoding="utf-8")
    assert_one_line_error(geoflow("run", csv_file, "--sheet", "2019", "-o", tmp_path / "n"), 3,
                          "a sheet ('2019') was given but this is a CSV file")


# --------------------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def small_by_state(small, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "by-state"
    result = geoflow("run", small, "--per", "state", "-o", out)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_per_state_batch_one_folder_per_state_and_counts_add_up(small_by_state):
    out, result = small_by_state
    top = manifest(out)
    folders = sorted(p.name for p in (out / "state").iterdir())
    assert folders == sorted(e["slug"] for e in top["entities"])
    assert {e["key"]: e["guns"] for e in top["entities"]} == PER_STATE
    analysed = {}
    for entity in top["entities"]:
        counts = manifest(out / entity["folder"])["counts"]
        analysed[entity["key"]] = counts["rows_valid"] - counts["rows_filtered_out"]
        assert (out / entity["folder"] / "map.html").is_file()
    assert analysed == PER_STATE
    assert sum(analysed.values()) == 54 == manifest(out)["counts"]["records"]
    assert "4 output sets (--per state)" in result.output


def test_min_guns_skips_small_entities_and_counts_them(small, tmp_path):
    out = tmp_path / "big-states"
    result = geoflow("run", small, "--per", "state", "--min-guns", "11", "-o", out)
    assert result.exit_code == 0, result.stderr
    top = manifest(out)
    assert [e["key"] for e in top["entities"]] == ["US-TX", "US-AZ"]
    assert (top["counts"]["entities_below_threshold"], top["counts"]["guns_below_threshold"]
            ) == (2, 20)
    assert "2 more US states with fewer than 11 guns each (20 guns)" in (
        out / "index.html").read_text(encoding="utf-8")


def test_per_trafficker_batch_hostile_names_stay_safe(small, tmp_path):
    out = tmp_path / "by-trafficker"
    result = geoflow("run", small, "--per", "trafficker", "--show-names", "-o", out)
    assert result.exit_code == 0, result.stderr
    top = manifest(out)
    names = {e["label"]: e["slug"] for e in top["entities"]}
    assert set(names) == {p for p, _, guns in PEOPLE if guns >= 10}  # default --min-guns 10
    slugs = list(names.values())
    assert len(set(slugs)) == len(slugs)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", s) and len(s) <= 48 for s in slugs)
    assert names["CON"].startswith("con-")
    assert names["../../x"].startswith("x-")
    assert names["Straße Müller"].split("-")[:2] == names["Strasse Muller"].split("-")[:2]
    assert sorted(p.name for p in (out / "trafficker").iterdir()) == sorted(slugs)
    assert not (tmp_path / "x").exists()
    assert top["counts"]["guns_below_threshold"] == 4  # Ana Ruiz's 4 guns


def test_batch_within_a_filter(small, tmp_path):
    out = tmp_path / "tx-by-mx"
    result = geoflow("run", small, "--state", "TX", "--per", "mx-state", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "placed 20, unplaced 1 (33 left out by filters)" in result.output
    top = manifest(out)
    assert top["description"] == "US state: Texas (US-TX)"
    # the unplaced Texas record has no Mexican state; everything else is in a folder
    assert top["counts"]["guns_in_entities"] + top["counts"]["records_without_entity"] == 21
    assert top["counts"]["records_without_entity"] == 1
    sub = manifest(out / top["entities"][0]["folder"])
    assert sub["description"].startswith("US state: Texas (US-TX); Mexican state: ")


def test_min_guns_usage_errors(small, tmp_path):
    below_one = geoflow("run", small, "--per", "state", "--min-guns", "0", "-o", tmp_path / "x")
    assert below_one.exit_code == 2
    assert "Traceback" not in below_one.stderr
    without_per = geoflow("run", small, "--min-guns", "5", "-o", tmp_path / "x")
    assert without_per.exit_code == 2
    assert "use it with --per" in without_per.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- output folders


def test_refuses_a_folder_geoflow_did_not_write_unless_force(small, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    refused = geoflow("run", small, "-o", out)
    assert_one_line_error(refused, 7, "not written by geoflow", "--force")
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"
    batch_refused = geoflow("run", small, "--per", "state", "-o", out)
    assert_one_line_error(batch_refused, 7, "not written by geoflow")
    assert "geocoded" not in batch_refused.stderr  # refused before any work
    forced = geoflow("-q", "run", small, "--state", "AZ", "-o", out, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert not (out / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folders left


def test_rerun_replaces_its_own_batch(small_by_state, small, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(small_by_state[0], out)
    result = geoflow("-q", "run", small, "--state", "CA", "-o", out)  # no --force needed
    assert result.exit_code == 0, result.stderr
    assert not (out / "state").exists() and (out / "flows.geojson").exists()
    assert manifest(out)["description"] == "US state: California (US-CA)"


# --------------------------------------------------------------------------- config


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_sets_map_texts_and_cli_wins(small, tmp_path):
    config = write_toml(tmp_path / "desk.toml", (
        'title = "Desk title <b>bold</b>"\ncredit = "Graphic: Desk"\nshow_names = true\n'
        'flow_level = "state"\n'))
    out = tmp_path / "cfg"
    result = geoflow("run", small, "--config", config, "--trafficker", "ana ruiz", "-o", out)
    assert result.exit_code == 0, result.stderr
    html = (out / "map.html").read_text(encoding="utf-8")
    assert "Desk title &lt;b&gt;bold&lt;/b&gt;" in html
    assert "Graphic: Desk" in html
    data = manifest(out)
    assert data["show_names"] is True and data["options"]["flow_level"] == "state"
    assert data["description"] == "purchaser: Ana Ruiz"
    overridden = geoflow("run", small, "--config", config, "--hide-names", "--flow-level",
                         "place", "--title", "Command-line title", "--per", "mx-state", "-o",
                         out)
    assert overridden.exit_code == 0, overridden.stderr
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "<h1>Command-line title — by Mexican state</h1>" in index
    sub = out / manifest(out)["entities"][0]["folder"]
    assert manifest(sub)["show_names"] is False
    assert manifest(sub)["options"]["flow_level"] == "place"
    html = (sub / "map.html").read_text(encoding="utf-8")
    assert "Command-line title" in html and "Desk title" not in html
    assert "Graphic: Desk" in html  # still from the config file


def test_geoflow_toml_in_the_working_folder_is_used(small, tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    write_toml(Path("geoflow.toml"), 'dayfirst = true\n')
    result = runner.invoke(cli, ["summary", str(small), "--by", "year", "--format", "json"],
                           obj={})
    assert result.exit_code == 0, result.stderr
    write_toml(Path("geoflow.toml"), 'titel = "typo"\n')
    bad = runner.invoke(cli, ["summary", str(small)], obj={})
    assert_one_line_error(bad, 8, "geoflow.toml", "unknown key 'titel'")


@pytest.mark.parametrize(
    ("text", "needle"),
    [('top_n = "many"\n', "key 'top_n' must be a whole number"),
     ("title = \n", "invalid TOML"),
     ('palette = "rainbow"\n', "key 'palette' must be one of")],
)
def test_config_errors_name_the_file_with_exit_code_8(small, tmp_path, text, needle):
    config = write_toml(tmp_path / "bad.toml", text)
    result = geoflow("run", small, "--config", config, "-o", tmp_path / "never")
    assert_one_line_error(result, 8, str(config), needle)


def test_missing_config_file_is_an_error(small, tmp_path):
    result = geoflow("summary", small, "--config", tmp_path / "nope.toml")
    assert_one_line_error(result, 8, "config file not found")


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("content", "code", "needle"),
    [
        (None, 3, "file not found"),
        (b"", 3, "empty file"),
        (b"colour,size\nred,3\n", 4, "no recognisable trace columns"),
    ],
)
@pytest.mark.parametrize("command", ["run", "summary"])
def test_input_errors_are_one_line_with_distinct_exit_codes(tmp_path, content, code, needle,
                                                            command):
    path = tmp_path / "traces.csv"
    if content is not None:
        path.write_bytes(content)
    extra = ["-o", str(tmp_path / "out")] if command == "run" else []
    result = geoflow(command, path, *extra)
    assert_one_line_error(result, code, str(path), needle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_an_input_error(small, tmp_path):
    path = tmp_path / "locked.csv"
    path.write_bytes(small.read_bytes())
    path.chmod(0)
    assert_one_line_error(geoflow("summary", path), 3, str(path))


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    result = geoflow("--debug", "summary", tmp_path / "nope.csv")
    assert result.exit_code == 3  # as without --debug (README: input missing)
    assert "Traceback" in result.stderr and "InputError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_input_and_sample_together_is_a_usage_error(small):
    result = geoflow("summary", small, "--sample")
    assert result.exit_code == 2
    assert "either INPUT or --sample" in result.stderr


# --------------------------------------------------------------------------- progress


def test_progress_is_off_when_quiet_or_not_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_enabled(stream=Tty()) is True
    assert progress_enabled(quiet=True, stream=Tty()) is False
    assert progress_enabled(stream=io.StringIO()) is False


def test_progress_bar_and_spinner_draw_on_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with bar("Writing state outputs", 3, enabled=True, console=console) as advance:
        for name in ("Texas", "Arizona", "Illinois"):
            advance(name)
    with bar("Writing dealer outputs", None, enabled=True, console=console) as advance:
        advance.total(2)  # a batch knows its entities only once it has listed them
        advance("Shop A")
        advance("Shop B")
    with stage("Reading and geocoding traces.csv", enabled=True, console=console):
        pass
    text = buffer.getvalue()
    assert "3/3" in text and "Illinois" in text
    assert "2/2" in text and "Shop B" in text
    assert "Reading and geocoding traces.csv" in text
    silent = io.StringIO()
    with bar("x", 2, enabled=False, console=Console(file=silent)) as advance:
        advance("a")
    assert silent.getvalue() == ""


def test_progress_bar_says_how_long_a_batch_has_left():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    now = [0.0]
    with bar("Writing dealer outputs", 10, enabled=True, console=console,
             clock=lambda: now[0]) as advance:
        first = buffer.getvalue()  # drawn when the task was added
        for name in ("Shop A", "Shop B", "Shop C", "Shop D"):
            now[0] += 30.0  # one entity every 30 s
            advance(name)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue()).replace("\r", "\n")
    assert "-:--:-- left" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", first)  # no pace yet
    # 4 of 10 in two minutes: the other 6 at the same pace take three
    assert "4/10 0:02:00 elapsed, 0:03:00 left" in plain


# --------------------------------------------------------------------------- on the sample


@pytest.fixture(scope="module")
def sample_by_trafficker(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "by-trafficker"
    result = geoflow("-q", "run", "--sample", "--per", "trafficker", "-o", out)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_sample_per_trafficker_one_folder_per_heavy_purchaser(sample_by_trafficker):
    out, _ = sample_by_trafficker
    top = manifest(out)
    # the reporting: 11 purchasers tied to 10 or more guns
    assert len(top["entities"]) == 11
    assert sorted(p.name for p in (out / "trafficker").iterdir()) == sorted(
        e["slug"] for e in top["entities"])
    guns = {e["key"]: e["guns"] for e in top["entities"]}
    assert guns[DE_LA_ROSA] == 34
    assert guns[BARAJAS] == max(guns.values()) >= 69
    barajas = next(e for e in top["entities"] if e["key"] == BARAJAS)
    assert barajas["slug"].startswith(BARAJAS.lower() + "-")
    sub = manifest(out / barajas["folder"])
    assert sub["counts"]["rows_valid"] - sub["counts"]["rows_filtered_out"] == guns[BARAJAS]
    assert sub["description"] == f"Purchaser: {BARAJAS}"
    dealers = pd.read_csv(out / barajas["folder"] / "tables" / "by_dealer.csv")
    assert dealers.iloc[0]["dealer_name"] == "GAT Guns" and dealers.iloc[0]["guns"] >= 69
    counts = top["counts"]
    assert counts["guns_in_entities"] + counts["guns_below_threshold"] + counts[
        "records_without_entity"] + counts["duplicate_records"] == counts["records"] == 2922
    text = "".join(p.read_text(encoding="utf-8") for p in out.rglob("*") if p.suffix in {
        ".html", ".json", ".csv", ".geojson", ".md"})
    assert "Barajas" not in text and "De La Rosa" not in text


def test_sample_filters_on_summary(tmp_path):
    result = geoflow("-q", "summary", "--sample", "--trafficker", "rogelio BARAJAS",
                     "--state", "Illinois", "--from", "2007", "--to", "2010", "--by", "dealer",
                     "--format", "json")
    assert result.exit_code == 0, result.stderr
    dealers = json.loads(result.stdout)
    assert dealers[0]["dealer_name"] == "GAT Guns"
    assert dealers[0]["guns"] >= 69
    # one purchaser per dealer: under --min-cell 3, so no purchaser id and only years
    assert {d["top_purchaser"] for d in dealers} == {None}
    assert {len(d["first_purchase"]) for d in dealers} == {4}
    unsuppressed = geoflow("-q", "summary", "--sample", "--trafficker", "rogelio BARAJAS",
                           "--state", "Illinois", "--by", "dealer", "--format", "json",
                           "--min-cell", "1")
    assert unsuppressed.exit_code == 0, unsuppressed.stderr
    assert "suppression is off" in unsuppressed.stderr
    assert "(--min-cell 1)" in unsuppressed.stderr
    assert {d["top_purchaser"] for d in json.loads(unsuppressed.stdout)} == {BARAJAS}


@pytest.fixture(scope="module")
def browser():
    from browser import Browser, find_chromium

    if find_chromium() is None:
        if os.environ.get("GEOFLOW_SKIP_BROWSER") == "1":
            pytest.skip("GEOFLOW_SKIP_BROWSER=1 and no Chromium")
        pytest.fail("headless Chromium not found: install Debian's chromium (see .ci/run) or "
                    "set GEOFLOW_SKIP_BROWSER=1")
    with Browser.launch() as launched:
        yield launched


@pytest.mark.browser
def test_index_page_in_headless_chromium(sample_by_trafficker, browser):
    out, _ = sample_by_trafficker
    page = browser.new_page(offline=True)
    page.goto((out / "index.html").as_uri())
    rows = page.evaluate("document.querySelectorAll('table.sortable tbody tr').length")
    assert rows == 11
    first_guns = "Array.from(document.querySelectorAll('tbody tr')).map(r => " \
                 "+r.cells[1].dataset.value)"
    initial = page.evaluate(first_guns)
    assert initial == sorted(initial, reverse=True)
    guns_sort = "document.querySelectorAll('thead th')[1].getAttribute('aria-sort')"
    assert page.evaluate(guns_sort) == "descending"  # the heading says how rows come
    page.screenshot(Path(__file__).parent / "artifacts" / "batch_index.png")  # as it opens
    page.evaluate("document.querySelectorAll('thead th')[1].click()")  # Guns: ascending
    assert page.evaluate(first_guns) == sorted(initial)
    assert page.evaluate(guns_sort) == "ascending"
    page.evaluate("document.querySelectorAll('thead th')[0].click()")  # names: A→Z
    labels = page.evaluate("Array.from(document.querySelectorAll('tbody tr'))"
                           ".map(r => r.cells[0].textContent)")
    assert labels == sorted(labels)
    links = page.evaluate("Array.from(document.querySelectorAll('tbody tr td:first-child a'))"
                          ".map(a => a.href)")
    assert len(links) == 11
    for link in links:
        assert link.startswith(out.as_uri() + "/trafficker/")
        assert Path(link.removeprefix("file://")).is_file()
    assert page.console_errors == []
    assert page.external_requests() == []
    page.close()


def test_log_lines_print_above_the_live_bar_not_inside_it():
    import logging

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    root = logging.getLogger()
    plain = logging.StreamHandler(io.StringIO())
    root.addHandler(plain)
    try:
        with bar("Writing", 1, enabled=True, console=console) as advance:
            logging.getLogger("geoflow.test").warning("a log line")
            advance("one")
        assert plain in root.handlers  # restored afterwards
    finally:
        root.removeHandler(plain)
    assert plain.stream.getvalue() == ""  # went through the live display instead
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue()).replace("\r", "\n")
    assert any(line.strip() == "a log line" for line in lines.splitlines())


def test_map_command_takes_the_same_filters(small, tmp_path):
    out = tmp_path / "az.html"
    result = geoflow("-q", "map", small, "--state", "Ariz.", "--mx-state", "Chih.", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "US state: Arizona (US-AZ); Mexican state: Chihuahua (MX-CHH)" in output_text(out)


@pytest.mark.parametrize(
    ("text", "needle"),
    [('geocoder = "nominatim"\n', "needs a user agent"),
     ('geocoder = "carrier-pigeon"\nuser_agent = "desk"\n', "unknown geocoder")],
)
def test_online_geocoder_from_config_is_checked_before_reading(small, tmp_path, text, needle):
    config = write_toml(tmp_path / "geo.toml", text)
    result = geoflow("summary", small, "--config", config)
    assert_one_line_error(result, 5, needle)
    assert "rows read" not in result.stderr


@pytest.mark.browser
def test_index_page_shows_script_payloads_as_text(browser, tmp_path):
    from geoflow.batch import render_index

    payload = "<img src=x onerror=\"window.pwned=1\"></script><script>window.pwned=2</script>`${1}`"
    entities = pd.DataFrame({
        "label": [payload, "Texas (US-TX)"], "guns": [3, 5], "placed": [3, 5],
        "purchasers": [1, 2], "dealers": [1, 1],
        "folder": ["state/x-abc123", "state/texas-873133"],
        "href": ["state/x-abc123/map.html", "state/texas-873133/map.html"],
    })
    path = tmp_path / "index.html"
    path.write_text(render_index(entities, kind="state", title=payload, description=payload),
                    encoding="utf-8")
    page = browser.new_page(offline=True)
    page.goto(path.as_uri())
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.images.length") == 0
    assert page.evaluate("document.scripts.length") == 1
    assert page.evaluate("document.title") == payload
    cells = page.evaluate("Array.from(document.querySelectorAll('tbody tr'))"
                          ".map(r => r.cells[0].textContent)")
    assert payload in cells
    assert page.console_errors == []
    page.close()


#: ``python -m interrupted_in_exec ARGS``: geoflow's CLI, where a Ctrl-C lands in code that
#: ``exec`` runs from a string, as dataclasses and namedtuple do while modules import (the
#: batch's Ctrl-C test met it in 1 run of 10 to 20: its Ctrl-C landed in the dataclasses of
#: geoflow.chunked as the read imported it).
_CTRL_C_IN_EXEC = textwrap.dedent("""
    import sys
    import geoflow.cli

    def interrupted(*args):
        exec("raise KeyboardInterrupt")

    geoflow.cli._input_path = interrupted
    sys.argv = ["geoflow", *sys.argv[1:]]
    geoflow.cli.main()
""")


def test_ctrl_c_inside_exec_code_still_exits_130(tmp_path):
    """CPython marks a KeyboardInterrupt raised in exec'd code as unhandled even when caught;
    under ``python -m`` it would then end the process by SIGINT (status -2) after printing our
    line, and a script checking for 130 would see a crash."""
    (tmp_path / "interrupted_in_exec.py").write_text(_CTRL_C_IN_EXEC)
    done = subprocess.run(
        [sys.executable, "-m", "interrupted_in_exec", "-q", "run", "--sample", "-o",
         str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == ("error: interrupted (Ctrl-C); no half-written output folder "
                                   "was put in place")


_NUMPY_PROBE = textwrap.dedent("""
    import os, sys
    import geoflow.cli

    sys.argv = ["geoflow", "sample", "--rows", "5", "-o", sys.argv[1]]
    try:
        geoflow.cli.main()
    except SystemExit:
        pass
    import numpy  # imported by the command: numpy started with this environment
    core = getattr(numpy, "_core", None) or numpy.core  # numpy 2, numpy 1
    print(os.environ.get("OPENBLAS_NUM_THREADS"), os.environ.get("NUMPY_MADVISE_HUGEPAGE"),
          int(core.multiarray._get_madvise_hugepage()))
""")


@pytest.mark.parametrize(("given", "seen"), [({}, "1 0 0"),
                                             ({"OPENBLAS_NUM_THREADS": "3"}, "3 0 0"),
                                             ({"NUMPY_MADVISE_HUGEPAGE": "1"}, "1 1 1")])
def test_cli_starts_numpy_quiet_unless_the_user_says(tmp_path, given, seen):
    """OpenBLAS's idle worker threads spin a core for a while in each of a run's processes,
    and numpy's huge pages for large arrays stall on a fragmented memory: the CLI starts numpy
    with one BLAS thread and without them, and a value the user set is kept."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "NUMPY_MADVISE_HUGEPAGE")}
    env.update(given)
    done = subprocess.run([sys.executable, "-c", _NUMPY_PROBE, str(tmp_path / "s.csv")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == seen
    assert (tmp_path / "s.csv").is_file()


#: Prints, as the process ends (registered first, so run after the command's own exit
#: handlers), how many objects the collector has frozen.
_FREEZE_PROBE = textwrap.dedent("""
    import atexit, gc
    atexit.register(lambda: print("frozen", gc.get_freeze_count()))
""")


@pytest.mark.parametrize(("how", "frozen"), [
    ([str(Path(sysconfig.get_path("scripts")) / "geoflow")], True),  # the installed command
    ([sys.executable, "-m", "geoflow"], True),
    ([sys.executable, "-c", "from geoflow.cli import main; main()"], False),
])
def test_the_command_leaves_its_objects_out_of_the_last_collection(tmp_path, how, frozen):
    """Python's last garbage collection, as a process ends, walks every object still alive
    (a large run's: about 0.08 s) though all go anyway: the geoflow command freezes them
    first. A program that calls ``cli.main`` keeps its collector as it was."""
    (tmp_path / "sitecustomize.py").write_text(_FREEZE_PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([*how, "sample", "--rows", "5", "-o", str(tmp_path / "s.csv")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.csv").is_file()
    label, count = done.stdout.split()[-2:]
    assert label == "frozen"
    assert int(count) > 10_000 if frozen else int(count) == 0
