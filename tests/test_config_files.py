"""configs/ carries each value once: no YAML key restates what its file would resolve to without it.

A group file (``configs/model/tiny.yaml``) is measured against its dataclass (``ModelConfig``) plus
whatever its own defaults list pulls in (``data/lerobot.yaml`` extends ``data/tabletop.yaml``); a
command's primary file (``configs/train.yaml``) and a ``_global_`` option (``experiment/abc_to_d``)
against the command's composition without their own keys. Each file is composed twice, as written
and with every key but its defaults list removed; a key whose value is the same both ways (before
interpolations are resolved, so ``data.window: ${model.window}`` is a link that stays) is restated.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from roboflamingo.cli import all_commands
from roboflamingo.config import _dataclass_of, _fields, command_groups, compose, config_dir

ROOT = config_dir()
FILES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.yaml"))


@dataclass(frozen=True)
class Reader:
    """One way a file is read: composed as ``config`` (with ``overrides``) onto the Job ``schema``."""

    config: str
    overrides: tuple[str, ...]
    schema: type
    package: str = ""  # where the file's keys land: a group file composed alone sits under its group


@functools.cache
def _commands(root: Path) -> dict[str, tuple[type, frozenset[str]]]:
    """Primary config name -> its command's Job and the config groups it takes."""
    old = os.environ.get("ROBOFLAMINGO_CONFIG_DIR")
    os.environ["ROBOFLAMINGO_CONFIG_DIR"] = str(root)  # command_groups reads the config dir
    try:
        jobs = {c.config: importlib.import_module(c.module).Job for _, c in all_commands() if c.config}
        return {config: (job, frozenset(g.name for g in command_groups(config, job))) for config, job in jobs.items()}
    finally:
        if old is None:
            del os.environ["ROBOFLAMINGO_CONFIG_DIR"]
        else:
            os.environ["ROBOFLAMINGO_CONFIG_DIR"] = old


def _is_global(path: Path) -> bool:
    return "# @package _global_" in [line.strip() for line in path.read_text().splitlines()[:5]]


def readers(rel: str, root: Path = ROOT) -> list[Reader]:
    """Every way a command reads <root>/<rel>."""
    commands = _commands(root)
    name = rel.removesuffix(".yaml")
    if "/" not in name:
        return [Reader(name, (), commands[name][0])] if name in commands else []
    group, option = name.rsplit("/", 1)
    out = []
    for config, (job, groups) in commands.items():
        if group not in groups:
            continue
        if _is_global(root / rel):
            out.append(Reader(config, (f"+{group}={option}",), job))
        elif (field := _fields(job).get(group)) and _dataclass_of(field[1]):
            # the group file alone (its own defaults list included), onto the Job's default for the
            # field it fills (ros's policy starts as kind remote, not PolicySourceConfig's checkpoint)
            out.append(Reader(name, (), job, group.replace("/", ".")))
    return list(dict.fromkeys(out))


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def _at(tree: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return KeyError(path)  # absent: differs from any value
        tree = tree[part]
    return tree


def _typed(composed: Any, reader: Reader) -> dict:
    tree = OmegaConf.merge(OmegaConf.structured(reader.schema), composed)
    if reader.package:
        tree = OmegaConf.select(tree, reader.package)
    return OmegaConf.to_container(tree, resolve=False)


def restated(rel: str, scratch: Path, monkeypatch, root: Path = ROOT) -> list[str]:
    """Keys of <root>/<rel> whose removal would change no command's config."""
    path = root / rel
    body = yaml.safe_load(path.read_text()) or {}
    defaults = body.pop("defaults", None)
    keys = _leaves(body) if body else []
    if not keys:
        return []
    copy = scratch / "configs"
    if not copy.exists():
        shutil.copytree(root, copy)
    # the same file with only its package header and defaults list
    header = "# @package _global_\n" if _is_global(path) else ""
    (copy / rel).write_text(header + (yaml.safe_dump({"defaults": defaults}) if defaults is not None else ""))
    users = readers(rel, root)
    try:
        needed = set()
        for config, overrides in dict.fromkeys((r.config, r.overrides) for r in users):
            # composed once as written and once without its keys, then typed by each Job reading it
            monkeypatch.setenv("ROBOFLAMINGO_CONFIG_DIR", str(root))
            full = compose(config, list(overrides))
            monkeypatch.setenv("ROBOFLAMINGO_CONFIG_DIR", str(copy))
            without = compose(config, list(overrides))
            for reader in (r for r in users if (r.config, r.overrides) == (config, overrides)):
                a, b = _typed(full, reader), _typed(without, reader)
                needed |= {k for k in keys if _at(a, k) != _at(b, k)}
    finally:
        shutil.copy(path, copy / rel)
    return [k for k in keys if k not in needed]


@pytest.mark.parametrize("rel", FILES)
def test_every_config_file_is_read_by_a_command(rel):
    assert readers(rel), f"configs/{rel}: no command composes it"


@pytest.mark.parametrize("rel", FILES)
def test_no_config_file_restates_a_default(rel, tmp_path, monkeypatch):
    assert restated(rel, tmp_path, monkeypatch) == [], (
        f"configs/{rel} sets these keys to the value they have without it (the dataclass default, or "
        "what its defaults list gives): delete them, or say in a comment why they must stay")


def test_the_check_sees_a_restated_default(tmp_path, monkeypatch):
    """The check itself: a default written into a group file, or into a primary file over its group, is caught."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT, configs)
    # ModelConfig: act_steps 1, lm.pooling max, lm.num_layers 6
    (configs / "model" / "tiny.yaml").write_text("window: 8\nact_steps: 1\nlm:\n  pooling: max\n  num_layers: 3\n")
    (configs / "train.yaml").write_text((ROOT / "train.yaml").read_text() + "train:\n  steps: 20000\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert restated("model/tiny.yaml", scratch, monkeypatch, configs) == ["act_steps", "lm.pooling"]
    assert restated("train.yaml", scratch, monkeypatch, configs) == ["train.steps"]  # train/default.yaml's value
