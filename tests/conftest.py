"""Shared test set-up: tests never write into the user's real cache folders."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dirs(tmp_path_factory):
    """Point the sample and geocoder caches at a session temp folder (not ~/.cache)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEOFLOW_CACHE_DIR", str(cache / "geoflow"))
        patch.setenv("XDG_CACHE_HOME", str(cache))
        yield
