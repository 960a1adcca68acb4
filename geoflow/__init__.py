"""geoflow: map crime-gun flows from US dealers through ports of entry to Mexico."""

import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("geoflow")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]


def _checkout_shapes() -> None:
    """Run from a checkout (``python -m pytest`` in it after ``pip install .``), this package
    shadows the installed one and has no ``shapes_data`` subpackage: map the checkout's
    ``shapes/`` folder to ``geoflow.shapes_data``, as the wheel and editable installs do."""
    if importlib.util.find_spec("geoflow.shapes_data") is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "shapes"
    if not (folder / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "geoflow.shapes_data", folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["geoflow.shapes_data"] = module
    spec.loader.exec_module(module)


_checkout_shapes()
