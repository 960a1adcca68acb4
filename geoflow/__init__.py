"""geoflow: map crime-gun flows from US dealers through ports of entry to Mexico."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geoflow")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
