import pytest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # generated URDFs and chain caches go to a per-session directory, never the user's
    monkeypatch.setenv("ROBOFLAMINGO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
