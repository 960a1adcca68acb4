"""Privacy by default, end to end on the sample: a secret per-user key nobody else can use to
reverse pseudonyms, small-count suppression, no real name in any output of any mode, loud
switches, no folder paths in manifests."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from handmade import output_text

from geoflow.cli import cli
from geoflow.errors import ConfigError
from geoflow.privacy import (
    KEY_ENV,
    PseudonymKey,
    normalise_names,
    pseudonym,
    resolve_key,
    user_key,
    user_key_path,
)
from geoflow.sample import sample_path
from geoflow.select import match_key

#: the constant key of geoflow 0.1, public in its source code: what an outsider would try
V01_KEY = b"geoflow-pseudonym-v1"
PSEUDONYM = re.compile(r"\bP-[0-9a-f]{6,}\b")
CELL_FILES = ("flows.geojson", "dealers.geojson", "recoveries.geojson")
TOTAL_TABLES = ("by_us_state", "by_mx_state", "state_matrix", "by_crossing", "by_year")


def geoflow(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), obj={}, env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def sample() -> Path:
    return sample_path()


@pytest.fixture(scope="module")
def names(sample) -> pd.Series:
    """Every purchaser and possessor name of the sample: the attacker's dictionary."""
    raw = pd.read_csv(sample, dtype="string", keep_default_na=False, na_values=[""])
    columns = [c for c in raw.columns if "purchaser" in c.lower() or "possessor" in c.lower()]
    assert len(columns) == 2, raw.columns
    return pd.concat([raw[c] for c in columns], ignore_index=True).dropna().drop_duplicates()


def output_texts(folder: Path) -> list[str]:
    return [output_text(p) for p in sorted(folder.rglob("*")) if p.is_file()]


def published_ids(folder: Path) -> set[str]:
    return {m for text in output_texts(folder) for m in PSEUDONYM.findall(text)}


# --------------------------------------------------------------------------- the key


def test_user_key_is_made_once_private_and_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = user_key_path()
    assert path == tmp_path / "config" / "geoflow" / "pseudonym.key"
    assert not path.exists()
    first = user_key()
    assert path.is_file() and len(first.secret) == 64  # 32 random bytes as hex
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = user_key()
    assert again.secret == first.secret and again.source == "user key file"
    assert pseudonym(pd.Series(["Rogelio Barajas"]))[0] == (
        pseudonym(pd.Series(["ROGELIO  barajas"]), key=first)[0])
    assert re.fullmatch(r"[0-9a-f]{16}", first.fingerprint)
    assert first.fingerprint not in first.secret.decode()
    assert first.secret.decode() not in repr(first)
    # another user (another config folder) has another key, so other pseudonyms
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other"))
    assert user_key().secret != first.secret


def test_key_sources_in_order_and_short_keys_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    team = tmp_path / "team.key"
    team.write_text("a team secret of many characters\n")
    from geoflow.config import Config

    config_file = tmp_path / "config-team.key"
    config_file.write_text("the config file's own key text")
    config = Config(path=tmp_path / "geoflow.toml", pseudonym_key_file=config_file)
    env = {KEY_ENV: "an environment key, long enough"}
    assert resolve_key(key_file=team, config=config, environ=env).source == (
        "--pseudonym-key-file")
    assert resolve_key(key_file=team, environ={}).secret == b"a team secret of many characters"
    assert resolve_key(config=config, environ=env).source == KEY_ENV
    assert resolve_key(config=config, environ={}).secret == b"the config file's own key text"
    assert resolve_key(environ={}).source == "user key file"
    with pytest.raises(ConfigError, match="at least 16"):
        resolve_key(environ={KEY_ENV: "short"})
    team.write_text("tiny")
    with pytest.raises(ConfigError, match="at least 16"):
        resolve_key(key_file=team, environ={})


