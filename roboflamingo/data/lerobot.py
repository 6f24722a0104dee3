"""LeRobotDataset v3 read as one of our splits, its robot description derived from its metadata.

A v3 dataset directory (written by LeRobot's ``LeRobotDataset``, ``lerobot-record``, or
``roboflamingo export-lerobot``) holds::

    meta/info.json                      codebase_version "v3.x", fps, features {name: dtype/shape/names}
    meta/robot.json                     optional, ours: the robot description (``export-lerobot`` writes it)
    meta/stats.json                     per-feature mean/std/min/max/count (not needed to read)
    meta/tasks.parquet                  task string (the pandas index) -> task_index
    meta/episodes/chunk-*/file-*.parquet  per episode: length, dataset_from_index/to_index,
                                        videos/<key>/{chunk_index,file_index,from_timestamp}
    data/chunk-*/file-*.parquet         one row per frame: index, episode_index, frame_index,
                                        timestamp, task_index, and the vector features
    videos/<key>/chunk-*/file-*.mp4     one stream per camera; episodes follow each other in a file

The robot description (``lerobot_robot``): with ``data.robot`` set, or a ``meta/robot.json`` in the
dataset, that description, checked against ``meta/info.json`` (its cameras, state and action must
be features there, of its dimensions; both given: they must agree). Otherwise it is derived from
``meta/info.json``: one camera per image or video feature (``observation.images.<name>`` is camera
``<name>``; ``data.lerobot.cameras`` picks and orders them), the state from ``observation.state``
and the action from ``action`` (``data.lerobot.robot_obs`` / ``rel_actions`` rename them), their
entry names from the features' ``names``, keys ``state`` and ``action`` as in the shipped robot
files. meta/info.json cannot say what the action means: a derived action whose names all end in
``.pos`` (LeRobot's motor position targets: SO-100/101, Koch, ALOHA) is taken as absolute joint
positions with each ``gripper`` entry a position, any other as relative end-effector deltas, with no
binary grippers and no bounds; ``data.robot`` states them instead. Which of these was assumed is
recorded in the description's ``extra``.

Opening (``LeRobotSplit``) reads the metadata and the frame table and checks them against the
description: every feature present with the expected dtype and shape, fps as configured, indices
contiguous, binary gripper entries exactly ``close`` or ``open``. Episodes become the split's
episodes; each run of frames with one task inside
an episode becomes a language-annotated segment (``SplitIndex``), so windows, augmentation and
``act_steps`` targets are exactly those of CALVIN's npz layout. Row ``i`` of the frame table is our
frame id ``i`` (LeRobot's global ``index``). Images come from ``frames(first, n)``, which decodes
the videos sequentially with PyAV (or the PNG bytes of ``image`` features); ``roboflamingo pack``
calls it once per shard, so training never decodes video.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.data.config import LeRobotConfig
from roboflamingo.data.layout import (
    DatasetError,
    DatasetRobotMismatch,
    SplitIndex,
    check_values,
    frame_keys,
    robot_option,
)
from roboflamingo.robot import ActionSpec, Camera, RobotDescription, RobotMismatch, StateSpec

INFO_PATH = "meta/info.json"
ROBOT_PATH = "meta/robot.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CODEBASE_VERSION = "v3.0"
# Columns every LeRobot frame has (LeRobot's DEFAULT_FEATURES), with their dtypes.
INDEX_FEATURES = {
    "timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64", "task_index": "int64",
}
# LeRobot's default ``tolerance_s``: how far a decoded frame's timestamp may be from the expected one.
TOLERANCE_S = 1e-4


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file is missing (not a LeRobotDataset v3 directory?)") from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable JSON ({e})") from e


def _read_parquet_dir(directory: Path, columns: list[str] | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(directory.glob("chunk-*/file-*.parquet"))
    if not paths:
        raise DatasetError(f"{directory}: no chunk-*/file-*.parquet files")
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path, columns=columns)
        except Exception as e:  # pyarrow raises ArrowInvalid, KeyError (missing column), OSError
            raise DatasetError(f"{path}: unreadable parquet or missing column of {columns} ({type(e).__name__}: {e})") from e
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default"), paths


def _vector_column(table, name: str, dim: int, where: str) -> np.ndarray:
    """(N, dim) float32 from a fixed-size list column (how LeRobot stores vector features)."""
    column = table.column(name).combine_chunks()
    try:
        flat = np.asarray(column.flatten(), dtype=np.float64)
    except Exception as e:
        raise DatasetError(f"{where}: feature '{name}' is not a list of numbers ({e})") from e
    if flat.size != len(table) * dim:
        raise DatasetError(f"{where}: feature '{name}' has {flat.size / max(len(table), 1):.1f} values a frame, expected {dim}")
    values = flat.reshape(len(table), dim)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise DatasetError(f"{where}: feature '{name}' is NaN or inf at frame index {int(bad[0])}")
    check_values(where, name, values, frame_ids=np.arange(len(values)))  # absurd magnitudes (issue 31)
    return values.astype(np.float32)


def _image_hw(feature: dict[str, Any], name: str, where: Path) -> tuple[int, int]:
    """(H, W) of a camera feature; LeRobot writes [H, W, C] with names, older sets may be [C, H, W]."""
    shape, names = list(feature.get("shape", [])), feature.get("names")
    if len(shape) != 3:
        raise DatasetError(f"{where}: feature '{name}' must be an image of shape [H, W, 3], got {shape}")
    if isinstance(names, list) and len(names) == 3 and str(names[0]).startswith("channel"):
        c, h, w = shape
    else:
        h, w, c = shape
    if c != 3:
        raise DatasetError(f"{where}: feature '{name}' must have 3 channels (RGB), got shape {shape}")
    return int(h), int(w)


def _names(feature: dict[str, Any]) -> list[str] | None:
    """A vector feature's entry names: LeRobot writes a list, older datasets ``{"motors": [...]}``."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
        return list(names)
    return None


