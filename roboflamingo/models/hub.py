"""Where a policy directory is: a local path, a run or training checkpoint, or a Hub id in the cache.

``from_pretrained``, ``roboflamingo eval checkpoint=...`` and ``serve`` all accept

- a policy directory (``config.json`` + ``model.safetensors``; ``config.yaml`` in the first format);
- a training checkpoint ``runs/x/checkpoints/step_0000500`` (its ``pretrained_model/``), or a run
  directory ``runs/x`` (its ``checkpoints/last``);
- a Hugging Face Hub id ``org/name`` (``org/name@revision``), resolved offline from the local cache
  through ``huggingface_hub`` (download it first: ``hf download org/name``); nothing is fetched.

No torch here: a command's config check resolves the path before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

POLICY_DIR = "pretrained_model"
TRAINING_STATE_DIR = "training_state"
CONFIG_JSON = "config.json"
CONFIG_YAML = "config.yaml"  # the first format (roboflamingo-policy-v1)
WEIGHTS_FILE = "model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")


def is_policy_dir(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (
        (path / CONFIG_JSON).is_file() or (path / CONFIG_YAML).is_file())


def policy_dir(path: str | os.PathLike) -> Path:
    """The policy directory a local path names (itself, its ``pretrained_model/``, or a run's
    ``checkpoints/last``); raises FileNotFoundError saying what the path holds instead."""
    path = Path(path).expanduser()
    for candidate in (path, path / POLICY_DIR, path / "checkpoints" / "last", path / "checkpoints" / "last" / POLICY_DIR):
        if is_policy_dir(candidate):
            return candidate
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise FileNotFoundError(
        f"{path}: not a policy checkpoint (expected {CONFIG_JSON} + {WEIGHTS_FILE}, a training checkpoint's "
        f"{POLICY_DIR}/, or a run directory's checkpoints/last)"
    )


def is_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "/", "~"))


def resolve(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """The local policy directory for a path or a Hub id (see the module docstring)."""
    text = str(path_or_hub_id)
    if Path(text).expanduser().exists() or not is_hub_id(text):
        return policy_dir(text)
    repo_id, _, at = text.partition("@")
    return policy_dir(hub_snapshot(repo_id, revision or at or None))


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The cached snapshot of a Hub model repository, offline."""
    from roboflamingo.models.towers import hf_cache_dir

    cache = hf_cache_dir()
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # transformers brings it; a bare install may not
        raise FileNotFoundError(f"'{repo_id}' is not a local directory, and reading a Hub id needs "
                                f"huggingface_hub (pip install huggingface_hub)") from e
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, a bad revision, an unreadable cache
        rev = f" at revision '{revision}'" if revision else ""
        raise FileNotFoundError(
            f"'{repo_id}' is not a local directory, and the Hub model '{repo_id}'{rev} is not in the local "
            f"Hugging Face cache {cache} (nothing is downloaded at run time: fetch it first, e.g. "
            f"`hf download {repo_id}`, or set HF_HUB_CACHE): {type(e).__name__}: {e}"
        ) from e