@pytest.fixture(scope="module")
def default_run(sample, tmp_path_factory) -> Path:
    """``geoflow run`` on the sample with every default (the user's own key)."""
    out = tmp_path_factory.mktemp("default") / "out"
    result = geoflow("-q", "run", str(sample), "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_reversal_with_the_samples_names_fails_without_the_key_and_succeeds_with_it(
        sample, names, default_run, tmp_path):
    out = default_run
    shown = published_ids(out)
    assert len(shown) > 100
    # an outsider with the dictionary and geoflow's source tries the old constant key and an
    # empty key: a pseudonym is reversed when the guess maps it to the person it stands for
    # (a 6-hex id can match some other name by chance, ~1 in 20 runs: that reverses nothing)
    truth = dict(zip(pseudonym(names), normalise_names(names), strict=True))
    assert shown <= set(truth)
    for guess in (V01_KEY, b""):
        guessed = dict(zip(pseudonym(names, key=PseudonymKey(guess)), normalise_names(names),
                           strict=True))
        reversed_ = [pid for pid in shown if guessed.get(pid) == truth[pid]]
        assert reversed_ == [], "pseudonyms reversed without the key"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["pseudonyms"]["source"] == "user key file"
    assert manifest["pseudonyms"]["fingerprint"] == user_key().fingerprint

    # a team sharing a key file: stable across users, and reversible by whoever holds the key
    team = tmp_path / "team.key"
    team.write_text("newsroom shared pseudonym key 2026\n")
    printed = []
    for user in ("alice", "bob"):  # two users, each with their own config folder
        env = {"XDG_CONFIG_HOME": str(tmp_path / f"{user}-config")}
        result = geoflow("-q", "summary", str(sample), "--by", "purchaser", "--findings",
                         "--format", "csv", "--pseudonym-key-file", str(team), env=env)
        assert result.exit_code == 0, result.output
        printed.append(result.stdout)
    alice, bob = printed
    assert alice == bob
    team_ids = set(PSEUDONYM.findall(alice))
    holder = dict(zip(pseudonym(names, key=PseudonymKey(team.read_bytes().strip())), names,
                      strict=True))
    assert team_ids and team_ids <= set(holder)  # every published pseudonym reversed
    assert len(team_ids) > 200 and not team_ids & shown  # another key, other pseudonyms


# --------------------------------------------------------------------------- small counts


@pytest.fixture(scope="module")
def prepared(sample):
    from geoflow.pipeline import RunOptions, prepare_records

    return prepare_records(sample, options=RunOptions())


def _is_year_or_empty(value) -> bool:
    return value is None or re.fullmatch(r"\d{4}", str(value)) is not None


def test_small_cells_carry_no_purchaser_and_no_full_date_and_totals_hold(prepared, tmp_path):
    from geoflow.pipeline import analyse, write_outputs

    k = 3
    open_result = analyse(prepared, options=replace(prepared.options, min_cell=1))
    result = analyse(prepared, options=prepared.options)
    out = write_outputs(result, tmp_path / "out", write_map=False)
    listed = set(result.tables["by_purchaser"]["purchaser"])
    small_rows = 0
    for name in CELL_FILES:
        features = json.loads((out / name).read_text(encoding="utf-8"))["features"]
        for props in (f["properties"] for f in features):
            small = props["guns"] < k or props["purchasers"] < k
            small_rows += small
            dates = [props.get(c) for c in ("first_purchase", "last_purchase",
                                             "first_recovery", "last_recovery") if c in props]
            if small:
                assert props.get("top_purchaser") is None, (name, props)
                assert all(_is_year_or_empty(d) for d in dates), (name, props)
                assert props.get("median_time_to_crime_days") is None
            assert props.get("top_purchaser") in listed | {None}
    dealers = pd.read_csv(out / "tables" / "by_dealer.csv", dtype={"first_purchase": str,
                                                                   "last_purchase": str})
    small = (dealers["guns"] < k) | (dealers["purchasers"] < k)
    assert dealers.loc[small, "top_purchaser"].isna().all()
    assert dealers.loc[small, "first_purchase"].dropna().str.fullmatch(r"\d{4}").all()
    purchasers = pd.read_csv(out / "tables" / "by_purchaser.csv")
    assert (purchasers["guns"] >= k).all() and len(purchasers) == len(listed)
    # what was withheld is counted; what is left is exactly what the open run had
    summary = result.manifest["suppression"]
    assert summary == result.suppression and summary["enabled"] and summary["min_cell"] == k
    assert sum(c["rows"] for n, c in summary["cells"].items() if n != "by_dealer") == small_rows
    everyone = open_result.tables["by_purchaser"]
    assert summary["purchasers_not_listed"] == {
        "purchasers": int((everyone["guns"] < k).sum()),
        "guns": int(everyone.loc[everyone["guns"] < k, "guns"].sum())}
    assert len(purchasers) + summary["purchasers_not_listed"]["purchasers"] == len(everyone)
    assert any("not listed" in t for t in summary["text"])
    assert "not listed" in (out / "findings.md").read_text(encoding="utf-8")
    # totals by state, port and year, and the headline counts, are never suppressed
    for name in TOTAL_TABLES:
        pd.testing.assert_frame_equal(result.tables[name], open_result.tables[name])
    for layer in ("crossings", "states"):
        pd.testing.assert_frame_equal(
            pd.DataFrame(getattr(result, layer)).drop(columns="geometry"),
            pd.DataFrame(getattr(open_result, layer)).drop(columns="geometry"))
    assert result.flows["guns"].sum() == open_result.flows["guns"].sum() == (
        result.manifest["counts"]["rows_placed"])
    assert result.manifest["counts"] == open_result.manifest["counts"]
    numbers = {f["id"]: f["numbers"] for f in result.findings}
    open_numbers = {f["id"]: f["numbers"] for f in open_result.findings}
    for key in ("purchasers", "mostly_one_store", "guns"):
        assert numbers["prolific_purchasers"][key] == open_numbers["prolific_purchasers"][key]
    assert open_result.manifest["suppression"]["enabled"] is False
    assert open_result.manifest["options"]["min_cell"] == 1


