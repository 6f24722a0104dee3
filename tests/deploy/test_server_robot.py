"""The server in another robot's shapes: an SO-101 policy source over our protocol, openpi's and vla-eval's.

The policy is a stand-in that declares ``robot = so101`` (6 absolute joint targets; cameras ``front``
and ``wrist``); the handshakes must announce its features, its observations must be checked by its
description, and a CALVIN client must be refused with both descriptions named.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from roboflamingo.deploy.client import PolicyClient, PolicyServerError
from roboflamingo.deploy.server import PolicyServer, ServerThread
from roboflamingo.policies import PolicySource, PolicySourceConfig, policy_source
from roboflamingo.robot import RobotMismatch
from roboflamingo.robots import load_robot

SO101 = load_robot("so101")
CALVIN = load_robot("calvin")
TARGET = np.array([10.0, -20.0, 30.0, -40.0, 50.0, 60.0], np.float32)


class So101Policy:
    """Returns TARGET shifted by the first state entry, after checking the observation's shapes."""

    robot = SO101

    def __init__(self, action_dim: int = 6) -> None:
        self.action_dim = action_dim
        self.seen = []

    def reset(self) -> None:
        self.seen = []

    def step(self, obs, instruction):
        self.robot.check_observation(obs)
        self.seen.append(obs)
        action = np.resize(TARGET, self.action_dim).copy()
        action[0] += obs["state"][0]
        return action


def so101_source(action_dim: int = 6) -> PolicySource:
    return PolicySource("so101-stand-in", lambda: So101Policy(action_dim), SO101.observation_keys, robot=SO101)


def so101_obs(first: float = 0.0) -> dict:
    rng = np.random.default_rng(0)
    state = np.array([first, 0, 0, 0, 0, 50], np.float32)
    return {"front": rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), "state": state}


def calvin_obs() -> dict:
    return {"rgb_static": np.zeros((20, 20, 3), np.uint8), "rgb_gripper": np.zeros((8, 8, 3), np.uint8),
            "robot_obs": np.zeros(15, np.float32)}


@pytest.fixture
def so101_server():
    with ServerThread(PolicyServer(so101_source(), port=0)) as thread:
        yield thread


def test_the_native_handshake_announces_the_checkpoints_features(so101_server):
    with PolicyClient(so101_server.url) as client:
        meta = client.metadata
        assert meta["features"] == SO101.features()
        assert meta["features"]["action"]["names"] == list(SO101.action.names)
        assert client.robot == SO101  # the whole description travels
        assert meta["observation_spec"] == {"front": {"shape": [-1, -1, 3], "dtype": "uint8"},
                                            "wrist": {"shape": [-1, -1, 3], "dtype": "uint8"},
                                            "state": {"shape": [6], "dtype": "float32"}}
        spec = meta["action_spec"]
        assert spec["shape"] == [6] and spec["space"] == "joint" and spec["mode"] == "absolute"
        assert spec["low"] == [-100, -100, -100, -100, -100, 0] and "gripper_index" not in spec
        action = client.step(so101_obs(1.5), "pick up the cube")
        assert action.dtype == np.float32 and action.shape == (6,)
        np.testing.assert_array_equal(action, TARGET + np.array([1.5, 0, 0, 0, 0, 0], np.float32))


def test_a_calvin_observation_is_refused_naming_both_descriptions(so101_server):
    with PolicyClient(so101_server.url) as client:
        with pytest.raises(PolicyServerError) as info:
            client.step(calvin_obs(), "open the drawer")
        assert info.value.code == "robot_mismatch"
        message = str(info.value)
        assert SO101.summary() in message and CALVIN.summary() in message
        assert "rgb_static 20x20x3" in message  # what was sent, by key and shape
        client.step(so101_obs(), "go")  # the session goes on
    # an observation of no robot we know is a plain bad observation, naming the policy's description
    with PolicyClient(so101_server.url) as client, pytest.raises(PolicyServerError, match="bad_observation"):
        client.step({"front": np.zeros((4, 4, 3), np.uint8)}, "go")


def test_a_client_for_another_robot_is_refused_at_connect(so101_server):
    client = PolicyClient(so101_server.url, robot=CALVIN)
    with pytest.raises(RobotMismatch) as info:
        client.connect()
    assert "this client is for robot 'calvin'" in str(info.value)
    assert f"the policy at {so101_server.url} is for {SO101.summary()}" in str(info.value)
    with PolicyClient(so101_server.url, robot=SO101) as fine:
        assert fine.step(so101_obs(), "go").shape == (6,)


