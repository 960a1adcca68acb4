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


def main() -> None:
    """Console-script entry point."""
    cli(obj={})