def _stored_robot(root: Path) -> RobotDescription | None:
    path = root / ROBOT_PATH
    if not path.is_file():
        return None
    try:
        return RobotDescription.from_dict(json.loads(path.read_text()), str(path))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable robot description ({e})" if str(path) not in str(e) else str(e)) from e


@dataclass
class LeRobotLayout:
    """Where a LeRobot dataset keeps what the robot description names."""

    robot: RobotDescription
    camera_features: dict[str, str]  # camera name -> feature
    state_feature: str
    action_feature: str
    image_shapes: dict[str, tuple[int, int, int]]  # camera name -> (H, W, 3) as stored


def check_info(info: dict[str, Any], mapping: LeRobotConfig, where: Path, robot: str | None = None,
               stored: RobotDescription | None = None) -> LeRobotLayout:
    """Check ``meta/info.json`` and derive (or check) the robot description; see the module docstring.

    ``robot``: ``data.robot`` (a built-in name or file); ``stored``: the dataset's ``meta/robot.json``.
    """
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise DatasetError(
            f"{where}: field 'codebase_version' must be v3.x (LeRobotDataset v3), got {version!r}; convert "
            "older datasets with LeRobot's convert_dataset_v21_to_v30"
        )
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or abs(float(fps) - mapping.fps) > 1e-6:
        raise DatasetError(f"{where}: field 'fps' is {fps!r} but data.lerobot.fps is {mapping.fps}")
    features = info.get("features")
    if not isinstance(features, dict):
        raise DatasetError(f"{where}: field 'features' is missing or not a mapping")
    for name, dtype in INDEX_FEATURES.items():
        if name not in features:
            raise DatasetError(f"{where}: feature '{name}' is missing (every LeRobot frame has it)")
        if features[name].get("dtype") != dtype:
            raise DatasetError(f"{where}: feature '{name}' must have dtype {dtype}, got {features[name].get('dtype')!r}")

    base = stored
    if robot:
        supplied = robot_option(robot)
        if stored is not None:
            try:
                supplied.require_compatible(stored, f"data.robot={robot}", f"{where.parent / 'robot.json'}")
            except RobotMismatch as e:
                raise DatasetRobotMismatch(str(e)) from e
        base = supplied
    of_base = f" of {base.summary()}" if base is not None else ""

    def feature(key: str, option: str) -> dict[str, Any]:
        if key not in features:
            raise DatasetError(f"{where}: feature '{key}' ({option}) is missing; the dataset has {sorted(features)}")
        return features[key]

    # Cameras: the description's, else the ones named in data.lerobot.cameras, else every image feature.
    if base is not None:
        cameras = list(base.camera_names)
        if mapping.cameras and list(mapping.cameras) != cameras:
            raise DatasetRobotMismatch(f"{where}: data.lerobot.cameras {list(mapping.cameras)} differ from the "
                                       f"cameras {cameras}{of_base}")
    elif mapping.cameras:
        cameras = list(mapping.cameras)
    else:
        renamed = {mapping.camera_feature(c)[0]: c for c in ("rgb_static", "rgb_gripper", *mapping.camera_features)}
        image_features = [k for k, ft in features.items() if isinstance(ft, dict) and ft.get("dtype") in ("video", "image")]
        cameras = [renamed.get(k, k[len("observation.images."):] if k.startswith("observation.images.")
                               else k.rsplit(".", 1)[-1]) for k in image_features]
        if not cameras:
            raise DatasetError(f"{where}: field 'features' has no image or video feature; a robot needs a camera")
    camera_features, shapes = {}, {}
    for cam in cameras:
        key, option = mapping.camera_feature(cam)
        ft = feature(key, option)
        if ft.get("dtype") not in ("video", "image"):
            raise DatasetError(f"{where}: feature '{key}' must have dtype 'video' or 'image', got {ft.get('dtype')!r}")
        h, w = _image_hw(ft, key, where)
        video_fps = (ft.get("info") or {}).get("video.fps")
        if ft["dtype"] == "video" and video_fps is not None and abs(float(video_fps) - mapping.fps) > 1e-6:
            raise DatasetError(f"{where}: feature '{key}' has info.video.fps {video_fps} but data.lerobot.fps is {mapping.fps}")
        camera_features[cam], shapes[cam] = key, (h, w, 3)

    def vector(key: str, option: str, what: str, want: int | None, override: list[str],
               want_names: tuple[str, ...] | None) -> list[str] | None:
        """The entry names of the state or action feature after checking its dtype and shape."""
        ft = feature(key, option)
        if ft.get("dtype") not in ("float32", "float64"):
            raise DatasetError(f"{where}: feature '{key}' must be float32 or float64, got {ft.get('dtype')!r}")
        shape = list(ft.get("shape", []))
        names = list(override) or _names(ft)
        source = f"data.lerobot.{what}_names" if override else "its names in meta/info.json"
        if want is not None and shape != [want]:
            raise DatasetError(f"{where}: feature '{key}' has shape {shape}, expected [{want}] ({what} dimension)"
                               f"{of_base}")
        if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
            raise DatasetError(f"{where}: feature '{key}' must be a vector (shape [n]), got shape {shape}")
        if names is not None and len(names) != shape[0]:
            raise DatasetError(f"{where}: feature '{key}' has shape {shape}, expected [{len(names)}] ({what} "
                               f"dimension) from {source}")
        if want_names is not None and names is not None and tuple(names) != want_names:
            raise DatasetRobotMismatch(
                f"{where}: feature '{key}' names its entries {names} ({source}), but {base.summary()} names them "
                f"{list(want_names)}; if they are the same entries under other names, set data.lerobot.{what}_names "
                "to the robot's names")
        return names

    state_feature, action_feature = mapping.robot_obs, mapping.rel_actions
    if len({*camera_features.values(), state_feature, action_feature}) != len(camera_features) + 2:
        raise DatasetError(f"{where}: data.lerobot maps two of our fields to the same feature "
                           f"(cameras {camera_features}, state {state_feature!r}, action {action_feature!r})")
    state_names = vector(state_feature, "data.lerobot.robot_obs", "state",
                         base.state.dim if base else None, mapping.state_names, base.state.names if base else None)
    action_names = vector(action_feature, "data.lerobot.rel_actions", "action",
                          base.action.dim if base else None, mapping.action_names, base.action.names if base else None)
    if base is not None:
        if abs(base.action.rate_hz - float(fps)) > 1e-6:
            raise DatasetRobotMismatch(f"{where}: field 'fps' is {fps} but {base.summary()} is controlled at "
                                       f"{base.action.rate_hz} Hz")
        described = base
    else:
        described = _derive(info, cameras, shapes, state_names, action_names, float(fps), features[state_feature],
                            features[action_feature])
    frame_keys(described)  # refuses names that collide with each other or with the batch's keys
    return LeRobotLayout(described, camera_features, state_feature, action_feature, shapes)


