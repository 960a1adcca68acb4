"""Command-line interface: ``geoflow COMMAND``. Each command turns its options into keyword
arguments for the pure functions of the pipeline; errors from :mod:`geoflow.errors` become one
clear line on stderr and a distinct exit code (a traceback only with ``--debug``)."""

from __future__ import annotations

import logging
import sys

import click

from geoflow import __version__
from geoflow.errors import GeoflowError

__all__ = ["cli", "main"]

log = logging.getLogger("geoflow")


class GeoflowGroup(click.Group):
    """A group that turns :class:`GeoflowError` into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GeoflowError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


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


# --------------------------------------------------------------------------------------------
# run and summary (pipeline engineer)

SUMMARY_TABLES = {
    "us-state": "by_us_state",
    "mx-state": "by_mx_state",
    "state-matrix": "state_matrix",
    "dealer": "by_dealer",
    "trafficker": "by_trafficker",
    "crossing": "by_crossing",
    "year": "by_year",
}


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


def _pipeline_options(func):
    """Options that change what a run computes (shared by ``run`` and ``summary``)."""
    options = [
        click.argument("input_path", metavar="INPUT", required=False,
                       type=click.Path(dir_okay=False)),
        click.option("--sample", is_flag=True,
                     help="Use the shipped synthetic sample instead of INPUT."),
        click.option("--dayfirst", is_flag=True,
                     help="Read ambiguous dates as day/month/year (Mexican records)."),
        click.option("--column-map", type=click.Path(exists=True, dir_okay=False),
                     help="JSON or CSV mapping input headers to canonical columns."),
        click.option("--overrides", type=click.Path(exists=True, dir_okay=False),
                     help="CSV of place fixes (place,lat,lon or place,replacement)."),
        click.option("--flow-level", type=click.Choice(["place", "state"]), default="place",
                     show_default=True,
                     help="One flow per dealer → port → place, or per US state → port → MX "
                          "state."),
        click.option("--show-names", is_flag=True,
                     help="Show purchaser names instead of pseudonyms (P-xxxxxx)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_options(*, dayfirst: bool, column_map: str | None, overrides: str | None,
                 flow_level: str, show_names: bool):
    import os

    from geoflow.io import load_column_map
    from geoflow.pipeline import RunOptions

    return RunOptions(
        dayfirst=dayfirst,
        column_map=load_column_map(column_map) if column_map else None,
        overrides=overrides,
        flow_level=flow_level,
        show_names=show_names,
        pseudonym_key=os.environ.get("GEOFLOW_PSEUDONYM_KEY") or None,
    )


@cli.command("run")
@_pipeline_options
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default: maps/<input name>).")
@click.option("--force", is_flag=True,
              help="Replace OUT even if it is not a folder geoflow wrote.")
def run_command(input_path: str | None, sample: bool, out_dir: str | None, force: bool,
                **options) -> None:
    """Read, geocode, route and aggregate a trace file; write GeoJSON, tables and findings.

    Writes flows/dealers/recoveries/crossings/states GeoJSON, tables/*.csv, rejects.csv,
    unplaced.csv, geocode_report.csv, findings.json/.md, manifest.json (and map.html) into
    OUT, atomically: a failed run leaves OUT as it was. Purchaser names are pseudonymised
    unless --show-names (set GEOFLOW_PSEUDONYM_KEY to use your own pseudonym key).

    \b
    Example:
      geoflow run traces.csv -o maps/traces
      geoflow run --sample -o maps/sample --flow-level state
    """
    from pathlib import Path

    from geoflow.pipeline import run_pipeline, write_outputs

    source = _input_path(input_path, sample)
    out = Path(out_dir) if out_dir else Path("maps") / ("sample" if sample else Path(source).stem)
    result = run_pipeline(source, options=_run_options(**options))
    write_outputs(result, out, force=force)
    counts = result.manifest["counts"]
    click.echo(
        f"wrote {out}: {counts['flows']:,} flows; rows read {counts['rows_read']:,}, "
        f"valid {counts['rows_valid']:,}, rejected {counts['rows_rejected']:,}, "
        f"placed {counts['rows_placed']:,}, unplaced {counts['rows_unplaced']:,}"
    )


@cli.command("summary")
@_pipeline_options
@click.option("--by", "by", type=click.Choice(list(SUMMARY_TABLES)),
              help="Print this table.")
@click.option("--findings", "show_findings", is_flag=True,
              help="Print the headline findings (the default when --by is not given).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--top", type=click.IntRange(min=0), default=0,
              help="Only the first N rows of the table (0 = all).")
def summary_command(input_path: str | None, sample: bool, by: str | None, show_findings: bool,
                    fmt: str, top: int, **options) -> None:
    """Print one summary table or the headline findings of a trace file (nothing written).

    \b
    Example:
      geoflow summary traces.csv --by trafficker
      geoflow summary --sample --by crossing --format csv
      geoflow summary --sample --findings --format json
    """
    from geoflow.pipeline import run_pipeline

    result = run_pipeline(_input_path(input_path, sample), options=_run_options(**options))
    if by:
        table = result.tables[SUMMARY_TABLES[by]]
        _echo_table(table.head(top) if top else table, fmt=fmt, title=f"Guns by {by}")
    if show_findings or not by:
        _echo_findings(result.findings, fmt=fmt)


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


def _echo_findings(found: list[dict], *, fmt: str) -> None:
    import json

    from geoflow.export import to_jsonable

    if fmt == "json":
        click.echo(json.dumps(to_jsonable(found), ensure_ascii=False, indent=2))
    elif fmt == "csv":
        import pandas as pd

        from geoflow.export import formula_safe

        frame = pd.DataFrame({"id": [f["id"] for f in found], "text": [f["text"] for f in found]})
        click.echo(formula_safe(frame).to_csv(index=False, lineterminator="\n"), nl=False)
    else:
        for item in found:
            click.echo(f"- {item['text']}")


def main() -> None:
    """Console-script entry point."""
    cli(obj={})
