"""Checkpoint directory: ``config.yaml`` (resolved model + head), ``robot.json`` (the robot it was
trained for) and ``model.safetensors``.

What the weights file holds: every trainable parameter, the normalization statistics, and every
frozen parameter that has no other source. A vision encoder or LM loaded from a weights file
(``model.vision.weights``, ``model.lm.path``) is re-read from there; a random-init one (tiny, mid)
is saved, so a reload reproduces the exact policy. Loading is strict: a missing or unexpected key
is an error that lists the keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from roboflamingo.config import load_yaml, save_yaml
from roboflamingo.io import atomic_path, sha256_file
from roboflamingo.models.config import PolicyConfig
from roboflamingo.models.normalization import STAT_KEYS
from roboflamingo.models.weights import list_keys, load_state, read_weights
from roboflamingo.robot import ROBOT_FILE, RobotDescription

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "roboflamingo-policy-v1"
# A training checkpoint adds these (roboflamingo.train.checkpoint); the manifest lists every file.
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the directory and file."""


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise ``CheckpointError``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError(f"it must be a JSON object, got a {type(manifest).__name__}")
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("'files' must be a non-empty mapping")
        if not all(isinstance(m, dict) and isinstance(m.get("bytes"), int) and isinstance(m.get("sha256"), str)
                   for m in files.values()):
            raise ValueError("every entry of 'files' needs 'bytes' (int) and 'sha256' (str)")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable ({e})") from e
    if TRAINER_STATE not in files:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} does not list {TRAINER_STATE}")
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} has {size} bytes, the manifest says {meta['bytes']} "
                "(truncated or partially copied?)"
            )
        if sha256_file(file) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its sha256 in {MANIFEST}")
    return manifest


def _sourced_prefixes(policy) -> tuple[str, ...]:
    cfg = policy.model_config
    prefixes = []
    if cfg.vision.weights:
        prefixes.append("backbone.vision_encoder.")
    if cfg.lm.path:
        prefixes.append("backbone.lang_encoder.")
    return tuple(prefixes)


def checkpoint_tensors(policy) -> dict[str, torch.Tensor]:
    """name -> tensor of everything the weights file holds (shared parameters under their first name)."""
    sourced = _sourced_prefixes(policy)
    out: dict[str, torch.Tensor] = {}
    for name, p in policy.named_parameters():
        if p.requires_grad or not name.startswith(sourced):
            out[name] = p
    param_names = {n for n, _ in policy.named_parameters(remove_duplicate=False)}
    for name, b in policy.state_dict(keep_vars=True).items():
        if name not in param_names and not name.startswith(sourced):
            out[name] = b
    return out


def _from_state_dict(policy, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors looked up by name in a full state dict (shared tensors under any name)."""
    names = checkpoint_tensors(policy)
    missing = sorted(k for k in names if k not in state_dict)
    if missing:
        raise ValueError(f"save_pretrained: the given state_dict lacks [{list_keys(missing)}]")
    out = {}
    for k, own in names.items():
        value = state_dict[k]
        if tuple(value.shape) != tuple(own.shape):
            # A shard instead of the full tensor would be saved silently otherwise.
            raise ValueError(f"save_pretrained: state_dict['{k}'] has shape {tuple(value.shape)}, "
                             f"expected {tuple(own.shape)} (pass the full, gathered state dict)")
        out[k] = value
    return out


def save_policy(policy, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the two files (each atomically) into ``directory``; other files there are left alone.

    ``state_dict``: a full state dict to take the tensors from (FSDP-gathered weights); the policy's
    own tensors otherwise.
    """
    policy.normalizer.check()  # a checkpoint without statistics could never run
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = checkpoint_tensors(policy) if state_dict is None else _from_state_dict(policy, state_dict)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    save_yaml(PolicyConfig(model=policy.model_config, head=policy.head_config), directory / CONFIG_FILE)
    policy.robot.save(directory / ROBOT_FILE)


def read_robot(directory: str | os.PathLike) -> RobotDescription:
    """The robot a checkpoint was trained for: its ``robot.json``; CALVIN's Franka for a checkpoint
    written before descriptions existed (they all were CALVIN's)."""
    from roboflamingo.robots import read_dataset_robot

    return read_dataset_robot(directory)


def read_policy_config(directory: str | os.PathLike) -> PolicyConfig:
    """The config of the policy checkpoint in ``directory`` (a training checkpoint's manifest verified
    first): what to build before :func:`load_weights` fills it."""
    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory}: not a policy checkpoint (no {WEIGHTS_FILE})")
    _verify_manifest(directory)
    return load_yaml(directory / CONFIG_FILE, PolicyConfig)


def load_weights(policy, directory: str | os.PathLike) -> None:
    """Strictly copy ``directory``'s weights file into ``policy``, built from its config."""
    weights = Path(directory) / WEIGHTS_FILE
    tensors = read_weights(weights)
    source = str(weights)
    stat_keys = [f"normalizer.{k}" for k in STAT_KEYS]
    absent = [k for k in stat_keys if k not in tensors]
    if absent:
        raise ValueError(f"{source}: no normalization statistics (missing {absent})")
    # read_weights refused non-finite values, so the statistics are usable.
    load_state(checkpoint_tensors(policy), tensors, source, "the policy built from its config")
    policy.normalizer.recheck()


def _verify_manifest(directory: Path) -> None:
    """A training checkpoint (it has a trainer state or a manifest) is used only if its manifest verifies."""
    if (directory / MANIFEST).exists() or (directory / TRAINER_STATE).exists():
        try:
            verify_checkpoint(directory)
        except CheckpointError as e:
            raise ValueError(str(e)) from e
