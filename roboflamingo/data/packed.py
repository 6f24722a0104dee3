"""The packed format: one split as a few large memory-mapped arrays instead of one npz per frame.

``roboflamingo pack`` (``roboflamingo.data.pack``) writes, for the frames inside annotated segments::

    <packed_dir>/
      manifest.json                       written last: format, counts, field shapes, checksums and
                                          the robot description (field ``robot``; absent: CALVIN's)
      ep_start_end_ids.npy                copies of the split's index files and its description, so
      lang_annotations/auto_lang_ann.npy  a packed directory can be read without the npz files next
      robot.json                          to it
      shard_00000/
        shard.json                        frame range and the sha256 of every file in the shard
        <camera>.npy                      uint8   (n, 3, H, W)  one per camera, channel-first, as
                                                                batches want it (CALVIN: rgb_static,
                                                                rgb_gripper)
        <state.key>.npy                   float32 (n, S)        (CALVIN: robot_obs, 15)
        <action.key>.npy                  float32 (n, A)        (CALVIN: rel_actions, 7)

Opening a packed split checks every file against the sha256 in the manifest (so an edited value is
refused with the file named, never trained on), that the state and action are finite and sane
(``layout.check_values``), and that the manifest's robot is the split's (a mismatch is refused
naming both). Hashing a CALVIN-sized split takes minutes, so ``verified.json`` remembers, per file,
the size, inode, modification time and status-change time (ctime) it had when its hash last matched;
a file where any of them changed since is hashed again (and one changed within ``_MTIME_SLACK_S`` of
its check always is, since file times are coarse). Writing a file, or setting its mtime back with
``touch``/``utime``, sets its ctime to the present, and no user can set a ctime back, so an edit is
always re-hashed. What leaves no trace in the metadata (bit rot on the disk, a raw write to the
block device) is found only by a full re-hash: ``verify_packed``, i.e. ``roboflamingo pack --verify``
(sha256 at a few hundred MB/s a core: a minute or two per 10 GB).

Row r of the concatenated shards is frame ``SplitIndex.frame_ids()[r]``; shard k holds rows
``[k * shard_frames, (k + 1) * shard_frames)``. Readers map each ``.npy`` read-only and give the
pages of every window back to the kernel after copying it (``MADV_DONTNEED``), so the resident
set stays flat however large the split is; the page cache still keeps hot data.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.data.layout import (
    EP_START_END,
    LANG_ANN,
    DatasetError,
    SplitIndex,
    calvin_robot,
    check_values,
    frame_keys,
    require_same_robot,
)
from roboflamingo.io import atomic_write_json, npy_header, sha256_file
from roboflamingo.robot import RobotDescription
from roboflamingo.robots.calvin import CALVIN

FORMAT = "roboflamingo-packed"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_META = "shard.json"
PACKED_FIELDS = frame_keys(CALVIN)  # CALVIN's: rgb_static, rgb_gripper, robot_obs, rel_actions
VERIFIED = "verified.json"
_MTIME_SLACK_S = 2.0
_SHARD_NAME = re.compile(r"shard_\d{5,}")


def packed_dir_for(root: str | os.PathLike, split: str, packed_root: str | None = None) -> Path:
    """``<packed_root>/<split>`` when a packed root is configured, else ``<root>/<split>/packed``."""
    return Path(packed_root) / split if packed_root else Path(root) / split / "packed"


def field_layout(image_shapes: dict[str, tuple[int, ...]], robot: RobotDescription | None = None) -> dict[str, dict[str, Any]]:
    """Per-frame shape and dtype of every packed field, from the (H, W, 3) camera shapes and the
    robot's state and action dimensions (CALVIN's robot by default)."""
    robot = robot or calvin_robot()
    layout: dict[str, dict[str, Any]] = {}
    for key in robot.camera_names:
        h, w, c = image_shapes[key]
        layout[key] = {"shape": [c, h, w], "dtype": "uint8"}
    layout[robot.state.key] = {"shape": [robot.state.dim], "dtype": "float32"}
    layout[robot.action.key] = {"shape": [robot.action.dim], "dtype": "float32"}
    return layout


def manifest_robot(manifest: dict[str, Any], where: Path) -> RobotDescription:
    """The description a manifest records; CALVIN's for manifests written before descriptions."""
    if "robot" not in manifest:
        return calvin_robot()
    try:
        return RobotDescription.from_dict(manifest["robot"], f"{where}: field 'robot'")
    except ValueError as e:
        raise DatasetError(str(e)) from e


