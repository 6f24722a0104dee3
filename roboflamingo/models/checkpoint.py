"""The policy directory: self-describing, movable, in the layout the Hugging Face Hub serves.

``save_pretrained(dir)`` writes::

    config.json          format, version, the resolved model and head, the robot description (its
                         cameras, state and action), the frozen towers by identity,
                         preprocessing and normalization (for readers outside Python; the weights
                         file holds the statistics that are used, and loading checks the two agree)
    model.safetensors    every trainable parameter, the normalization statistics, and every frozen
                         parameter that has no other source (a random-init tiny/mid tower)
    README.md            a model card, written only when the directory has none
    towers/<tower>/...   with ``bundle=True``: copies of the frozen towers, so nothing else is needed

A frozen vision encoder or LM read from files (``model.vision.weights``, ``model.lm.path``) is named
in ``config.json`` by family, file name, size and sha256 (``models/towers.py``) and found again
through a search path when the directory moves. Loading is strict: a missing or unexpected key is an
error that lists the keys.

A training checkpoint (``train/checkpoint.py``) holds this directory as ``pretrained_model/`` beside
``training_state/`` (optimizer, scheduler, RNG, step) and a ``manifest.json`` over both, as LeRobot
does; the training state is optional for loading a policy, required for resuming.

The first format (``roboflamingo-policy-v1``: ``config.yaml`` naming the towers by the path they had,
training state flat beside it as ``trainer.pt``) still loads.

Adding an entry to ``config.json``: write it in :func:`config_entries` and read it in
:func:`read_saved`; old directories simply lack the key (a directory without ``robot`` is CALVIN's
Franka, as every policy before robot descriptions was).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from roboflamingo._version import __version__
from roboflamingo.config import ConfigError, load_yaml, to_dataclass
from roboflamingo.io import atomic_path, atomic_write_text, sha256_file
from roboflamingo.models import towers as tower_refs
from roboflamingo.models.config import ModelConfig, PolicyConfig
from roboflamingo.models.hub import (  # noqa: F401  (the layout's names, re-exported)
    CONFIG_JSON,
    CONFIG_YAML,
    POLICY_DIR,
    TRAINING_STATE_DIR,
    WEIGHTS_FILE,
    policy_dir,
)
from roboflamingo.models.normalization import STAT_KEYS
from roboflamingo.models.weights import list_keys, load_state, read_weights
from roboflamingo.robot import RobotDescription

CONFIG_FILE = CONFIG_JSON
FORMAT = "roboflamingo-policy-v2"
LEGACY_FORMAT = "roboflamingo-policy-v1"
# The weights file's own layout (tensor names, dtypes, the statistics inside) has not changed since
# the first format, so its header keeps that tag: the same policy gives a byte-identical file.
WEIGHTS_FORMAT = LEGACY_FORMAT
MODEL_CARD = "README.md"
# A training checkpoint adds these (roboflamingo.train.checkpoint); the manifest lists every file.
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the directory and file."""


# -- training checkpoints: the manifest -------------------------------------------------------------

def is_training_state(name: str) -> bool:
    """Whether a manifest entry is training state (optional for inference) rather than the policy."""
    return name == TRAINER_STATE or name.startswith(f"{TRAINING_STATE_DIR}/")


