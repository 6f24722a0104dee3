"""Hydra composition backed by typed dataclasses.

Every command has a primary YAML file in ``configs/`` (``configs/<command>.yaml``) whose defaults list
pulls in the groups it needs (``model/``, ``head/``, ``data/``, ...). The composed tree is merged onto
the command's dataclass schema, so a misspelled key or a wrong type fails before any work starts, and
each dataclass validates its own values in ``__post_init__``. Configs are data: no ``_target_``
instantiation and no ``${eval:}``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from roboflamingo.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key and what was expected."""


def config_dir() -> Path:
    """The Hydra search root: ``$ROBOFLAMINGO_CONFIG_DIR`` or the repository's ``configs/``."""
    env = os.environ.get("ROBOFLAMINGO_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    if not path.is_dir():
        raise ConfigError(f"config directory {path} does not exist (set ROBOFLAMINGO_CONFIG_DIR)")
    return path


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with command-line style overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"configs/{config_name}.yaml with overrides {overrides or []}: {e}") from e


def to_dataclass(cfg: DictConfig | dict, schema: type[T], source: str = "config") -> T:
    """Merge ``cfg`` onto ``schema`` (type-checked, no unknown keys) and build the dataclass."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" at '{key}'" if key else ""
        raise ConfigError(f"{source}{where}: {e.msg if hasattr(e, 'msg') else e}") from e
    except (ValueError, TypeError) as e:  # raised by a dataclass's __post_init__
        raise ConfigError(f"{source}: {e}") from e


def load(config_name: str, schema: type[T], overrides: list[str] | None = None) -> T:
    """Compose and validate in one call: what every command does first."""
    return to_dataclass(compose(config_name, overrides), schema, source=f"configs/{config_name}.yaml")


def load_yaml(path: str | os.PathLike, schema: type[T]) -> T:
    """Read a saved (resolved) config file back into its dataclass."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return to_dataclass(cfg, schema, source=str(path))


def to_yaml(obj: Any) -> str:
    """A dataclass (or DictConfig) as resolved YAML."""
    if dataclasses.is_dataclass(obj):
        obj = OmegaConf.structured(obj)
    return OmegaConf.to_yaml(obj, resolve=True)


def save_yaml(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, to_yaml(obj))


def require_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """Raise a ValueError naming the field when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got '{value}'")


def require_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise a ValueError naming the field unless ``value`` is a finite number > 0 (>= 0 with allow_zero).

    NaN compares false with everything, so a bare ``value < 0`` would let it through.
    """
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
