"""``roboflamingo pack``: convert CALVIN-layout splits into packed shards (format: ``data/packed.py``).

Resumable: each shard is built in a temporary directory and renamed into place when complete, with
the sha256 of each of its files in ``shard.json``. A re-run skips every shard whose files still
match their checksums and whose frame range is still the one planned, and rebuilds the rest. The
manifest is written last, so readers never see a half-packed split. Reading validates every frame
(keys, shapes, dtypes, NaN/inf), so packing is also the full validation pass.

With ``data.format=lerobot`` each split is a LeRobotDataset v3 directory (``data/lerobot.py``): its
videos are decoded once here, and the packed directory gets the index files written from the
dataset's episodes and tasks, so training reads it exactly like a packed CALVIN split.

Either way the packed directory records the split's robot description (its ``robot.json``, CALVIN's
when it has none, or the one derived from the LeRobot dataset's ``meta/info.json``) in the manifest
and in its own ``robot.json``; ``data.robot`` is checked against it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from roboflamingo.config import require_positive
from roboflamingo.data.config import DataConfig, LeRobotConfig
from roboflamingo.data.inputs import check_source_split
from roboflamingo.data.layout import (
    EP_START_END,
    LANG_ANN,
    DatasetError,
    SplitIndex,
    frame_keys,
    frame_path,
    load_split_index,
    probe_image_shapes,
    read_frame,
    require_robot_option,
)
from roboflamingo.data.packed import (
    FORMAT,
    MANIFEST,
    SHARD_META,
    VERSION,
    field_layout,
    frame_ids_digest,
    packed_dir_for,
    source_digests,
    verify_packed,
    verify_shard,
)
from roboflamingo.io import atomic_dir, atomic_write_bytes, atomic_write_json
from roboflamingo.robot import ROBOT_FILE, RobotDescription


@dataclass
class Job:
    """``roboflamingo pack``: the splits of ``data.root`` written as checksummed, memory-mapped shards.

    Args:
        data: the dataset to pack (``data.root``, ``data.format``, ``data.packed_root``); its
            loader settings are not used here.
        splits: splits to pack, by name under ``data.root``; each goes to ``<data.packed_root>/<split>``
            (default ``<data.root>/<split>/packed``).
        shard_frames: frames per shard (1024 CALVIN frames are about 145 MB of images).
        threads: threads decompressing npz files (zlib releases the GIL).
        verify_existing: re-hash existing shards before skipping them on a rerun (slower, but catches
            bit rot and edits); false trusts their ``shard.json``.
        progress: show a progress bar per split.
        verify: do not pack: re-hash every file of each split's packed directory against its manifest
            (what opening a split skips for files whose size, inode, mtime and ctime are unchanged
            since their last check), report the throughput, exit 1 naming the first bad file.
            Costs one sequential read of the packed data (sha256 at a few hundred MB/s a core).
    """

    data: DataConfig = field(default_factory=DataConfig)
    splits: list[str] = field(default_factory=lambda: ["training", "validation"])
    shard_frames: int = 1024
    threads: int = 4
    verify_existing: bool = True
    progress: bool = True
    verify: bool = False

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError("splits must name at least one split")
        require_positive("shard_frames", self.shard_frames)
        require_positive("threads", self.threads)


class _NpyWriter:
    """Streams rows into a ``.npy`` file, hashing as it writes (no re-read for the checksum)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: str):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.rows = 0
        self.hash = hashlib.sha256()
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        )
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._write(header.getvalue())

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self.hash.update(data)

    def append(self, row: np.ndarray) -> None:
        self._write(np.ascontiguousarray(row, dtype=self.dtype).tobytes())
        self.rows += 1

    def abort(self) -> None:
        self._f.close()

    def close(self) -> str:
        # The shard directory is renamed into place right after; its files must be on disk first.
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, expected {self.shape[0]}")
        return self.hash.hexdigest()


def _npz_frames(
    split_dir: Path, ids: np.ndarray, shapes: dict[str, tuple[int, ...]], pool: ThreadPoolExecutor,
    robot: RobotDescription,
) -> Iterator[dict[str, np.ndarray]]:
    # Bounded look-ahead: at most `chunk` decoded frames are in memory at once.
    chunk = 64
    for lo in range(0, len(ids), chunk):
        paths = [frame_path(split_dir, int(f)) for f in ids[lo : lo + chunk]]
        yield from pool.map(lambda p: read_frame(p, None, shapes, robot), paths)


