"""Skip the real-calvin_env tests without calvin_env, except where CI installed it: there, fail."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REQUIRE = "ROBOFLAMINGO_REQUIRE_CALVIN"


def require_calvin_env() -> None:
    """Skip without calvin_env, or fail where ``ROBOFLAMINGO_REQUIRE_CALVIN=1`` (``make test`` with the
    vendored bundle)."""
    if importlib.util.find_spec("calvin_env") is None:
        message = "calvin_env is not installed (make test installs it where ../shared/vendor exists)"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {message}")
        pytest.skip(message)


def write_split(directory: Path, use_egl: bool = True) -> Path:
    """The smallest split calvin_env builds from (a real split's merged_config.yaml, from its conf)."""
    from omegaconf import OmegaConf

    from roboflamingo.eval.calvin_adapter import write_split_config

    split = write_split_config(directory, use_egl=use_egl)
    assert set(OmegaConf.load(split / ".hydra" / "merged_config.yaml").cameras) == {"static", "gripper", "tactile"}
    return split