def _derive(info: dict[str, Any], cameras: list[str], shapes: dict[str, tuple[int, int, int]],
            state_names: list[str] | None, action_names: list[str] | None, fps: float,
            state_ft: dict[str, Any], action_ft: dict[str, Any]) -> RobotDescription:
    """The description meta/info.json implies, with the action's meaning assumed from its names."""
    state_names = state_names or [f"state_{i}" for i in range(int(state_ft["shape"][0]))]
    action_names = action_names or [f"action_{i}" for i in range(int(action_ft["shape"][0]))]
    if all(n.endswith(".pos") for n in action_names):
        mode, space = "absolute", "joint"
        positions = tuple(i for i, n in enumerate(action_names) if "gripper" in n.lower())
        assumed = "absolute joint positions (every action name ends in .pos); entries named gripper are positions"
    else:
        mode, space, positions = "relative", "end_effector", ()
        assumed = "relative end-effector deltas (the action names do not all end in .pos)"
    robot_type = str(info.get("robot_type") or "") or "lerobot"
    return RobotDescription(
        name=robot_type,
        description=f"derived from a LeRobot dataset's meta/info.json (robot_type {robot_type!r})",
        cameras=tuple(Camera(c, shapes[c][0], shapes[c][1]) for c in cameras),
        state=StateSpec(names=tuple(state_names), key="state"),
        action=ActionSpec(names=tuple(action_names), key="action", gripper_positions=positions, mode=mode,
                          space=space, rate_hz=fps),
        extra={"derived_from": "LeRobot meta/info.json", "assumed": assumed,
               "binary_grippers": "none (meta/info.json cannot say; give data.robot)"},
    )


