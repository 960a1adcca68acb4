"""Defaults a desk sets once, from ``geoflow.toml`` in the working folder or ``--config PATH``.

The file is flat TOML; every key is optional and an option given on the command line wins::

    title = "Guns traced from US dealers to Mexico"
    subtitle = "Recoveries 2007–2010"
    credit = "Graphic: Data desk"
    source = "Source: ATF trace records (leaked), analysis by geoflow"
    palette = "blue-orange"
    geocoder = "offline"
    user_agent = "newsroom-geoflow (data@example.org)"
    overrides = "places_fixed.csv"   # relative paths are relative to this file
    show_names = false
    min_cell = 3                      # 1 turns small-count suppression off
    pseudonym_key_file = "team.key"   # share pseudonyms with a team (default: your own key)

An unknown key or a value of the wrong type is an error that names the key and the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoflow.errors import ConfigError

__all__ = ["Config", "CONFIG_FILE", "KEYS", "load_config"]

CONFIG_FILE = "geoflow.toml"

#: Known keys → (type, what it sets). Paths are resolved against the config file's folder.
KEYS: dict[str, tuple[type, str]] = {
    "title": (str, "map title"),
    "subtitle": (str, "map subtitle (a filter description is appended)"),
    "credit": (str, "credit line on the map"),
    "source": (str, "source line on the map"),
    "caveat": (str, "caveat printed under the legend"),
    "palette": (str, "colour palette of the state choropleths"),
    "tiles": (bool, "offer the online tile layer"),
    "top_n": (int, "draw at most this many flows (flow_style paths)"),
    "flow_style": (str, "legs (aggregated US and Mexican legs) or paths (one line per flow)"),
    "max_legs": (int, "draw at most this many legs"),
    "min_flow_guns": (int, "draw flows with at least this many guns"),
    "geocoder": (str, "geocoder back-end: offline (default) or a geopy service"),
    "user_agent": (str, "user agent for online geocoders"),
    "geocode_cache": (Path, "cache file for online geocoders"),
    "overrides": (Path, "place overrides CSV"),
    "column_map": (Path, "header mapping CSV/JSON"),
    "dayfirst": (bool, "read dates day first (Mexican files)"),
    "flow_level": (str, "place or state"),
    "show_names": (bool, "show purchaser and possessor names instead of pseudonyms"),
    "pseudonym_key": (str, "secret key for pseudonyms (prefer pseudonym_key_file)"),
    "pseudonym_key_file": (Path, "file holding the secret pseudonym key a team shares"),
    "min_cell": (int, "small-count threshold: cells under it show no purchaser, only years"),
    "trafficker_min_guns": (int, "by_trafficker lists purchasers tied to this many guns"),
}

_CHOICES = {"flow_level": ("place", "state"), "flow_style": ("legs", "paths")}


@dataclass(frozen=True, kw_only=True)
class Config:
    """Values read from a config file; ``None`` means "not set there"."""

    path: Path | None = None
    title: str | None = None
    subtitle: str | None = None
    credit: str | None = None
    source: str | None = None
    caveat: str | None = None
    palette: str | None = None
    tiles: bool | None = None
    top_n: int | None = None
    flow_style: str | None = None
    max_legs: int | None = None
    min_flow_guns: int | None = None
    geocoder: str | None = None
    user_agent: str | None = None
    geocode_cache: Path | None = None
    overrides: Path | None = None
    column_map: Path | None = None
    dayfirst: bool | None = None
    flow_level: str | None = None
    show_names: bool | None = None
    pseudonym_key: str | None = None
    pseudonym_key_file: Path | None = None
    min_cell: int | None = None
    trafficker_min_guns: int | None = None

    def pick(self, key: str, cli_value: Any = None, default: Any = None) -> Any:
        """The command-line value if given, else this file's value, else ``default``."""
        if cli_value is not None:
            return cli_value
        value = getattr(self, key)
        return default if value is None else value


def load_config(path: str | Path | None = None, *, cwd: str | Path | None = None) -> Config:
    """Read ``path``, or ``geoflow.toml`` in ``cwd`` (default: the working folder) if present.

    Without a file an empty :class:`Config` comes back. Raises :class:`ConfigError` for a
    missing explicit file, invalid TOML (with its line and column), an unknown key or a value of
    the wrong type.
    """
    if path is None:
        candidate = Path(cwd or Path.cwd()) / CONFIG_FILE
        if not candidate.is_file():
            return Config()
        path = candidate
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=str(path)) from None
    return Config(path=path, **_validate(data, path))


def _validate(data: dict[str, Any], path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            known = ", ".join(sorted(KEYS))
            raise ConfigError(f"unknown key {key!r} (known keys: {known})", path=str(path))
        kind, _ = KEYS[key]
        expected = str if kind is Path else kind
        # bool is a subclass of int in Python: `top_n = true` must not pass as 1.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"key {key!r} must be {_type_name(kind)}, got {type(value).__name__} "
                f"{value!r}",
                path=str(path),
            )
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(
                f"key {key!r} must be one of {', '.join(_CHOICES[key])}, got {value!r}",
                path=str(path),
            )
        if expected is int and value < 1:
            raise ConfigError(f"key {key!r} must be at least 1, got {value}", path=str(path))
        if key == "palette":
            from geoflow.scene import PALETTES

            if value not in PALETTES:
                raise ConfigError(f"key 'palette' must be one of {', '.join(PALETTES)}, got "
                                  f"{value!r}", path=str(path))
        values[key] = (path.parent / value) if kind is Path else value
    return values


def _type_name(kind: type) -> str:
    return {str: "a string", bool: "true or false", int: "a whole number",
            Path: "a path (string)"}[kind]