def frame_ids_digest(ids: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()


def source_digests(split_dir: Path) -> dict[str, str]:
    return {name: sha256_file(split_dir / name) for name in (EP_START_END, LANG_ANN)}


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a C-ordered ``.npy`` file, reading only its header."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = npy_header(f)
            offset = f.tell()
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: packed file is missing") from e
    except Exception as e:
        raise DatasetError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from e
    if fortran:
        raise DatasetError(f"{path}: Fortran-ordered arrays are not supported in packed shards")
    return tuple(shape), np.dtype(dtype), offset


class NpyMap:
    """A read-only memory map of one ``.npy`` whose pages are released after every read."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int):
        self.path = path
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.offset = offset
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.array = np.ndarray(shape, dtype=dtype, buffer=self._mm, offset=offset)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.array(self.array[start:stop])
        if hasattr(mmap, "MADV_DONTNEED"):
            # Dropping the pages from this process costs nothing to correctness (they are file
            # backed and come back from the page cache); without it RSS grows with every frame read.
            lo = (self.offset + start * self.row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
            hi = min(self.offset + stop * self.row_bytes, len(self._mm))
            if hi > lo:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return out


def load_manifest(packed_dir: Path) -> dict[str, Any]:
    path = packed_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: no packed manifest (run `roboflamingo pack`)") from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: the manifest must be a JSON object, got a {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DatasetError(
            f"{path}: field 'format'/'version' must be {FORMAT!r}/{VERSION}, got "
            f"{manifest.get('format')!r}/{manifest.get('version')!r}"
        )
    for key in ("num_frames", "shard_frames", "fields", "shards", "frame_ids_sha256", "source"):
        if key not in manifest:
            raise DatasetError(f"{path}: missing field '{key}'")
    kinds = {"num_frames": int, "shard_frames": int, "fields": dict, "shards": list, "source": dict}
    for key, kind in kinds.items():
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise DatasetError(f"{path}: field '{key}' must be a {kind.__name__}, got {manifest[key]!r:.100}")
    if manifest["shard_frames"] <= 0:
        raise DatasetError(f"{path}: field 'shard_frames' must be > 0, got {manifest['shard_frames']}")
    file_names = {f"{key}.npy" for key in frame_keys(manifest_robot(manifest, path))}
    for i, shard in enumerate(manifest["shards"]):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str) and isinstance(shard.get("files"), dict)):
            raise DatasetError(f"{path}: field 'shards[{i}]' must be an object with 'name' and 'files'")
        # Names become paths under the packed directory: '../..' or '/etc' must not lead out of it.
        if not _SHARD_NAME.fullmatch(shard["name"]):
            raise DatasetError(f"{path}: field 'shards[{i}].name' must be shard_<number>, got {shard['name'][:100]!r}")
        odd = sorted(str(n)[:100] for n in shard["files"] if n not in file_names)
        if odd:
            raise DatasetError(f"{path}: field 'shards[{i}].files' names {odd}; a shard holds only {sorted(file_names)}")
    return manifest


def _load_verified(packed_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((packed_dir / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _file_state(st: os.stat_result) -> dict[str, int]:
    """What must be unchanged for a file's recorded hash to stand: ctime cannot be set back."""
    return {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def verify_files(packed_dir: Path, manifest: dict[str, Any], trust_record: bool = True) -> None:
    """Every shard file against its manifest sha256 (skipping ones verified unchanged since)."""
    record = _load_verified(packed_dir) if trust_record else {}
    fresh: dict[str, Any] = {}
    for shard in manifest["shards"]:
        for name, digest in shard["files"].items():
            rel = f"{shard['name']}/{name}"
            path = packed_dir / rel
            try:
                st = path.stat()
            except FileNotFoundError as e:
                raise DatasetError(f"{path}: packed file is missing") from e
            seen = record.get(rel)
            now = _file_state(st)
            if (
                isinstance(seen, dict)
                and seen.get("sha256") == digest
                and all(seen.get(k) == v for k, v in now.items())
                and seen.get("checked", 0) - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > _MTIME_SLACK_S
            ):
                fresh[rel] = seen
                continue
            checked = time.time()
            if sha256_file(path) != digest:
                raise DatasetError(
                    f"{path}: sha256 does not match manifest field 'shards[{shard['name']}].files.{name}' "
                    "(corrupted or edited after packing; re-run `roboflamingo pack`)"
                )
            fresh[rel] = {"sha256": digest, **now, "checked": checked}
    if fresh != record:
        try:
            atomic_write_json(packed_dir / VERIFIED, fresh)
        except OSError:
            pass  # a read-only dataset is re-hashed on every open instead


class PackedSplit:
    """Reads rows of a packed split; memory maps are opened lazily, once per DataLoader worker."""

    def __init__(
        self, packed_dir: str | os.PathLike, index: SplitIndex, source_dir: Path | None = None, verify: bool = True
    ):
        self.packed_dir = Path(packed_dir)
        self.manifest = load_manifest(self.packed_dir)
        ids = index.frame_ids()
        where = self.packed_dir / MANIFEST
        if self.manifest["num_frames"] != len(ids) or self.manifest["frame_ids_sha256"] != frame_ids_digest(ids):
            raise DatasetError(
                f"{where}: packed frames ({self.manifest['num_frames']}) do not match the annotated frames of "
                f"{index.split_dir} ({len(ids)}); re-run `roboflamingo pack`"
            )
        if source_dir is not None and source_dir.resolve() != self.packed_dir.resolve():
            current = source_digests(source_dir)
            for name, digest in current.items():
                if self.manifest["source"].get(name) != digest:
                    raise DatasetError(
                        f"{where}: field 'source.{name}' does not match {source_dir / name}: the split changed "
                        "after packing; re-run `roboflamingo pack`"
                    )
        # Which state entries are angles says how to normalize them, not what was packed: a split packed
        # before CALVIN's description named its angles is read with the split's description.
        require_same_robot(manifest_robot(self.manifest, where), index.robot, f"the packed split {where}",
                           f"the split {index.split_dir}", "; re-run `roboflamingo pack`", ignore=("state.angles",))
        self.robot = index.robot
        self.fields = self.manifest["fields"]
        keys = frame_keys(self.robot)
        self._fields = keys
        vectors = {self.robot.state.key: self.robot.state.dim, self.robot.action.key: self.robot.action.dim}
        for key in keys:
            entry = self.fields.get(key)
            if key in vectors:
                want: Any = {"shape": [vectors[key]], "dtype": "float32"}
                ok = entry == want
            else:
                want = "a uint8 (3, H, W) image"
                ok = (isinstance(entry, dict) and entry.get("dtype") == "uint8" and isinstance(entry.get("shape"), list)
                      and len(entry["shape"]) == 3 and entry["shape"][0] == 3)
            if not ok:
                raise DatasetError(f"{where}: field 'fields.{key}' is {entry}, expected {want} for {self.robot.summary()}")
        self.frame_ids = ids
        self.shard_frames = int(self.manifest["shard_frames"])
        self.image_shapes = {k: tuple(self.fields[k]["shape"][i] for i in (1, 2, 0)) for k in self.robot.camera_names}
        self._shards = [self.packed_dir / s["name"] for s in self.manifest["shards"]]
        expected_shards = -(-len(ids) // self.shard_frames)
        if len(self._shards) != expected_shards:
            raise DatasetError(f"{where}: field 'shards' lists {len(self._shards)} shards, expected {expected_shards}")
        # Headers only: catches a truncated or swapped file on open without touching the data.
        self._headers: dict[tuple[int, str], tuple[tuple[int, ...], np.dtype, int]] = {}
        for k, shard in enumerate(self._shards):
            n = min(self.shard_frames, len(ids) - k * self.shard_frames)
            for key in keys:
                path = shard / f"{key}.npy"
                shape, dtype, offset = read_npy_header(path)
                want = (n, *self.fields[key]["shape"])
                if shape != want or dtype != np.dtype(self.fields[key]["dtype"]):
                    raise DatasetError(f"{path}: expected {self.fields[key]['dtype']} {want}, got {dtype} {shape}")
                if path.stat().st_size != offset + int(np.prod(shape)) * dtype.itemsize:
                    raise DatasetError(f"{path}: file size does not match its header (truncated?)")
                self._headers[(k, key)] = (shape, dtype, offset)
        self._maps: dict[tuple[int, str], NpyMap] = {}
        if verify:
            verify_files(self.packed_dir, self.manifest)
        # The vector fields are ~100 bytes a frame: cheap to check whole, and what a NaN or an absurd
        # value would poison (the normalization statistics first). Checked over the whole split, so the
        # relative check sees every row of a column.
        for key in (self.robot.state.key, self.robot.action.key):
            values = np.concatenate([self._map(k, key).read(0, self._headers[(k, key)][0][0])
                                     for k in range(len(self._shards))])
            check_values(self.packed_dir, key, values, frame_ids=ids,
                         locate=lambda r, key=key: (self._shards[r // self.shard_frames] / f"{key}.npy",
                                                    r % self.shard_frames))
        self._maps = {}

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-open their own maps; nothing large crosses the process boundary.
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def row_of(self, frame_id: int) -> int:
        row = int(np.searchsorted(self.frame_ids, frame_id))
        if row >= len(self.frame_ids) or self.frame_ids[row] != frame_id:
            raise DatasetError(f"{self.packed_dir}: frame {frame_id} is not in the packed split")
        return row

    def _map(self, shard: int, key: str) -> NpyMap:
        m = self._maps.get((shard, key))
        if m is None:
            shape, dtype, offset = self._headers[(shard, key)]
            m = self._maps[(shard, key)] = NpyMap(self._shards[shard] / f"{key}.npy", shape, dtype, offset)
        return m

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one field, across shard boundaries if needed."""
        parts = []
        row = start
        while row < stop:
            shard, local = divmod(row, self.shard_frames)
            take = min(stop - row, self.shard_frames - local)
            parts.append(self._map(shard, key).read(local, local + take))
            row += take
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_frames(self, first_frame: int, n_obs: int, n_act: int) -> dict[str, np.ndarray]:
        """Consecutive frames ``first_frame ..``: images and the state for n_obs, the action for n_act."""
        row = self.row_of(first_frame)
        last = row + n_act - 1
        if last >= len(self.frame_ids) or self.frame_ids[last] != first_frame + n_act - 1:
            raise DatasetError(f"{self.packed_dir}: frames {first_frame}..{first_frame + n_act - 1} are not all packed")
        action = self.robot.action.key
        out = {key: self.read(key, row, row + n_obs) for key in self._fields if key != action}
        out[action] = self.read(action, row, row + n_act)
        return out


def verify_shard(shard_dir: Path, check_checksums: bool = True) -> dict[str, Any] | None:
    """The shard's metadata if it is complete and (optionally) every checksum matches, else None."""
    try:
        meta = json.loads((shard_dir / SHARD_META).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, digest in files.items():
        path = shard_dir / name
        if not path.is_file():
            return None
        if check_checksums and sha256_file(path) != digest:
            return None
    return meta


def verify_packed(packed_dir: str | os.PathLike) -> dict[str, Any]:
    """Recompute every checksum in the manifest (the record of earlier checks is not trusted); raise
    a DatasetError naming the first bad file. Returns ``{"files", "bytes", "seconds"}``."""
    packed_dir = Path(packed_dir)
    manifest = load_manifest(packed_dir)
    t0 = time.perf_counter()
    verify_files(packed_dir, manifest, trust_record=False)
    files = [packed_dir / s["name"] / n for s in manifest["shards"] for n in s["files"]]
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files), "seconds": time.perf_counter() - t0}
