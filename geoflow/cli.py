"""Command-line interface: ``geoflow COMMAND``. Each command turns its options into keyword
arguments for the pure functions of the pipeline; errors from :mod:`geoflow.errors` become one
clear line on stderr and a distinct exit code (a traceback only with ``--debug``)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import traceback
from collections.abc import Collection

import click

from geoflow import __version__
from geoflow.cli_options import (
    ALLOW_OFFLINE_FALLBACK,
    apply_filters,
    batch_options,
    config_option,
    context_config,
    filter_options,
    geocoder_from_config,
    geocoder_options,
    map_options,
    notice,
    origin,
    pop_filters,
    show_progress,
)
from geoflow.config import Config
from geoflow.errors import GeoflowError, Terminated
from geoflow.progress import stage

__all__ = ["cli", "main"]

log = logging.getLogger("geoflow")


class GeoflowGroup(click.Group):
    """A group that turns :class:`GeoflowError` into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GeoflowError as exc:
            if (ctx.obj or {}).get("debug"):  # the traceback, and still the documented code
                traceback.print_exception(exc, file=sys.stderr)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see main)
            _interrupt_handled()
            terminated = isinstance(exc, Terminated)
            click.echo(f"error: interrupted ({'SIGTERM' if terminated else 'Ctrl-C'}); "
                       "no half-written output folder was put in place", err=True)
            ctx.exit(Terminated.exit_code if terminated else 130)


def _interrupt_handled() -> None:
    """Tell CPython that the Ctrl-C it raised was handled. A KeyboardInterrupt raised inside
    code that ``exec`` runs from a string (dataclasses and namedtuple generate their methods so
    while modules import) sets CPython's "Ctrl-C not handled" flag even when it is then caught;
    under ``python -m geoflow`` the interpreter would then kill itself by SIGINT at exit
    (status -2) instead of exiting with the code given. Each ``exec`` of a string clears the
    flag before it runs."""
    exec("pass")  # noqa: S102 -- a constant: clears the flag, runs nothing


