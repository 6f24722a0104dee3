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
