"""Skip the Meta-World tests without metaworld, except where it is expected (``make test`` installs the
``metaworld`` extra and sets ROBOFLAMINGO_REQUIRE_METAWORLD=1): there, fail."""

from __future__ import annotations

import importlib.util
import os

import pytest

REQUIRE = "ROBOFLAMINGO_REQUIRE_METAWORLD"


@pytest.fixture(autouse=True)
def _require_metaworld():
    if importlib.util.find_spec("metaworld") is None:
        message = "metaworld is not installed (pip install -e '.[metaworld]' -c constraints.txt)"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {message}")
        pytest.skip(message)
    os.environ.setdefault("MUJOCO_GL", "egl")