def lerobot_robot(root: str | os.PathLike, mapping: LeRobotConfig | None = None,
                  robot: str | None = None) -> RobotDescription:
    """The robot description ``LeRobotSplit`` would give this dataset (reads only ``meta/``)."""
    root = Path(root)
    return check_info(_read_json(root / INFO_PATH), mapping or LeRobotConfig(), root / INFO_PATH, robot,
                      _stored_robot(root)).robot


def read_tasks(root: Path) -> list[str]:
    """Task strings by task_index. LeRobot writes a pandas frame: the task is its index column."""
    import pyarrow.parquet as pq

    path = root / TASKS_PATH
    try:
        table = pq.read_table(path)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file is missing") from e
    except Exception as e:
        raise DatasetError(f"{path}: unreadable parquet ({type(e).__name__}: {e})") from e
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    text_col = next((c for c in [*index_cols, "task", "__index_level_0__"] if c in table.column_names), None)
    if text_col is None or "task_index" not in table.column_names:
        raise DatasetError(f"{path}: expected columns 'task_index' and the task string (pandas index or 'task'), got {table.column_names}")
    ids = np.asarray(table.column("task_index").to_pylist(), dtype=np.int64)
    texts = table.column(text_col).to_pylist()
    if sorted(ids.tolist()) != list(range(len(ids))):
        raise DatasetError(f"{path}: field 'task_index' must be 0..{len(ids) - 1} without gaps, got {sorted(ids.tolist())}")
    out = [""] * len(ids)
    for i, text in zip(ids, texts):
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path}: task {int(i)} must be a non-empty string, got {text!r}")
        out[int(i)] = text
    return out


def source_digests(root: Path) -> dict[str, str]:
    """sha256 of the metadata a packed copy was built from: ``info.json``, our ``robot.json`` if any,
    and the episode table (cheap to re-check on every open, unlike the frame data; LeRobot rewrites
    info.json and the episodes on any edit)."""
    from roboflamingo.io import sha256_file

    paths = [root / INFO_PATH, root / ROBOT_PATH, *sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))]
    return {str(p.relative_to(root)): sha256_file(p) for p in paths if p.is_file()}


