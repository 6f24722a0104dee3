"""LeRobot v3 datasets of any robot: descriptions derived from meta/info.json, supplied by data.robot,
carried by our exports, checked on pack and on read; the SO-101 dataset LeRobot's own writer recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.data.config import DataConfig, LeRobotConfig
from roboflamingo.data.dataset import CalvinDataset
from roboflamingo.data.export_lerobot import Job, export_split
from roboflamingo.data.layout import DatasetError, DatasetRobotMismatch
from roboflamingo.data.lerobot import INFO_PATH, ROBOT_PATH, LeRobotSplit, lerobot_robot
from roboflamingo.data.pack import pack_split
from roboflamingo.data.stats import compute_normalization
from roboflamingo.data.synthetic import write_split
from roboflamingo.robots import load_robot

THREE_CAMERAS = load_robot({
    "name": "three_cam",
    "cameras": [{"name": "left", "height": 32, "width": 48}, {"name": "right", "height": 32, "width": 48},
                {"name": "wrist", "height": 16, "width": 16}],
    "state": {"key": "state", "names": ["j0", "j1", "j2", "grip"]},
    "action": {"key": "action", "names": ["d0", "d1", "d2", "gripper"], "grippers": [3], "mode": "relative",
               "space": "joint", "rate_hz": 30},
})
EPISODES = [(0, 23), (24, 43)]
ANNOTATIONS = [(0, 23, "a", "pick up the cube"), (26, 43, "b", "open the drawer")]
SO101_FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_so101"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A three-camera robot's split (robot.json inside) and its LeRobot export."""
    root = tmp_path_factory.mktemp("lerobot_robots")
    write_split(root / "src" / "training", EPISODES, ANNOTATIONS, content="scene", robot=THREE_CAMERAS)
    out = root / "out" / "training"
    export_split(Job(data=DataConfig(root=str(root / "src")), out=str(out), progress=False))
    return root / "src" / "training", out


def _copy(out: Path, dst: Path, edit_info=None, keep_robot: bool = True) -> Path:
    shutil.copytree(out, dst)
    if not keep_robot:
        (dst / ROBOT_PATH).unlink()
    if edit_info is not None:
        info = json.loads((dst / INFO_PATH).read_text())
        edit_info(info)
        (dst / INFO_PATH).write_text(json.dumps(info))
    return dst


def test_export_names_features_as_lerobot_does_and_keeps_the_description(exported):
    _, out = exported
    info = json.loads((out / INFO_PATH).read_text())
    feats = info["features"]
    assert [k for k, f in feats.items() if f["dtype"] == "video"] == [
        "observation.images.left", "observation.images.right", "observation.images.wrist"]
    assert feats["observation.images.left"]["shape"] == [32, 48, 3]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [4], "names": ["j0", "j1", "j2", "grip"]}
    assert feats["action"]["names"] == ["d0", "d1", "d2", "gripper"] and info["robot_type"] == "three_cam"
    assert load_robot(out / ROBOT_PATH) == THREE_CAMERAS
    ds = LeRobotSplit(out)
    assert ds.robot == THREE_CAMERAS and ds.index.robot == THREE_CAMERAS
    frame = next(ds.frames(0, 1))
    assert sorted(frame) == sorted(["left", "right", "wrist", "state", "action"])


