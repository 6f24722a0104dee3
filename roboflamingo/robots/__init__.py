"""Where robot descriptions come from: CALVIN's Franka built in (``calvin``), the others as YAML
files beside this module or anywhere on disk, and the ``robot.json`` a dataset carries."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from roboflamingo.robot import ROBOT_FILE, RobotDescription


def builtin_names() -> list[str]:
    """Names ``load_robot`` accepts besides a path: ``calvin`` and the shipped YAML files."""
    from importlib import resources

    files = resources.files("roboflamingo.robots")
    return sorted({"calvin", *(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))})


def load_robot(spec: str | os.PathLike | Mapping[str, Any] | RobotDescription) -> RobotDescription:
    """A description by built-in name (``calvin``, ``so101``, ...), by file (YAML or JSON), or from
    a mapping; errors name the file and the field."""
    if isinstance(spec, RobotDescription):
        return spec
    if isinstance(spec, Mapping):
        return RobotDescription.from_dict(spec)
    text = os.fspath(spec)
    if text == "calvin":
        from roboflamingo.robots.calvin import CALVIN  # a built-in, not a file

        return CALVIN
    path = Path(text)
    if not path.suffix and "/" not in text:
        from importlib import resources

        shipped = resources.files("roboflamingo.robots") / f"{text}.yaml"
        if not shipped.is_file():
            raise ValueError(f"robot '{text}' is neither a built-in ({', '.join(builtin_names())}) nor a file")
        return _load_file(shipped.read_text(), f"roboflamingo/robots/{text}.yaml")
    if not path.is_file():
        raise ValueError(f"robot file {path} does not exist (built-ins: {', '.join(builtin_names())})")
    return _load_file(path.read_text(), str(path))


def _load_file(text: str, where: str) -> RobotDescription:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML/JSON ({e})") from None
    return RobotDescription.from_dict(data, where)


def read_dataset_robot(directory: str | os.PathLike) -> RobotDescription:
    """The description a dataset split (or any directory) carries in ``robot.json``; CALVIN's when
    there is none (the CALVIN release and our tabletop datasets before descriptions existed)."""
    path = Path(directory) / ROBOT_FILE
    if not path.is_file():
        return load_robot("calvin")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable robot description ({e})") from None
    return RobotDescription.from_dict(data, str(path))
