"""The frozen towers a policy reads from outside its checkpoint, named by what they are.

A real backbone's vision encoder (``model.vision.weights``, one file) and LM (``model.lm.path``, a
HuggingFace directory; a separate ``model.lm.tokenizer`` directory too) are gigabytes that a policy
directory does not copy unless asked (``bundle``). Naming them by their absolute path made a
checkpoint unusable anywhere else, so ``config.json`` records each by identity::

    "vision": {"field": "model.vision.weights", "family": "open_clip ViT-L-14", "kind": "file",
               "name": "open_clip_pytorch_model.bin", "bytes": 1710540580, "sha256": "...",
               "path": "/abs/path/when/saved/open_clip_pytorch_model.bin"}
    "lm":     {"field": "model.lm.path", "family": "mpt", "kind": "directory",
               "name": "mpt-1b-redpajama-200b", "bytes": ..., "path": "/abs/dir",
               "files": {"config.json": {"bytes": ..., "sha256": ...}, ...}}

and loading finds a copy whose bytes match (size and sha256 of every file; the name may differ)
through a search path, first match wins:

1. the copy bundled inside the policy directory (``towers/<tower>/``, ``"bundled"`` in the entry);
2. the path the config recorded when it was saved;
3. every directory of ``$ROBOFLAMINGO_WEIGHTS`` (``os.pathsep``-separated), searched recursively;
4. the local Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``),
   where a large file is also found by its sha256 as a blob name.

Nothing is downloaded. When no copy matches, the error lists every place looked at and what it held
against the size and sha256 wanted. Hashes are memoized per process by (path, size, mtime, inode):
hashing a multi-gigabyte LM costs seconds, once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from roboflamingo.io import atomic_path, sha256_file
from roboflamingo.models.config import BUILTIN_TOKENIZER, ModelConfig

WEIGHTS_ENV = "ROBOFLAMINGO_WEIGHTS"
BUNDLE_DIR = "towers"
# Files of a model directory that nothing reads (docs, repository plumbing, other frameworks' weights):
# left out of a directory's identity and of a bundle.
_SKIPPED_SUFFIXES = (".md", ".h5", ".msgpack", ".onnx", ".ot", ".tflite", ".gguf", ".png", ".jpg", ".lock")
_SKIPPED_NAMES = ("LICENSE", "LICENSE.txt", "NOTICE")


class TowerNotFoundError(FileNotFoundError):
    """No copy of a frozen tower matches the identity a checkpoint recorded; the message lists where
    it looked and the size and sha256 it wants."""


# -- which towers a config reads ----------------------------------------------------------------------

def tower_fields(model: ModelConfig) -> dict[str, tuple[str, str]]:
    """``tower -> (config field, value)`` for each frozen tower ``model`` reads from outside the
    checkpoint (a random-init tower is saved in the weights file and needs none)."""
    out = {}
    if model.vision.weights:
        out["vision"] = ("model.vision.weights", model.vision.weights)
    if model.lm.path:
        out["lm"] = ("model.lm.path", model.lm.path)
    tok = model.lm.tokenizer
    if tok and tok != BUILTIN_TOKENIZER and tok != model.lm.path:
        out["tokenizer"] = ("model.lm.tokenizer", tok)
    return out


def with_locations(model: ModelConfig, located: dict[str, str]) -> ModelConfig:
    """``model`` with each tower's field pointing at the copy found for it."""
    vision, lm = model.vision, model.lm
    if "vision" in located:
        vision = replace(vision, weights=located["vision"])
    if "lm" in located:
        same = lm.tokenizer == lm.path
        lm = replace(lm, path=located["lm"], tokenizer=located["lm"] if same else lm.tokenizer)
    if "tokenizer" in located:
        lm = replace(lm, tokenizer=located["tokenizer"])
    return replace(model, vision=vision, lm=lm)


def _family(tower: str, model: ModelConfig) -> str:
    if tower == "vision":
        return f"open_clip {model.vision.name}"
    return f"{model.lm.family} {'tokenizer' if tower == 'tokenizer' else 'LM'}"


def _real_path(value: str) -> Path:
    """A path as the model builders read it: ``package:`` resolved, ``~`` expanded, made absolute."""
    from roboflamingo.models.lm_adapters import resolve_path

    return Path(resolve_path(value)).expanduser().resolve()


