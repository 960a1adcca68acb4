"""geoflow.toml / --config: defaults a desk sets once, with clear errors for mistakes."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from geoflow.config import KEYS, Config, load_config
from geoflow.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_every_documented_key_is_a_config_field():
    assert {f.name for f in fields(Config)} == {"path", *KEYS}


def test_no_file_in_the_working_folder_gives_empty_defaults(tmp_path):
    config = load_config(cwd=tmp_path)
    assert config == Config()
    assert config.pick("title", None, "Default title") == "Default title"


def test_geoflow_toml_in_the_working_folder_is_read(tmp_path):
    write(tmp_path / "geoflow.toml", 'title = "Río de hierro"\nshow_names = false\ntop_n = 40\n')
    config = load_config(cwd=tmp_path)
    assert config.title == "Río de hierro"
    assert config.show_names is False
    assert config.top_n == 40
    assert config.path == tmp_path / "geoflow.toml"


def test_command_line_value_wins_over_the_file(tmp_path):
    config = load_config(write(tmp_path / "desk.toml", 'credit = "Desk"\ntiles = true\n'))
    assert config.pick("credit", "Graphic: A. Reporter", "x") == "Graphic: A. Reporter"
    assert config.pick("credit", None, "x") == "Desk"
    # an explicit false on the command line still wins over true in the file
    assert config.pick("tiles", False, None) is False


def test_paths_are_relative_to_the_config_file(tmp_path):
    desk = tmp_path / "desk"
    desk.mkdir()
    config = load_config(write(desk / "geoflow.toml", 'overrides = "fixes/places.csv"\n'),
                         cwd=tmp_path)
    assert config.overrides == desk / "fixes" / "places.csv"


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path / "geoflow.toml", 'title = "x"\ntitel = "typo"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "unknown key 'titel'" in message
    assert "subtitle" in message  # the known keys are listed
    assert info.value.exit_code == 8


def test_tables_are_not_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'map'"):
        load_config(write(tmp_path / "g.toml", '[map]\ntitle = "x"\n'))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("top_n = true\n", "key 'top_n' must be a whole number, got bool"),
        ('show_names = "yes"\n', "key 'show_names' must be true or false, got str"),
        ("title = 3\n", "key 'title' must be a string"),
        ('flow_level = "city"\n', "key 'flow_level' must be one of place, state"),
        ("min_flow_guns = 0\n", "key 'min_flow_guns' must be at least 1"),
        ('palette = "rainbow"\n', "key 'palette' must be one of"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(write(tmp_path / "geoflow.toml", text))


def test_invalid_toml_reports_line_and_column(tmp_path):
    path = write(tmp_path / "geoflow.toml", 'title = "ok"\ncredit = \n')
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2, column 10"):
        load_config(path)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_non_utf8_file_is_an_error(tmp_path):
    path = tmp_path / "geoflow.toml"
    path.write_bytes(b'title = "\xff"\n')
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path)
