"""Click options shared by ``run``, ``map`` and ``summary``: filters, batches, config, geocoder,
progress.

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
from geoflow.errors import GeocodeError
from geoflow.progress import progress_enabled

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALLOW_OFFLINE_FALLBACK",
    "FILTER_PARAMS",
    "BATCH_KINDS",
    "filter_options",
    "batch_options",
    "config_option",
    "GEOCODERS",
    "GEOCODER_PARAMS",
    "geocoder_options",
    "apply_filters",
    "pop_filters",
    "context_config",
    "geocoder_from_config",
    "map_options",
    "show_progress",
    "accounting_line",
    "notice",
    "origin",
]

log = logging.getLogger("geoflow")

#: Names of the parameters :func:`filter_options` adds (pop them from a command's kwargs).
FILTER_PARAMS = ("state", "mx_state", "trafficker", "dealer", "date_from", "date_to")
#: ``--per`` choices: the keys of ``select.ENTITY_KINDS``, spelled out so that ``geoflow
#: --help`` need not import pandas (a test keeps them in step).
BATCH_KINDS = ("state", "mx-state", "trafficker", "dealer")

#: ``--geocoder`` choices: the offline gazetteer, then ``geocode.GEOPY_SERVICES`` (spelled out
#: so that ``geoflow --help`` need not import pandas; a test keeps them in step).
GEOCODERS = ("offline", "nominatim", "photon", "arcgis", "opencage", "geonames", "googlev3",
             "bing", "mapbox", "here")
#: Names of the parameters :func:`geocoder_options` adds.
GEOCODER_PARAMS = ("geocoder", "user_agent", "geocode_cache", "geocoder_domain",
                   "geocoder_scheme", "api_key", "allow_offline_fallback")

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
    """``--per KIND``, ``--min-guns N``, ``--jobs N`` and ``--resume``."""
    func = click.option(
        "--resume", is_flag=True,
        help="With --per: continue a batch that was killed before it finished (kill -9, a "
             "power cut, a closed session), keeping the output sets it wrote, when the "
             "input, options and entities are the same. Otherwise every set is written.",
    )(func)
    func = click.option(
        "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
        help="With --per: write entities in N processes, this one and N-1 workers (default: "
             "the CPUs available, fewer if free memory would not hold that many copies of the "
             "records; 1 = one after the other in this process).",
    )(func)
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


#: ``--allow-offline-fallback`` (``run``, ``map``, ``summary``, ``geocode``).
ALLOW_OFFLINE_FALLBACK = click.option(
    "--allow-offline-fallback", "allow_offline_fallback", is_flag=True, default=False,
    help="When every online look-up fails (service down, no network), go on with the offline "
         "answers instead of stopping with exit code 5.")


def geocoder_options(func: _F) -> _F:
    """``--geocoder``, ``--user-agent``, ``--geocode-cache``, ``--geocoder-domain``,
    ``--geocoder-scheme``, ``--api-key`` (the config keys ``geocoder``, ``user_agent``,
    ``geocode_cache`` are the defaults)."""
    options = [
        click.option("--geocoder", "geocoder", type=click.Choice(GEOCODERS), default=None,
                     help="offline = shipped gazetteer (default, or geocoder in the config "
                          "file); others ask that geopy service for the places the gazetteer "
                          "cannot place (at most one request a second, cached)."),
        click.option("--user-agent", "user_agent", default=None, metavar="TEXT",
                     help="User agent for an online geocoder (required; Nominatim asks for "
                          "contact details, e.g. 'newsroom-geoflow (data@example.org)')."),
        click.option("--geocode-cache", "geocode_cache", default=None, metavar="PATH",
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="SQLite cache of online answers (default: in the user cache "
                          "folder)."),
        click.option("--geocoder-domain", "geocoder_domain", default=None, metavar="HOST[:PORT]",
                     help="Host of a self-hosted service (e.g. your own Nominatim)."),
        click.option("--geocoder-scheme", "geocoder_scheme", default=None,
                     type=click.Choice(["https", "http"]), help="Scheme for --geocoder-domain."),
        click.option("--api-key", "api_key", envvar="GEOFLOW_GEOCODER_API_KEY", default=None,
                     metavar="KEY", help="API key for services that need one (or "
                                         "GEOFLOW_GEOCODER_API_KEY)."),
        ALLOW_OFFLINE_FALLBACK,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def context_config(config_path: Path | None) -> Config:
    """Load the config file once per invocation; log which file was used."""
    config = load_config(config_path)
    if config.path is not None:
        log.debug("defaults from %s", config.path)
    return config


def geocoder_from_config(
    config: Config,
    *,
    geocoder: str | None = None,
    user_agent: str | None = None,
    geocode_cache: Path | None = None,
    geocoder_domain: str | None = None,
    geocoder_scheme: str | None = None,
    api_key: str | None = None,
    allow_offline_fallback: bool = False,
) -> Any:
    """``None`` (the offline geocoder) or the geopy service to ask for the places the offline
    gazetteer cannot place. Command-line values (``None`` = not given) win over the config
    file's ``geocoder``, ``user_agent`` and ``geocode_cache``.

    An online service without a user agent stops before any input is read: a
    :class:`click.UsageError` (exit 2) when ``--geocoder`` asked for it, a
    :class:`~geoflow.errors.GeocodeError` (exit 5, like ``geoflow geocode``) when the config
    file did.
    """
    service = str(config.pick("geocoder", geocoder, "offline")).lower()
    if service == "offline":
        return None
    agent = config.pick("user_agent", user_agent)
    if not agent or not str(agent).strip():
        message = (f"the {service} geocoder needs a user agent that identifies you: pass "
                   "--user-agent 'your-app (you@example.org)' or set user_agent in the "
                   "config file")
        if geocoder is not None:
            raise click.UsageError(message)
        raise GeocodeError(message, path=str(config.path) if config.path else None)
    from geoflow.geocode import GeopyGeocoder

    notice(f"place names the offline gazetteer cannot place are sent to the online {service} "
           f"geocoder ({origin(config, 'geocoder', geocoder, flag=f'--geocoder {service}')})")
    return GeopyGeocoder(service, user_agent=str(agent).strip(), api_key=api_key,
                         domain=geocoder_domain, scheme=geocoder_scheme,
                         cache_path=config.pick("geocode_cache", geocode_cache),
                         allow_offline_fallback=allow_offline_fallback)


def map_options(config: Config, *, show_names: bool, **given: Any) -> Any:
    """``render.MapOptions`` from command-line values (``given``, ``None`` = not given), then
    the config file, then render's defaults. ``--min-flow-guns`` (config ``min_flow_guns``)
    sets ``MapOptions.min_guns``: the name says it thins flows, unlike ``--per``'s
    ``--min-guns``."""
    from dataclasses import fields

    from geoflow.scene import MapOptions

    given = {("min_guns" if k == "min_flow_guns" else k): v for k, v in given.items()}
    values = {}
    for field in fields(MapOptions):
        if field.name == "show_names":
            continue
        value = given.get(field.name)
        key = "min_flow_guns" if field.name == "min_guns" else field.name
        if value is None and key in type(config).__dataclass_fields__:
            value = getattr(config, key)
        if value is not None:
            values[field.name] = value
    return MapOptions(show_names=show_names, **values)


def pop_filters(params: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the :data:`FILTER_PARAMS` from a command's keyword arguments.

    Dates are checked here, before any reading, so a typo or an empty range fails at once.
    """
    from geoflow.select import date_range

    values = {name: params.pop(name, None) for name in FILTER_PARAMS}
    date_range(values["date_from"], values["date_to"])
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


def notice(text: str) -> None:
    """One line on stderr that ``-q`` does not silence: for switches that publish names,
    send data online or turn a privacy default off."""
    click.echo(f"notice: {text}", err=True)


def origin(config: Config, key: str, cli_value: Any, *, flag: str) -> str:
    """Where a setting came from, for :func:`notice`: the flag, or ``key in <config file>``."""
    if cli_value is not None or config.path is None:
        return flag
    return f"{key} in {config.path}"
