"""Normalization statistics handed to the policy (``RoboFlamingoPolicy.set_normalization``).

``compute_normalization(split_dir)`` returns float32 numpy arrays, sized by the split's robot
description (CALVIN: action 7, state 15)::

    action_mean (action dim), action_std (action dim), robot_obs_mean (state dim), robot_obs_std (state dim)

(the state's keep the name ``robot_obs_*`` whatever the robot's ``state.key``: the policy's buffers
are named so).

Actions: the regressed dims are the description's ``action.continuous`` (CALVIN: the 6 pose
entries). CALVIN's ``rel_actions`` are already scaled and clipped to [-1, 1] by the dataset itself
(and the policy's tanh output matches that range), so when every sampled continuous entry lies in
[-1, 1] the action statistics are the identity (mean 0, std 1). Datasets with other action scales
(absolute joint positions, say) get their measured mean and std, as does any dataset with
``force_action_stats=True``. Binary gripper dims (``action.grippers``; CALVIN's index 6, always +-1)
are left at mean 0, std 1.

State: from the split's ``statistics.yaml`` when it has them under the state key (CALVIN's are
computed over all play data), else measured on the annotated frames (evenly subsampled to
``max_frames``). Angle entries (the description's ``state.angles``) are always measured on the
frames, as their circular mean and the std of each frame's offset from it wrapped into [-pi, pi]: a
linear mean of a roll that sits at +-pi is ~0, far from every frame (the policy wraps the same way,
``models/normalization.py``). Frames are read from packed shards when they exist (instant), else from the npz
files (~2 ms each).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from roboflamingo.data.layout import (
    EP_START_END,
    STATISTICS,
    DatasetError,
    calvin_robot,
    check_values,
    frame_path,
    load_split_index,
    read_frame,
)
from roboflamingo.robot import RobotDescription
from roboflamingo.types import wrap_angle

STATS_KEYS = ("action_mean", "action_std", "robot_obs_mean", "robot_obs_std")
_MIN_STD = 1e-6


def read_statistics_yaml(path: str | os.PathLike, robot: RobotDescription | None = None) -> dict[str, np.ndarray] | None:
    """State mean/std from a statistics.yaml in CALVIN's format (``robot_obs: [{mean, std, ...}]``,
    under the robot's ``state.key``; CALVIN's robot by default), if present."""
    import yaml

    robot = robot or calvin_robot()
    key, dim = robot.state.key, robot.state.dim
    path = Path(path)
    if not path.is_file():
        return None
    try:
        stats = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({e})") from e
    entry = stats.get(key) if isinstance(stats, dict) else None
    if entry is None:
        return None
    if isinstance(entry, list):  # CALVIN wraps the NormalizeVector transform in a list
        entry = next((e for e in entry if isinstance(e, dict) and "mean" in e), None)
    if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
        raise DatasetError(f"{path}: field '{key}' must hold 'mean' and 'std' lists")
    out = {}
    for stat in ("mean", "std"):
        value = np.asarray(entry[stat], dtype=np.float64)
        if value.shape != (dim,) or not np.all(np.isfinite(value)):
            raise DatasetError(f"{path}: field '{key}.{stat}' must be {dim} finite numbers, got {entry[stat]}")
        out[stat] = value
    if np.any(out["std"] < 0):
        raise DatasetError(f"{path}: field '{key}.std' must be >= 0")
    return out


def _sample_frames(split_dir: Path, max_frames: int, packed_dir: Path | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, RobotDescription]:
    """(state, action, frame ids, robot) of up to ``max_frames`` evenly spaced annotated frames."""
    # A LeRobot split has no CALVIN index files; its packed copy carries them.
    calvin = (split_dir / EP_START_END).is_file() or packed_dir is None
    index = load_split_index(split_dir if calvin else packed_dir, check_files=False)
    state, action = index.robot.state.key, index.robot.action.key
    ids = index.frame_ids()
    if len(ids) == 0:
        raise DatasetError(f"{split_dir}: no annotated frames to compute statistics from")
    pick = np.unique(np.linspace(0, len(ids) - 1, min(max_frames, len(ids))).round().astype(np.int64))
    if packed_dir is not None and (packed_dir / "manifest.json").is_file():
        from roboflamingo.data.packed import PackedSplit

        packed = PackedSplit(packed_dir, index, split_dir if calvin else None)
        # Whole-field reads are fine: the state and action are ~100 bytes a frame.
        obs = packed.read(state, 0, len(ids))[pick]
        act = packed.read(action, 0, len(ids))[pick]
        return obs.astype(np.float64), act.astype(np.float64), ids[pick], index.robot
    frames = [read_frame(frame_path(split_dir, int(ids[i])), (state, action), robot=index.robot) for i in pick]
    # Through float32 like the packed arrays and the training batches, so both paths agree exactly.
    obs = np.stack([f[state] for f in frames]).astype(np.float32).astype(np.float64)
    act = np.stack([f[action] for f in frames]).astype(np.float32).astype(np.float64)
    return obs, act, ids[pick], index.robot


def _split_robot(split_dir: Path, packed_dir: Path | None) -> RobotDescription:
    """The description of a split as ``_sample_frames`` will read it (without reading frames)."""
    from roboflamingo.data.layout import read_split_robot

    calvin = (split_dir / EP_START_END).is_file() or packed_dir is None
    return read_split_robot(split_dir if calvin else packed_dir)


def _columns(dims: tuple[int, ...]) -> slice | list[int]:
    # A run of dims as a slice: the same view (and so the same float sums) as before descriptions.
    if dims and dims == tuple(range(dims[0], dims[-1] + 1)):
        return slice(dims[0], dims[-1] + 1)
    return list(dims)


def circular_stats(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(circular mean, std of the offsets from it wrapped into [-pi, pi]) of angle columns (N, K)."""
    mean = np.arctan2(np.sin(angles).mean(axis=0), np.cos(angles).mean(axis=0))
    offset = wrap_angle(angles - mean)
    return mean, np.sqrt((offset**2).mean(axis=0) - offset.mean(axis=0) ** 2).clip(min=0)