def test_per_trafficker_batch_lists_no_purchaser_under_the_cell_threshold(prepared, tmp_path):
    from geoflow.batch import entity_table

    records = prepared.records
    table, counts = entity_table(records, "trafficker", min_guns=1, min_cell=3)
    assert table["guns"].min() >= 3 and counts["min_guns"] == 3
    open_table, _ = entity_table(records, "trafficker", min_guns=1, min_cell=1)
    assert open_table["guns"].min() == 1


# --------------------------------------------------------------------------- every mode


def found_names(folder_or_text, names: set[str]) -> set[str]:
    """Full names (normalised) that occur in any file under a folder, or in a text."""
    lengths = sorted({len(n.split()) for n in names})
    first_words = {n.split()[0] for n in names}
    texts = (output_texts(folder_or_text) if isinstance(folder_or_text, Path)
             else [folder_or_text])
    hits = set()
    for text in texts:
        words = match_key(text).split()
        # only runs of words that start like a name (a set look-up per word)
        starts = [i for i, word in enumerate(words) if word in first_words]
        hits |= names & {" ".join(words[i:i + n]) for i in starts for n in lengths}
    return hits


@pytest.fixture(scope="module")
def dictionary(names) -> set[str]:
    full = set(normalise_names(names).dropna())
    assert len(full) > 1000 and "rogelio barajas" in full
    return full


def _no_paths_in(manifest: Path, root: Path) -> None:
    text = manifest.read_text(encoding="utf-8")
    assert str(root) not in text and str(Path.home()) + os.sep not in text, manifest

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value
    assert not [s for s in strings(json.loads(text)) if os.path.isabs(s)], manifest


def test_no_real_name_in_a_run_and_no_path_in_its_manifest(default_run, dictionary):
    assert found_names(default_run, dictionary) == set()
    _no_paths_in(default_run / "manifest.json", default_run.parent)