# -- identity -----------------------------------------------------------------------------------------

_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def _directory_files(directory: Path) -> list[str]:
    """The files of a model directory that make it what it is, relative and sorted."""
    out = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES) or name in _SKIPPED_NAMES:
                continue
            out.append((Path(root) / name).relative_to(directory).as_posix())
    return sorted(out)


def describe(model: ModelConfig) -> dict[str, dict[str, Any]]:
    """The identity of every frozen tower ``model`` reads from outside (read and hashed now)."""
    out = {}
    for tower, (field, value) in tower_fields(model).items():
        path = _real_path(value)
        entry: dict[str, Any] = {"field": field, "family": _family(tower, model), "name": path.name,
                                 "path": value if value.startswith("package:") else str(path)}
        if path.is_file():
            entry.update(kind="file", bytes=path.stat().st_size, sha256=file_sha256(path))
        elif path.is_dir():
            files = {rel: {"bytes": (path / rel).stat().st_size, "sha256": file_sha256(path / rel)}
                     for rel in _directory_files(path)}
            if not files:
                raise FileNotFoundError(f"{field}: {path} is an empty directory")
            entry.update(kind="directory", bytes=sum(f["bytes"] for f in files.values()), files=files)
        else:
            raise FileNotFoundError(f"{field}: {path} does not exist (cannot record the {tower} tower it names)")
        out[tower] = entry
    return out


def check_entry(tower: str, entry: Any, source: str) -> None:
    """Raise a ValueError naming ``source`` and the key when a recorded tower entry is malformed."""
    where = f"{source}: towers.{tower}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping, got {type(entry).__name__}")
    for key, kind in (("field", str), ("name", str), ("kind", str), ("bytes", int), ("path", str)):
        if not isinstance(entry.get(key), kind):
            raise ValueError(f"{where}.{key} must be a {kind.__name__}, got {entry.get(key)!r}")
    if entry["kind"] == "file":
        if not _is_sha256(entry.get("sha256")):
            raise ValueError(f"{where}.sha256 must be 64 hex digits, got {entry.get('sha256')!r}")
    elif entry["kind"] == "directory":
        files = entry.get("files")
        if not isinstance(files, dict) or not files or not all(
                isinstance(m, dict) and isinstance(m.get("bytes"), int) and _is_sha256(m.get("sha256"))
                for m in files.values()):
            raise ValueError(f"{where}.files must map each file to its 'bytes' (int) and 'sha256' (64 hex digits)")
    else:
        raise ValueError(f"{where}.kind must be 'file' or 'directory', got {entry['kind']!r}")
    # Names read relative to a directory must stay inside it.
    for key, rel in [("bundled", entry.get("bundled")), *(("files", f) for f in entry.get("files") or {})]:
        if rel is not None and (not isinstance(rel, str) or not _inside(rel)):
            raise ValueError(f"{where}.{key}: {rel!r} must be a relative path inside the directory")


