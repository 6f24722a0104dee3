"""Recording expert rollouts into our split layout, resumably: shared by ``roboflamingo generate`` on
the tabletop (``sim/generate.py``) and on Meta-World (``metaworld/generate.py``).

A generator splits its job into units (one rollout each) and hands them to :func:`run_units`. Each
unit writes its frames into ``<root>/.work/<split>/<name>.tmp<pid>`` and is renamed to ``<name>.done``
when complete, so an interrupted run resumes with the units it has, and a worker that died leaves
only a ``.tmp`` directory, removed at the next start. A split is then assembled (hard links) under a
temporary name by the generator and moved into place by :func:`move_into_place`; until then the
previous split, if any, stays whole.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from roboflamingo.io import atomic_write_json

# The annotation embedding width of CALVIN's files; zeros, since consumers embed "ann" themselves.
EMB_DIM = 384
LANG_FILE = Path("lang_annotations") / "auto_lang_ann.npy"


def prepare_work(root: Path, record: dict[str, Any], splits: Iterable[str]) -> Path:
    """``<root>/.work`` for the job ``record`` (the settings the data depend on): refused when it holds
    an interrupted run of another job; stale ``.tmp`` units of dead workers removed."""
    work = root / ".work"
    job_file = work / "job.json"
    if job_file.is_file() and json.loads(job_file.read_text()) != record:
        raise ValueError(f"{root}: holds an interrupted run of a different job ({job_file}); "
                         f"delete {work} or rerun with the same settings")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job_file, record)
    for split in splits:
        (work / split).mkdir(exist_ok=True)
        for stale in (work / split).glob("*.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
    return work


def done_dir(work: Path, split: str, name: str) -> Path:
    """Where a completed unit's frames and ``meta.json`` are."""
    return work / split / f"{name}.done"


def record_unit(work: Path, split: str, name: str, write: Callable[[Path], dict]) -> dict:
    """``write(directory)`` fills a fresh temporary directory, which becomes the unit's ``done_dir``
    only once it returns (its result, the unit's meta, is returned)."""
    tmp = work / split / f"{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = write(tmp)
    os.replace(tmp, done_dir(work, split, name))
    return meta


def worker_env(cache: dict[Any, Any], key: Any, cfg: Any, build: Callable[[Any], Any]) -> Any:
    """The simulator ``build(cfg)`` a worker keeps under ``key`` for its next units, rebuilt (the old
    one closed) when a unit asks for other settings: a process may run a second job (the tests do),
    whose camera sizes or rendering must not come from the first one's."""
    cached = cache.get(key)
    if cached is None or cached.cfg != cfg:
        if cached is not None:
            cached.close()
        cache[key] = build(cfg)
    return cache[key]


def run_units(work_fn: Callable[[Any], Any], args: Sequence[Any], total: int, workers: int, progress: bool,
              desc: str, unit: str, on_close: Callable[[], None] | None = None) -> None:
    """``work_fn(a)`` for each of ``args`` (the units still to do of ``total``), in ``workers`` spawned
    processes when there are several; ``on_close`` releases what the inline run held (a simulator)."""
    bar = tqdm(total=total, initial=total - len(args), desc=desc, unit=unit, disable=not progress)
    try:
        if workers > 1 and len(args) > 1:
            with mp.get_context("spawn").Pool(min(workers, len(args))) as pool:
                for _ in pool.imap_unordered(work_fn, args):
                    bar.update()
        else:
            try:
                for a in args:
                    work_fn(a)
                    bar.update()
            finally:
                if on_close is not None:
                    on_close()
    finally:
        bar.close()


def new_split_dir(root: Path, split: str) -> Path:
    """An empty temporary directory to assemble ``split`` in, beside where it will go."""
    tmp = root / f".{split}.assembling"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / LANG_FILE.parent).mkdir(parents=True)
    return tmp


def link_frames(src: Path, dst: Path, count: int, offset: int) -> None:
    """Hard-link a unit's ``count`` frames into the split being assembled, numbered from ``offset``."""
    for i in range(count):
        os.link(src / f"episode_{i:07d}.npz", dst / f"episode_{offset + i:07d}.npz")


def write_index(split_dir: Path, episodes: Sequence[Sequence[int]], sentences: Sequence[str],
                tasks: Sequence[str], segments: Sequence[tuple[int, int]]) -> np.ndarray:
    """CALVIN's index files: episodes (inclusive first/last frame) and their lengths, and the language
    annotations (sentence, task and inclusive frame range of each segment). Returns the episodes."""
    ids = np.array(episodes, dtype=np.int64).reshape(-1, 2)
    np.save(split_dir / "ep_start_end_ids.npy", ids)
    np.save(split_dir / "ep_lens.npy", ids[:, 1] - ids[:, 0] + 1)
    lang = {"language": {"ann": list(sentences), "task": list(tasks),
                         "emb": np.zeros((len(sentences), 1, EMB_DIM), np.float32)},
            "info": {"indx": list(segments), "episodes": []}}
    np.save(split_dir / LANG_FILE, lang, allow_pickle=True)
    return ids


def move_into_place(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the assembled ``tmp``."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_unit(out_dir: Path, frames: Sequence[dict[str, np.ndarray]], meta: dict[str, Any]) -> dict[str, Any]:
    """A unit's frames (``episode_%07d.npz`` from 0) and its ``meta.json``; returns ``meta``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        np.savez_compressed(out_dir / f"episode_{i:07d}.npz", **frame)
    (out_dir / "meta.json").write_text(json.dumps(meta))
    return meta


def read_meta(work: Path, split: str, name: str) -> tuple[Path, dict[str, Any]]:
    """A completed unit's directory and its ``meta.json``."""
    src = done_dir(work, split, name)
    return src, json.loads((src / "meta.json").read_text())
