"""CALVIN's on-disk layout: the split index, frame files, and their validation.

A split directory (``<root>/training`` or ``<root>/validation``) holds::

    episode_%07d.npz                    one frame per file (CALVIN's legacy name), keys below
    ep_start_end_ids.npy                (N, 2) inclusive [start, end] frame ids of recorded episodes
    lang_annotations/auto_lang_ann.npy  pickled dict: language.ann (sentences), language.task,
                                        info.indx (inclusive (start, end) frame ids per sentence);
                                        unpickled as plain data only (``safe_pickle``)
    statistics.yaml                     optional normalization statistics
    robot.json                          optional robot description (``roboflamingo.robot``); absent:
                                        CALVIN's Franka, so the CALVIN release keeps working

The frame keys are the robot's: one (H, W, 3) uint8 image per camera name, the state vector under
``state.key`` and the action under ``action.key`` (CALVIN: rgb_static, rgb_gripper, robot_obs (15),
rel_actions (7)); ``frame_keys(robot)`` lists them and ``SplitIndex.robot`` is the split's description.

Validation is split so that opening CALVIN's hundreds of GB stays cheap: the index files are
checked completely on open, the presence of every frame file an annotation needs is checked with
one directory listing, one frame is probed for keys/shapes/dtypes, and every frame read later is
checked again (a clear ``DatasetError`` at read time). ``validate_split`` reads every needed frame.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from roboflamingo.robot import ROBOT_FILE, RobotDescription, RobotMismatch
from roboflamingo.types import ACTION_MASK, ACTIONS, INSTRUCTION

EP_START_END = "ep_start_end_ids.npy"
LANG_ANN = os.path.join("lang_annotations", "auto_lang_ann.npy")
STATISTICS = "statistics.yaml"
_FRAME_RE = re.compile(r"^episode_(\d{7,})\.npz$")

# Sane ranges for robot_obs and rel_actions until the robot description gives per-robot bounds.
# No state or action of a tabletop arm comes near 1e5 in SI units (m, rad), degrees, or the encoder
# ticks of common servos (4096 a turn); beyond it a value is corruption (an exploded simulation, a
# unit bug), and as a normalization mean it would wreck every other value (issue 31).
MAX_ABS_VALUE = 1e5
# Over many rows, a value more than RELATIVE_FACTOR times its column's 90th-percentile magnitude
# (and than RELATIVE_FLOOR) is refused too: the percentile ignores the few rows a corruption touches,
# and the floor keeps columns that are mostly zero (an unused joint) from flagging ordinary values.
RELATIVE_FACTOR = 100.0
RELATIVE_FLOOR = 1.0
RELATIVE_MIN_ROWS = 10


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or malformed; the message names the file and field."""


class DatasetRobotMismatch(DatasetError, RobotMismatch):
    """Data of one robot met a description of another; the message names both descriptions."""


def calvin_robot() -> RobotDescription:
    from roboflamingo.robots import load_robot

    return load_robot("calvin")


def frame_keys(robot: RobotDescription) -> tuple[str, ...]:
    """What the reader needs from every frame a window observes: the cameras, the state and the
    action (later frames need only the action). Refuses a description whose keys collide with each
    other or with the batch's own keys."""
    keys = (*robot.camera_names, robot.state.key, robot.action.key)
    if len(set(keys)) != len(keys):
        raise DatasetError(f"{robot.summary()}: camera names, state.key and action.key must all differ, got {list(keys)}")
    taken = sorted(set(keys[:-1]) & {ACTIONS, ACTION_MASK, INSTRUCTION})
    if taken:
        raise DatasetError(f"{robot.summary()}: {taken} would collide with the training batch's own keys "
                           f"{[ACTIONS, ACTION_MASK, INSTRUCTION]}; rename the camera or state.key")
    return keys


