"""Small synthetic datasets in CALVIN's exact layout, for tests and benchmarks (no simulator needed).

``write_split`` writes one split from explicit episodes and annotations; ``write_tiny_dataset``
writes a ready-to-train ``training``/``validation`` pair in seconds. Frames are content-addressed
by their id (a per-frame RNG), so two splits or two runs with the same arguments are identical.

By default the frames are CALVIN's (``make_frame``) and the split has no ``robot.json``; with
``robot=`` a description, frames have that robot's keys and shapes (``make_robot_frame``) and the
description is saved as the split's ``robot.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from roboflamingo.data.layout import EP_START_END, LANG_ANN, frame_path
from roboflamingo.io import atomic_save_npy, atomic_write_yaml
from roboflamingo.robot import ROBOT_FILE, RobotDescription
from roboflamingo.robots import calvin as T

TASKS = ("open_drawer", "close_drawer", "lift_red_block_table", "push_into_drawer", "turn_on_led")


def _image(rng: np.random.Generator, frame_id: int, size: tuple[int, int], content: str) -> np.ndarray:
    h, w = size
    if content == "noise":
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    # "scene": a smooth moving background, a few flat boxes and mild sensor noise, which compresses
    # about as well as a rendered tabletop frame.
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    phase = frame_id * 0.05
    img = np.empty((h, w, 3), dtype=np.float32)
    img[..., 0] = 96 + 64 * np.sin(x / w * 3.0 + phase)
    img[..., 1] = 96 + 64 * np.cos(y / h * 2.0 - phase)
    img[..., 2] = 128 + 32 * np.sin((x + y) / (h + w) * 4.0)
    for _ in range(3):
        y0, x0 = rng.integers(0, h - h // 5), rng.integers(0, w - w // 5)
        img[y0 : y0 + h // 6, x0 : x0 + w // 6] = rng.integers(0, 256, size=3)
    img += rng.integers(0, 4, size=(h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_frame(
    frame_id: int, static_size: tuple[int, int] = (T.STATIC_RES, T.STATIC_RES),
    gripper_size: tuple[int, int] = (T.GRIPPER_RES, T.GRIPPER_RES),
    content: str = "noise", seed: int = 0,
) -> dict[str, np.ndarray]:
    """One frame with every key CALVIN's npz files have that the stack uses."""
    rng = np.random.default_rng([seed, frame_id])
    rel = rng.uniform(-1.0, 1.0, size=T.ACTION_DIM)
    rel[T.GRIPPER_INDEX] = 1.0 if rng.random() < 0.5 else -1.0
    robot_obs = np.concatenate([rng.normal(0.0, 0.3, size=T.GRIPPER_ACTION), [rel[T.GRIPPER_INDEX]]])
    return {
        "rgb_static": _image(rng, frame_id, static_size, content),
        "rgb_gripper": _image(rng, frame_id, gripper_size, content),
        "robot_obs": robot_obs,
        "scene_obs": rng.normal(0.0, 0.1, size=T.SCENE_OBS_DIM),
        "actions": np.concatenate([robot_obs[T.TCP_POSE] + 0.01, [rel[T.GRIPPER_INDEX]]]),
        "rel_actions": rel,
    }


def make_robot_frame(
    robot: RobotDescription, frame_id: int, image_sizes: dict[str, tuple[int, int]] | None = None,
    content: str = "noise", seed: int = 0,
) -> dict[str, np.ndarray]:
    """One frame of ``robot``: an image per camera (its declared size unless ``image_sizes`` says
    otherwise), the state and the action. Continuous values lie inside the description's bounds
    (uniform where both are finite, else around 0); binary grippers are exactly close or open."""
    rng = np.random.default_rng([seed, frame_id])
    sizes = image_sizes or {}
    frame = {c.name: _image(rng, frame_id, sizes.get(c.name, (c.height, c.width)), content) for c in robot.cameras}

    def values(low: tuple[float, ...], high: tuple[float, ...]) -> np.ndarray:
        lo, hi = np.asarray(low), np.asarray(high)
        bounded = np.isfinite(lo) & np.isfinite(hi)
        out = rng.uniform(-1.0, 1.0, size=len(lo))
        out[bounded] = lo[bounded] + (out[bounded] + 1.0) / 2.0 * (hi[bounded] - lo[bounded])
        return np.clip(out, lo, hi)

    frame[robot.state.key] = values(robot.state.low, robot.state.high)
    action = values(robot.action.low, robot.action.high)
    a = robot.action
    for i in a.grippers:
        action[i] = a.open if rng.random() < 0.5 else a.close
    frame[a.key] = action
    return frame


