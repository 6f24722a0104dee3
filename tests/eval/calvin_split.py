"""The smallest CALVIN dataset split the real ``calvin_env`` builds from: ``.hydra/merged_config.yaml``.

A real split's config is calvin_env's own ``config_data_collection`` composed by hydra with the
three cameras of the recorded data (static, gripper, tactile). It is composed here from the
installed calvin_env's ``conf/`` the same way, so the tests need no downloaded dataset.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REQUIRE = "ROBOFLAMINGO_REQUIRE_CALVIN"


def require_calvin_env() -> None:
    """Skip without calvin_env, except where CI installed it (``ROBOFLAMINGO_REQUIRE_CALVIN=1``): fail."""
    if importlib.util.find_spec("calvin_env") is None:
        message = "calvin_env is not installed (make test installs it where ../shared/vendor exists)"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {message}")
        pytest.skip(message)


def write_split(directory: Path, use_egl: bool = True) -> Path:
    """``directory/.hydra/merged_config.yaml`` for scene D with the static, gripper and tactile cameras."""
    import calvin_env
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(calvin_env.__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config_data_collection", overrides=[
            "cameras=static_gripper_tactile", "use_vr=false", f"data_path={conf.parent / 'data'}",
            f"env.use_egl={str(use_egl).lower()}",
        ])
    OmegaConf.set_struct(cfg, False)
    for key in ("vr_input", "recorder", "hydra", "_group_"):
        cfg.pop(key, None)
    assert set(cfg.cameras) == {"static", "gripper", "tactile"}
    out = directory / ".hydra" / "merged_config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(OmegaConf.to_yaml(cfg))  # unresolved, as hydra saves it: env.cameras is ${cameras}
    return directory