def _inside(rel: str) -> bool:
    path = Path(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _want(entry: dict[str, Any]) -> str:
    if entry["kind"] == "file":
        return f"{entry['bytes']} bytes, sha256 {entry['sha256']}"
    return f"a directory of {len(entry['files'])} files, {entry['bytes']} bytes"


def _mismatch(entry: dict[str, Any], path: Path) -> str | None:
    """None when ``path`` holds exactly the tower ``entry`` names, else what differs."""
    if entry["kind"] == "file":
        if not path.is_file():
            return "missing" if not path.exists() else "not a file"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{size} bytes, not {entry['bytes']}"
        digest = file_sha256(path)
        return None if digest == entry["sha256"] else f"sha256 {digest}, not {entry['sha256']}"
    if not path.is_dir():
        return "missing" if not path.exists() else "not a directory"
    for rel, meta in entry["files"].items():
        file = path / rel
        if not file.is_file():
            return f"{rel} is missing"
        if file.stat().st_size != meta["bytes"]:
            return f"{rel} has {file.stat().st_size} bytes, not {meta['bytes']}"
        if file_sha256(file) != meta["sha256"]:
            return f"{rel} has another sha256 than {meta['sha256']}"
    return None


# -- the search path ----------------------------------------------------------------------------------

def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache, resolved as huggingface_hub does, read at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def search_roots() -> list[tuple[str, Path]]:
    """``(label, directory)`` of the searched directories after the recorded path, in order."""
    roots = [(f"${WEIGHTS_ENV}", Path(p).expanduser()) for p in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if p]
    roots.append(("the Hugging Face cache", hf_cache_dir()))
    return roots


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            yield Path(dirpath) / name


def _candidates(entry: dict[str, Any], root: Path) -> Iterator[Path]:
    """Paths under ``root`` that may hold the tower, the cheapest to confirm first (same name)."""
    if entry["kind"] == "file":
        blobs = sorted(root.glob(f"models--*/blobs/{entry['sha256']}"))  # a Hub cache names LFS blobs so
        yield from blobs
        same_size = []
        for file in _walk_files(root):
            try:
                if file.stat().st_size == entry["bytes"]:
                    same_size.append(file)
            except OSError:  # a dangling link
                continue
        yield from sorted(same_size, key=lambda f: f.name != entry["name"])
        return
    # A directory: one holding a file of the first recorded name and size (config.json, mostly).
    first, meta = next(iter(sorted(entry["files"].items())))
    dirs = []
    for file in _walk_files(root):
        rel_parts = Path(first).parts
        if file.name != rel_parts[-1]:
            continue
        try:
            if file.stat().st_size != meta["bytes"]:
                continue
        except OSError:
            continue
        top = file.parents[len(rel_parts) - 1]
        dirs.append(top)
    yield from sorted(dirs, key=lambda d: d.name != entry["name"])


def locate(tower: str, entry: dict[str, Any], policy_dir: Path) -> Path:
    """The first copy of ``entry``'s tower on the search path; raise :class:`TowerNotFoundError`
    listing every place looked at otherwise."""
    looked: list[str] = []
    if entry.get("bundled"):
        path = policy_dir / entry["bundled"]
        why = _mismatch(entry, path)
        if why is None:
            return path
        looked.append(f"the bundled copy {path}: {why}")
    else:
        looked.append(f"a bundled copy in {policy_dir / BUNDLE_DIR / tower}: none (save with bundle=True to include it)")
    try:
        recorded = _real_path(entry["path"])
        why = _mismatch(entry, recorded)
    except FileNotFoundError as e:  # a package: path whose package is not installed
        recorded, why = Path(entry["path"]), str(e)
    if why is None:
        return recorded
    looked.append(f"the recorded path {recorded}: {why}")
    for label, root in search_roots():
        if not root.is_dir():
            looked.append(f"{label} {root}: does not exist")
            continue
        for candidate in _candidates(entry, root):
            if _mismatch(entry, candidate) is None:
                return candidate
        looked.append(f"{label} {root}: no {'file' if entry['kind'] == 'file' else 'directory'} matches")
    if not os.environ.get(WEIGHTS_ENV):
        looked.append(f"${WEIGHTS_ENV}: not set")
    raise TowerNotFoundError(
        f"{policy_dir}: the frozen {tower} tower ({entry['field']}) '{entry['name']}' ({entry['family']}, "
        f"{_want(entry)}) was not found; looked at:\n  - " + "\n  - ".join(looked) +
        f"\nPut a copy (any name) under a directory of ${WEIGHTS_ENV} or the Hugging Face cache, or save "
        f"the policy with bundle=True (roboflamingo export --bundle)."
    )


# -- bundling -----------------------------------------------------------------------------------------

def bundle(tower: str, entry: dict[str, Any], source: Path, policy_dir: Path) -> dict[str, Any]:
    """Copy the tower at ``source`` into ``policy_dir/towers/<tower>/`` (each file atomically);
    returns the entry with ``bundled`` set."""
    if entry["kind"] == "file":
        rel = Path(BUNDLE_DIR) / tower / entry["name"]
        _copy(source, policy_dir / rel)
    else:
        rel = Path(BUNDLE_DIR) / tower / entry["name"]
        for name in entry["files"]:
            _copy(source / name, policy_dir / rel / name)
    return {**entry, "bundled": rel.as_posix()}


def _copy(source: Path, target: Path) -> None:
    if target.exists() and source.resolve() == target.resolve():
        return  # re-saving a policy loaded from its own bundle
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
