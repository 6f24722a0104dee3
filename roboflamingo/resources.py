"""The data files shipped inside the package: config groups (``roboflamingo/configs``) and world
definitions (``roboflamingo/envs``), found through ``importlib.resources`` so an installed wheel
finds its own copies wherever site-packages is, and a source checkout its tree."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CONFIGS = "configs"
ENVS = "envs"


def package_data_dir(name: str, override_env: str) -> Path:
    """``$<override_env>`` when set, else the package's own ``roboflamingo/<name>/`` directory.

    Hydra and the scene loader walk these as directories, so the package must be installed unzipped
    (pip always does); a zipped import is refused with what to set instead.
    """
    override = os.environ.get(override_env)
    if override:
        return Path(override)
    found = resources.files("roboflamingo").joinpath(name)
    if not isinstance(found, Path):
        raise RuntimeError(f"roboflamingo/{name} is inside a zip archive ({found}); install the package "
                           f"unzipped (pip install) or set {override_env} to a copy of that directory")
    return found


def resolve_path(value: str, key: str, hint: str = "") -> Path:
    """A filesystem path, or ``package:<module>/<path>`` inside an installed Python package, so a config
    can name a file a package ships wherever it is installed. ``key`` (the config key) and ``hint`` go
    into the error when the package is missing."""
    if not value.startswith("package:"):
        return Path(value)
    import importlib.util

    module, _, sub = value[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{key} '{value}': Python package '{module}' is not installed{hint}")
    return Path(list(spec.submodule_search_locations)[0]) / sub