def write_split(
    split_dir: str | os.PathLike,
    episodes: Sequence[tuple[int, int]],
    annotations: Sequence[tuple[int, int, str, str]],
    static_size: tuple[int, int] = (T.STATIC_RES, T.STATIC_RES),
    gripper_size: tuple[int, int] = (T.GRIPPER_RES, T.GRIPPER_RES),
    content: str = "noise",
    seed: int = 0,
    compress: bool = True,
    threads: int = 1,
    robot: RobotDescription | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """Write every frame of ``episodes`` (inclusive ranges) and ``annotations`` (start, end, task, sentence).

    ``robot``: frames of that robot (cameras at their declared sizes, or ``image_sizes``) and its
    description as ``robot.json``; ``static_size``/``gripper_size`` are for CALVIN's default frames.
    """
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compress else np.savez

    def write(f: int) -> None:
        if robot is None:
            frame = make_frame(f, static_size, gripper_size, content, seed)
        else:
            frame = make_robot_frame(robot, f, image_sizes, content, seed)
        save(frame_path(split_dir, f), **frame)

    ids = [f for start, end in episodes for f in range(start, end + 1)]
    if threads > 1:  # zlib and most of numpy release the GIL
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, ids))
    else:
        for f in ids:
            write(f)
    atomic_save_npy(split_dir / EP_START_END, np.asarray(episodes, dtype=np.int64).reshape(-1, 2))
    ann = {
        "language": {
            "ann": [a[3] for a in annotations],
            "task": [a[2] for a in annotations],
            "emb": np.zeros((len(annotations), 1, 384), dtype=np.float32),
        },
        "info": {"indx": [(int(a[0]), int(a[1])) for a in annotations], "episodes": []},
    }
    atomic_save_npy(split_dir / LANG_ANN, np.array(ann, dtype=object), allow_pickle=True)
    if robot is not None:
        robot.save(split_dir / ROBOT_FILE)
    return split_dir


def write_statistics(split_dir: str | os.PathLike, mean: Sequence[float], std: Sequence[float]) -> None:
    """A statistics.yaml in CALVIN's format (robot_obs only)."""
    target = "calvin_models.calvin_agent.utils.transforms.NormalizeVector"
    atomic_write_yaml(
        Path(split_dir) / "statistics.yaml",
        {"robot_obs": [{"_target_": target, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}]},
    )


def write_tiny_dataset(
    root: str | os.PathLike, frames_per_episode: int = 48, image_size: int = 32, gripper_size: int = 16, seed: int = 0,
    robot: RobotDescription | None = None,
) -> Path:
    """``root/{training,validation}``: 2 and 1 episodes, a 20-to-32-frame annotation every 12 frames.

    ``robot``: frames of that robot at its cameras' declared sizes (``image_size``/``gripper_size``
    size CALVIN's default frames only)."""
    root = Path(root)
    for split, n_episodes, first in (("training", 2, 0), ("validation", 1, 10_000)):
        episodes = [(first + k * frames_per_episode, first + (k + 1) * frames_per_episode - 1) for k in range(n_episodes)]
        annotations = []
        for k, (s, e) in enumerate(episodes):
            for j, start in enumerate(range(s, e - 19, 12)):
                task = TASKS[(k + j) % len(TASKS)]
                end = min(start + 19 + (j % 3) * 6, e)
                annotations.append((start, end, task, f"please {task.replace('_', ' ')} (v{j % 2})"))
        write_split(root / split, episodes, annotations, (image_size, image_size), (gripper_size, gripper_size), seed=seed,
                    robot=robot)
    return root