@click.group(cls=GeoflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoflow")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only print warnings and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Print detailed progress.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: bool) -> None:
    """Map how crime guns flow from US dealers through ports of entry to Mexico.

    \b
    Example:
      geoflow run --sample -o maps/sample
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    # libraries' own chatter ("Created 84 records" per GeoPackage layer) only with -v
    for name in ("pyogrio", "fiona", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


# --------------------------------------------------------------------------------------------
# run and summary (pipeline engineer)

SUMMARY_TABLES = {
    "us-state": "by_us_state",
    "state": "by_us_state",  # as ``run --per state`` names the US states
    "mx-state": "by_mx_state",
    "state-matrix": "state_matrix",
    "dealer": "by_dealer",
    "purchaser": "by_purchaser",
    "trafficker": "by_trafficker",
    "crossing": "by_crossing",
    "year": "by_year",
}
#: How progress lines name ``--sample`` (not the cache file it is read from).
SAMPLE_LABEL = "the synthetic sample"
#: Rows ``summary --by`` prints as a table without ``--top`` (a purchaser table has thousands).
SUMMARY_TOP = 40


def _input_path(input_path: str | None, sample: bool) -> str:
    """The trace file to read: INPUT, or the shipped synthetic sample with ``--sample``."""
    if sample and input_path:
        raise click.UsageError("give either INPUT or --sample, not both")
    if sample:
        from geoflow.sample import sample_path

        return str(sample_path())
    if not input_path:
        raise click.UsageError("missing INPUT (a CSV, XLSX or Parquet trace file) or --sample")
    return input_path


def _input_bytes(source: str) -> int:
    """The input file's size in bytes (0 when it cannot be read: the reader says why)."""
    try:
        return os.path.getsize(source)
    except OSError:
        return 0


pseudonym_key_option = click.option(
    "--pseudonym-key-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
    help="Secret key for pseudonyms, shared by a team (default: GEOFLOW_PSEUDONYM_KEY, the "
         "config file, else your own key, made on first use in the user config folder).")


def _pipeline_options(func):
    """Options that change what a run computes (shared by ``run`` and ``summary``)."""
    options = [
        click.argument("input_path", metavar="INPUT", required=False,
                       type=click.Path()),  # the reader checks it: exit 3, not click's 2
        click.option("--sample", is_flag=True,
                     help="Use the shipped synthetic sample instead of INPUT."),
        click.option("--dayfirst/--monthfirst", default=None,
                     help="Read ambiguous dates as day/month/year (Mexican records) or "
                          "month/day/year (US); default: day-first when the dates show it "
                          "(13/02/2019), with a warning, else month-first."),
        click.option("--column-map", type=click.Path(exists=True, dir_okay=False),
                     help="JSON or CSV mapping input headers to canonical columns."),
        click.option("--count-column", metavar="NAME", default=None,
                     help="The input column counting guns per row (a published count table: "
                          "guns by state, year …). Found by name without this: guns, "
                          "firearms, count, total, n, cantidad, armas …"),
        click.option("--sheet", metavar="NAME", default=None,
                     help="The workbook sheet to read (XLSX); default: the first sheet that "
                          "names trace columns."),
        click.option("--overrides", type=click.Path(exists=True, dir_okay=False),
                     help="CSV of place fixes (place,lat,lon or place,replacement)."),
        click.option("--flow-level", type=click.Choice(["place", "state"]), default=None,
                     help="One flow per dealer → port → place (default), or per US state → "
                          "port → MX state."),
        click.option("--show-names/--hide-names", default=None,
                     help="Show purchaser names instead of pseudonyms (P-xxxxxx); default "
                          "hide, or show_names in the config file."),
        pseudonym_key_option,
        click.option("--min-cell", type=click.IntRange(min=1), default=None, metavar="K",
                     help="Small-count threshold (default 3): a flow, dealer or place tied to "
                          "fewer than K guns or K purchasers shows no purchaser and only "
                          "years; purchaser tables list purchasers with K guns or more. "
                          "1 turns this off."),
        click.option("--trafficker-min-guns", type=click.IntRange(min=1), default=None,
                     metavar="N", help="tables/by_trafficker.csv lists purchasers tied to N or "
                                       "more traced guns (default 10)."),
        click.option("--chunk-mb", type=click.FloatRange(min=0, min_open=True), default=None,
                     metavar="MB", help="Read a CSV in chunks of about MB megabytes, keeping "
                     "memory bounded (default: only CSVs of 1 GB or more, in 256 MB chunks). "
                     "The outputs are the same."),
    ]
    func = geocoder_options(func)  # listed after the options above in --help
    for option in reversed(options):
        func = option(func)
    return filter_options(config_option(func))


def _run_options(*, dayfirst: bool | None, column_map: str | None, overrides: str | None,
                 flow_level: str | None, show_names: bool | None, config: Config | None = None,
                 pseudonym_key_file: str | None = None, min_cell: int | None = None,
                 trafficker_min_guns: int | None = None, count_column: str | None = None,
                 chunk_mb: float | None = None, sheet: str | None = None, **geocoding):
    """RunOptions from command-line values, falling back to the config file, then defaults.

    Showing names and turning suppression off print a notice naming where the setting came
    from, even with ``-q``. ``geocoding`` holds the values of :func:`geocoder_options`; an
    online geocoder holds a cache database open: close ``options.geocoder`` when done."""
    from geoflow.io import load_column_map
    from geoflow.pipeline import RunOptions
    from geoflow.privacy import MIN_CELL, resolve_key

    config = config or Config()
    column_map = config.pick("column_map", column_map)
    names = bool(config.pick("show_names", show_names, False))
    if names:
        notice("real purchaser and possessor names are shown in the outputs "
               f"({origin(config, 'show_names', show_names, flag='--show-names')})")
    cell = int(config.pick("min_cell", min_cell, MIN_CELL))
    if cell == 1:
        notice("small-count suppression is off: purchaser ids and exact dates of single guns "
               f"are published ({origin(config, 'min_cell', min_cell, flag='--min-cell 1')})")
    key = resolve_key(key_file=pseudonym_key_file, config=config)
    mapping = load_column_map(column_map) if column_map else None
    if count_column:  # --count-column NAME: that header is the count column
        mapping = {**(mapping or {}), count_column: "guns"}
    return RunOptions(
        dayfirst=config.pick("dayfirst", dayfirst, None),
        column_map=mapping,
        geocoder=geocoder_from_config(config, **geocoding),
        overrides=config.pick("overrides", overrides),
        flow_level=config.pick("flow_level", flow_level, "place"),
        show_names=names,
        pseudonym_key=key,
        min_cell=cell,
        trafficker_min_guns=int(config.pick("trafficker_min_guns", trafficker_min_guns, 10)),
        chunk_mb=chunk_mb,
        sheet=sheet,
    )


def _prepare_selection(source: str, options: dict, *, label: str | None = None,
                       compact: Collection[str] | None = None):
    """Read and geocode once (spinner on a terminal), then filter: ``(prepared, run_options,
    records, description, config)``. Pops the config and filter values from ``options``;
    ``compact`` as :func:`~geoflow.pipeline.prepare_records` takes it when no filter is
    given (a filter takes every column of the records it keeps: text left as read cost it
    more than compacting it did, 0.21 -> 0.5-0.7 s for one state of 1M records)."""
    from pathlib import Path

    from geoflow.aggregate import plural
    from geoflow.pipeline import prepare_records

    config = context_config(options.pop("config_path", None))
    filters = pop_filters(options)
    run_options = _run_options(**options, config=config)
    geocoder = run_options.geocoder
    try:
        with stage(f"Reading and geocoding {label or Path(source).name}",
                   enabled=show_progress()):
            prepared = prepare_records(source, options=run_options,
                                       compact=None if any(filters.values()) else compact)
    finally:
        if geocoder is not None:
            geocoder.close()
    source_info = prepared.source
    log.info("read %s: %s, %s valid, %s rejected; %s geocoded", label or Path(source).name,
             plural(int(source_info.get("rows_read", 0)), "row"),
             *(f"{int(source_info.get(k, 0)):,}" for k in ("rows_valid", "rows_rejected")),
             plural(len(prepared.geocode_report), "distinct place"))
    if geocoder is not None:
        log.info("%s: %s", geocoder.name, plural(geocoder.requests_made, "request"))
        _warn_geocoder(geocoder)
    records, description = apply_filters(prepared.records, filters,
                                         show_names=run_options.show_names)
    if description:
        log.info("filter: %s (%s of %s records)", description, f"{len(records):,}",
                 f"{len(prepared.records):,}")
    return prepared, run_options, records, description, config


def _warn_geocoder(geocoder) -> None:
    """Loud online geocoding: a warning when look-ups failed; exit 5 when all did (unless
    --allow-offline-fallback)."""
    message = geocoder.check()
    if message:
        log.warning("warning: %s", message)


#: ``--palette`` names; kept equal to ``geoflow.render.PALETTES`` by a test (render is not
#: imported here so that ``geoflow --help`` stays fast).
PALETTE_NAMES = ("blue-orange", "purple-green", "viridis", "cividis", "greys")


#: Parameters :func:`map_look_options` adds (``run`` pops them before building RunOptions).
LOOK_PARAMS = ("title", "subtitle", "source_line", "credit", "caveat", "palette", "top_n",
               "min_flow_guns", "max_points", "tiles", "flow_style", "max_legs")


def map_look_options(func):
    """What the map says and how much it draws: ``--title`` … ``--tiles/--no-tiles``."""
    options = [
        click.option("--title", default=None, help="Map title."),
        click.option("--subtitle", default=None,
                     help="Subtitle (default: the totals; a filter description is appended)."),
        click.option("--source", "source_line", default=None, metavar="TEXT",
                     help="Source line (default: names the input file)."),
        click.option("--credit", default=None, help="Credit line, e.g. 'Graphic: Data desk'."),
        click.option("--caveat", default=None,
                     help="Caveat line (default: trace data cover only guns recovered and "
                          "submitted for tracing)."),
        click.option("--palette", type=click.Choice(PALETTE_NAMES), default=None,
                     help="Colour-blind-safe palette of the state choropleths "
                          "(default blue-orange)."),
        click.option("--flow-style", type=click.Choice(["legs", "paths"]), default=None,
                     help="legs (default): guns summed into US legs (origin → port) and "
                          "Mexican legs (port → destination); paths: one line per flow "
                          "dealer → port → place."),
        click.option("--max-legs", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Draw at most N legs, the largest (default 150); the rest are "
                          "counted in the legend."),
        click.option("--top-n", type=click.IntRange(min=1), default=None, metavar="N",
                     help="With --flow-style paths: draw at most N flows, the largest "
                          "(default 300); the rest are counted in the legend."),
        click.option("--min-flow-guns", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Draw only flows of at least N guns (default 1); the rest are "
                          "counted in the legend."),
        click.option("--max-points", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Draw at most N dealers and N recovery places (default 1500)."),
        click.option("--tiles/--no-tiles", default=None,
                     help="Offer an online CartoDB Positron tile layer, off until the reader "
                          "switches it on (default: offered)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("run")
@_pipeline_options
@click.option("-o", "--out", "out_dir", type=click.Path(),
              help="Output folder (default: maps/<input name>).")
@click.option("--force", is_flag=True,
              help="Replace OUT even if it is not a folder geoflow wrote.")
@click.option("--format", "formats", type=click.Choice(("geoparquet", "shapefile")),
              multiple=True,
              help="Also write this format of the map layers: geoparquet (OUT/geoparquet/) "
                   "or shapefile (OUT/shapefile/, 10-character field names listed in "
                   "fields.csv). Repeatable.")
@click.option("--excel", is_flag=True,
              help="Write CSV files as UTF-8 with a byte-order mark, so Excel shows accents "
                   "(Michoacán) right. Default: plain UTF-8.")
@batch_options
@map_look_options
def run_command(input_path: str | None, sample: bool, out_dir: str | None, force: bool,
                formats: tuple[str, ...], excel: bool, per: str | None,
                min_guns: int | None, jobs: int | None, resume: bool, **options) -> None:
    """Read, geocode, route and aggregate a trace file; write GeoJSON, tables and findings.

    Writes flows/dealers/recoveries/crossings/states GeoJSON, tables/*.csv, rejects.csv,
    unplaced.csv, geocode_report.csv, findings.json/.md, manifest.json (and map.html) into
    OUT, atomically: a failed run leaves OUT as it was. Purchaser names are pseudonymised
    unless --show-names (set GEOFLOW_PSEUDONYM_KEY to use your own pseudonym key).

    Also OUT/flowmap/ (flowmap.blue locations.csv + flows*.csv, kepler_flows.csv for
    kepler.gl) and OUT/geoflow.gpkg (every layer and table); columns: docs/outputs.md.

    Filters (--state, --mx-state, --trafficker, --dealer, --from, --to) keep only the
    matching records and go into the map's subtitle and the manifest. --per writes one
    output set per entity under OUT/<kind>/<name>/ plus OUT/index.html.

    \b
    Example:
      geoflow run traces.csv -o maps/traces
      geoflow run --sample -o maps/sample --flow-level state
      geoflow run --sample --state TX --from 2008 -o maps/texas-2008
      geoflow run --sample --per trafficker -o maps/by-trafficker
      geoflow run --sample -o maps/sample --format shapefile --excel
      geoflow run traces.csv -o maps/traces --geocoder nominatim --user-agent "desk (me@x.org)"
    """
    from pathlib import Path

    from geoflow import readahead

    if jobs is not None and not per:
        raise click.UsageError("--jobs sets the batch's worker processes: use it with --per")
    if resume and not per:
        raise click.UsageError("--resume continues a killed batch: use it with --per")
    if min_guns is not None and not per:
        raise click.UsageError("--min-guns sets the batch threshold: use it with --per "
                               "(--min-flow-guns thins the flows drawn on the map)")
    if per and (formats or excel):
        raise click.UsageError("--format and --excel apply to a single run, not to --per "
                               "batches (each entity folder has flowmap/ and geoflow.gpkg)")
    source = _input_path(input_path, sample)
    # a large file read whole (32 MB to 1 GB) is read and hashed on a thread while the
    # modules below are imported
    whole = not per and options.get("chunk_mb") is None and readahead.read_ahead(source)

    from geoflow.aggregate import plural
    from geoflow.export import check_output_dir
    from geoflow.pipeline import (
        ANALYSED_COLUMNS,
        MAP_PROCESS_BYTES,
        MAP_PROCESS_ROWS,
        analyse,
        preload_map_modules,
        reuse_freed_memory,
        write_outputs,
    )
    from geoflow.processes import READY_WAIT, MapProcess, usable_cpus

    out = Path(out_dir) if out_dir else Path("maps") / ("sample" if sample else Path(source).stem)
    check_output_dir(out, force=force)  # refuse a foreign folder before any work
    given = {name: options.pop(name) for name in LOOK_PARAMS}
    given["source"] = given.pop("source_line")
    if per:
        _run_batch(source, options, kind=per, out=out, sample=sample, given=given,
                   min_guns=min_guns, force=force, jobs=jobs, resume=resume)
        return
    several = usable_cpus() > 1
    with contextlib.ExitStack() as drawing:
        if whole:  # before the map's process starts, which takes the same settings
            drawing.enter_context(reuse_freed_memory())
        # a large run's map is drawn by a process of its own, beside the data files; for a
        # large input it starts now and imports the map's modules on what the read and the
        # analysis leave of the CPUs
        drawer = (drawing.enter_context(MapProcess(idle=True))
                  if several and _input_bytes(source) >= MAP_PROCESS_BYTES else None)
        # the analysis drops what it does not read: only those columns are compacted
        prepared, run_options, records, description, config = _prepare_selection(
            source, options, label=SAMPLE_LABEL if sample else None, compact=ANALYSED_COLUMNS)
        apart = len(records) >= MAP_PROCESS_ROWS and several
        if drawer is not None and not (apart and drawer.ready(timeout=READY_WAIT)):
            # few records after all (filters, wide rows), or its imports still wait for idle
            # CPUs (other work keeps them busy: 1M records beside two busy processes, 12.5-14.2
            # s before it, 14.3-17.0 s with the map drawn here for want of its imports)
            drawer.close()
            drawer = None
        if apart and drawer is None:  # imports at the normal priority, beside the analysis
            drawer = drawing.enter_context(MapProcess())
        if drawer is None:  # a smaller run's map: its modules load on a thread meanwhile
            preload_map_modules()
        look = map_options(config, show_names=run_options.show_names, **given)
        with stage("Analysing", enabled=show_progress()):
            result = analyse(prepared, options=run_options, records=records,
                             description=description, consume=True)
        del prepared, records  # the records are not written: their memory goes to the export
        with stage(f"Writing {out}", enabled=show_progress()):
            write_outputs(result, out, force=force, map_options=look, formats=formats,
                          excel=excel, map_process=drawer)
    counts = result.manifest["counts"]
    click.echo(
        f"wrote {out}: {plural(counts['flows'], 'flow')}; rows read {counts['rows_read']:,}, "
        f"valid {counts['rows_valid']:,}, rejected {counts['rows_rejected']:,}, "
        f"placed {counts['rows_placed']:,}, unplaced {counts['rows_unplaced']:,}"
        + (f" ({counts['rows_filtered_out']:,} left out by filters)"
           if counts.get("rows_filtered_out") else "")
        + (f"; a count table: guns read {counts['guns_read']:,}, placed "
           f"{counts['guns_placed']:,}, unplaced {counts['guns_unplaced']:,}, in rejected rows "
           f"{counts['guns_rejected']:,}" if result.manifest["input"].get("count_column") else "")
    )
    _echo_warnings(result.manifest["quality"]["reader_warnings"])


def _echo_warnings(counts: dict[str, int], *, listed: str = "warnings.csv: ") -> None:
    """On stderr (also with -q), what warnings.csv holds (``listed``; ``""`` for a command
    that writes none): the kinds of values read as empty, most first, and the headers not
    used: a command that exits 0 says what it could not read."""
    from geoflow.aggregate import plural
    from geoflow.io import UNKNOWN_HEADER

    unused = [kind.split(": ", 1)[0] for kind in counts if kind.endswith(UNKNOWN_HEADER)]
    kinds = sorted(((kind, n) for kind, n in counts.items() if not kind.endswith(UNKNOWN_HEADER)),
                   key=lambda item: (-item[1], item[0]))
    parts = [f"{kind} ({n:,})" for kind, n in kinds[:3]]
    if len(kinds) > 3:
        parts.append(f"{plural(len(kinds) - 3, 'more kind')} of warning")
    if unused:
        parts.append(f"{plural(len(unused), 'header')} not used: {', '.join(unused)} "
                     "(--column-map can name them)")
    if parts:
        click.echo(f"warning: {listed}" + "; ".join(parts), err=True)


def _run_batch(source: str, options: dict, *, kind: str, out, sample: bool, given: dict,
               min_guns: int | None, force: bool, jobs: int | None, resume: bool) -> None:
    """``run --per KIND``: one output set per entity, with a progress bar on a terminal. The
    batch's worker processes start first: their imports overlap the read."""
    from contextlib import nullcontext

    from geoflow.aggregate import plural
    from geoflow.batch import Workers, default_jobs, run_batch
    from geoflow.pipeline import preload_map_modules
    from geoflow.progress import bar

    jobs = default_jobs(source, asked=jobs)  # the user's --jobs, warned if memory is short
    with Workers(jobs - 1) if jobs > 1 else nullcontext() as workers:
        prepared, run_options, records, description, config = _prepare_selection(
            source, options, label=SAMPLE_LABEL if sample else None)
        preload_map_modules()  # this process writes entities too
        look = map_options(config, show_names=run_options.show_names, **given)
        title = config.pick("title", given["title"])
        with bar(f"Writing {kind} outputs", None, enabled=show_progress()) as advance:
            batch = run_batch(
                prepared, kind=kind, out_dir=out, records=records, description=description,
                min_guns=min_guns, force=force, title=title, progress=advance,
                begin=advance.total, map_options=look, jobs=jobs, resume=resume,
                workers=workers,
            )
    click.echo(f"wrote {out}: " + _batch_line(batch.manifest["counts"], kind) + "; "
               + _rows_line(prepared, records))
    _echo_warnings(prepared.warning_counts)
    if resume:
        click.echo(f"--resume: {plural(batch.resumed, 'output set')} kept from the killed batch, "
                   f"{len(batch.entities) - batch.resumed:,} written now" if batch.resumed else
                   "--resume: no killed batch of the same input, options and entities was "
                   "found beside OUT, so every output set was written")


def _batch_line(counts: dict, kind: str) -> str:
    """``11 output sets (--per trafficker) and index.html (271 guns; …)``: clauses that would say
    0 (nothing below the threshold, no record without an entity) are left out."""
    from geoflow.aggregate import plural

    noun = _BATCH_NOUNS[kind]
    parts = [plural(counts["guns_in_entities"], "gun")]
    if counts["entities_below_threshold"]:
        parts.append(f"{plural(counts['guns_below_threshold'], 'gun')} of "
                     f"{plural(counts['entities_below_threshold'], noun)} below --min-guns "
                     f"{counts['min_guns']:,}")
    if counts["records_without_entity"]:
        parts.append(f"{counts['records_without_entity']:,} with no {noun}")
    return (f"{plural(counts['entities'], 'output set')} (--per {kind}) and index.html "
            f"({'; '.join(parts)})")


#: What one entity of each ``--per`` kind is, in a sentence (a purchaser below the threshold
#: is not a "trafficker").
_BATCH_NOUNS = {"state": "US state", "mx-state": "Mexican state", "trafficker": "purchaser",
                "dealer": "dealer"}


def _rows_line(prepared, records) -> str:
    """Row accounting of a batch: read, valid, rejected, placed, unplaced (+ filtered out)."""
    rows_read = int(prepared.source.get("rows_read", len(prepared.records)))
    valid = len(prepared.records)
    placed = records["placed"].to_numpy(dtype=bool)
    left_out = valid - len(records)
    return (
        f"rows read {rows_read:,}, valid {valid:,}, rejected {rows_read - valid:,}, "
        f"placed {int(placed.sum()):,}, unplaced {int((~placed).sum()):,}"
        + (f" ({left_out:,} left out by filters)" if left_out else "")
    )


@cli.command("summary")
@_pipeline_options
@click.option("--by", "by", type=click.Choice(list(SUMMARY_TABLES)),
              help="Print this table (state: the US states, as us-state).")
@click.option("--findings", "show_findings", is_flag=True,
              help="Print the headline findings (the default when --by is not given).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--top", type=click.IntRange(min=0), default=None, metavar="N",
              help=f"Only the first N rows of the table (0 = all; default {SUMMARY_TOP} for "
                   "--format table, all for csv and json).")
def summary_command(input_path: str | None, sample: bool, by: str | None, show_findings: bool,
                    fmt: str, top: int | None, **options) -> None:
    """Print one summary table or the headline findings of a trace file (nothing written).

    \b
    Example:
      geoflow summary traces.csv --by trafficker
      geoflow summary --sample --by crossing --format csv
      geoflow summary --sample --findings --format json
      geoflow summary --sample --mx-state Tamps. --from 2008 --to 2009 --by dealer
    """
    from geoflow.pipeline import analyse, is_synthetic
    from geoflow.schema import SYNTHETIC_LABEL

    prepared, run_options, records, description, _ = _prepare_selection(
        _input_path(input_path, sample), options, label=SAMPLE_LABEL if sample else None)
    _echo_warnings(prepared.warning_counts, listed="")  # summary writes no warnings.csv
    result = analyse(prepared, options=run_options, records=records, description=description,
                     layers=False)  # tables and findings only: no flow geometry to build
    synthetic = is_synthetic(result)
    if synthetic and fmt == "table":  # text copied from the terminal says what the data are
        click.echo(SYNTHETIC_LABEL)
    if by:
        by = "us-state" if by == "state" else by
        table = result.tables[SUMMARY_TABLES[by]]
        title = f"Guns by {by}" + (f" ({description})" if description else "")
        default_top = top is None and fmt == "table"  # csv and json: every row by default
        top = SUMMARY_TOP if default_top else top or 0
        _echo_table(table.head(top) if top else table, fmt=fmt, title=title)
        if default_top and len(table) > top:  # a --top the user gave needs no reminder
            click.echo(f"{len(table) - top:,} more rows not shown: --top 0 shows all "
                       f"{len(table):,}")
        if fmt == "table" and by in ("purchaser", "trafficker"):
            click.echo(_listing_note(result, by=by))
    if show_findings or not by:
        _echo_findings(result.findings, fmt=fmt, synthetic=synthetic)


def _listing_note(result, *, by: str) -> str:
    """What ``summary --by purchaser|trafficker`` does not list, and why (an empty table
    explained): traffickers are purchasers at the threshold, and no purchaser under
    ``--min-cell`` is listed."""
    from geoflow.aggregate import plural

    options = result.options
    hidden = result.suppression["purchasers_not_listed"]
    parts = []
    if by == "trafficker":
        parts.append(f"Listed: purchasers tied to {options.trafficker_min_guns:,} or more "
                     "guns (--trafficker-min-guns), a count, not proof of trafficking")
    if hidden["purchasers"] and (by == "purchaser"
                                 or options.min_cell > options.trafficker_min_guns):
        verb = "is" if hidden["purchasers"] == 1 else "are"
        parts.append(f"{plural(hidden['purchasers'], 'purchaser')} tied to fewer than "
                     f"{options.min_cell:,} guns ({plural(hidden['guns'], 'gun')}) {verb} "
                     "counted in the totals but not listed (--min-cell)")
    return "; ".join(parts or ["Every purchaser is listed"]) + "."


def _echo_table(table, *, fmt: str, title: str) -> None:
    import json

    from geoflow.export import formula_safe

    if fmt == "csv":
        click.echo(formula_safe(table).to_csv(index=False, lineterminator="\n"), nl=False)
    elif fmt == "json":
        records = json.loads(table.to_json(orient="records", force_ascii=False))
        click.echo(json.dumps(records, ensure_ascii=False, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        view = Table(title=title, show_lines=False)
        for column in table.columns:
            numeric = table[column].dtype.kind in "iuf"
            view.add_column(str(column), justify="right" if numeric else "left")
        for row in table.itertuples(index=False):
            view.add_row(*("" if _missing(v) else _fmt_cell(v) for v in row))
        Console(soft_wrap=False, width=max(120, sum(len(c) + 3 for c in table.columns))).print(
            view)


def _missing(value) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _fmt_cell(value) -> str:
    from rich.markup import escape

    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return escape(str(value))


def _echo_findings(found: list[dict], *, fmt: str, synthetic: bool) -> None:
    """The findings as text lines, CSV or JSON; CSV and JSON mark each as ``synthetic`` (or
    not), as findings.json does."""
    import json

    from geoflow.export import to_jsonable

    if fmt == "json":
        click.echo(json.dumps(to_jsonable([{**item, "synthetic": synthetic} for item in found]),
                              ensure_ascii=False, indent=2))
    elif fmt == "csv":
        import pandas as pd

        from geoflow.export import formula_safe

        frame = pd.DataFrame({"id": [f["id"] for f in found], "text": [f["text"] for f in found],
                              "synthetic": synthetic})
        click.echo(formula_safe(frame).to_csv(index=False, lineterminator="\n"), nl=False)
    else:
        for item in found:
            click.echo(f"- {item['text']}")


# --------------------------------------------------------------------------------------------
# map (render engineer)

@cli.command("map")
@_pipeline_options
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False), default="map.html",
              show_default=True, help="HTML file to write (replaced if it exists).")
@map_look_options
def map_command(input_path: str | None, sample: bool, out_path: str, min_flow_guns: int | None,
                title: str | None, subtitle: str | None, source_line: str | None,
                credit: str | None, caveat: str | None, palette: str | None,
                top_n: int | None, max_points: int | None, tiles: bool | None,
                flow_style: str | None, max_legs: int | None, **options) -> None:
    """Draw only the map: one self-contained HTML file that opens offline.

    US states are shaded by guns sourced, Mexican states by guns recovered; flow lines run
    dealer → port of entry → recovery place (dashed where the crossing is modelled), with
    dealers, ports and recovery places sized by guns. Filters work as for ``run``.

    \b
    Example:
      geoflow map traces.csv -o map.html --title "Guns to Mexico" --credit "Graphic: Desk"
      geoflow map --sample -o maps/sample.html --top-n 100 --no-tiles
      geoflow map --sample --trafficker barajas -o barajas.html
    """
    from pathlib import Path

    from geoflow.aggregate import plural
    from geoflow.pipeline import analyse
    from geoflow.render import render_scene, write_map
    from geoflow.scene import build_scene

    source = _input_path(input_path, sample)
    prepared, run_options, records, description, config = _prepare_selection(
        source, options, label=SAMPLE_LABEL if sample else None)
    _echo_warnings(prepared.warning_counts, listed="")  # map writes no warnings.csv
    look = map_options(config, show_names=run_options.show_names, source=source_line,
                       title=title, subtitle=subtitle, credit=credit, caveat=caveat,
                       palette=palette, top_n=top_n, min_flow_guns=min_flow_guns,
                       max_points=max_points, tiles=tiles, flow_style=flow_style,
                       max_legs=max_legs)
    with stage("Analysing and drawing", enabled=show_progress()):
        result = analyse(prepared, options=run_options, records=records,
                         description=description)
        scene = build_scene(result, options=look)
        html = render_scene(scene, options=look)
    out = write_map(html, Path(out_path))
    flows = plural(len(result.flows), "flow")
    drawn = (f"{len(scene.legs):,} of {flows}" if look.flow_style == "paths" else
             f"{plural(len(scene.legs), 'leg')} (US {scene.levels['us']} level, Mexico "
             f"{scene.levels['mx']} level) for {flows}")
    click.echo(f"wrote {out} ({len(html.encode('utf-8')) / 1e6:.2f} MB): {drawn} drawn")


# --------------------------------------------------------------------------------------------
# static (stills engineer)

#: ``--size`` names; kept equal to ``geoflow.static.SIZES`` by a test (matplotlib is not
#: imported here so that ``geoflow --help`` stays fast).
STILL_SIZES = ("social", "square", "story", "wide", "column", "two-column", "page")
STILL_FORMATS = ("svg", "pdf", "png")


@cli.command("static")
@_pipeline_options
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Still to write: .svg, .pdf or .png (replaced if it exists).")
@click.option("--size", type=click.Choice(STILL_SIZES), default="social", show_default=True,
              help="social 1200×675, square 1080×1080, story 1080×1920, wide 1600×1000 px; "
                   "column 3.35 in, two-column 7 in (300 dpi); page: --paper, landscape.")
@click.option("--paper", type=click.Choice(["letter", "a4"]), default="letter",
              show_default=True, help="Paper for --size page.")
@click.option("--format", "fmt", type=click.Choice(STILL_FORMATS), default=None,
              help="File format (default: from the extension of -o).")
@map_look_options
def static_command(input_path: str | None, sample: bool, out_path: str, size: str, paper: str,
                   fmt: str | None, **options) -> None:
    """Draw the map as a still for print or social media: SVG, PDF or PNG, no browser.

    The same scene as the web map (legs, classes, labels, legend, attribution, synthetic
    banner) in an Albers equal-area projection of the US and Mexico. SVG text stays text and
    every layer is a named group (states, flows, ports, places, labels, legend, title,
    source); PDFs embed their font (DejaVu Sans). Filters work as for ``run``.

    \b
    Example:
      geoflow static --sample --size social -o sample.png
      geoflow static traces.csv --size two-column --format pdf -o figure.pdf
      geoflow static --sample --trafficker barajas --size square -o barajas.svg
    """
    from pathlib import Path

    from geoflow.pipeline import analyse
    from geoflow.scene import build_scene
    from geoflow.static import render_still, still_size

    suffix = Path(out_path).suffix.lower().lstrip(".")
    if fmt is None and suffix not in STILL_FORMATS:
        raise click.UsageError(f"cannot tell the format from {Path(out_path).name!r}: give "
                               "--format svg|pdf|png or an -o ending in .svg, .pdf or .png")
    if fmt and suffix in STILL_FORMATS and suffix != fmt:
        raise click.UsageError(f"--format {fmt} does not match the file name {out_path!r}")
    fmt = fmt or suffix
    source = _input_path(input_path, sample)
    given = {name: options.pop(name) for name in LOOK_PARAMS}
    given["source"] = given.pop("source_line")
    prepared, run_options, records, description, config = _prepare_selection(source, options)
    _echo_warnings(prepared.warning_counts, listed="")  # static writes no warnings.csv
    look = map_options(config, show_names=run_options.show_names, **given)
    with stage("Analysing and drawing", enabled=show_progress()):
        result = analyse(prepared, options=run_options, records=records,
                         description=description)
        out = render_still(build_scene(result, options=look), out_path, size=size, paper=paper,
                           fmt=fmt)
    dims = still_size(size, paper=paper)
    width, height = dims.pixels
    click.echo(f"wrote {out} ({size}: {dims.width_in:g}×{dims.height_in:g} in"
               + (f", {width}×{height} px" if fmt == "png" else "") + ")")


# --------------------------------------------------------------------------------------------
# sample (synthetic sample engineer)


@cli.command("sample")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="CSV file to write (UTF-8).")
@click.option("--rows", type=click.IntRange(1, 10_000_000), default=2922, show_default=True,
              help="Number of records; the shape scales with it.")
@click.option("--seed", type=click.IntRange(min=0), default=20101, show_default=True,
              help="Random seed; the same rows and seed give the same file, byte for byte.")
def sample_command(out_path: str, rows: int, seed: int) -> None:
    """Write the SYNTHETIC sample trace file.

    Invented records shaped by published facts (docs/sample.md): 2,922 guns recovered in
    Mexico in 2007–2010, 11 purchasers with 10 or more guns, the two documented Laredo cases.
    Not real trace data: every record says "SYNTHETIC SAMPLE" in its Dataset column.

    \b
    Example:
      geoflow sample -o traces.csv
      geoflow sample -o big.csv --rows 1000000 --seed 7
    """
    from geoflow.sample import write_sample

    out = write_sample(out_path, rows=rows, seed=seed)
    click.echo(f"wrote {out}: {rows:,} SYNTHETIC trace records (seed {seed})")


# --------------------------------------------------------------------------------------------
# ports (shapes and crossings engineer)


@cli.command("ports")
@click.option("--match", "texts", multiple=True, metavar="TEXT",
              help="Show which port a crossing text matches (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
def ports_command(texts: tuple[str, ...], fmt: str) -> None:
    """List the shipped US–Mexico ports of entry, or test how crossing texts match them.

    A record's own crossing (name, sister city, bridge or CBP code) is matched this way;
    records without one get the port that makes the shortest dealer → port → recovery trip.

    \b
    Example:
      geoflow ports
      geoflow ports --match "NVO. LAREDO, TAMPS." --match 2402
    """
    import pandas as pd

    from geoflow.crossings import load_ports, match_crossing

    ports = load_ports()
    if texts:
        codes = match_crossing(pd.Series(list(texts), dtype="string"))
        names = ports.set_index("code")["name"]
        table = pd.DataFrame({"text": list(texts), "code": codes,
                              "name": codes.map(names, na_action="ignore")})
        title = "Crossing texts and the ports they match"
    else:
        table = pd.DataFrame(ports.drop(columns=["geometry", "aliases", "source"])).assign(
            lat=ports.geometry.y.round(5), lon=ports.geometry.x.round(5))
        title = "US–Mexico land ports of entry (shapes/ports.csv)"
    _echo_table(table, fmt=fmt, title=title)


# --------------------------------------------------------------------------------------------
# geocode (geocoding engineer)


@cli.command("geocode")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--column", help="Geocode this column of a plain CSV, XLSX or Parquet table "
                               "(default: the dealer and recovery places of a trace file).")
@click.option("--country", type=click.Choice(["US", "MX"], case_sensitive=False),
              help="Only accept places in this country (with --column).")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="CSV to write: every input row with lat, lon, level, score, matched_name, "
                   "admin1, source, note.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Where to write the report of distinct strings "
                   "(default: geocode_report.csv next to OUT).")
@click.option("--geocoder", "service", default="offline", show_default=True,
              type=click.Choice(["offline", "nominatim", "photon", "arcgis", "opencage",
                                 "geonames", "googlev3", "bing", "mapbox", "here"]),
              help="offline = shipped gazetteer; others ask a geopy service for the places "
                   "the gazetteer lacks (at most one request a second, cached).")
@click.option("--user-agent", help="User agent for an online geocoder (required by Nominatim).")
@click.option("--api-key", envvar="GEOFLOW_GEOCODER_API_KEY",
              help="API key for services that need one (or GEOFLOW_GEOCODER_API_KEY).")
@click.option("--domain", help="Host[:port] of a self-hosted service (e.g. your Nominatim).")
@click.option("--scheme", type=click.Choice(["https", "http"]), help="Scheme for --domain.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False),
              help="SQLite cache of online answers (default: in the user cache folder).")
@click.option("--overrides", type=click.Path(exists=True, dir_okay=False),
              help="CSV of fixes: place,lat,lon or place,replacement (an edited report works).")
@click.option("--show-names", is_flag=True,
              help="Keep purchaser and possessor names of a trace file (default: replaced by "
                   "pseudonyms, purchaser_id and possessor_id).")
@pseudonym_key_option
@ALLOW_OFFLINE_FALLBACK
def geocode_command(input_path: str, column: str | None, country: str | None, out_path: str,
                    report_path: str | None, service: str, user_agent: str | None,
                    api_key: str | None, domain: str | None, scheme: str | None,
                    cache_path: str | None, overrides: str | None, show_names: bool,
                    pseudonym_key_file: str | None, allow_offline_fallback: bool) -> None:
    """Geocode place strings offline (or with a geopy service) and report every match.

    Without --column, INPUT is a trace file: dealer and recovery places get coordinates,
    level and score. The report lists each distinct string with how it matched and how many
    rows it covers, unmatched and low-confidence first; fix them in an overrides file.
    Purchaser and possessor names of a trace file are written as pseudonyms unless
    --show-names.

    \b
    Example:
      geoflow geocode traces.csv -o traces_geocoded.csv
      geoflow geocode traces.csv --column "Recovery City" --country MX -o places.csv
      geoflow geocode traces.csv -o out.csv --geocoder nominatim --user-agent "my-desk"
    """
    from pathlib import Path

    import pandas as pd

    from geoflow.aggregate import plural
    from geoflow.errors import InputError, OutputError, SchemaError
    from geoflow.export import write_csv
    from geoflow.geocode import GeopyGeocoder, geocode_column, geocode_traces, load_overrides

    if not Path(input_path).is_file():  # exit 3 as for every input (click would say 2)
        raise InputError("no such file", path=input_path)
    fixes = load_overrides(overrides) if overrides else None
    if show_names and not column:
        notice("real purchaser and possessor names are written to the output (--show-names)")
    geocoder = None
    if service != "offline":
        notice(f"place names the offline gazetteer cannot place are sent to the online "
               f"{service} geocoder (--geocoder {service})")
        geocoder = GeopyGeocoder(service, user_agent=user_agent or "", api_key=api_key,
                                 domain=domain, scheme=scheme, cache_path=cache_path,
                                 allow_offline_fallback=allow_offline_fallback)
    warned: dict[str, int] = {}  # the reader's warnings (sheet, title, bad bytes …)
    try:
        if column:
            from geoflow.io import read_table, warning_counts

            table = read_table(input_path, column=column)
            rejects, frame = table.rejects, table.frame
            warned = warning_counts(table.warnings)
            if column not in frame.columns:
                raise SchemaError(f"no column {column!r}; columns are: "
                                  + ", ".join(map(str, frame.columns)), path=input_path)
            if not show_names:
                frame = _pseudonymised_table(frame, key_file=pseudonym_key_file)
            out, report = geocode_column(frame, column, country=country and country.upper(),
                                         geocoder=geocoder, overrides=fixes, lines=table.lines)
            level = out["level" if "level_geocoded" not in out else "level_geocoded"]
        else:
            if country:
                raise click.UsageError("--country applies to --column; trace files place "
                                       "dealers in the US and recoveries by recovery_country")
            from geoflow.io import read_traces
            from geoflow.privacy import hide_names, resolve_key

            read = read_traces(input_path)
            records, rejects = read.records, read.rejects
            warned = dict(read.warning_counts)  # said as summary says them (title, bytes …)
            if not show_names:
                records = hide_names(records, key=resolve_key(key_file=pseudonym_key_file))
            out, report = geocode_traces(records, geocoder=geocoder, overrides=fixes)
            level = pd.concat([out["dealer_geocode_level"], out["recovery_geocode_level"]])
    finally:
        if geocoder is not None:
            geocoder.close()
    if geocoder is not None:
        _warn_geocoder(geocoder)
    out_file = Path(out_path)
    report_file = Path(report_path) if report_path else out_file.parent / "geocode_report.csv"
    if report_file.resolve() == out_file.resolve():
        raise click.UsageError("--report must differ from --out")
    rejects_file = out_file.with_name(f"{out_file.stem}_rejects.csv")
    try:
        for path in (out_file, report_file):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(out, out_file)
        write_csv(report, report_file)
        if len(rejects):  # the raw line may hold a name: only with --show-names
            write_csv(rejects if show_names else rejects.drop(columns="raw"), rejects_file)
    except OSError as exc:
        raise OutputError(f"cannot write: {exc}", path=str(exc.filename or out_file)) from exc
    counts = level.fillna("").replace("", "unmatched").value_counts()
    click.echo(f"wrote {out_file} ({len(out):,} rows) and {report_file} "
               f"({len(report):,} distinct strings): "
               + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if len(rejects):
        lines = rejects["line"].drop_duplicates()
        first = rejects.drop_duplicates("line").iloc[0]
        click.echo(f"warning: {plural(len(lines), 'row')} could not be read and "
                   f"{'is' if len(lines) == 1 else 'are'} not in {out_file.name} (line "
                   f"{first['line']}: {first['reason']}{', …' if len(lines) > 1 else ''}): "
                   f"listed in {rejects_file}", err=True)
    _echo_warnings(warned, listed="")


def _pseudonymised_table(frame, *, key_file: str | None):
    """A plain table whose headers name purchasers or possessors (``Purchaser Name``,
    ``comprador`` …) with those columns replaced by ``purchaser_id``/``possessor_id``."""
    from geoflow.privacy import hide_names, resolve_key
    from geoflow.schema import map_headers

    roles = {raw: canonical for raw, canonical in map_headers(list(map(str, frame.columns)))
             .items() if canonical in ("purchaser_name", "possessor_name")}
    if not roles:
        return frame
    return hide_names(frame.rename(columns=roles), key=resolve_key(key_file=key_file))


def _terminate(signum, frame) -> None:
    raise Terminated


#: The environment geoflow's processes start numpy with, unless the user set it (numpy's
#: "global state": read at import, inherited by the map's process and a batch's workers).
#:
#: - The OpenBLAS of numpy's wheels starts a worker thread per core that spins for a while in
#:   every process; geoflow's only linear algebra is a few 3×3 colour matrices. One thread:
#:   1M records, 12.25 -> 11.85 s of CPU over the run's processes.
#: - numpy asks the kernel for transparent huge pages for every array of 4 MB or more. A run
#:   makes and frees thousands of them; once memory is fragmented each fault waited for the
#:   kernel to compact 2 MB pages (1M records, four alternated runs: 8.31 s with 3.98 s of
#:   system time, 6.70 s with 2.12 without).
NUMPY_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "NUMPY_MADVISE_HUGEPAGE": "0"}


def set_numpy_environment() -> None:
    """:data:`NUMPY_ENVIRONMENT` where the user set nothing: call before numpy is imported."""
    for name, value in NUMPY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def main() -> None:
    """The CLI, as a program calls it. SIGTERM (``kill``, ``docker stop``) stops a run like
    Ctrl-C: temporary folders are removed and the output folder is left as it was."""
    set_numpy_environment()
    signal.signal(signal.SIGTERM, _terminate)
    cli(obj={})


def console() -> None:
    """The ``geoflow`` command and ``python -m geoflow``: :func:`main`, after which the process
    ends. Python's last garbage collection, on the way out, walks every object still alive,
    though the objects go anyway: frozen first (``gc.freeze``), they are left out of it (1M
    records: the process's end took 0.19-0.23 s after the command, 0.13-0.14 s frozen). A
    program that calls :func:`main` keeps its collector as it was."""
    try:
        main()
    finally:
        gc.freeze()
