"""The Job of ``roboflamingo train`` and what resuming a run may change.

``load_job`` composes ``configs/train.yaml`` for a fresh run, or reads a run's own ``config.yaml`` when
resuming (``resume=<run_dir>``) and applies the overrides on top; ``check_same_run`` refuses a resume
that would train something else (another model, head, data or seed), naming each key, and
``record_resume`` appends the settings a resume changed to ``resumes.jsonl``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roboflamingo.config import ConfigError, load_yaml
from roboflamingo.data.config import DataConfig
from roboflamingo.models.config import HeadConfig, ModelConfig
from roboflamingo.train.config import TrainConfig, check_data_fits_model


@dataclass
class Job:
    """``configs/train.yaml``: what to train (model, head), on what (data), how (train), where.

    Args:
        run_dir: output directory (config, metrics, checkpoints); must not hold checkpoints unless
            ``resume`` is set.
        seed: initialisation, data order and augmentation; ranks add their rank for dropout.
        resume: continue from the newest complete checkpoint in ``run_dir``, with the run's own
            ``config.yaml``: ``resume=<run_dir>`` (or ``run_dir=<dir> resume=true``) needs no other
            override. One that would change the model, head, data or seed is refused with the key
            named; train settings (``train.steps``, logging, ...) and where and how fast data is read
            (``data.root``, ``data.num_workers``, ...) may change, and each change is recorded in
            ``<run_dir>/resumes.jsonl``.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/train"
    seed: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        check_data_fits_model(self.data, self.model)
        self.head.chunking.check(self.model.act_steps)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# What a resumed run may change: how long it trains and how it reports (every train.* key), where and
# how fast it reads its data, and how the policy will execute its action chunks (head.chunking is used
# only at inference; checkpoints saved after the resume carry the new one). Everything else decides
# what is trained: model, head, data, seed.
RESUME_MAY_CHANGE = ("train.", "head.chunking.", "data.root", "data.packed_root", "data.use_packed",
                     "data.check_files_on_open", "data.batch_size", "data.num_workers", "data.pin_memory",
                     "data.prefetch_factor", "data.persistent_workers")
# Where the run is, not what it is.
_NOT_COMPARED = ("run_dir", "resume")
RESUMES_FILE = "resumes.jsonl"


def _value(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def check_same_run(job: Job, run_dir: Path) -> dict[str, list]:
    """Resuming with a different model, head, data or seed would silently train something else: refuse
    it, naming each key; return the settings that may change and did (``key -> [old, new]``)."""
    from roboflamingo.config import schema_keys

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}
    saved = load_yaml(saved_path, Job)
    paths = [k.path for k in schema_keys(Job)]
    return _resume_diff({p: _value(saved, p) for p in paths}, {p: _value(job, p) for p in paths}, saved_path)


def _resume_diff(old: dict[str, Any], new: dict[str, Any], saved_path: Path) -> dict[str, list]:
    changed, refused = {}, []
    for path, value in old.items():
        if path in _NOT_COMPARED or new[path] == value:
            continue
        if path.startswith(RESUME_MAY_CHANGE):
            changed[path] = [value, new[path]]
        else:
            refused.append(f"{path} is {value!r} there, {new[path]!r} now")
    if refused:
        raise ConfigError(
            f"resume: {saved_path} describes another run: {'; '.join(refused[:5])}"
            f"{f' (and {len(refused) - 5} more)' if len(refused) > 5 else ''}. A resumed run keeps its model, "
            f"head, data and seed: drop those overrides (`roboflamingo train resume={saved_path.parent}` needs "
            "none) or start a new run_dir"
        )
    return changed