@pytest.mark.slow
def test_packed_export_trains_on_the_same_windows_as_the_npz_split(exported, tmp_path):
    src, out = exported
    manifest = pack_split(out, tmp_path / "packed" / "training", shard_frames=16, progress=False, lerobot=LeRobotConfig())
    assert manifest["robot"] == THREE_CAMERAS.to_dict()
    common = dict(window=5, act_steps=2, num_workers=0)
    npz = CalvinDataset(DataConfig(root=str(src.parent), **common), augment=False)
    lr = CalvinDataset(DataConfig(root=str(out.parent), format="lerobot", packed_root=str(tmp_path / "packed"),
                                  **common), augment=False)
    assert lr.robot == npz.robot == THREE_CAMERAS and len(lr) == len(npz)
    for i in range(0, len(npz), 5):
        a, b = npz[i], lr[i]
        assert a["instruction"] == b["instruction"]
        for key in ("state", "actions", "action_mask"):
            assert np.array_equal(a[key].numpy(), b[key].numpy()), key
        for cam in THREE_CAMERAS.camera_names:
            assert psnr(a[cam].numpy(), b[cam].numpy()) >= 35.0, cam
    stats = compute_normalization(out, packed_dir=tmp_path / "packed" / "training")
    assert stats["action_mean"].shape == (4,) and stats["robot_obs_mean"].shape == (4,)


def test_a_description_is_derived_from_info_json(exported, tmp_path):
    _, out = exported
    bare = _copy(out, tmp_path / "bare", keep_robot=False)
    robot = LeRobotSplit(bare).robot
    assert robot.camera_names == ("left", "right", "wrist")
    assert [(c.height, c.width) for c in robot.cameras] == [(32, 48), (32, 48), (16, 16)]
    assert (robot.state.key, robot.state.names) == ("state", ("j0", "j1", "j2", "grip"))
    assert (robot.action.key, robot.action.names) == ("action", ("d0", "d1", "d2", "gripper"))
    # info.json cannot say what the action means: relative end-effector deltas are assumed and said so.
    assert (robot.action.mode, robot.action.space, robot.action.grippers) == ("relative", "end_effector", ())
    assert "relative end-effector" in robot.extra["assumed"] and robot.action.rate_hz == 30
    # data.robot supplies it, and the result is the exported robot again.
    THREE_CAMERAS.save(tmp_path / "three.json")
    assert LeRobotSplit(bare, robot=str(tmp_path / "three.json")).robot == THREE_CAMERAS
    # Picking and ordering cameras, renaming one.
    two = LeRobotSplit(bare, LeRobotConfig(cameras=["wrist", "left"])).robot
    assert two.camera_names == ("wrist", "left")
    renamed = LeRobotSplit(bare, LeRobotConfig(cameras=["front"], camera_features={"front": "observation.images.left"}))
    assert renamed.robot.camera_names == ("front",) and next(renamed.frames(0, 1))["front"].shape == (32, 48, 3)
    # No names in info.json (LeRobot writes null when the recorder gave none): generated ones.
    nameless = LeRobotSplit(_copy(out, tmp_path / "nameless", lambda i: i["features"]["action"].update(names=None),
                                  keep_robot=False)).robot
    assert nameless.action.names == ("action_0", "action_1", "action_2", "action_3")


def test_motor_position_names_mean_absolute_joint_targets(exported, tmp_path):
    _, out = exported
    names = ["shoulder.pos", "elbow.pos", "wrist.pos", "gripper.pos"]
    ds = _copy(out, tmp_path / "pos", lambda i: i["features"]["action"].update(names=names), keep_robot=False)
    action = lerobot_robot(ds).action
    assert (action.mode, action.space, action.gripper_positions, action.grippers) == ("absolute", "joint", (3,), ())


