"""One exception hierarchy; the CLI maps each class to an exit code and a one-line message."""

from __future__ import annotations

__all__ = [
    "GeoflowError",
    "InputError",
    "SchemaError",
    "GeocodeError",
    "FilterError",
    "OutputError",
    "ConfigError",
    "Terminated",
]


class GeoflowError(Exception):
    """Base class: a problem geoflow can explain in one line. ``exit_code`` is used by the CLI."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class InputError(GeoflowError):
    """The input cannot be read at all: missing, unreadable, empty, unknown format."""

    exit_code = 3


class SchemaError(GeoflowError):
    """The input was read but has no recognisable trace columns (or a bad column mapping)."""

    exit_code = 4


class GeocodeError(GeoflowError):
    """A geocoder back-end failed in a way that stops the run (bad options, cache unusable)."""

    exit_code = 5


class FilterError(GeoflowError):
    """A filter names something that is not in the data (unknown state, trafficker, dealer)."""

    exit_code = 6


class OutputError(GeoflowError):
    """Outputs cannot be written (folder not ours without --force, unsafe path, disk error)."""

    exit_code = 7


class ConfigError(GeoflowError):
    """A config file (geoflow.toml / --config) is missing, not TOML, or has an unknown key."""

    exit_code = 8


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler so a run stops like on Ctrl-C (cleaning up)."""

    exit_code = 143