def robot_differences(a: RobotDescription, b: RobotDescription) -> list[str]:
    """Dotted names of the description fields that differ (``cameras``, ``action.low``, ...)."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for key in sorted(set(da) | set(db)):
        va, vb = da.get(key), db.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key != "extra":
            out += [f"{key}.{k}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
        elif va != vb:
            out.append(key)
    return out


def require_same_robot(expected: RobotDescription, got: RobotDescription, what: str, other_what: str,
                       hint: str = "", ignore: tuple[str, ...] = ()) -> None:
    """Raise :class:`DatasetRobotMismatch` naming both descriptions unless they are equal (but for the
    dotted fields in ``ignore``)."""
    diff = [d for d in robot_differences(expected, got) if d not in ignore]
    if diff:
        raise DatasetRobotMismatch(f"{what} is for {expected.summary()}, but {other_what} is for {got.summary()} "
                                   f"(differing fields: {', '.join(diff)}){hint}")


def robot_option(spec: str, where: str = "data.robot") -> RobotDescription:
    """The description ``data.robot`` names (a built-in name or a file), errors naming the option."""
    from roboflamingo.robots import load_robot

    try:
        return load_robot(spec)
    except ValueError as e:
        raise DatasetError(f"{where}={spec}: {e}") from e


def require_robot_option(spec: str | None, robot: RobotDescription, where: str) -> None:
    """When ``data.robot`` is set, the dataset at ``where`` must be for a robot of its shapes."""
    if not spec:
        return
    try:
        robot_option(spec).require_compatible(robot, f"data.robot={spec}", f"the dataset {where}")
    except RobotMismatch as e:
        raise DatasetRobotMismatch(str(e)) from e


def read_split_robot(split_dir: str | os.PathLike) -> RobotDescription:
    """The description in ``<split_dir>/robot.json``; CALVIN's when there is none."""
    from roboflamingo.robots import read_dataset_robot

    try:
        robot = read_dataset_robot(split_dir)
    except ValueError as e:  # its message names the file and the field
        raise DatasetError(str(e)) from e
    try:
        frame_keys(robot)
    except DatasetError as e:
        raise DatasetError(f"{Path(split_dir) / ROBOT_FILE}: {e}") from e
    return robot


def frame_path(split_dir: str | os.PathLike, frame_id: int) -> Path:
    return Path(split_dir) / f"episode_{int(frame_id):07d}.npz"


@dataclass
class SplitIndex:
    """The cheap, fully validated part of a split: episodes and language-annotated segments."""

    split_dir: Path
    episodes: np.ndarray  # int64 (N, 2) inclusive [start, end], sorted by start
    segments: np.ndarray  # int64 (M, 2) inclusive [start, end] of each annotation
    instructions: list[str]  # (M,) the annotation sentence of each segment
    tasks: list[str]  # (M,) the task name of each segment
    robot: RobotDescription = field(default_factory=calvin_robot)  # the split's robot.json, else CALVIN's

    def frame_ids(self) -> np.ndarray:
        """Sorted unique ids of every frame inside some annotated segment (what the reader touches)."""
        if len(self.segments) == 0:
            return np.zeros(0, dtype=np.int64)
        lo, hi = int(self.segments[:, 0].min()), int(self.segments[:, 1].max())
        covered = np.zeros(hi - lo + 2, dtype=np.int32)
        np.add.at(covered, self.segments[:, 0] - lo, 1)
        np.add.at(covered, self.segments[:, 1] - lo + 1, -1)
        return np.flatnonzero(np.cumsum(covered)[:-1] > 0).astype(np.int64) + lo


