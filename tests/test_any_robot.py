"""Issue 26 end to end: an SO-101 arm recorded by LeRobot's own writer packs, trains, serves over our
protocol and openpi's (handshakes naming its features), drives the ROS node in joint space through
the loopback rosbridge relay within its joint limits, and refuses CALVIN's observation."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from deploy.rosbridge_mock import FakeJointRobot, RosbridgeRelay

from roboflamingo import cli
from roboflamingo.config import load
from roboflamingo.data.config import LeRobotConfig
from roboflamingo.data.pack import pack_split
from roboflamingo.deploy.client import PolicyClient, PolicyServerError
from roboflamingo.deploy.ros_node import ControlNode, Job
from roboflamingo.deploy.server import PolicyServer, ServerThread
from roboflamingo.models.checkpoint import read_robot
from roboflamingo.models.policy import RoboFlamingoPolicy
from roboflamingo.policies import PolicySourceConfig, policy_source
from roboflamingo.robots import load_robot

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "lerobot_v3_so101"  # LeRobot 0.4.4's writer made it
SO101 = load_robot("so101")
JOINTS = [n.removesuffix(".pos") for n in SO101.state.names]
LOW, HIGH = np.array(SO101.action.low), np.array(SO101.action.high)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("so101")
    root, packed = tmp / "so101", tmp / "packed"
    for split in ("training", "validation"):
        shutil.copytree(FIXTURE, root / split)
        pack_split(root / split, packed / split, progress=False, lerobot=LeRobotConfig(), robot="so101")
    run_dir = tmp / "run"
    args = ["model=tiny", "head=lstm", "train=tiny", "model.window=4", "model.use_state=true", "data=lerobot",
            f"data.root={root}", f"data.packed_root={packed}", "data.robot=so101", "data.batch_size=4",
            "data.num_workers=0", "train.steps=300", "train.lr=1e-3", "train.warmup_steps=10", "train.val_every=50",
            "train.val_batches=4", "train.log_every=50", "train.checkpoint_every=300", "train.threads=2",
            "train.progress=false", f"run_dir={run_dir}"]
    assert cli.main(["train", *args]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in records if "val/loss" in r]
    assert len(val) >= 2 and val[-1] < 0.5 * val[0], val  # it learned, measured on the validation split
    return run_dir / "checkpoints" / "last"


def so101_obs(state: np.ndarray) -> dict:
    rng = np.random.default_rng(0)
    return {"front": rng.integers(0, 255, (480, 640, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), "state": state.astype(np.float32)}


CALVIN_OBS = {"rgb_static": np.zeros((200, 200, 3), np.uint8), "rgb_gripper": np.zeros((84, 84, 3), np.uint8),
              "robot_obs": np.zeros(15, np.float32)}


def test_the_checkpoint_is_so101s_and_acts_in_its_units(trained):
    assert read_robot(trained) == SO101
    policy = RoboFlamingoPolicy.from_pretrained(trained)
    action = policy.step(so101_obs(np.array([0, -40, 30, 10, 0, 20.0])), "pick up the cube")
    assert action.shape == (6,) and np.all(action >= LOW) and np.all(action <= HIGH)
    with pytest.raises(ValueError, match=r"missing key 'front'.*robot 'so101'"):
        policy.step(CALVIN_OBS, "pick up the cube")


@pytest.mark.parametrize("protocol", ["native", "openpi"])
def test_it_serves_with_a_handshake_naming_its_features_and_refuses_calvin(trained, protocol):
    source = policy_source(PolicySourceConfig(checkpoint=str(trained), device="cpu"))
    with ServerThread(PolicyServer(source, port=0)) as thread:
        if protocol == "native":
            with PolicyClient(thread.url) as client:
                assert client.metadata["features"] == SO101.features()
                assert client.robot == SO101
                action = client.step(so101_obs(np.array([0, -40, 30, 10, 0, 20.0])), "pick up the cube")
                assert action.shape == (6,) and np.all(action >= LOW) and np.all(action <= HIGH)
                with pytest.raises(PolicyServerError, match=r"robot 'so101'.*robot 'calvin'"):
                    client.step(CALVIN_OBS, "open the drawer")
        else:
            from openpi_client.websocket_client_policy import WebsocketClientPolicy

            client = WebsocketClientPolicy("127.0.0.1", thread.server.port)
            try:
                assert client.get_server_metadata()["features"] == SO101.features()
                out = client.infer({**so101_obs(np.array([0, -40, 30, 10, 0, 20.0])), "prompt": "pick up the cube"})
                assert out["actions"].shape == (1, 6)
                with pytest.raises(RuntimeError, match=r"robot_mismatch: the policy is for robot 'so101'.*robot 'calvin'"):
                    client.infer({**CALVIN_OBS, "prompt": "open the drawer"})
            finally:
                client._ws.close()


def test_it_drives_the_ros_node_in_joint_space_through_the_relay_within_the_limits(trained):
    home = np.array([0.0, -40.0, 30.0, 10.0, 0.0, 20.0])
    with RosbridgeRelay() as relay:
        job = load("ros", Job, ["deploy=so101", f"deploy.port={relay.port}", "policy=checkpoint", f"policy.checkpoint={trained}",
                                "policy.device=cpu", "control.rate_hz=20", "safety.max_joint_velocity=[100]",
                                "safety.joint_min=[-50,-50,-50,-50,-50,5]", "safety.joint_max=[50,50,50,50,50,60]"])
        robot = FakeJointRobot(job.deploy, JOINTS, home, image_size=48).start()
        source = policy_source(job.policy)
        node = ControlNode(job, source.factory(), robot=source.robot)
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(node.run()), daemon=True)
        thread.start()
        try:
            assert node.ready.wait(30)
            robot.say("pick up the cube")
            assert robot.drive(10) >= 8
        finally:
            node.stop()
            thread.join(30)
            robot.close()
    assert result["commands"] == len(robot.commands) >= 8
    prev = home
    for names, positions in robot.commands:
        assert names == JOINTS
        assert np.all(positions >= [-50, -50, -50, -50, -50, 5]) and np.all(positions <= [50, 50, 50, 50, 50, 60])
        assert np.all(np.abs(positions - prev) <= 100 / 20 + 1e-6)  # the velocity cap over one period
        prev = positions
