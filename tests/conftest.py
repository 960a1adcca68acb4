"""Shared test set-up: tests never write into the user's real cache or config folders; one
headless Chromium per test module for the browser tests."""

import os
import shutil
import tempfile

import pytest

_CONFIG_HOME = None


def pytest_configure(config):
    """Before collection (test modules compute pseudonyms at import): point the user config
    folder, where geoflow keeps the pseudonym key, at a temporary folder, and drop any key
    from the environment."""
    global _CONFIG_HOME
    _CONFIG_HOME = tempfile.mkdtemp(prefix="geoflow-test-config-")
    os.environ["XDG_CONFIG_HOME"] = _CONFIG_HOME
    os.environ.pop("GEOFLOW_PSEUDONYM_KEY", None)


def pytest_unconfigure(config):
    if _CONFIG_HOME:
        shutil.rmtree(_CONFIG_HOME, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dirs(tmp_path_factory):
    """Point the sample and geocoder caches at a session temp folder (not ~/.cache)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEOFLOW_CACHE_DIR", str(cache / "geoflow"))
        patch.setenv("XDG_CACHE_HOME", str(cache))
        yield


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium (tests/browser.py); the test fails saying how to install it,
    unless GEOFLOW_SKIP_BROWSER=1 skips it."""
    from browser import Browser, BrowserError

    if os.environ.get("GEOFLOW_SKIP_BROWSER") == "1":
        pytest.skip("GEOFLOW_SKIP_BROWSER=1")
    try:
        chromium = Browser.launch()
    except BrowserError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield chromium
    chromium.close()