def test_another_robots_description_is_refused_naming_both(exported, tmp_path):
    _, out = exported
    with pytest.raises(DatasetRobotMismatch, match=r"data.robot=so101 is for robot 'so101'.*meta/robot.json is for "
                                                   r"robot 'three_cam'"):
        LeRobotSplit(out, robot="so101")
    bare = _copy(out, tmp_path / "bare", keep_robot=False)
    with pytest.raises(DatasetError, match=r"'observation.images.front' \(data.lerobot.camera_features.front\) is missing"):
        LeRobotSplit(bare, robot="so101")
    one = {**THREE_CAMERAS.to_dict(), "cameras": [{"name": "left", "height": 32, "width": 48}]}
    wide = {**one, "state": {"key": "state", "names": [f"s{i}" for i in range(6)]}}
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    with pytest.raises(DatasetError, match=r"'observation.state' has shape \[4\], expected \[6\] \(state dimension\) "
                                           r"of robot 'three_cam'"):
        LeRobotSplit(bare, robot=str(tmp_path / "wide.json"))
    renamed = {**one, "state": {"key": "state", "names": ["a", "b", "c", "d"]}}
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    with pytest.raises(DatasetRobotMismatch, match=r"names its entries \['j0', 'j1', 'j2', 'grip'\].*"
                                                   r"set data.lerobot.state_names"):
        LeRobotSplit(bare, robot=str(tmp_path / "renamed.json"))
    ok = LeRobotSplit(bare, LeRobotConfig(state_names=["a", "b", "c", "d"]), robot=str(tmp_path / "renamed.json"))
    assert ok.robot.state.names == ("a", "b", "c", "d") and ok.robot.camera_names == ("left",)
    with pytest.raises(DatasetRobotMismatch, match=r"data.lerobot.cameras \['wrist'\] differ from the cameras"):
        LeRobotSplit(out, LeRobotConfig(cameras=["wrist"]))


def test_binary_gripper_entries_must_be_close_or_open(exported, tmp_path):
    _, out = exported
    bare = _copy(out, tmp_path / "bare", keep_robot=False)
    wrong = THREE_CAMERAS.to_dict()
    wrong["action"]["grippers"] = [0]  # d0 is a continuous delta
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(DatasetError, match=r"feature 'action' entry 0 \('d0'\) is .* at index 0, but robot "
                                           r"'three_cam' .* binary gripper \(-1.0 close, 1.0 open\)"):
        LeRobotSplit(bare, robot=str(tmp_path / "wrong.json"))


def test_a_packed_copy_refuses_a_changed_mapping(exported, tmp_path):
    _, out = exported
    bare = _copy(out, tmp_path / "lr" / "training", keep_robot=False)
    packed = tmp_path / "packed"
    pack_split(bare, packed / "training", shard_frames=32, progress=False, lerobot=LeRobotConfig())
    cfg = dict(root=str(bare.parent), format="lerobot", packed_root=str(packed), window=4, num_workers=0)
    assert CalvinDataset(DataConfig(**cfg)).robot.camera_names == ("left", "right", "wrist")
    with pytest.raises(DatasetRobotMismatch, match=r"packed split .* is for robot.*configured now is for robot.*"
                                                   r"re-run `roboflamingo pack`"):
        CalvinDataset(DataConfig(**cfg, lerobot=LeRobotConfig(cameras=["wrist", "left", "right"])))
    with pytest.raises(DatasetError, match=r"feature 'observation.images.front' .* is missing"):
        CalvinDataset(DataConfig(**cfg, robot="so101"))


def test_cli_pack_names_the_robot_and_refuses_another(exported, tmp_path, capsys):
    from roboflamingo import cli

    _, out = exported
    root = tmp_path / "lr"
    _copy(out, root / "training")
    base = ["pack", "data=lerobot", f"data.root={root}", "splits=[training]", "progress=false"]
    assert cli.main([*base, "data.robot=so101"]) == 1
    err = capsys.readouterr().err
    assert "data.robot=so101 is for robot 'so101'" in err and "is for robot 'three_cam'" in err
    assert cli.main([*base, "data.lerobot.camera_features={left: observation.images.left}"]) == 0
    assert "packed training (robot 'three_cam' (cameras: left 32x48, right 32x48, wrist 16x16" in capsys.readouterr().out


def test_export_refuses_names_of_another_length(exported, tmp_path):
    src, _ = exported
    with pytest.raises(DatasetError, match=r"features.state_names has 2 names, but robot 'three_cam'.* 4-d state"):
        export_split(Job(data=DataConfig(root=str(src.parent)), out=str(tmp_path / "x"), progress=False,
                         features=LeRobotConfig(state_names=["a", "b"])))
    assert not (tmp_path / "x").exists()


