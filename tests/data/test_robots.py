"""CALVIN-layout splits of robots other than CALVIN's: a robot.json in the split decides keys and shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.data.config import AugmentConfig, DataConfig
from roboflamingo.data.dataset import CalvinDataset, collate, sample_keys
from roboflamingo.data.layout import (
    DatasetError,
    DatasetRobotMismatch,
    frame_path,
    load_split_index,
    read_frame,
    validate_split,
)
from roboflamingo.data.pack import pack_split
from roboflamingo.data.packed import MANIFEST
from roboflamingo.data.stats import compute_normalization
from roboflamingo.data.synthetic import make_robot_frame, write_split
from roboflamingo.robot import ROBOT_FILE, RobotMismatch
from roboflamingo.robots import load_robot

# One camera, a binary gripper (LIBERO/Meta-World-like relative end-effector deltas).
ONE_CAMERA = load_robot({
    "name": "one_cam",
    "cameras": [{"name": "agentview", "height": 24, "width": 32}],
    "state": {"key": "state", "names": ["x", "y", "z", "gripper_width"]},
    "action": {"key": "action", "names": ["dx", "dy", "dz", "gripper"], "grippers": [3], "rate_hz": 20},
})
# Three cameras (one not square), absolute joint targets within bounds, the gripper as a position,
# keys of its own.
THREE_CAMERAS = load_robot({
    "name": "three_cam",
    "cameras": [{"name": "left", "height": 20, "width": 28}, {"name": "right", "height": 20, "width": 28},
                {"name": "wrist", "height": 16, "width": 16}],
    "state": {"key": "proprio", "names": [f"q{i}" for i in range(8)], "low": [-3.0] * 8, "high": [3.0] * 8},
    "action": {"key": "joint_targets", "names": [f"q{i}" for i in range(5)] + ["gripper"],
               "gripper_positions": [5], "mode": "absolute", "space": "joint", "rate_hz": 50,
               "low": [-100.0] * 5 + [0.0], "high": [100.0] * 6},
})
EPISODES = [(0, 29), (30, 49)]
ANNOTATIONS = [(0, 14, "a", "pick up the cube"), (10, 29, "b", "stack the cube"), (32, 49, "a", "pick it up")]
ROBOTS = pytest.mark.parametrize("robot", [ONE_CAMERA, THREE_CAMERAS], ids=["one_camera", "three_cameras"])


def _split(root: Path, robot, name: str = "training") -> Path:
    return write_split(root / name, EPISODES, ANNOTATIONS, content="scene", robot=robot)


@ROBOTS
def test_a_split_reads_with_its_robots_keys_and_shapes(tmp_path, robot):
    split = _split(tmp_path, robot)
    assert load_split_index(split).robot == robot and validate_split(split).robot == robot
    cfg = DataConfig(root=str(tmp_path), window=4, act_steps=3, num_workers=0, use_packed="never")
    ds = CalvinDataset(cfg, augment=False)
    assert ds.robot == robot
    sample = ds[0]
    assert tuple(sample) == sample_keys(robot) == (*robot.camera_names, robot.state.key, "actions", "action_mask",
                                                    "instruction")
    for cam in robot.cameras:
        assert sample[cam.name].shape == (4, 3, cam.height, cam.width) and sample[cam.name].dtype.is_floating_point is False
    assert sample[robot.state.key].shape == (4, robot.state.dim)
    assert sample["actions"].shape == (4, 3, robot.action.dim) and sample["action_mask"].shape == (4, 3)
    # The values are the frames' own: window 0 starts at frame 0.
    for t in range(4):
        frame = read_frame(frame_path(split, t), robot=robot)
        assert np.array_equal(sample[robot.state.key][t].numpy(), frame[robot.state.key].astype(np.float32))
        assert np.array_equal(sample["actions"][t, 0].numpy(), frame[robot.action.key].astype(np.float32))
        for cam in robot.camera_names:
            assert np.array_equal(sample[cam][t].numpy(), frame[cam].transpose(2, 0, 1))
    batch = collate([ds[0], ds[1]])
    assert batch[robot.state.key].shape == (2, 4, robot.state.dim) and batch["instruction"] == [sample["instruction"]] * 2
    resized = CalvinDataset(DataConfig(root=str(tmp_path), window=4, num_workers=0, image_size=16), augment=False)[0]
    assert all(resized[c].shape == (4, 3, 16, 16) for c in robot.camera_names)


@ROBOTS
def test_packed_shards_carry_the_description_and_give_the_same_samples(tmp_path, robot):
    split = _split(tmp_path, robot)
    packed = tmp_path / "packed" / "training"
    manifest = pack_split(split, packed, shard_frames=16, progress=False)
    assert manifest["robot"] == robot.to_dict()
    assert load_robot(packed / ROBOT_FILE) == robot
    assert sorted(manifest["fields"]) == sorted((*robot.camera_names, robot.state.key, robot.action.key))
    assert manifest["fields"][robot.action.key] == {"shape": [robot.action.dim], "dtype": "float32"}
    common = dict(root=str(tmp_path), window=4, act_steps=2, num_workers=0, packed_root=str(tmp_path / "packed"),
                  augment=AugmentConfig(color_jitter=True))
    npz = CalvinDataset(DataConfig(use_packed="never", **common), seed=3)
    fast = CalvinDataset(DataConfig(use_packed="always", **common), seed=3)
    assert fast.packed is not None and fast.robot == npz.robot == robot
    assert len(fast) == len(npz)
    for key in [(i, e) for i in (0, len(npz) // 2, len(npz) - 1) for e in (0, 1)]:
        a, b = npz[key], fast[key]
        assert list(a) == list(b)
        for name in a:
            same = a[name] == b[name] if name == "instruction" else np.array_equal(a[name].numpy(), b[name].numpy())
            assert same, (key, name)


@ROBOTS
def test_statistics_follow_the_description(tmp_path, robot):
    split = _split(tmp_path, robot)
    stats = compute_normalization(split)
    assert stats["action_mean"].shape == stats["action_std"].shape == (robot.action.dim,)
    assert stats["robot_obs_mean"].shape == stats["robot_obs_std"].shape == (robot.state.dim,)
    ids = load_split_index(split).frame_ids()
    acts = np.stack([read_frame(frame_path(split, int(f)), robot=robot)[robot.action.key] for f in ids])
    cont = list(robot.action.continuous)
    if np.abs(acts[:, cont]).max() > 1:
        # Absolute joint targets (-100..100): measured on every regressed dim, the gripper position included.
        assert np.allclose(stats["action_mean"][cont], acts[:, cont].astype(np.float32).mean(0), atol=1e-3)
        assert np.allclose(stats["action_std"][cont], acts[:, cont].astype(np.float32).std(0), rtol=1e-4)
    else:
        assert np.array_equal(stats["action_mean"][cont], np.zeros(len(cont)))
    for g in robot.action.grippers:  # binary grippers are classified, never normalized
        assert (stats["action_mean"][g], stats["action_std"][g]) == (0.0, 1.0)
    forced = compute_normalization(split, force_action_stats=True)
    assert np.allclose(forced["action_mean"][cont], acts[:, cont].astype(np.float32).mean(0), atol=1e-4)
    # A statistics.yaml keyed by the robot's own state key is read.
    (split / "statistics.yaml").write_text(
        f"{robot.state.key}:\n  mean: {[0.5] * robot.state.dim}\n  std: {[2.0] * robot.state.dim}\n")
    assert np.array_equal(compute_normalization(split)["robot_obs_std"], np.full(robot.state.dim, 2.0, np.float32))


def test_synthetic_frames_respect_bounds_and_binary_grippers():
    for f in range(20):
        frame = make_robot_frame(THREE_CAMERAS, f)
        a = frame[THREE_CAMERAS.action.key]
        assert np.all(a >= np.asarray(THREE_CAMERAS.action.low)) and np.all(a <= np.asarray(THREE_CAMERAS.action.high))
        assert frame["wrist"].shape == (16, 16, 3) and frame["left"].shape == (20, 28, 3)
        assert make_robot_frame(ONE_CAMERA, f)["action"][3] in (-1.0, 1.0)


def test_augmentation_pads_per_camera():
    aug = AugmentConfig()
    # CALVIN's numbers for CALVIN's cameras, whatever else is configured.
    assert aug.pad_px("rgb_static", 200, 200) == 10 and aug.pad_px("rgb_gripper", 84, 84) == 4
    # Another camera: a fraction of its declared shorter side, unless named in shift_px.
    assert aug.pad_px("front", 480, 640) == 24
    assert AugmentConfig(shift_px={"front": 7}).pad_px("front", 480, 640) == 7
    assert AugmentConfig(shift_fraction=0.0).pad_px("wrist", 480, 640) == 0
    with pytest.raises(ValueError, match="shift_fraction"):
        AugmentConfig(shift_fraction=0.6)


def test_shift_moves_every_camera_and_keeps_shapes(tmp_path):
    _split(tmp_path, THREE_CAMERAS)
    cfg = DataConfig(root=str(tmp_path), window=3, num_workers=0, augment=AugmentConfig(shift_fraction=0.2))
    plain, shifted = CalvinDataset(cfg, augment=False), CalvinDataset(cfg, augment=True)
    moved = {cam: 0 for cam in THREE_CAMERAS.camera_names}
    for i in range(10):
        a, b = plain[i], shifted[i]
        for cam in moved:
            assert a[cam].shape == b[cam].shape
            moved[cam] += int(not np.array_equal(a[cam].numpy(), b[cam].numpy()))
    assert all(n > 0 for n in moved.values()), moved


def test_collate_refuses_samples_of_two_robots(tmp_path):
    _split(tmp_path / "one", ONE_CAMERA)
    _split(tmp_path / "three", THREE_CAMERAS)
    a = CalvinDataset(DataConfig(root=str(tmp_path / "one"), window=3, num_workers=0))[0]
    b = CalvinDataset(DataConfig(root=str(tmp_path / "three"), window=3, num_workers=0))[0]
    with pytest.raises(ValueError, match="two robots in one batch"):
        collate([a, b])


def test_packed_split_refuses_a_description_changed_after_packing(tmp_path):
    split = _split(tmp_path, THREE_CAMERAS)
    pack_split(split, split / "packed", shard_frames=16, progress=False)
    renamed = THREE_CAMERAS.to_dict()
    renamed["action"]["names"] = [f"joint_{i}" for i in range(6)]
    (split / ROBOT_FILE).write_text(json.dumps(renamed))
    cfg = DataConfig(root=str(tmp_path), window=4, num_workers=0)
    with pytest.raises(DatasetRobotMismatch, match=r"differing fields: action.names.*re-run `roboflamingo pack`") as e:
        CalvinDataset(cfg)
    assert str(e.value).count("robot 'three_cam'") == 2 and isinstance(e.value, RobotMismatch)
    # Another robot altogether: both descriptions are named.
    ONE_CAMERA.save(split / ROBOT_FILE)
    with pytest.raises(DatasetRobotMismatch, match=r"packed split .*robot 'three_cam'.* split .*robot 'one_cam'"):
        CalvinDataset(cfg)


def test_data_robot_refuses_a_split_of_another_robot(tmp_path):
    write_split(tmp_path / "training", EPISODES, ANNOTATIONS, (24, 24), (12, 12))  # CALVIN's frames, no robot.json
    cfg = DataConfig(root=str(tmp_path), window=4, num_workers=0, robot="so101")
    with pytest.raises(DatasetRobotMismatch, match=r"data.robot=so101 is for robot 'so101'.*robot 'calvin'"):
        CalvinDataset(cfg)
    with pytest.raises(DatasetRobotMismatch, match="robot 'so101'"):
        pack_split(tmp_path / "training", tmp_path / "packed", progress=False, robot="so101")
    assert not (tmp_path / "packed" / MANIFEST).exists()
    assert CalvinDataset(DataConfig(root=str(tmp_path), window=4, num_workers=0, robot="calvin")).robot.name == "calvin"
    with pytest.raises(DatasetError, match="data.robot=no_such_robot: robot 'no_such_robot' is neither a built-in"):
        CalvinDataset(DataConfig(root=str(tmp_path), window=4, num_workers=0, robot="no_such_robot"))


def test_frames_that_do_not_fit_the_description_are_refused(tmp_path):
    split = write_split(tmp_path / "training", EPISODES, ANNOTATIONS, (24, 24), (12, 12))  # CALVIN's frames
    ONE_CAMERA.save(split / ROBOT_FILE)
    with pytest.raises(DatasetError, match=r"episode_0000000.npz: missing field 'agentview'"):
        CalvinDataset(DataConfig(root=str(tmp_path), window=4, num_workers=0))
    # Right keys, wrong state dimension.
    split = _split(tmp_path / "b", ONE_CAMERA)
    frame = make_robot_frame(ONE_CAMERA, 3)
    frame["state"] = np.zeros(5)
    np.savez_compressed(frame_path(split, 3), **frame)
    with pytest.raises(DatasetError, match=r"episode_0000003.npz: field 'state' must have shape \(4,\), got \(5,\)"):
        validate_split(split)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(cameras=[{"name": "actions", "height": 8, "width": 8}]),
         r"robot.json: robot 'one_cam' .* would collide with the training batch"),
        (lambda d: d["action"].update(key="agentview"), r"robot.json: .*camera names, state.key and action.key must all differ"),
        (lambda d: d.pop("state"), r"robot.json: robot description is missing field 'state'"),
        (lambda d: d["action"].update(grippers=[9]), r"robot.json: robot action.grippers \[9\] out of range"),
    ],
)
def test_a_bad_robot_json_is_refused_naming_the_file(tmp_path, edit, match):
    split = _split(tmp_path, ONE_CAMERA)
    d = ONE_CAMERA.to_dict()
    edit(d)
    (split / ROBOT_FILE).write_text(json.dumps(d))
    with pytest.raises(DatasetError, match=match):
        CalvinDataset(DataConfig(root=str(tmp_path), window=4, num_workers=0))
