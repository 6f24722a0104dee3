"""Robot descriptions: built-ins, files, (de)serialisation, checks, and that generic code reads them."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import roboflamingo
from roboflamingo.robot import ActionSpec, Camera, RobotDescription, RobotMismatch, StateSpec
from roboflamingo.robots import builtin_names, load_robot, read_dataset_robot
from roboflamingo.robots.calvin import CALVIN

PACKAGE = Path(roboflamingo.__file__).resolve().parent


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_round_trips_through_json(name, tmp_path):
    robot = load_robot(name)
    assert robot.name == name
    robot.save(tmp_path / "robot.json")
    assert read_dataset_robot(tmp_path) == robot
    assert RobotDescription.from_dict(json.loads((tmp_path / "robot.json").read_text())) == robot


def test_builtins_are_the_robots_the_field_records():
    shapes = {n: (load_robot(n).camera_names, load_robot(n).state.dim, load_robot(n).action.dim) for n in builtin_names()}
    assert shapes["calvin"] == (("rgb_static", "rgb_gripper"), 15, 7)
    assert shapes["so101"] == (("front", "wrist"), 6, 6)
    assert shapes["metaworld_sawyer"] == (("corner2",), 4, 4)
    assert shapes["libero_panda"] == (("agentview", "eye_in_hand"), 8, 7)
    assert shapes["aloha"][1:] == (14, 14) and len(shapes["aloha"][0]) == 4
    assert CALVIN.action.continuous == (0, 1, 2, 3, 4, 5) and CALVIN.action.grippers == (6,)
    so101 = load_robot("so101")
    assert so101.action.space == "joint" and so101.action.mode == "absolute"
    assert so101.action.grippers == () and so101.action.gripper_positions == (5,)


def test_a_dataset_without_a_description_is_calvins(tmp_path):
    assert read_dataset_robot(tmp_path) == CALVIN


def test_a_new_robot_is_a_file_not_code(tmp_path):
    path = tmp_path / "arm.yaml"
    path.write_text("""
name: my_arm
cameras: [{name: top, height: 96, width: 128}]
state: {key: state, names: [j0, j1, j2]}
action: {names: [j0, j1, j2, grip], grippers: [3], close: 0, open: 1, mode: absolute, space: joint,
         low: [-3.1, -3.1, -3.1, 0], high: [3.1, 3.1, 3.1, 1]}
