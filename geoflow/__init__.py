"""geoflow: map crime-gun flows from US dealers through ports of entry to Mexico."""

import importlib.util
import sys
from pathlib import Path

#: The package's version: its one source (pyproject.toml reads it), so no command looks up
#: installed packages' metadata as it starts (importlib.metadata: 0.017 s of each start).
__version__ = "0.1.0"

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