def check_packed_source(root: str | os.PathLike, manifest: dict[str, Any], where: Path) -> None:
    """Refuse a packed copy of a LeRobot dataset whose metadata changed after packing."""
    current = source_digests(Path(root))
    if manifest.get("source") != current:
        raise DatasetError(f"{where}: field 'source' does not match {root}/meta: the LeRobot dataset changed "
                           "after packing; re-run `roboflamingo pack`")


@dataclass
class _VideoRef:
    path: Path
    from_timestamp: float


class LeRobotSplit:
    """A LeRobotDataset v3 directory opened and checked as one split (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, mapping: LeRobotConfig | None = None, robot: str | None = None):
        self.root = Path(root)
        self.mapping = mapping or LeRobotConfig()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: LeRobot dataset directory does not exist")
        info_path = self.root / INFO_PATH
        self.info = _read_json(info_path)
        self.layout = check_info(self.info, self.mapping, info_path, robot, _stored_robot(self.root))
        self.robot = self.layout.robot
        self.image_shapes = self.layout.image_shapes
        self.features = self.info["features"]
        self.fps = int(round(float(self.info["fps"])))
        self.tasks = read_tasks(self.root)
        self._load_frames()
        self._load_episodes()
        self.index = self._split_index()

    # -- metadata ------------------------------------------------------------------------------
    @property
    def robot_obs(self) -> np.ndarray:
        """The state, (N, state dim) float32 (CALVIN's name for it)."""
        return self.state

    @property
    def rel_actions(self) -> np.ndarray:
        """The actions, (N, action dim) float32 (CALVIN's name for them)."""
        return self.actions

    def _load_frames(self) -> None:
        lay = self.layout
        cols = ["index", "episode_index", "frame_index", "timestamp", "task_index", lay.state_feature, lay.action_feature]
        table, self.data_files = _read_parquet_dir(self.root / "data", cols)
        where = self.root / "data"
        order = np.argsort(np.asarray(table.column("index").to_numpy()), kind="stable")
        index = np.asarray(table.column("index").to_numpy())[order]
        n = len(index)
        if not np.array_equal(index, np.arange(n)):
            raise DatasetError(f"{where}: feature 'index' must run 0..{n - 1} without gaps or repeats")
        total = self.info.get("total_frames")
        if total != n:
            raise DatasetError(f"{self.root / INFO_PATH}: field 'total_frames' is {total} but the data files hold {n} frames")
        self.episode_index = np.asarray(table.column("episode_index").to_numpy())[order].astype(np.int64)
        self.frame_index = np.asarray(table.column("frame_index").to_numpy())[order].astype(np.int64)
        self.task_index = np.asarray(table.column("task_index").to_numpy())[order].astype(np.int64)
        bad = np.flatnonzero((self.task_index < 0) | (self.task_index >= len(self.tasks)))
        if len(bad):
            raise DatasetError(f"{where}: feature 'task_index' is {self.task_index[bad[0]]} at index {bad[0]}, "
                               f"but {TASKS_PATH} has {len(self.tasks)} tasks")
        self.state = _vector_column(table, lay.state_feature, self.robot.state.dim, str(where))[order]
        self.actions = _vector_column(table, lay.action_feature, self.robot.action.dim, str(where))[order]
        a = self.robot.action
        for i in a.grippers:
            # A binary gripper is classified: any value but close/open would be a third class.
            bad = np.flatnonzero((self.actions[:, i] != np.float32(a.close)) & (self.actions[:, i] != np.float32(a.open)))
            if len(bad):
                raise DatasetError(
                    f"{where}: feature '{lay.action_feature}' entry {i} ('{a.names[i]}') is {self.actions[bad[0], i]} at "
                    f"index {int(bad[0])}, but {self.robot.summary()} has it as a binary gripper ({a.close} close, "
                    f"{a.open} open)")

    def _load_episodes(self) -> None:
        table, _ = _read_parquet_dir(self.root / EPISODES_DIR)
        where = self.root / EPISODES_DIR
        needed = ["episode_index", "length", "dataset_from_index", "dataset_to_index"]
        self.video_keys = [k for k in self.layout.camera_features.values() if self.features[k]["dtype"] == "video"]
        for key in self.video_keys:
            needed += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise DatasetError(f"{where}: missing field(s) {missing}")
        cols = {c: np.asarray(table.column(c).to_pylist()) for c in needed}
        order = np.argsort(cols["episode_index"], kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
        eps = cols["episode_index"].astype(np.int64)
        if not np.array_equal(eps, np.arange(len(eps))):
            raise DatasetError(f"{where}: field 'episode_index' must run 0..{len(eps) - 1}")
        if self.info.get("total_episodes") != len(eps):
            raise DatasetError(f"{self.root / INFO_PATH}: field 'total_episodes' is {self.info.get('total_episodes')} "
                               f"but {where} lists {len(eps)}")
        start, stop = cols["dataset_from_index"].astype(np.int64), cols["dataset_to_index"].astype(np.int64)
        n = len(self.episode_index)
        for e in range(len(eps)):
            lo, hi = int(start[e]), int(stop[e])
            if not (0 <= lo < hi <= n) or hi - lo != int(cols["length"][e]):
                raise DatasetError(f"{where}: episode {e} has dataset_from_index {lo}, dataset_to_index {hi}, "
                                   f"length {int(cols['length'][e])}, which do not fit {n} frames")
            if not (np.all(self.episode_index[lo:hi] == e) and np.array_equal(self.frame_index[lo:hi], np.arange(hi - lo))):
                raise DatasetError(f"{self.root / 'data'}: frames {lo}..{hi - 1} must be episode {e}'s "
                                   "frame_index 0..length-1 (episode_index/frame_index disagree with meta/episodes)")
        if int((stop - start).sum()) != n:
            raise DatasetError(f"{where}: episodes cover {int((stop - start).sum())} frames, the data files hold {n}")
        self.episode_ranges = np.stack([start, stop - 1], axis=1)
        self.videos: dict[str, list[_VideoRef]] = {}
        template = self.info.get("video_path") or VIDEO_PATH
        for key in self.video_keys:
            refs = []
            for e in range(len(eps)):
                rel = template.format(video_key=key, chunk_index=int(cols[f"videos/{key}/chunk_index"][e]),
                                      file_index=int(cols[f"videos/{key}/file_index"][e]), episode_index=e)
                path = self.root / rel
                if not path.is_file():
                    raise DatasetError(f"{path}: video of feature '{key}' for episode {e} is missing")
                refs.append(_VideoRef(path, float(cols[f"videos/{key}/from_timestamp"][e])))
            self.videos[key] = refs

    def _split_index(self) -> SplitIndex:
        """Episodes as recorded; one segment per run of equal task_index inside an episode."""
        segments, sentences = [], []
        for s, e in self.episode_ranges:
            tasks = self.task_index[s : e + 1]
            cuts = np.flatnonzero(np.diff(tasks)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(tasks)]):
                segments.append((int(s + lo), int(s + hi - 1)))
                sentences.append(self.tasks[int(tasks[lo])])
        return SplitIndex(self.root, self.episode_ranges.astype(np.int64),
                          np.asarray(segments, dtype=np.int64).reshape(-1, 2), sentences, list(sentences), self.robot)

    def source_digests(self) -> dict[str, str]:
        return source_digests(self.root)

    # -- frames --------------------------------------------------------------------------------
    def frames(self, first: int, n: int) -> Iterator[dict[str, np.ndarray]]:
        """Frames ``first .. first + n - 1`` under the robot's keys: an (H, W, 3) uint8 image per camera,
        the state (state dim,) and the action (action dim,) as float32."""
        if first < 0 or n < 0 or first + n > len(self.episode_index):
            raise IndexError(f"frames {first}..{first + n - 1} out of range for {len(self.episode_index)} frames")
        streams = {ours: self._camera(key, ours, first, n) for ours, key in self.layout.camera_features.items()}
        state, action = self.robot.state.key, self.robot.action.key
        try:
            for i in range(first, first + n):
                frame = {ours: next(stream) for ours, stream in streams.items()}
                frame[state] = self.state[i]
                frame[action] = self.actions[i]
                yield frame
        finally:
            for stream in streams.values():
                stream.close()

    def _camera(self, key: str, ours: str, first: int, n: int) -> Iterator[np.ndarray]:
        if self.features[key]["dtype"] == "video":
            return self._video_frames(key, ours, first, n)
        return self._image_frames(key, ours, first, n)

    def _check_image(self, image: np.ndarray, key: str, ours: str, where: Path, i: int) -> np.ndarray:
        if image.shape != self.image_shapes[ours]:
            raise DatasetError(f"{where}: feature '{key}' frame {i} has shape {image.shape}, "
                               f"meta/info.json declares {list(self.image_shapes[ours])}")
        return image

    def _image_frames(self, key: str, ours: str, first: int, n: int) -> Iterator[np.ndarray]:
        import pyarrow.parquet as pq
        from PIL import Image

        seen = 0
        for path in self.data_files:
            table = pq.read_table(path, columns=["index", key])
            idx = np.asarray(table.column("index").to_numpy())
            order = np.argsort(idx, kind="stable")
            column = table.column(key).to_pylist()
            for r in order:
                i = int(idx[r])
                if not first <= i < first + n:
                    continue
                cell = column[r]
                data = cell.get("bytes") if isinstance(cell, dict) else None
                if data is None:
                    raise DatasetError(f"{path}: feature '{key}' at index {i} holds no embedded image bytes")
                with Image.open(io.BytesIO(data)) as im:
                    image = np.asarray(im.convert("RGB"))
                yield self._check_image(image, key, ours, path, i)
                seen += 1
        if seen != n:
            raise DatasetError(f"{self.root / 'data'}: feature '{key}' has {seen} of frames {first}..{first + n - 1}")

    def _video_frames(self, key: str, ours: str, first: int, n: int) -> Iterator[np.ndarray]:
        """Decode each needed episode's frames in order, reusing the open file between episodes."""
        import av

        refs = self.videos[key]
        container = stream = decoder = None
        current: Path | None = None
        last_t = -1.0  # time of the last decoded frame
        try:
            e = int(self.episode_index[first])
            i = first
            while i < first + n:
                lo, hi = (int(v) for v in self.episode_ranges[e])
                ref = refs[e]
                start_k = i - lo  # first wanted frame of this episode
                target = ref.from_timestamp + start_k / self.fps
                if ref.path != current or decoder is None:
                    if container is not None:
                        container.close()
                    try:
                        container = av.open(str(ref.path))
                    except Exception as ex:
                        raise DatasetError(f"{ref.path}: unreadable video of feature '{key}' ({ex})") from ex
                    stream = container.streams.video[0]
                    stream.thread_type = "AUTO"
                    current = ref.path
                    decoder = None
                if decoder is None or last_t > target + TOLERANCE_S:
                    # Seek to the key frame at or before the target, then decode forwards.
                    container.seek(max(int(target / stream.time_base) - 1, 0), stream=stream, backward=True)
                    decoder = container.decode(stream)
                    last_t = -1.0
                k = start_k
                while k <= hi - lo and i < first + n:
                    want = ref.from_timestamp + k / self.fps
                    try:
                        frame = next(decoder)
                    except StopIteration:
                        raise DatasetError(f"{ref.path}: feature '{key}' ends before episode {e}'s frame {k} "
                                           f"(timestamp {want:.4f} s)") from None
                    except av.error.FFmpegError as ex:
                        raise DatasetError(f"{ref.path}: feature '{key}' cannot be decoded ({ex})") from ex
                    t = float(frame.time)
                    last_t = t
                    if t < want - TOLERANCE_S:
                        continue  # frames before the wanted one (from the key frame on)
                    if t > want + TOLERANCE_S:
                        raise DatasetError(f"{ref.path}: feature '{key}' has no frame at {want:.4f} s (episode {e}, "
                                           f"frame {k}); the next frame is at {t:.4f} s (tolerance {TOLERANCE_S} s)")
                    yield self._check_image(frame.to_ndarray(format="rgb24"), key, ours, ref.path, i)
                    k += 1
                    i += 1
                e += 1
        finally:
            if container is not None:
                container.close()

