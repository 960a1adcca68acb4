"""Shared test set-up: tests never write into the user's real cache or config folders; one
headless Chromium per test module for the browser tests."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_CONFIG_HOME = None


#: The user key of the test session. A random one gave two of the sample's 2,165 names the
#: same 6 digits in about one session in seven (ids are then made longer: P-7a0f3f0e), and
#: tests that name ids failed by chance; this one gives none. Key creation is tested in
#: folders of its own (test_privacy_outputs.py).
TEST_KEY = "geoflow test suite key 1: fixed, not a secret"


def pytest_configure(config):
    """Before collection (test modules compute pseudonyms at import): point the user config
    folder, where geoflow keeps the pseudonym key, at a temporary folder holding the fixed
    :data:`TEST_KEY`, and drop any key from the environment."""
    global _CONFIG_HOME
    _CONFIG_HOME = tempfile.mkdtemp(prefix="geoflow-test-config-")
    os.environ["XDG_CONFIG_HOME"] = _CONFIG_HOME
    os.environ.pop("GEOFLOW_PSEUDONYM_KEY", None)
    key_file = Path(_CONFIG_HOME) / "geoflow" / "pseudonym.key"
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text(TEST_KEY + "\n", encoding="ascii")
    key_file.chmod(0o600)


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
        # matplotlib builds its font list in that cache on first import and says so on
        # stderr: here, not in whichever test first draws a map and checks what it printed
        import matplotlib.font_manager  # noqa: F401
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