""")
    robot = load_robot(path)
    assert robot.action.gripper_threshold == 0.5 and robot.action.continuous == (0, 1, 2)
    robot.check_observation({"top": np.zeros((96, 128, 3), np.uint8), "state": np.zeros(3)})


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\ncameras: []\nstate: {names: [a]}\naction: {names: [a]}", "at least one camera"),
    ("name: x\ncameras: [{name: c, height: 0, width: 4}]\nstate: {names: [a]}\naction: {names: [a]}", "height must be > 0"),
    ("name: x\ncameras: [{name: c, height: 4, width: 4}]\nstate: {names: [a, a]}\naction: {names: [a]}", r"\['a'\] repeat"),
    ("name: x\ncameras: [{name: c, height: 4, width: 4}]\nstate: {names: [a]}\naction: {names: [a], grippers: [3]}",
     r"action.grippers \[3\] out of range"),
    ("name: x\ncameras: [{name: c, height: 4, width: 4}]\nstate: {names: [a]}\naction: {names: [a, b], low: [0]}",
     "action.low must have 2 values"),
    ("name: x\ncameras: [{name: c, height: 4, width: 4}]\nstate: {names: [a]}\naction: {names: [a], mode: delta}",
     "action.mode must be one of"),
    ("name: x\ncameras: [{name: c, height: 4, width: 4}]\nstate: {names: [a]}", "missing field 'action'"),
    ("name: x\ncolour: red\ncameras: []\nstate: {}\naction: {}", r"unknown robot description fields \['colour'\]"),
])
def test_a_bad_description_names_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        load_robot(path)
    assert str(path) in str(e.value)


def test_unknown_robot_names_the_builtins():
    with pytest.raises(ValueError, match="so101"):
        load_robot("so-1O1")


def test_mismatch_names_both_descriptions():
    with pytest.raises(RobotMismatch, match=r"the checkpoint is for robot 'calvin'.*the dataset is for robot 'so101'"):
        CALVIN.require_compatible(load_robot("so101"), "the checkpoint", "the dataset")
    CALVIN.require_compatible(CALVIN, "a", "b")


def test_observation_and_action_checks_name_the_key_and_robot():
    so101 = load_robot("so101")
    good = {"front": np.zeros((480, 640, 3), np.uint8), "wrist": np.zeros((480, 640, 3), np.uint8),
            "state": np.zeros(6, np.float32)}
    so101.check_observation(good)
    with pytest.raises(ValueError, match=r"'state'\] contains NaN"):
        so101.check_observation({**good, "state": np.full(6, np.nan)})
    with pytest.raises(ValueError, match=r"'wrist'\] must be uint8"):
        so101.check_observation({**good, "wrist": np.zeros((4, 4, 3), np.float32)})
    with pytest.raises(ValueError, match=r"6 finite numbers for robot 'so101'"):
        so101.check_action(np.zeros(7))
    np.testing.assert_array_equal(so101.check_action(np.ones(6)), np.ones(6))


def test_features_follow_lerobots_types():
    f = CALVIN.features()
    assert f["rgb_static"] == {"type": "VISUAL", "shape": [200, 200, 3], "dtype": "uint8"}
    assert f["robot_obs"]["type"] == "STATE" and f["robot_obs"]["shape"] == [15]
    assert f["action"]["names"][-1] == "gripper" and f["action"]["grippers"] == [6]


def test_unbounded_limits_are_written_as_null():
    robot = RobotDescription("r", (Camera("c", 4, 4),), StateSpec(("a",)), ActionSpec(("a",)))
    assert robot.to_dict()["action"]["low"] == [None]
    assert RobotDescription.from_dict(robot.to_dict()) == robot


# Modules whose code serves every robot: they read shapes from a description and may name CALVIN only
# as the default robot (``CALVIN``), never its shapes or keys.
GENERIC = ["models/policy.py", "models/heads.py", "models/normalization.py", "models/backbone.py",
           "models/checkpoint.py", "train/loop.py", "train/job.py", "types.py", "robot.py", "batching.py", "subtask.py",
           "data/dataset.py", "data/stats.py", "data/pack.py", "data/packed.py", "data/lerobot.py",
           "data/export_lerobot.py", "deploy/client.py", "deploy/robot_io.py", "deploy/protocols/openpi.py"]


@pytest.mark.parametrize("module", GENERIC)
def test_generic_code_takes_nothing_but_the_default_robot_from_calvin(module):
    tree = ast.parse((PACKAGE / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "roboflamingo.robots.calvin":
            names = [a.name for a in node.names]
            assert names == ["CALVIN"], f"{module} imports {names} from CALVIN's description"
        if isinstance(node, ast.ImportFrom) and node.module == "roboflamingo.robots":
            assert "calvin" not in [a.name for a in node.names], f"{module} imports CALVIN's module"


def test_state_angles_are_checked_and_travel_with_the_description():
    with pytest.raises(ValueError, match=r"robot state.angles \[3\] out of range for 3 dimensions"):
        StateSpec(names=("x", "y", "roll"), angles=(3,))
    calvin = load_robot("calvin")
    assert [calvin.state.names[i] for i in calvin.state.angles] == ["tcp_orn.x", "tcp_orn.y", "tcp_orn.z"]
    assert RobotDescription.from_dict(calvin.to_dict()) == calvin
    old = calvin.to_dict()
    del old["state"]["angles"]  # written before the field existed: no angles
    assert RobotDescription.from_dict(old).state.angles == ()
