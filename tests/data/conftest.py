"""Fixtures: small CALVIN-layout splits, a fresh copy in each test's tmp_path.

Each layout is written once per session and copied (tests edit, truncate and delete its files):
writing the compressed noise frames costs far more than copying them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.data.config import DataConfig
from roboflamingo.data.layout import frame_path
from roboflamingo.data.synthetic import make_frame, write_split, write_tiny_dataset

STATIC = (24, 20)  # deliberately not square, to catch H/W mix-ups
GRIPPER = (12, 12)
# Two episodes; segments of several lengths, one overlapping another, one ending on an episode end.
EPISODES = [(0, 39), (40, 69)]
ANNOTATIONS = [
    (0, 9, "open_drawer", "open the drawer"),
    (5, 20, "close_drawer", "close the drawer"),
    (22, 39, "open_drawer", "pull the handle to open the drawer"),
    (40, 43, "turn_on_led", "too short for a window"),
    (50, 69, "lift_red_block_table", "lift the red block"),
]


def write_fixture_split(split_dir: Path, episodes=EPISODES, annotations=ANNOTATIONS, seed: int = 0) -> Path:
    return write_split(split_dir, episodes, annotations, STATIC, GRIPPER, content="noise", seed=seed)


def rewrite_frame(split_dir: Path, frame_id: int, seed: int = 0, **changes) -> None:
    """Rewrite one frame with some fields replaced (value None removes the field)."""
    frame = make_frame(frame_id, STATIC, GRIPPER, "noise", seed)
    for key, value in changes.items():
        if value is None:
            frame.pop(key)
        else:
            frame[key] = value
    np.savez_compressed(frame_path(split_dir, frame_id), **frame)


@pytest.fixture(scope="session")
def pristine_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data_root")
    write_fixture_split(root / "training")
    write_fixture_split(root / "validation", EPISODES[:1], ANNOTATIONS[:3], seed=1)
    return root


@pytest.fixture(scope="session")
def pristine_tiny_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_root") / "tiny", frames_per_episode=40, image_size=16,
                              gripper_size=8)


@pytest.fixture
def root(tmp_path: Path, pristine_root: Path) -> Path:
    """A dataset root: the fixture layout as training, its first episode as validation."""
    shutil.copytree(pristine_root, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture
def cfg(root: Path) -> DataConfig:
    return DataConfig(root=str(root), window=5, act_steps=3, num_workers=0, batch_size=4)


@pytest.fixture
def tiny_root(tmp_path: Path, pristine_tiny_root: Path) -> Path:
    return Path(shutil.copytree(pristine_tiny_root, tmp_path / "tiny"))


@pytest.fixture
def make_split():
    """``make_split(split_dir, episodes=..., annotations=..., seed=0)`` writes a fixture split."""
    return write_fixture_split


@pytest.fixture
def edit_frame():
    """``edit_frame(split_dir, frame_id, key=value_or_None, ...)`` rewrites one frame file."""
    return rewrite_frame


@pytest.fixture
def layout():
    """The fixture constants (tests must not import conftest: other test folders have one too)."""
    return {"static": STATIC, "gripper": GRIPPER, "episodes": EPISODES, "annotations": ANNOTATIONS}
