"""Normalization statistics handed to the policy (``RoboFlamingoPolicy.set_normalization``).

``compute_normalization(split_dir)`` returns float32 numpy arrays::

    action_mean (7), action_std (7), robot_obs_mean (15), robot_obs_std (15)

Actions: CALVIN's ``rel_actions`` are already scaled and clipped to [-1, 1] by the dataset itself
(and the policy's tanh output matches that range), so when every sampled pose entry lies in
[-1, 1] the action statistics are the identity (mean 0, std 1). Datasets with other action scales
get their measured mean and std, as does any dataset with ``force_action_stats=True``. The gripper
entry (index 6, always +-1) is left at mean 0, std 1.

robot_obs: from the split's ``statistics.yaml`` when it has them (CALVIN's are computed over all
play data), else measured on the annotated frames (evenly subsampled to ``max_frames``). Frames are
read from packed shards when they exist (instant), else from the npz files (~2 ms each).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from roboflamingo.data.layout import (
    EP_START_END,
    REL_ACTIONS,
    STATISTICS,
    DatasetError,
    check_values,
    frame_path,
    load_split_index,
    read_frame,
)
from roboflamingo.types import ACTION_DIM, GRIPPER_INDEX, ROBOT_OBS, ROBOT_OBS_DIM

STATS_KEYS = ("action_mean", "action_std", "robot_obs_mean", "robot_obs_std")
_MIN_STD = 1e-6


def read_statistics_yaml(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """robot_obs mean/std from CALVIN's statistics.yaml (``robot_obs: [{mean, std, ...}]``), if present."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return None
    try:
        stats = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({e})") from e
    entry = stats.get(ROBOT_OBS) if isinstance(stats, dict) else None
    if entry is None:
        return None
    if isinstance(entry, list):  # CALVIN wraps the NormalizeVector transform in a list
        entry = next((e for e in entry if isinstance(e, dict) and "mean" in e), None)
    if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
        raise DatasetError(f"{path}: field '{ROBOT_OBS}' must hold 'mean' and 'std' lists")
    out = {}
    for key in ("mean", "std"):
        value = np.asarray(entry[key], dtype=np.float64)
        if value.shape != (ROBOT_OBS_DIM,) or not np.all(np.isfinite(value)):
            raise DatasetError(f"{path}: field '{ROBOT_OBS}.{key}' must be {ROBOT_OBS_DIM} finite numbers, got {entry[key]}")
        out[key] = value
    if np.any(out["std"] < 0):
        raise DatasetError(f"{path}: field '{ROBOT_OBS}.std' must be >= 0")
    return out


def _sample_frames(
    split_dir: Path, max_frames: int, packed_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(robot_obs, rel_actions, frame ids) of up to ``max_frames`` evenly spaced annotated frames."""
    # A LeRobot split has no CALVIN index files; its packed copy carries them.
    calvin = (split_dir / EP_START_END).is_file() or packed_dir is None
    index = load_split_index(split_dir if calvin else packed_dir, check_files=False)
    ids = index.frame_ids()
    if len(ids) == 0:
        raise DatasetError(f"{split_dir}: no annotated frames to compute statistics from")
    pick = np.unique(np.linspace(0, len(ids) - 1, min(max_frames, len(ids))).round().astype(np.int64))
    if packed_dir is not None and (packed_dir / "manifest.json").is_file():
        from roboflamingo.data.packed import PackedSplit

        packed = PackedSplit(packed_dir, index, split_dir if calvin else None)
        # Whole-field reads are fine: robot_obs and rel_actions are 88 bytes a frame.
        obs = packed.read(ROBOT_OBS, 0, len(ids))[pick]
        act = packed.read(REL_ACTIONS, 0, len(ids))[pick]
        return obs.astype(np.float64), act.astype(np.float64), ids[pick]
    frames = [read_frame(frame_path(split_dir, int(ids[i])), (ROBOT_OBS, REL_ACTIONS)) for i in pick]
    # Through float32 like the packed arrays and the training batches, so both paths agree exactly.
    obs = np.stack([f[ROBOT_OBS] for f in frames]).astype(np.float32).astype(np.float64)
    act = np.stack([f[REL_ACTIONS] for f in frames]).astype(np.float32).astype(np.float64)
    return obs, act, ids[pick]


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
    from_yaml = read_statistics_yaml(split_dir / STATISTICS) if use_statistics_yaml else None
    # With robot_obs stats from the yaml, frames only serve the action range check: fewer will do
    # (an unpacked CALVIN split costs ~2 ms per npz file opened).
    obs, act, ids = _sample_frames(split_dir, max_frames if from_yaml is None else min(max_frames, 1000), packed)
    # The readers refuse non-finite and absurd frames already; this guards the place where one would
    # hide (NaN > 1 is False, so the range test below would pass it and the mean would become NaN), and
    # sees the sampled frames together, so a value absurd only beside its column is caught here too.
    for key, values in ((ROBOT_OBS, obs), (REL_ACTIONS, act)):
        check_values(split_dir, key, values, frame_ids=ids)
    pose = act[:, :GRIPPER_INDEX]
    action_mean = np.zeros(ACTION_DIM)
    action_std = np.ones(ACTION_DIM)
    if force_action_stats or np.abs(pose).max() > 1.0 + 1e-6:
        action_mean[:GRIPPER_INDEX] = pose.mean(axis=0)
        action_std[:GRIPPER_INDEX] = _safe_std(pose.std(axis=0))
    if from_yaml is not None:
        obs_mean, obs_std = from_yaml["mean"], from_yaml["std"]
    else:
        obs_mean, obs_std = obs.mean(axis=0), obs.std(axis=0)
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