def _load_npy(path: Path, pickled: bool = False) -> np.ndarray:
    """``pickled``: the file may hold an object array, unpickled only as plain data (``safe_pickle``)."""
    from roboflamingo.data.safe_pickle import RefusedGlobal, load_pickled_npy

    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        return load_pickled_npy(path) if pickled else np.load(path, allow_pickle=False)
    except RefusedGlobal as e:
        raise DatasetError(f"{path}: {e}") from e
    except Exception as e:  # numpy raises several types for truncated or foreign files
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def load_episodes(split_dir: Path) -> np.ndarray:
    path = split_dir / EP_START_END
    ids = _load_npy(path)
    if ids.ndim != 2 or ids.shape[1] != 2 or ids.shape[0] == 0:
        raise DatasetError(f"{path}: expected an (N, 2) array of [start, end] frame ids, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise DatasetError(f"{path}: expected integer frame ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = np.flatnonzero((ids[:, 0] > ids[:, 1]) | (ids[:, 0] < 0))
    if len(bad):
        raise DatasetError(f"{path}: row {bad[0]} = {ids[bad[0]].tolist()} is not a valid [start, end] (start <= end, >= 0)")
    return ids[np.argsort(ids[:, 0], kind="stable")]


def _field(container: object, key: str, path: Path, where: str) -> object:
    if not isinstance(container, dict) or key not in container:
        raise DatasetError(f"{path}: missing field '{where}{key}'")
    return container[key]


def load_annotations(split_dir: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(segments (M, 2) int64, instructions, tasks) from auto_lang_ann.npy, structure-checked."""
    path = split_dir / LANG_ANN
    raw = _load_npy(path, pickled=True)  # CALVIN stores a pickled dict; it is read as plain data only
    if raw.dtype != object or raw.shape != ():
        raise DatasetError(f"{path}: expected a pickled dict (an object array of shape ()), got {raw.dtype} {raw.shape}")
    ann = raw.item()
    language = _field(ann, "language", path, "")
    info = _field(ann, "info", path, "")
    sentences = _field(language, "ann", path, "language.")
    tasks = _field(language, "task", path, "language.")
    indx = _field(info, "indx", path, "info.")
    n = len(indx)
    for name, values in (("language.ann", sentences), ("language.task", tasks)):
        if len(values) != n:
            raise DatasetError(f"{path}: field '{name}' has {len(values)} entries but info.indx has {n}")
    for i, s in enumerate(sentences):
        if not isinstance(s, str) or not s.strip():
            raise DatasetError(f"{path}: language.ann[{i}] must be a non-empty string, got {s!r}")
    try:
        segments = np.asarray([tuple(int(v) for v in pair) for pair in indx], dtype=np.int64).reshape(n, 2)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: info.indx must be a list of (start, end) frame-id pairs ({e})") from e
    bad = np.flatnonzero(segments[:, 0] > segments[:, 1])
    if len(bad):
        raise DatasetError(f"{path}: info.indx[{bad[0]}] = {segments[bad[0]].tolist()} has start > end")
    return segments, [str(s) for s in sentences], [str(t) for t in tasks]


def _check_segments_in_episodes(split_dir: Path, segments: np.ndarray, episodes: np.ndarray) -> None:
    if len(segments) == 0:
        return
    k = np.searchsorted(episodes[:, 0], segments[:, 0], side="right") - 1
    inside = k >= 0
    inside[inside] &= segments[inside, 1] <= episodes[k[inside], 1]
    bad = np.flatnonzero(~inside)
    if len(bad):
        i = bad[0]
        raise DatasetError(
            f"{split_dir / LANG_ANN}: info.indx[{i}] = {segments[i].tolist()} is not inside any episode of "
            f"{split_dir / EP_START_END} ({len(bad)} of {len(segments)} annotations are outside)"
        )


def _check_files_present(index: SplitIndex) -> None:
    """Every frame an annotation needs exists: one directory listing, no per-file stat."""
    needed = index.frame_ids()
    if len(needed) == 0:
        return
    with os.scandir(index.split_dir) as it:
        matches = (_FRAME_RE.match(entry.name) for entry in it)
        present = np.fromiter((int(m.group(1)) for m in matches if m), dtype=np.int64)
    missing = needed[~np.isin(needed, present)]
    if len(missing):
        f = int(missing[0])
        seg = int(np.flatnonzero((index.segments[:, 0] <= f) & (index.segments[:, 1] >= f))[0])
        raise DatasetError(
            f"{frame_path(index.split_dir, f)}: frame file is missing (needed by {LANG_ANN} info.indx[{seg}] = "
            f"{index.segments[seg].tolist()}; {len(missing)} of {len(needed)} needed frames are missing)"
        )


def load_split_index(split_dir: str | os.PathLike, check_files: bool = True) -> SplitIndex:
    """Read and fully validate the index files of a split; optionally check frame files exist."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: split directory does not exist")
    episodes = load_episodes(split_dir)
    segments, sentences, tasks = load_annotations(split_dir)
    _check_segments_in_episodes(split_dir, segments, episodes)
    index = SplitIndex(split_dir, episodes, segments, sentences, tasks, read_split_robot(split_dir))
    if check_files:
        _check_files_present(index)
    return index


def check_array(path: Path | str, key: str, value: np.ndarray, image_shape: tuple[int, ...] | None = None,
                robot: RobotDescription | None = None) -> None:
    """Raise a DatasetError naming ``path`` and ``key`` when one frame's field is malformed (shapes
    from ``robot``, CALVIN's by default)."""
    robot = robot or calvin_robot()
    if key in robot.camera_names:
        if value.ndim != 3 or value.shape[-1] != 3:
            raise DatasetError(f"{path}: field '{key}' must be an (H, W, 3) image, got shape {value.shape}")
        if image_shape is not None and value.shape != image_shape:
            raise DatasetError(f"{path}: field '{key}' has shape {value.shape}, other frames have {image_shape}")
        if value.dtype != np.uint8:
            raise DatasetError(f"{path}: field '{key}' must be uint8, got {value.dtype}")
        return
    dims = {robot.state.key: robot.state.dim, robot.action.key: robot.action.dim}
    if key not in dims:
        raise DatasetError(f"{path}: field '{key}' is none of the frame keys {list(frame_keys(robot))} of {robot.summary()}")
    dim = dims[key]
    if value.shape != (dim,):
        raise DatasetError(f"{path}: field '{key}' must have shape ({dim},), got {value.shape}")
    if not np.issubdtype(value.dtype, np.floating):
        raise DatasetError(f"{path}: field '{key}' must be floating point, got {value.dtype}")
    if not np.all(np.isfinite(value)):
        raise DatasetError(f"{path}: field '{key}' contains NaN or inf: {value.tolist()}")
    # Training reads float32: a finite float64 beyond its range (1e39) would become inf there.
    if np.any(np.abs(value) > np.finfo(np.float32).max):
        raise DatasetError(f"{path}: field '{key}' has values beyond float32's range: {value.tolist()}")
    check_values(path, key, value[None])


def check_values(
    path: Path | str, key: str, values: np.ndarray, first_row: int = 0, frame_ids: np.ndarray | None = None,
    locate: Callable[[int], tuple[Path | str, int]] | None = None,
) -> None:
    """Rows of a vector field (robot_obs, rel_actions) must be finite and sane; else a DatasetError
    naming ``path``, the field, the row (and its frame id when ``frame_ids`` gives them) and entry.
    ``locate(i)``: the file and row that hold row ``i`` of ``values``, when they span several files.

    Sane: every ``|value| <= MAX_ABS_VALUE``, and with ``RELATIVE_MIN_ROWS`` rows or more, every
    ``|value| <= RELATIVE_FACTOR * max(RELATIVE_FLOOR, 90th percentile of |its column|)``. This is
    the one place a per-robot bounds check (the robot description's action/state ranges) extends.
    """
    values = np.asarray(values).reshape(len(values), -1)

    def fail(bad: np.ndarray, why: str) -> None:
        row, col = (int(i) for i in np.argwhere(bad)[0])
        frame = f", in frame {int(frame_ids[row])}" if frame_ids is not None else ""
        where, at = locate(row) if locate is not None else (path, first_row + row)
        raise DatasetError(
            f"{where}: field '{key}' row {at} entry {col} is {values[row, col]:g}{why}{frame} "
            f"({int(bad.sum())} of the {values.size} values checked fail this check)"
        )

    bad = ~np.isfinite(values)
    if bad.any():
        fail(bad, " (NaN or inf)")
    magnitude = np.abs(values.astype(np.float64))
    bad = magnitude > MAX_ABS_VALUE
    if bad.any():
        fail(bad, f", beyond the sane magnitude {MAX_ABS_VALUE:g} (layout.MAX_ABS_VALUE)")
    if len(values) >= RELATIVE_MIN_ROWS:
        limit = RELATIVE_FACTOR * np.maximum(RELATIVE_FLOOR, np.quantile(magnitude, 0.9, axis=0))
        bad = magnitude > limit
        if bad.any():
            col = int(np.argwhere(bad)[0][1])
            fail(bad, f", more than {RELATIVE_FACTOR:g} x its column's typical magnitude "
                      f"(90th percentile {limit[col] / RELATIVE_FACTOR:g}; layout.check_values)")


def read_frame(
    path: Path, keys: Iterable[str] | None = None, image_shapes: dict[str, tuple[int, ...]] | None = None,
    robot: RobotDescription | None = None,
) -> dict[str, np.ndarray]:
    """Load and check the given fields (default: all of ``frame_keys(robot)``; CALVIN's robot by
    default) of one ``episode_XXXXXXX.npz`` (only those are decompressed)."""
    robot = robot or calvin_robot()
    keys = frame_keys(robot) if keys is None else keys
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in keys:
                if key not in z.files:
                    raise DatasetError(f"{path}: missing field '{key}' (the file has {sorted(z.files)})")
                out[key] = z[key]
    except DatasetError:
        raise
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: frame file is missing") from e
    except Exception as e:  # zipfile/zlib/numpy raise many types for damaged files
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    for key, value in out.items():
        check_array(path, key, value, (image_shapes or {}).get(key), robot)
    return out


def probe_image_shapes(index: SplitIndex) -> dict[str, tuple[int, ...]]:
    """(H, W, 3) of each camera, from the first annotated frame; also checks that frame completely."""
    ids = index.frame_ids()
    if len(ids) == 0:
        raise DatasetError(f"{index.split_dir / LANG_ANN}: no language annotations (info.indx is empty)")
    frame = read_frame(frame_path(index.split_dir, int(ids[0])), robot=index.robot)
    return {key: tuple(frame[key].shape) for key in index.robot.camera_names}


def validate_split(split_dir: str | os.PathLike, progress: bool = False) -> SplitIndex:
    """The full pass: index files, then every field of every frame an annotation needs."""
    from tqdm import tqdm

    index = load_split_index(split_dir, check_files=True)
    shapes = probe_image_shapes(index)
    ids = index.frame_ids()
    for f in tqdm(ids, desc=f"validate {index.split_dir.name}", unit="frame", disable=not progress):
        read_frame(frame_path(index.split_dir, int(f)), None, shapes, index.robot)
    return index