# ---- the SO-101 dataset recorded by LeRobot's own writer (scripts/lerobot_interop.py --steps so101) ----
def so101_joints(e: np.ndarray, k: np.ndarray) -> np.ndarray:
    """What the script recorded: arm joints 60 sin(0.2 k + 0.7 j + 1.3 e), gripper 50 + 40 sin(0.25 k + e)."""
    k, e = np.asarray(k, np.float64)[..., None], np.asarray(e, np.float64)[..., None]
    j = np.arange(6)
    return np.where(j == 5, 50.0 + 40.0 * np.sin(0.25 * k + e), 60.0 * np.sin(0.2 * k + 0.7 * j + 1.3 * e))


def _so101_index():
    expected = json.loads((SO101_FIXTURE / "expected.json").read_text())
    eps = expected["episodes"]
    ep = np.repeat(np.arange(len(eps)), [e - s + 1 for s, e in eps])
    k = np.concatenate([np.arange(e - s + 1) for s, e in eps])
    return expected, ep, k


def test_so101_dataset_written_by_lerobot_derives_so101s_description():
    expected, ep, k = _so101_index()
    ds = LeRobotSplit(SO101_FIXTURE)
    so101 = load_robot("so101")
    so101.require_compatible(ds.robot, "so101.yaml", "the derived description")
    assert ds.robot.shapes() == so101.shapes()
    assert ds.robot.state.names == ds.robot.action.names == so101.action.names == tuple(expected["names"])
    assert ds.robot.action.gripper_positions == (5,) and ds.robot.name == "so101_follower"
    assert [(c.name, c.height, c.width) for c in ds.robot.cameras] == [("front", 480, 640), ("wrist", 480, 640)]
    assert ds.index.episodes.tolist() == expected["episodes"] and ds.index.instructions == expected["instructions"]
    assert np.allclose(ds.state, so101_joints(ep, k), atol=1e-4)
    assert np.allclose(ds.actions, so101_joints(ep, k + 1), atol=1e-4)
    # data.robot=so101 adds what info.json cannot say (the bounds) and agrees with the rest.
    assert LeRobotSplit(SO101_FIXTURE, robot="so101").robot == so101


@pytest.mark.slow
@pytest.mark.parametrize("robot", [None, "so101"])
def test_so101_dataset_packs_with_so101s_shapes(tmp_path, robot):
    expected, ep, k = _so101_index()
    root = tmp_path / "so101"
    shutil.copytree(SO101_FIXTURE, root / "training")
    manifest = pack_split(root / "training", tmp_path / "packed" / "training", shard_frames=16, progress=False,
                          lerobot=LeRobotConfig(), robot=robot)
    packed_robot = load_robot(manifest["robot"])
    so101 = load_robot("so101")
    assert packed_robot.shapes() == so101.shapes()
    if robot:
        assert packed_robot == so101
    assert manifest["fields"]["front"] == {"shape": [3, 480, 640], "dtype": "uint8"}
    ds = CalvinDataset(DataConfig(root=str(root), format="lerobot", packed_root=str(tmp_path / "packed"), window=4,
                                  act_steps=2, num_workers=0, robot=robot), augment=False)
    assert ds.robot == packed_robot
    sample = ds[0]
    assert sample["front"].shape == sample["wrist"].shape == (4, 3, 480, 640)
    assert np.allclose(sample["state"].numpy(), so101_joints(ep[:4], k[:4]), atol=1e-4)
    assert np.allclose(sample["actions"][:, 0].numpy(), so101_joints(ep[:4], k[:4] + 1), atol=1e-4)
    stats = compute_normalization(root / "training", packed_dir=tmp_path / "packed" / "training")
    # Absolute joint targets far outside [-1, 1]: measured, every dim (the gripper is a position).
    assert np.all(stats["action_std"] > 10)
