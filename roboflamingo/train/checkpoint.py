"""Training checkpoints: complete or absent, verified before use.

Layout under ``<run_dir>/checkpoints/`` (LeRobot's split: the policy apart from what resuming needs)::

    step_0000500/
      pretrained_model/                policy.save_pretrained: config.json (model, head, the frozen
                                       towers by identity), model.safetensors (trainable weights and
                                       normalization): a policy directory that can be copied out alone
      training_state/trainer.pt        optimizer, scheduler, data position, RNG states, step
      manifest.json                    sha256 and size of every file above; written last
    last -> step_0000500               symlink to the newest complete checkpoint

``from_pretrained`` and ``checkpoint=`` take the step directory (or the run directory) as well as
``pretrained_model/``; deleting ``training_state/`` leaves a policy that still loads, not one that
resumes. Checkpoints of the first format (``config.yaml``, ``model.safetensors`` and ``trainer.pt``
side by side) load and resume as before.

A checkpoint directory is built under a temporary name and renamed into place, so a crash mid-save
leaves at most a hidden ``.step_*.tmp`` directory that resuming ignores. A checkpoint whose files do
not match its manifest (a truncated copy, a flipped bit, a missing file) is refused with an error
naming the file, and resuming falls back to the previous one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from roboflamingo.io import atomic_dir, sha256_file

# The manifest check lives with the checkpoint format (models), which loading a policy uses too.
from roboflamingo.models.checkpoint import (  # noqa: F401  (re-exported for the training modules)
    MANIFEST,
    POLICY_DIR,
    TRAINER_STATE,
    TRAINING_STATE_DIR,
    CheckpointError,
    trainer_state_path,
    verify_checkpoint,
)

LAST = "last"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    root: str | os.PathLike,
    step: int,
    save_policy: Callable[[Path], None],
    trainer_state: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write ``root/step_XXXXXXX`` atomically, point ``root/last`` at it, prune old ones.

    ``save_policy(dir)`` writes the policy files (``policy.save_pretrained``) into ``dir``, the
    temporary checkpoint's ``pretrained_model/``.
    """
    root = Path(root)
    final = root / step_dir_name(step)
    with atomic_dir(final) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a finished checkpoint is shared like any output
        (tmp / POLICY_DIR).mkdir()
        save_policy(tmp / POLICY_DIR)
        (tmp / TRAINING_STATE_DIR).mkdir()
        torch.save(trainer_state, tmp / TRAINING_STATE_DIR / TRAINER_STATE)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(path)
            files[path.relative_to(tmp).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        if not any(f.endswith(".safetensors") for f in files):
            raise CheckpointError(f"{final}: save_pretrained wrote no .safetensors file (wrote {sorted(files)})")
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_file(tmp / MANIFEST)
    _point_last(root, final.name)
    if keep:
        prune(root, keep)
    return final


def _point_last(root: Path, name: str) -> None:
    # A relative symlink swapped in with rename: readers see the old or the new target, never none,
    # and the run directory can be moved or copied as a whole.
    tmp = root / f".{LAST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(name, tmp)
    os.replace(tmp, root / LAST)
    _fsync_dir(root)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint directories under ``root``, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``max(keep, 2)`` checkpoints (two survive so a bad newest one has a
    fallback)."""
    for path in list_checkpoints(root)[max(keep, 2):]:
        shutil.rmtree(path, ignore_errors=True)


def find_resumable(root: str | os.PathLike, warn: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint under ``root`` that verifies; ``None`` when there are none at all.

    Each refused checkpoint is reported through ``warn``. Raises when checkpoints exist but none is
    usable, rather than silently starting over.
    """
    candidates = list_checkpoints(root)
    errors = []
    for path in candidates:
        try:
            verify_checkpoint(path, require_training_state=True)
            return path
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"refusing {e}; falling back to the previous checkpoint")
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {root}:\n  " + "\n  ".join(errors))
    return None


def load_trainer_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify the checkpoint (its training state required), then load its ``trainer.pt``."""
    path = Path(path)
    verify_checkpoint(path, require_training_state=True)
    state_path = trainer_state_path(path)
    try:
        return torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as e:  # a verified file that still fails to unpickle was written by other code
        raise CheckpointError(f"checkpoint {path}: {state_path.relative_to(path)} could not be loaded ({e})") from e
