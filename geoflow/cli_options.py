"""Click options shared by ``run``, ``map`` and ``summary``: filters, batches, config, progress.

Each decorator adds a group of options; the helpers turn their values into calls of
:mod:`geoflow.select`, :mod:`geoflow.batch` and :mod:`geoflow.config`, so the commands in
:mod:`geoflow.cli` stay short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from geoflow.config import Config, load_config
from geoflow.progress import progress_enabled

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FILTER_PARAMS",
    "BATCH_KINDS",
    "filter_options",
    "batch_options",
    "config_option",
    "apply_filters",
    "pop_filters",
    "context_config",
    "geocoder_from_config",
    "map_options",
    "show_progress",
    "accounting_line",
]

log = logging.getLogger("geoflow")

#: Names of the parameters :func:`filter_options` adds (pop them from a command's kwargs).
FILTER_PARAMS = ("state", "mx_state", "trafficker", "dealer", "date_from", "date_to")
#: ``--per`` choices: the keys of ``select.ENTITY_KINDS``, spelled out so that ``geoflow
#: --help`` need not import pandas (a test keeps them in step).
BATCH_KINDS = ("state", "mx-state", "trafficker", "dealer")

_F = Callable[..., Any]


def filter_options(func: _F) -> _F:
    """``--state``, ``--mx-state``, ``--trafficker``, ``--dealer``, ``--from``, ``--to``."""
    options = [
        click.option("--state", "state", multiple=True, metavar="STATE",
                     help="Only guns sold in this US state (TX, US-TX or Texas); repeatable."),
        click.option("--mx-state", "mx_state", multiple=True, metavar="STATE",
                     help="Only guns recovered in this Mexican state (MX-TAM, TAM, Tamaulipas, "
                          "Tamps.); repeatable."),
        click.option("--trafficker", "trafficker", multiple=True, metavar="NAME|ID",
                     help="Only this purchaser: name (accent/case-insensitive, or a part naming "
                          "one purchaser) or pseudonym such as P-3f9a1c; repeatable."),
        click.option("--dealer", "dealer", multiple=True, metavar="NAME|FFL",
                     help="Only this dealer: FFL number, name, or a part naming one dealer; "
                          "repeatable."),
        click.option("--from", "date_from", metavar="DATE",
                     help="Only guns recovered on or after DATE (YYYY, YYYY-MM or YYYY-MM-DD)."),
        click.option("--to", "date_to", metavar="DATE",
                     help="Only guns recovered on or before DATE (a year or month means its "
                          "end)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def batch_options(func: _F) -> _F:
    """``--per KIND`` and ``--min-guns N``."""
    func = click.option(
        "--min-guns", type=click.IntRange(min=1), default=None, metavar="N",
        help="With --per: only entities with at least N guns (default: every state; "
             "10 for traffickers and dealers).",
    )(func)
    return click.option(
        "--per", type=click.Choice(BATCH_KINDS), default=None,
        help="Write one complete output set per entity under OUT/<kind>/<name>/ and an "
             "index page OUT/index.html.",
    )(func)


def config_option(func: _F) -> _F:
    """``--config PATH`` (default: ``geoflow.toml`` in the working folder, if present)."""
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
        default=None, metavar="PATH",
        help="Defaults from this TOML file (default: ./geoflow.toml if present); "
             "command-line options win.",
    )(func)


def context_config(config_path: Path | None) -> Config:
    """Load the config file once per invocation; log which file was used."""
    config = load_config(config_path)
    if config.path is not None:
        log.debug("defaults from %s", config.path)
    return config


def geocoder_from_config(config: Config) -> Any:
    """``None`` (the offline geocoder) or the geopy service named by ``geocoder`` in config."""
    if config.geocoder in (None, "offline"):
        return None
    from geoflow.geocode import GeopyGeocoder

    return GeopyGeocoder(config.geocoder, user_agent=config.user_agent or "",
                         cache_path=config.geocode_cache)


def map_options(config: Config, *, show_names: bool, **given: Any) -> Any:
    """``render.MapOptions`` from command-line values (``given``, ``None`` = not given), then
    the config file, then render's defaults."""
    from dataclasses import fields

    from geoflow.render import MapOptions

    values = {}
    for field in fields(MapOptions):
        if field.name == "show_names":
            continue
        value = given.get(field.name)
        if value is None and field.name in type(config).__dataclass_fields__:
            value = getattr(config, field.name)
        if value is not None:
            values[field.name] = value
    return MapOptions(show_names=show_names, **values)


def pop_filters(params: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the :data:`FILTER_PARAMS` from a command's keyword arguments.

    Dates are checked here, before any reading, so a typo fails at once.
    """
    from geoflow.select import parse_date_bound

    values = {name: params.pop(name, None) for name in FILTER_PARAMS}
    parse_date_bound(values["date_from"])
    parse_date_bound(values["date_to"], end=True)
    return values


def apply_filters(
    records: pd.DataFrame, values: dict[str, Any], *, show_names: bool
) -> tuple[pd.DataFrame, str]:
    """Apply the filter values of :func:`pop_filters` to ``records``."""
    from geoflow.select import filter_records

    return filter_records(
        records,
        us_states=values["state"] or (),
        mx_states=values["mx_state"] or (),
        traffickers=values["trafficker"] or (),
        dealers=values["dealer"] or (),
        date_from=values["date_from"],
        date_to=values["date_to"],
        show_names=show_names,
    )


def show_progress() -> bool:
    """Progress bars on stderr unless ``--quiet`` or stderr is not a terminal."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and (ctx.find_root().obj or {}).get("quiet"))
    return progress_enabled(quiet=quiet)


def accounting_line(counts: dict[str, int]) -> str:
    """One line of row accounting: read / rejected / placed / unplaced (+ filtered out)."""
    line = (
        f"{counts['rows_read']:,} rows read, {counts['rows_rejected']:,} rejected, "
        f"{counts['rows_placed']:,} placed on the map, {counts['rows_unplaced']:,} unplaced"
    )
    if counts.get("rows_filtered_out"):
        line += f" ({counts['rows_filtered_out']:,} left out by filters)"
    return line
