"""The shipped geodata works from an installed wheel, not only from the checkout.

Builds the wheel from a copy of the project (no network: ``--no-isolation``), installs it
with ``--no-deps`` into a fresh inner venv, and loads the states and ports from a directory
outside the checkout. The inner venv must see the *running* environment's packages (pandas,
geopandas …): when the tests run inside a venv, the inner venv's "system" site-packages are
the base interpreter's, not the outer venv's, so a ``.pth`` file adds the outer environment's
site-packages directories (as plain path entries: the outer editable geoflow's own ``.pth``
hook is not run). The running environment also holds an *editable* geoflow; the check proves
the inner venv imported the wheel's copy (module and data files inside it), not the checkout.

The wheel is built by the first interpreter at hand that can build one offline (``build`` plus
a setuptools with ``bdist_wheel``): the running one, else the base interpreter under it — a
venv made by ``python -m venv`` carries its own old setuptools that shadows a newer one.
The build must not warn that the metadata is deprecated (``license`` is an SPDX string,
PEP 639).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: ``build`` and a setuptools that builds wheels itself and reads an SPDX ``license`` (>= 77)
CAN_BUILD = "import build, setuptools; assert int(setuptools.__version__.split('.')[0]) >= 77"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _wheel_builder() -> str:
    """The first interpreter (running, then base) that can build a wheel without network."""
    base = getattr(sys, "_base_executable", sys.executable)
    for python in dict.fromkeys((sys.executable, base)):
        probe = subprocess.run(
            [python, "-c", CAN_BUILD], capture_output=True, check=False, env=_clean_env(),
            timeout=60,
        )  # fmt: skip
        if probe.returncode == 0:
            return python
    pytest.fail("no interpreter here can build a wheel offline: pip install -e '.[test]'")


def _outer_site_dirs() -> list[str]:
    """The running environment's own site-packages (a venv's, or the base's outside one)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(paths[key] for key in ("purelib", "platlib")))

PROBE = """
import json, geoflow, geoflow.shapes, importlib.resources as r
from geoflow.shapes import load_states
from geoflow.crossings import load_ports, match_crossing
import pandas as pd
states, ports = load_states(), load_ports()
print(json.dumps({
    "module": geoflow.__file__,
    "data": str(r.files("geoflow.shapes_data").joinpath("states.geojson")),
    "us": int((states["country"] == "US").sum()),
    "mx": int((states["country"] == "MX").sum()),
    "ports": len(ports),
    "laredo": match_crossing(pd.Series(["NVO. LAREDO, TAMPS."])).iloc[0],
    "page_js": len(r.files("geoflow").joinpath("map.js").read_text(encoding="utf-8")),
    "page_css": len(r.files("geoflow").joinpath("map.css").read_text(encoding="utf-8")),
}))
"""


@pytest.mark.slow
def test_wheel_installs_and_loads_shapes_outside_the_checkout(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("geoflow", "shapes"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [_wheel_builder(), "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(dist), str(source)],
        capture_output=True, text=True, check=False, env=_clean_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    assert "Deprecat" not in build.stdout + build.stderr, build.stderr[-2000:]
    (wheel,) = dist.glob("geoflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read("geoflow-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    inner_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    Path(inner_site, "outer-environment.pth").write_text("\n".join(_outer_site_dirs()) + "\n")
    clean_env = _clean_env()
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--ignore-installed",  # an outer non-editable geoflow must not satisfy it
         "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, check=False, env=clean_env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = subprocess.run(
        [str(python), "-c", PROBE],
        capture_output=True, text=True, check=False, env=clean_env, cwd=outside, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    venv_root = env_dir.resolve()
    assert Path(found["module"]).resolve().is_relative_to(venv_root), found["module"]
    assert Path(found["data"]).resolve().is_relative_to(venv_root), found["data"]
    assert not Path(found["data"]).resolve().is_relative_to(ROOT)
    assert found["us"] >= 51 and found["mx"] == 32
    assert found["ports"] >= 25
    assert found["laredo"] == "2304"
    assert found["page_js"] > 1000 and found["page_css"] > 500  # the map's own script ships