def _safe_std(std: np.ndarray) -> np.ndarray:
    # A constant dimension (e.g. an unused joint) would divide by zero; leave it unscaled.
    return np.where(std < _MIN_STD, 1.0, std)


def compute_normalization(
    split_dir: str | os.PathLike,
    *,
    force_action_stats: bool = False,
    max_frames: int = 5000,
    packed_dir: str | os.PathLike | None = None,
    use_statistics_yaml: bool = True,
) -> dict[str, np.ndarray]:
    """Normalization stats of a (training) split; see the module docstring for the rules."""
    split_dir = Path(split_dir)
    packed = Path(packed_dir) if packed_dir is not None else split_dir / "packed"
    # The description decides what is read; the yaml, if any, is read with it below.
    robot = _split_robot(split_dir, packed)
    from_yaml = read_statistics_yaml(split_dir / STATISTICS, robot) if use_statistics_yaml else None
    # With state stats from the yaml, frames only serve the action range check: fewer will do
    # (an unpacked CALVIN split costs ~2 ms per npz file opened).
    obs, act, ids, robot = _sample_frames(split_dir, max_frames if from_yaml is None else min(max_frames, 1000), packed)
    # The readers refuse non-finite and absurd frames already; this guards the place where one would
    # hide (NaN > 1 is False, so the range test below would pass it and the mean would become NaN), and
    # sees the sampled frames together, so a value absurd only beside its column is caught here too.
    for key, values in ((robot.state.key, obs), (robot.action.key, act)):
        check_values(split_dir, key, values, frame_ids=ids)
    cont = _columns(robot.action.continuous)
    pose = act[:, cont]
    action_mean = np.zeros(robot.action.dim)
    action_std = np.ones(robot.action.dim)
    if pose.size and (force_action_stats or np.abs(pose).max() > 1.0 + 1e-6):
        action_mean[cont] = pose.mean(axis=0)
        action_std[cont] = _safe_std(pose.std(axis=0))
    if from_yaml is not None:
        obs_mean, obs_std = from_yaml["mean"].copy(), from_yaml["std"].copy()
    else:
        obs_mean, obs_std = obs.mean(axis=0), obs.std(axis=0)
    angles = list(robot.state.angles)
    if angles:
        obs_mean[angles], obs_std[angles] = circular_stats(obs[:, angles])
    stats = {
        "action_mean": action_mean,
        "action_std": action_std,
        "robot_obs_mean": obs_mean,
        "robot_obs_std": _safe_std(obs_std),
    }
    out = {key: np.asarray(stats[key], dtype=np.float32) for key in STATS_KEYS}
    for key, value in out.items():
        if not np.all(np.isfinite(value)):  # e.g. a std that overflows float32
            raise DatasetError(f"{split_dir}: normalization statistic '{key}' is not finite: {value.tolist()}")
    return out
