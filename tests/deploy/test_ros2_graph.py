"""The ROS 2 side venv and a real rosbridge_server on a real ROS 2 graph (loopback, a private domain).

roslibpy (the project venv) talks to rosbridge_server 2.1.0 (built from the vendored bundle by
``make ros2``), which talks DDS to a plain rclpy node (``ros2_probe.py``): what one side sends, the
other receives, with the ROS 2 type the other side declared.
"""

import json
import logging
import re
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from roboflamingo.deploy.bridge import RosBridge
from roboflamingo.deploy.config import BridgeConfig, TopicConfig
from roboflamingo.deploy.messages import decode_joint_state, encode_joint_state, encode_joint_trajectory

from .ros2_helpers import ProbeClient, graph  # noqa: F401  (graph is a fixture)
from .rosbridge_mock import wait_for

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_the_ros2_lock_pins_shared_packages_at_the_project_locks_versions():
    # The side venv imports roboflamingo's dependencies from the project venv but its own copies come
    # first on its path: a package both hold must be the same version in both.
    ros2, main = pins(ROOT / "constraints-ros2.txt"), pins(ROOT / "constraints.txt")
    assert ros2["ros-rclpy"] == "9.1.2"  # ROS 2 Kilted, the version the README documents
    differ = {name: (ros2[name], main[name]) for name in ros2.keys() & main.keys() if ros2[name] != main[name]}
    assert not differ, f"constraints-ros2.txt vs constraints.txt: {differ}"
    assert {"numpy", "pillow", "pyyaml"} <= ros2.keys() & main.keys()


@pytest.mark.slow
def test_rosbridge_server_carries_roslibpy_traffic_to_and_from_native_ros2_nodes(graph):  # noqa: F811
    server, port = graph.rosbridge()
    probe = ProbeClient(graph, [("/from_bridge", "std_msgs/msg/String")])
    bridge = RosBridge(BridgeConfig(port=port, ros_version=2)).connect()
    try:
        got = []
        bridge.subscribe(TopicConfig("/from_ros", "std_msgs/msg/String"), got.append, queue_length=0)
        out = TopicConfig("/from_bridge", "std_msgs/msg/String")
        bridge.advertise(out)
        # Discovery between rosbridge's node and the probe takes a moment: keep sending until it lands.
        assert wait_for(lambda: bridge.publish(out, {"data": "to ros"}) and bool(probe.received("/from_bridge")), 30)
        first = probe.received("/from_bridge")[0]
        assert first["type"] == "std_msgs/msg/String" and first["msg"] == {"data": "to ros"}
        assert wait_for(lambda: probe.publish("/from_ros", "std_msgs/msg/String", {"data": "from ros"}) and bool(got), 30)
        assert got[0] == {"data": "from ros"}
    finally:
        bridge.close()
    assert "Client connected" in server.output(200)


@pytest.mark.slow
def test_rosbridge_2_has_no_authenticate_so_the_node_warns_that_its_rosauth_secret_is_unchecked(
    graph, tmp_path, caplog  # noqa: F811
):
    # rosbridge_suite's ros2 branch (2.1.0) has no `authenticate` parameter and no `auth` op (ROS 1's
    # rosbridge verifies rosauth MACs; ROS 2's does not): it logs the op as unknown and the session,
    # with a forged MAC, goes on publishing. The node must not let a user believe the secret protects
    # the robot.
    server, port = graph.rosbridge()
    with connect(f"ws://127.0.0.1:{port}") as ws:
        ws.send(json.dumps({"op": "auth", "mac": "0" * 128, "client": "x", "dest": "y", "rand": "r", "t": time.time(),
                            "level": "admin", "end": time.time() + 60}))
        server.wait_for_line(r"Unknown operation: auth\.", 30)
        ws.send(json.dumps({"op": "advertise", "topic": "/open", "type": "std_msgs/msg/String"}))
        ws.send(json.dumps({"op": "subscribe", "topic": "/open", "type": "std_msgs/msg/String"}))
        ws.send(json.dumps({"op": "publish", "topic": "/open", "msg": {"data": "unauthenticated"}}))
        assert json.loads(ws.recv(timeout=30))["msg"] == {"data": "unauthenticated"}

    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef\n")
    secret.chmod(0o600)  # a secret file others can read is refused (issue 31)
    with caplog.at_level(logging.WARNING, logger="roboflamingo.bridge"):
        bridge = RosBridge(BridgeConfig(port=port, ros_version=2, rosauth_secret_file=str(secret))).connect()
        try:
            got = []
            topic = TopicConfig("/still_works", "std_msgs/msg/String")
            bridge.subscribe(topic, got.append, queue_length=0)
            assert wait_for(lambda: bridge.publish(topic, {"data": "x"}) and bool(got), 30)
        finally:
            bridge.close()
    assert any("not checked there" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.slow
def test_joint_space_messages_cross_rosbridge_both_ways(graph):  # noqa: F811
    # The seam for joint-space robots (ros2_control's JointTrajectory in, JointState out): the message
    # code's JSON is what rosbridge turns into the real ROS 2 types, and back.
    _, port = graph.rosbridge()
    joints = [f"joint{i}" for i in range(1, 7)]
    command = TopicConfig("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory")
    probe = ProbeClient(graph, [(command.name, command.type)])
    bridge = RosBridge(BridgeConfig(port=port, ros_version=2)).connect()
    try:
        states = []
        bridge.subscribe(TopicConfig("/joint_states", "sensor_msgs/msg/JointState"), states.append, queue_length=0)
        bridge.advertise(command)
        target = encode_joint_trajectory(joints, [0.1, -0.2, 0.3, -0.4, 0.5, -0.6], time.time(), "base_link", 2, 0.25)
        assert wait_for(lambda: bridge.publish(command, target) and bool(probe.received(command.name)), 30)
        got = probe.received(command.name)[0]
        assert got["type"] == "trajectory_msgs/msg/JointTrajectory" and got["frame_id"] == "base_link"
        assert got["msg"]["joint_names"] == joints
        assert got["msg"]["points"][0]["positions"] == [0.1, -0.2, 0.3, -0.4, 0.5, -0.6]
        assert got["msg"]["points"][0]["time_from_start"] == {"sec": 0, "nanosec": 250_000_000}
        state = encode_joint_state(joints, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 0.0, "base_link", 2)
        assert wait_for(lambda: probe.publish("/joint_states", "sensor_msgs/msg/JointState", state) and bool(states), 30)
        arm, width = decode_joint_state(states[0], joints, [])
        assert arm.tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5] and width is None
        assert states[0]["header"]["stamp"]["sec"] > 0  # the probe stamped it: rosbridge passes it on
    finally:
        bridge.close()