@pytest.mark.parametrize("mode", [  # batches cut to a few entities to keep the test short
    ("run", "--per", "trafficker", "--min-guns", "40", "--jobs", "1"),
    ("run", "--per", "dealer", "--min-guns", "50", "--jobs", "1"),
    ("run", "--per", "state", "--state", "IL", "--state", "MN", "--jobs", "1"),
])
def test_no_real_name_in_any_run_or_batch_output(sample, dictionary, tmp_path, mode):
    out = tmp_path / "out"
    result = geoflow("-q", *mode, str(sample), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert found_names(out, dictionary) == set()
    assert not found_names(result.output, dictionary)
    manifests = list(out.rglob("manifest.json"))
    assert manifests
    for manifest in manifests:
        _no_paths_in(manifest, tmp_path)
    if mode[1:] == ("--per", "trafficker"):  # the control: --show-names does name people
        named = tmp_path / "named"
        shown = geoflow("-q", *mode, str(sample), "-o", str(named), "--show-names",
                        "--trafficker", "rogelio barajas")
        assert shown.exit_code == 0 and "notice: real purchaser" in shown.stderr
        assert "rogelio barajas" in found_names(named, dictionary)


@pytest.mark.parametrize("by", ["dealer", "purchaser", "trafficker"])  # the tables of people
def test_no_real_name_in_summary(sample, dictionary, by):
    result = geoflow("-q", "summary", str(sample), "--by", by, "--findings", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert found_names(result.output, dictionary) == set()
    assert PSEUDONYM.search(result.stdout)  # people are there, by pseudonym


def test_no_real_name_on_the_map_or_the_stills(sample, dictionary, tmp_path):
    page = tmp_path / "map" / "map.html"
    assert geoflow("-q", "map", str(sample), "-o", str(page)).exit_code == 0
    still = tmp_path / "static" / "map.svg"
    result = geoflow("-q", "static", str(sample), "-o", str(still))
    assert result.exit_code == 0, result.output
    assert still.stat().st_size > 10_000
    assert found_names(page.parent, dictionary) == found_names(still.parent, dictionary) == set()


def test_geocode_writes_pseudonyms_unless_show_names(sample, dictionary, tmp_path):
    coded = tmp_path / "geocode"
    result = geoflow("-q", "geocode", str(sample), "-o", str(coded / "out.csv"))
    assert result.exit_code == 0, result.output
    assert found_names(coded, dictionary) == set()
    columns = pd.read_csv(coded / "out.csv", nrows=1).columns
    assert {"purchaser_id", "possessor_id"} <= set(columns)
    assert not {"purchaser_name", "possessor_name"} & set(columns)
    # a plain table with a purchaser column (--column mode) gets pseudonyms too
    table = tmp_path / "people.csv"
    table.write_text("City,Purchaser Name\nReynosa,Rogelio Barajas\n", encoding="utf-8")
    plain = geoflow("-q", "geocode", str(table), "--column", "City", "--country", "MX",
                    "-o", str(tmp_path / "plain" / "out.csv"))
    assert plain.exit_code == 0, plain.output
    assert found_names(tmp_path / "plain", dictionary) == set()
    assert "purchaser_id" in pd.read_csv(tmp_path / "plain" / "out.csv").columns
    # the gate opens only when asked, and says so
    named = geoflow("-q", "geocode", str(sample), "-o", str(tmp_path / "named" / "out.csv"),
                    "--show-names")
    assert named.exit_code == 0 and "notice: real purchaser" in named.stderr
    assert "rogelio barajas" in found_names(tmp_path / "named", dictionary)


# --------------------------------------------------------------------------- loud switches

TINY = ("Trace Number,Purchaser Name,FFL Name,FFL City,FFL State,Recovery City,Recovery State\n"
        "T1,Ana Uno,Store A,Houston,TX,Reynosa,Tamaulipas\n"
        "T2,Beto Dos,Store A,Houston,TX,Reynosa,Tamaulipas\n")


def test_config_file_switches_print_their_notice_even_with_quiet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "traces.csv").write_text(TINY, encoding="utf-8")
    config = tmp_path / "geoflow.toml"
    config.write_text("show_names = true\nmin_cell = 1\n", encoding="utf-8")
    result = geoflow("-q", "summary", "traces.csv", "--by", "purchaser", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    names_line = [line for line in lines if "names are shown" in line]
    assert len(names_line) == 1 and f"show_names in {config}" in names_line[0]
    assert any("suppression is off" in line and f"min_cell in {config}" in line
               for line in lines)
    assert "Ana Uno" in result.stdout
    # the online geocoder, set in the config file (a closed local port: nothing leaves)
    config.write_text('geocoder = "nominatim"\nuser_agent = "geoflow tests"\n',
                      encoding="utf-8")
    result = geoflow("-q", "summary", "traces.csv", "--geocoder-domain", "127.0.0.1:9",
                     "--geocoder-scheme", "http", "--geocode-cache", str(tmp_path / "c.db"))
    online = [line for line in result.stderr.splitlines() if "online nominatim" in line]
    assert len(online) == 1 and f"geocoder in {config}" in online[0]
    assert "Ana Uno" not in result.output


def test_options_in_manifests_name_files_not_folders(tmp_path):
    from geoflow.pipeline import RunOptions

    described = RunOptions(overrides=tmp_path / "fixes" / "places.csv",
                           pseudonym_key=b"a key of sixteen+ bytes").describe()
    assert described["overrides"] == "places.csv"
    assert str(tmp_path) not in json.dumps(described)
    assert "sixteen" not in json.dumps(described)
    assert described["pseudonym_key"] == {
        "fingerprint": PseudonymKey(b"a key of sixteen+ bytes").fingerprint, "source": "given"}