def _write_shard(
    tmp: Path, split_dir: Path, ids: np.ndarray, layout: dict[str, dict[str, Any]],
    shapes: dict[str, tuple[int, ...]], pool: ThreadPoolExecutor, bar: Any, robot: RobotDescription,
    frames: Iterable[dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    keys, cameras = frame_keys(robot), set(robot.camera_names)
    writers = {key: _NpyWriter(tmp / f"{key}.npy", (len(ids), *layout[key]["shape"]), layout[key]["dtype"]) for key in keys}
    try:
        for frame in frames if frames is not None else _npz_frames(split_dir, ids, shapes, pool, robot):
            for key in keys:
                value = frame[key].transpose(2, 0, 1) if key in cameras else frame[key]
                writers[key].append(value)
            bar.update(1)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    digests = {f"{key}.npy": w.close() for key, w in writers.items()}
    return {
        "num_frames": len(ids),
        "first_frame": int(ids[0]),
        "last_frame": int(ids[-1]),
        "frame_ids_sha256": frame_ids_digest(ids),
        "files": digests,
    }


def pack_split(
    split_dir: str | Path,
    out_dir: str | Path,
    shard_frames: int = 1024,
    threads: int = 4,
    verify_existing: bool = True,
    progress: bool = True,
    lerobot: LeRobotConfig | None = None,
    robot: str | None = None,
) -> dict[str, Any]:
    """Pack one split into ``out_dir``; returns the manifest. Safe to interrupt and re-run.

    ``lerobot``: the split is a LeRobotDataset v3 directory read with this feature mapping.
    ``robot`` (``data.robot``): a CALVIN-layout split must be for a robot of these shapes; a LeRobot
    dataset's description is completed by it and checked against it.
    """
    from tqdm import tqdm

    split_dir, out_dir = Path(split_dir), Path(out_dir)
    source = None
    if lerobot is not None:
        from roboflamingo.data.lerobot import LeRobotSplit

        source = LeRobotSplit(split_dir, lerobot, robot)
        index: SplitIndex = source.index
        shapes = source.image_shapes
    else:
        index = load_split_index(split_dir, check_files=True)
        require_robot_option(robot, index.robot, str(split_dir))
        shapes = probe_image_shapes(index)
    layout = field_layout(shapes, index.robot)
    ids = index.frame_ids()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"shard_{k:05d}" for k in range(-(-len(ids) // shard_frames))]
    shards = []
    done = 0
    with (
        ThreadPoolExecutor(max_workers=threads) as pool,
        tqdm(total=len(ids), desc=f"pack {split_dir.name}", unit="frame", disable=not progress) as bar,
    ):
        for k, name in enumerate(names):
            chunk = ids[k * shard_frames : (k + 1) * shard_frames]
            meta = verify_shard(out_dir / name, check_checksums=verify_existing)
            if meta is None or meta.get("frame_ids_sha256") != frame_ids_digest(chunk) or meta.get("fields") != layout:
                with atomic_dir(out_dir / name) as tmp:
                    # A LeRobot split's frame ids are its rows 0..N-1, so a shard is one contiguous run.
                    frames = source.frames(int(chunk[0]), len(chunk)) if source is not None else None
                    meta = _write_shard(tmp, split_dir, chunk, layout, shapes, pool, bar, index.robot, frames)
                    meta["fields"] = layout
                    atomic_write_json(tmp / SHARD_META, meta)
            else:
                done += len(chunk)
                bar.update(len(chunk))
            shards.append({"name": name, **{k2: meta[k2] for k2 in ("num_frames", "first_frame", "last_frame", "files")}})
    # Shards left over from an earlier plan (e.g. another shard_frames) would only waste disk.
    for stale in sorted(out_dir.glob("shard_*")):
        if stale.name not in names and stale.is_dir():
            shutil.rmtree(stale)
    if source is not None:
        write_index_files(out_dir, index)
    else:
        for name in (EP_START_END, LANG_ANN):
            atomic_write_bytes(out_dir / name, (split_dir / name).read_bytes())
    index.robot.save(out_dir / ROBOT_FILE)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "split": split_dir.name,
        "num_frames": len(ids),
        "num_segments": len(index.segments),
        "shard_frames": shard_frames,
        "frame_ids_sha256": frame_ids_digest(ids),
        "fields": layout,
        "robot": index.robot.to_dict(),
        "source": source.source_digests() if source is not None else source_digests(split_dir),
        "shards": shards,
        "reused_frames": done,
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def write_index_files(out_dir: Path, index: SplitIndex) -> None:
    """CALVIN's two index files for a split known only by its ``SplitIndex`` (a LeRobot source)."""
    buf = io.BytesIO()
    np.save(buf, index.episodes.astype(np.int64))
    atomic_write_bytes(out_dir / EP_START_END, buf.getvalue())
    ann = {
        "language": {"ann": list(index.instructions), "task": list(index.tasks)},
        "info": {"indx": [tuple(int(v) for v in seg) for seg in index.segments]},
    }
    buf = io.BytesIO()
    np.save(buf, np.array(ann, dtype=object), allow_pickle=True)
    (out_dir / LANG_ANN).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / LANG_ANN, buf.getvalue())


def verify(job: Job) -> int:
    """``pack --verify``: a full re-hash of every packed split named by ``job.splits``."""
    for split in job.splits:
        out_dir = packed_dir_for(job.data.root, split, job.data.packed_root)
        try:
            stats = verify_packed(out_dir)
        except DatasetError as e:
            print(f"roboflamingo pack --verify: {e}", file=sys.stderr)
            return 1
        mb = stats["bytes"] / 1e6
        print(f"verified {split}: {stats['files']} files, {mb:.1f} MB in {stats['seconds']:.2f} s "
              f"({mb / max(stats['seconds'], 1e-9):.0f} MB/s) -> {out_dir}")
    return 0


def run(job: Job) -> int:
    if job.verify:
        return verify(job)
    try:  # every split before the first is packed: a typo in the last must not cost an hour's work
        for split in job.splits:
            check_source_split(job.data, split, key=f"splits[{job.splits.index(split)}]")
    except DatasetError as e:
        print(f"roboflamingo pack: {e}", file=sys.stderr)
        return 1
    for split in job.splits:
        split_dir = Path(job.data.root) / split
        out_dir = packed_dir_for(job.data.root, split, job.data.packed_root)
        lerobot = job.data.lerobot if job.data.format == "lerobot" else None
        try:
            manifest = pack_split(
                split_dir, out_dir, job.shard_frames, job.threads, job.verify_existing, job.progress, lerobot,
                job.data.robot,
            )
        except DatasetError as e:
            print(f"roboflamingo pack: {e}", file=sys.stderr)
            return 1
        robot = RobotDescription.from_dict(manifest["robot"])
        print(
            f"packed {split} ({robot.summary()}): {manifest['num_frames']} frames in {len(manifest['shards'])} shards -> {out_dir} "
            f"({manifest['reused_frames']} frames reused from an earlier run)"
        )
    return 0