def test_calvin_servers_announce_calvins_description_and_keep_their_spec():
    with ServerThread(PolicyServer(policy_source(PolicySourceConfig("random", seed=0)), port=0)) as thread:
        with PolicyClient(thread.url) as client:
            assert client.metadata["robot"] == CALVIN.to_dict() and client.robot == CALVIN
            assert client.metadata["features"]["robot_obs"]["shape"] == [15]
            assert client.metadata["action_spec"]["gripper_index"] == 6
            so101 = so101_obs()
            with pytest.raises(PolicyServerError, match="robot_mismatch") as info:
                client.step({**so101, "robot_obs": np.zeros(3, np.float32)}, "go")
            assert SO101.summary() in str(info.value)


def test_a_wrong_sized_action_is_a_policy_error_and_a_source_needs_a_robot():
    with ServerThread(PolicyServer(so101_source(action_dim=7), port=0)) as thread, PolicyClient(thread.url) as client:
        with pytest.raises(PolicyServerError, match="6 finite numbers expected for robot 'so101'"):
            client.step(so101_obs(), "go")
    with pytest.raises(ValueError, match="names no robot description"):
        PolicyServer(PolicySource("anon", So101Policy, SO101.observation_keys, robot=None), port=0)


# -- other clients ------------------------------------------------------------------------------------
def test_openpi_client_sees_the_features_and_gets_six_joint_targets(so101_server):
    websocket_client_policy = pytest.importorskip("openpi_client.websocket_client_policy")
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", so101_server.server.port)
    try:
        assert client.get_server_metadata()["features"] == SO101.features()
        obs = so101_obs(2.0)
        reply = client.infer({**obs, "prompt": "go"})
        assert reply["actions"].shape == (1, 6) and reply["actions"].dtype == np.float32
        np.testing.assert_array_equal(reply["actions"][0], TARGET + np.array([2.0, 0, 0, 0, 0, 0], np.float32))
        # LeRobot's spelling, and openpi's ALOHA layout (nested channel-first images)
        lerobot = {"observation.images.front": obs["front"], "observation.images.wrist": obs["wrist"],
                   "observation.state": obs["state"], "prompt": "go"}
        np.testing.assert_array_equal(client.infer(lerobot)["actions"], reply["actions"])
        aloha_style = {"images": {k: np.ascontiguousarray(obs[k].transpose(2, 0, 1)) for k in ("front", "wrist")},
                       "state": obs["state"], "prompt": "go"}
        np.testing.assert_array_equal(client.infer(aloha_style)["actions"], reply["actions"])
        with pytest.raises(RuntimeError, match="robot_mismatch: the policy is for robot 'so101'") as info:
            client.infer({**calvin_obs(), "prompt": "open the drawer"})
        assert CALVIN.summary() in str(info.value)
    finally:
        client._ws.close()


def test_vla_eval_hello_describes_the_robot_and_actions_come_back_in_its_units(so101_server):
    vla_connection = pytest.importorskip("vla_eval.connection")

    async def run(url):
        async with vla_connection.Connection(url, timeout=10, max_retries=1) as conn:
            await conn.start_episode({"task": {}})
            obs = so101_obs(3.0)
            action = await conn.act({"images": {"front": obs["front"], "wrist": obs["wrist"]},
                                     "states": obs["state"], "task_description": "go"})
            return conn.server_info, action

    info, action = asyncio.run(run(so101_server.url + "/vla-eval"))
    assert info["action_spec"] == {"actions": {
        "name": "actions", "dims": 6, "format": "absolute_joint_positions", "range": [-100.0, 100.0],
        "description": "so101: " + ", ".join(SO101.action.names)}}
    assert info["observation_spec"]["state"]["dims"] == 6 and set(info["observation_spec"]) == {
        "front", "wrist", "state", "language"}
    assert info["observation_params"] == {"send_wrist_image": True, "send_state": True}
    assert info["roboflamingo"]["features"] == SO101.features()
    np.testing.assert_array_equal(action["actions"], TARGET + np.array([3.0, 0, 0, 0, 0, 0], np.float32))