def verify_checkpoint(path: str | os.PathLike, require_training_state: bool = False) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise ``CheckpointError``.

    Training state that was deleted (to ship the policy) is allowed unless ``require_training_state``
    (resuming); a file that is there must match its size and sha256 either way.
    """
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
    if require_training_state and not any(is_training_state(n) for n in files):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} lists no training state "
                              f"({TRAINING_STATE_DIR}/{TRAINER_STATE}): a policy only, which cannot be resumed")
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            if is_training_state(name) and not require_training_state:
                continue
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


def trainer_state_path(path: str | os.PathLike) -> Path:
    """Where a training checkpoint keeps its trainer state (the first format kept it flat)."""
    path = Path(path)
    legacy = path / TRAINER_STATE
    return legacy if legacy.is_file() and not (path / TRAINING_STATE_DIR).is_dir() else \
        path / TRAINING_STATE_DIR / TRAINER_STATE


def _verify_manifest(directory: Path) -> None:
    """A policy inside a training checkpoint is used only if the checkpoint's manifest verifies (a
    policy directory copied out alone has none, and needs none)."""
    parent = directory.parent
    inside = directory.name == POLICY_DIR and any((parent / n).exists() for n in (MANIFEST, TRAINING_STATE_DIR))
    root = parent if inside else directory
    if any((root / n).exists() for n in (MANIFEST, TRAINER_STATE, TRAINING_STATE_DIR)):
        try:
            verify_checkpoint(root)
        except CheckpointError as e:
            raise ValueError(str(e)) from e


# -- the tensors ------------------------------------------------------------------------------------

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


# -- config.json ------------------------------------------------------------------------------------

def _preprocessing(model: ModelConfig, robot: RobotDescription) -> dict[str, Any]:
    """How inputs reach the network and actions leave it (what a non-Python client must reproduce);
    derived from ``model`` and ``robot``, which are what loading reads."""
    from roboflamingo.transforms import CLIP_MEAN, CLIP_STD

    spec = robot.action
    return {
        "images": {"keys": list(robot.camera_names), "size": model.vision.image_size,
                   "resize": model.vision.resize, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                   "input": "uint8 HWC"},
        "state": {"key": robot.state.key, "dim": robot.state.dim, "used": model.use_state,
                  "entries": list(robot.state.used), "normalized": "(x - robot_obs_mean) / robot_obs_std",
                  "angles": list(robot.state.angles),
                  "angles_normalized": "x - robot_obs_mean wrapped into [-pi, pi] where outside it, then / robot_obs_std"},
        "instruction": {"template": "<image>{instruction}<|endofchunk|>{eos}",
                        "max_tokens": model.lm.max_text_length, "tokenizer": model.lm.tokenizer or model.lm.path},
        "actions": {"dim": spec.dim, "continuous": list(spec.continuous),
                    "continuous_output": "action_std * y + action_mean, clipped to the robot's action.low/high",
                    "grippers": list(spec.grippers), "gripper_output": f"{spec.open} open, {spec.close} close",
                    "steps_predicted": model.act_steps, "history_frames": model.window},
    }


def config_entries(config: PolicyConfig, towers: dict[str, dict], normalization: Mapping[str, np.ndarray],
                   robot: RobotDescription) -> dict:
    """Everything ``config.json`` holds, entry by entry."""
    return {
        "format": FORMAT,
        "roboflamingo_version": __version__,
        "model": asdict(config.model),
        "head": asdict(config.head),
        "robot": robot.to_dict(),
        "towers": towers,
        "preprocessing": _preprocessing(config.model, robot),
        "normalization": {k: np.asarray(v, np.float32).tolist() for k, v in normalization.items()},
    }


@dataclass
class SavedPolicy:
    """What a policy directory says about itself (:func:`read_saved`)."""

    directory: Path
    format: str
    config: PolicyConfig
    towers: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: dict[str, Any] = field(default_factory=dict)  # config.json as read (empty for the first format)
    robot: RobotDescription = field(default_factory=lambda: _calvin())  # the robot it acts for


def _calvin() -> RobotDescription:
    """CALVIN's Franka as a policy saved before robot descriptions existed was trained for: with every
    state entry normalized linearly (``state.angles`` came later and would change what it reads)."""
    from roboflamingo.robots.calvin import CALVIN

    return replace(CALVIN, state=replace(CALVIN.state, angles=()))


def read_saved(directory: str | os.PathLike) -> SavedPolicy:
    """Read (and check) the config of the policy directory ``directory`` names (see ``hub.policy_dir``);
    a training checkpoint's manifest is verified first."""
    directory = policy_dir(directory)
    _verify_manifest(directory)
    path = directory / CONFIG_JSON
    if not path.is_file():  # the first format
        return SavedPolicy(directory, LEGACY_FORMAT, load_yaml(directory / CONFIG_YAML, PolicyConfig))
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(entries).__name__}")
    if entries.get("format") != FORMAT:
        raise ConfigError(f"{path}: format is {entries.get('format')!r}, expected '{FORMAT}' (written by a newer "
                          f"roboflamingo than {__version__}?)")
    for key in ("model", "head"):
        if not isinstance(entries.get(key), dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping of the {key} config")
    config = to_dataclass({"model": entries["model"], "head": entries["head"]}, PolicyConfig, source=str(path))
    towers = entries.get("towers") or {}
    if not isinstance(towers, dict):
        raise ConfigError(f"{path}: 'towers' must be a mapping, got {type(towers).__name__}")
    for tower, entry in towers.items():
        try:
            tower_refs.check_entry(tower, entry, str(path))
        except ValueError as e:
            raise ConfigError(str(e)) from e
    expected = set(tower_refs.tower_fields(config.model))
    if set(towers) != expected:
        raise ConfigError(f"{path}: 'towers' names {sorted(towers)}, but the model config reads {sorted(expected)} "
                          "from outside the checkpoint")
    robot = RobotDescription.from_dict(entries["robot"], f"{path}: 'robot'") if "robot" in entries else _calvin()
    return SavedPolicy(directory, FORMAT, config, towers, entries, robot)


def read_robot(path_or_hub_id: str | os.PathLike) -> RobotDescription:
    """The robot a saved policy acts for, read without building the model (a server or node knows the
    shapes before any weights load); CALVIN's Franka for a policy saved before descriptions existed."""
    return read_saved(hub_resolve(path_or_hub_id)).robot


def read_policy_config(directory: str | os.PathLike) -> PolicyConfig:
    """The config of the policy checkpoint ``directory`` names, as saved."""
    return read_saved(directory).config


def locate_towers(saved: SavedPolicy) -> ModelConfig:
    """The model config with each frozen tower's field pointing at a verified copy (search path in
    ``models/towers.py``); the first format names them by path only and is returned as saved."""
    located = {t: str(tower_refs.locate(t, e, saved.directory)) for t, e in saved.towers.items()}
    return tower_refs.with_locations(saved.config.model, located)


# -- writing ----------------------------------------------------------------------------------------

def save_policy(policy, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None,
                bundle: bool = False) -> None:
    """Write the policy directory (each file atomically); other files there are left alone.

    ``state_dict``: a full state dict to take the tensors from (FSDP-gathered weights); the policy's
    own tensors otherwise. ``bundle``: copy the frozen towers in (``towers/``).
    """
    policy.normalizer.check()  # a checkpoint without statistics could never run
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = checkpoint_tensors(policy) if state_dict is None else _from_state_dict(policy, state_dict)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": WEIGHTS_FORMAT})
        os.chmod(tmp, 0o644)  # safetensors re-creates the file owner-only
    config = PolicyConfig(model=policy.model_config, head=policy.head_config)
    write_config(directory, config, policy.normalization(), policy.robot, bundle=bundle)


def write_config(directory: Path, config: PolicyConfig, normalization: Mapping[str, np.ndarray],
                 robot: RobotDescription, bundle: bool = False, towers: dict[str, dict] | None = None,
                 tower_sources: dict[str, Path] | None = None) -> None:
    """``config.json`` (and the bundled towers, the model card) beside an already written weights file.

    ``towers``/``tower_sources``: identities already known and where each copy is (exporting a saved
    policy); otherwise they are read from the model config's paths.
    """
    if towers is None:
        towers = tower_refs.describe(config.model)
        tower_sources = {t: tower_refs._real_path(e["path"]) for t, e in towers.items()}
    towers = {t: {k: v for k, v in e.items() if k != "bundled"} for t, e in towers.items()}
    if bundle:
        towers = {t: tower_refs.bundle(t, e, tower_sources[t], directory) for t, e in towers.items()}
    # The paths as recorded (absolute, or a package: spec), never as typed relative to some cwd.
    model = tower_refs.with_locations(config.model, {t: e["path"] for t, e in towers.items()})
    entries = config_entries(PolicyConfig(model=model, head=config.head), towers, normalization, robot)
    atomic_write_text(directory / CONFIG_JSON, json.dumps(entries, indent=2) + "\n")
    (directory / CONFIG_YAML).unlink(missing_ok=True)  # a first-format config would contradict it
    if not (directory / MODEL_CARD).exists():
        atomic_write_text(directory / MODEL_CARD, _model_card(model, towers, robot))


def _model_card(model: ModelConfig, towers: dict[str, dict], robot: RobotDescription) -> str:
    outside = "".join(f"- `{t}` ({e['field']}): `{e['name']}`, {e['family']}, "
                      f"{'bundled in ' + e['bundled'] if e.get('bundled') else 'not bundled'}\n"
                      for t, e in towers.items()) or "- none: every tensor is in `model.safetensors`\n"
    return f"""---
library_name: roboflamingo
tags: [robotics, roboflamingo, vision-language-action]
---
# {model.name} (roboflamingo policy)

A RoboFlamingo-style policy: frozen vision encoder and LM, trained resampler, cross-attention and
action head. `config.json` describes it completely; `model.safetensors` holds the trained tensors and
the normalization statistics.

```python
from roboflamingo import RoboFlamingoPolicy

policy = RoboFlamingoPolicy.from_pretrained("<this directory or Hub id>")
policy.reset()
action = policy.step(obs, "open the drawer")  # obs: {", ".join(robot.camera_names)} (HWC uint8), {robot.state.key}
```

Robot: {robot.summary()}.

Frozen towers read from outside this directory (found by size and sha256 through the recorded path,
`$ROBOFLAMINGO_WEIGHTS` and the Hugging Face cache):

{outside}"""


# -- loading the weights ----------------------------------------------------------------------------

def load_weights(policy, directory: str | os.PathLike, saved: SavedPolicy | None = None) -> None:
    """Strictly copy ``directory``'s weights file into ``policy``, built from its config."""
    weights = policy_dir(directory) / WEIGHTS_FILE
    tensors = read_weights(weights)
    source = str(weights)
    stat_keys = [f"normalizer.{k}" for k in STAT_KEYS]
    absent = [k for k in stat_keys if k not in tensors]
    if absent:
        raise ValueError(f"{source}: no normalization statistics (missing {absent})")
    # read_weights refused non-finite values, so the statistics are usable.
    load_state(checkpoint_tensors(policy), tensors, source, "the policy built from its config")
    policy.normalizer.recheck()
    if saved is not None and saved.entries.get("normalization") is not None:
        _check_normalization(saved, tensors, source)


def _check_normalization(saved: SavedPolicy, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """config.json's copy of the statistics is for readers; one edited by hand would be believed."""
    written = saved.entries["normalization"]
    where = saved.directory / CONFIG_JSON
    if not isinstance(written, dict):
        raise ConfigError(f"{where}: 'normalization' must be a mapping of statistics")
    for key in STAT_KEYS:
        stored = tensors[f"normalizer.{key}"].float().numpy()
        try:
            listed = np.asarray(written[key], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: normalization.{key} is missing or not a list of numbers ({e})") from e
        if listed.shape != stored.shape or not np.array_equal(listed, stored):
            raise ConfigError(f"{where}: normalization.{key} differs from normalizer.{key} in {source}, which is "
                              "what the policy uses (edit neither by hand; recompute and save again)")


# -- moving a saved policy --------------------------------------------------------------------------

def export_policy(src: str | os.PathLike, dst: str | os.PathLike, bundle: bool = False,
                  overwrite: bool = False) -> dict[str, Any]:
    """A saved policy (any format, a training checkpoint or a run) as a standalone policy directory
    ``dst`` in the current format, its towers located, verified and (``bundle``) copied in; no model is
    built. Returns a summary."""
    from safetensors import safe_open

    saved = read_saved(hub_resolve(src))
    dst = Path(dst)
    if (dst / WEIGHTS_FILE).exists() and not overwrite:
        raise ConfigError(f"{dst} already holds a policy; pass overwrite=true to replace it")
    if dst.resolve() == saved.directory.resolve():
        raise ConfigError(f"export: {dst} is the source directory itself")
    if saved.format == LEGACY_FORMAT:
        towers = tower_refs.describe(saved.config.model)
        sources = {t: tower_refs._real_path(e["path"]) for t, e in towers.items()}
    else:
        towers = saved.towers
        sources = {t: tower_refs.locate(t, e, saved.directory) for t, e in towers.items()}
        # Record where the copy was found, so the exported directory's first guess is right here.
        towers = {t: {**e, "path": e["path"] if e["path"].startswith("package:") else str(sources[t])}
                  for t, e in towers.items()}
    weights = saved.directory / WEIGHTS_FILE
    with safe_open(str(weights), "pt") as f:
        missing = [k for k in STAT_KEYS if f"normalizer.{k}" not in f.keys()]
        if missing:
            raise ValueError(f"{weights}: no normalization statistics (missing {missing})")
        stats = {k: f.get_tensor(f"normalizer.{k}").float().numpy() for k in STAT_KEYS}
    dst.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst / WEIGHTS_FILE) as tmp:
        shutil.copyfile(weights, tmp)
    write_config(dst, saved.config, stats, saved.robot, bundle=bundle, towers=towers, tower_sources=sources)
    return {"src": str(saved.directory), "dst": str(dst), "format": saved.format, "bundled": bundle,
            "towers": {t: e["name"] for t, e in towers.items()}}


def hub_resolve(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    from roboflamingo.models.hub import resolve

    return resolve(path_or_hub_id, revision)