def record_resume(run_dir: Path, step: int, changes: dict[str, list]) -> None:
    """Append the settings this resume changed to ``resumes.jsonl`` (config.yaml now holds the new ones)."""
    import json

    if not changes:
        return
    for key, (old, new) in changes.items():
        print(f"[train] resume changes {key}: {old!r} -> {new!r}", file=sys.stderr)
    line = {"step": step, "changed": {k: [_plain_value(o), _plain_value(n)] for k, (o, n) in changes.items()}}
    with open(run_dir / RESUMES_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def _plain_value(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def load_job(overrides: list[str]) -> Job:
    """The Job of ``roboflamingo train <overrides>``.

    ``resume=<run_dir>`` (or ``resume=true`` with ``run_dir``) continues that run from its own
    ``config.yaml``: the overrides given are applied on top of it (a group choice such as ``model=tiny``
    sets its whole section, as when composing), and :func:`train` refuses the ones that change what is
    trained. Without a saved config (a run that never started) it composes ``configs/train.yaml`` as
    a fresh run does.
    """
    from roboflamingo.config import load

    resume, run_dir, rest = _resume_overrides(overrides)
    saved = Path(run_dir) / "config.yaml"
    if resume and saved.is_file():
        return _resumed_job(saved, rest, run_dir)
    if resume == "path":
        # resume=<dir> names a run to continue; a typo must not start a fresh one with the defaults.
        raise ConfigError(f"resume={run_dir}: no run to continue there ({saved} does not exist)")
    if resume:
        rest = [*rest, f"run_dir={run_dir}", "resume=true"]
    return load("train", Job, rest)


_TRUE, _FALSE = ("true", "True", "yes", "1"), ("false", "False", "no", "0", "")


def help_overrides(overrides: list[str]) -> list[str]:
    """The overrides as ``--help`` composes them: ``resume=<run_dir>`` is ``run_dir=<run_dir> resume=true``."""
    resume, run_dir, rest = _resume_overrides(overrides)
    return [*rest, f"run_dir={run_dir}", "resume=true"] if resume else overrides


def _resume_overrides(overrides: list[str]) -> tuple[str, str, list[str]]:
    """``(how: "" not resuming, "flag" resume=true, "path" resume=<run_dir>; run_dir; the other
    overrides)``; ``resume=<path>`` is ``run_dir=<path> resume=true``."""
    resume, run_dir, rest = None, None, []
    for o in overrides:
        key, eq, value = o.lstrip("+").partition("=")
        if eq and key == "resume":
            resume = value
        elif eq and key == "run_dir":
            run_dir = value
        else:
            rest.append(o)
    if resume is None or resume in _FALSE:
        return "", "", overrides
    if resume in _TRUE:
        return "flag", run_dir or Job.__dataclass_fields__["run_dir"].default, rest
    if run_dir is not None and Path(run_dir).resolve() != Path(resume).resolve():
        raise ConfigError(f"resume={resume} names a run directory, but run_dir={run_dir} names another")
    return "path", resume, rest


def _resumed_job(saved_path: Path, overrides: list[str], run_dir: str) -> Job:
    from omegaconf import OmegaConf

    from roboflamingo.config import (
        check_override_keys,
        command_groups,
        compose,
        config_dir,
        schema_keys,
        schema_overrides,
        to_dataclass,
    )

    try:
        saved = OmegaConf.load(saved_path)
    except Exception as e:  # yaml errors come in several types
        raise ConfigError(f"{saved_path}: not valid YAML ({e})") from e
    tree = OmegaConf.merge(OmegaConf.structured(Job), saved)
    if overrides:
        groups = command_groups("train", Job)
        names = tuple(g.name for g in groups)
        check_override_keys(Job, overrides, names, source="configs/train.yaml")
        composed = OmegaConf.merge(OmegaConf.structured(Job), compose("train", schema_overrides(overrides, names)))
        touched = _touched(overrides, {g.name for g in groups}, config_dir())
        for key in schema_keys(Job):
            if any(key.path == t or key.path.startswith(t + ".") for t in touched):
                OmegaConf.update(tree, key.path, OmegaConf.select(composed, key.path), merge=False)
    tree.run_dir, tree.resume = run_dir, True
    # Refused changes are named here, before a half-changed config fails a cross-field check.
    before = OmegaConf.merge(OmegaConf.structured(Job), saved)
    paths = [k.path for k in schema_keys(Job)]
    _resume_diff({p: _plain_value(OmegaConf.select(before, p)) for p in paths},
                 {p: _plain_value(OmegaConf.select(tree, p)) for p in paths}, saved_path)
    return to_dataclass(tree, Job, source=str(saved_path))


def _touched(overrides: list[str], groups: set[str], root: Path) -> set[str]:
    """The dotted keys (and key prefixes) a list of overrides sets."""
    from omegaconf import OmegaConf

    out = set()
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in groups and (root / key / f"{value}.yaml").is_file() and \
                "# @package _global_" in (root / key / f"{value}.yaml").read_text():
            out |= _leaf_keys(OmegaConf.to_container(OmegaConf.load(root / key / f"{value}.yaml")))
        else:
            out.add(key)
    return out


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        if k == "defaults":
            continue
        if isinstance(v, dict) and v:
            out |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out
