"""The relay's rosauth mode and its command-topic ownership: an outside client cannot move the arm."""

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from roboflamingo.deploy.auth import rosauth_mac, rosauth_message, rosauth_valid
from roboflamingo.deploy.bridge import RosBridge
from roboflamingo.deploy.config import BridgeConfig, TopicConfig

from .rosbridge_mock import RosbridgeRelay, wait_for

SECRET = "0123456789abcdef"  # rosauth secrets are 16 characters
TARGET = TopicConfig("/target_pose", "geometry_msgs/PoseStamped")
CHATTER = TopicConfig("/chatter", "std_msgs/String")
POSE = {"header": {}, "pose": {"position": {"x": 0.4, "y": 0, "z": 0.5}, "orientation": {"x": 0, "y": 0, "z": 0, "w": 1}}}


def send(ws, msg):
    ws.send(json.dumps(msg))


def publish(ws, topic, msg):
    send(ws, {"op": "advertise", "topic": topic, "type": "x/Y"})
    send(ws, {"op": "publish", "topic": topic, "msg": msg})


def test_rosauth_mac_is_sha512_of_the_fields_in_rosauths_order():
    msg = rosauth_message(SECRET, client="10.0.0.2", dest="10.0.0.1", level="admin", now=1_700_000_000.5)
    assert msg["mac"] == rosauth_mac(SECRET, "10.0.0.2", "10.0.0.1", msg["rand"], 1_700_000_000, "admin",
                                     int(msg["end"]))
    assert rosauth_valid(SECRET, msg, now=1_700_000_002.0)
    assert not rosauth_valid(SECRET, msg, now=1_700_000_010.0)  # rosauth's 5 s window
    assert not rosauth_valid("another-secret!!", msg, now=1_700_000_002.0)
    assert not rosauth_valid(SECRET, {**msg, "level": "control"}, now=1_700_000_002.0)
    # ROS 1 clients send times as {secs, nsecs}
    ros_time = {**msg, "t": {"secs": 1_700_000_000, "nsecs": 5}, "end": {"secs": int(msg["end"]), "nsecs": 0}}
    assert rosauth_valid(SECRET, ros_time, now=1_700_000_001.0)


def test_a_public_relay_needs_a_secret():
    with pytest.raises(ValueError, match="secret"):
        RosbridgeRelay(host="0.0.0.0")


def test_unauthenticated_clients_are_closed_before_anything_is_routed():
    with RosbridgeRelay(secret=SECRET) as relay:
        for first in (
            {"op": "publish", "topic": "/target_pose", "msg": POSE},
            {**rosauth_message("wrong-secret-xyz"), "level": "control"},
            rosauth_message(SECRET, now=__import__("time").time() - 60),  # replayed old auth
        ):
            with connect(f"ws://127.0.0.1:{relay.port}") as ws:
                send(ws, first)
                status = json.loads(ws.recv(timeout=10))
                assert status["op"] == "status" and "authentication required" in status["msg"]
                with pytest.raises(ConnectionClosed):
                    publish(ws, "/target_pose", POSE)
                    ws.recv(timeout=10)
        assert relay.published("/target_pose") == [] and relay.counts["refused"] == 3


def test_an_authenticated_bridge_routes_and_only_the_control_session_commands(tmp_path):
    secret_file = tmp_path / "rosauth_secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    with RosbridgeRelay(secret=SECRET) as relay:
        cfg = BridgeConfig(port=relay.port, rosauth_secret_file=str(secret_file))
        control, robot = RosBridge(cfg).connect(), RosBridge(cfg).connect()
        try:
            got = []
            robot.subscribe(TARGET, got.append)
            assert wait_for(lambda: relay.counts["subscribe"] >= 1)
            assert control.publish(TARGET, POSE)
            assert wait_for(lambda: len(got) == 1)  # the control node's session commands
            # An intruder, even one holding the secret, cannot take over the command topic.
            for level in ("control", "user"):
                with connect(f"ws://127.0.0.1:{relay.port}") as ws:
                    send(ws, rosauth_message(SECRET, level=level))
                    publish(ws, "/target_pose", {**POSE, "intruder": True})
                    status = json.loads(ws.recv(timeout=10))
                    assert status["level"] == "error" and "only the control node" in status["msg"]
                    publish(ws, "/chatter", {"data": "hi"})  # other topics stay open to it
                    routed = 1 + (level == "user")
                    assert wait_for(lambda n=routed: len(relay.published("/chatter")) == n)
            assert [p.msg for p in relay.published("/target_pose")] == [POSE]
            assert relay.counts["refused"] == 2
        finally:
            control.close()
            robot.close()
        assert wait_for(lambda: relay.command_owner == {})  # the owner left: the topic is free again


def test_without_a_secret_the_first_commander_owns_the_command_topics():
    with RosbridgeRelay() as relay:
        url = f"ws://127.0.0.1:{relay.port}"
        with connect(url) as node, connect(url) as outsider:
            send(node, {"op": "advertise", "topic": "/gripper_command", "type": "std_msgs/Float32"})
            publish(node, "/target_pose", POSE)
            assert wait_for(lambda: len(relay.published("/target_pose")) == 1)
            publish(outsider, "/target_pose", {**POSE, "outsider": True})  # moved the arm 0.4 m before
            assert "only the control node" in json.loads(outsider.recv(timeout=10))["msg"]
            send(outsider, {"op": "publish", "topic": "/gripper_command", "msg": {"data": 1.0}})
            assert "only the control node" in json.loads(outsider.recv(timeout=10))["msg"]
            publish(node, "/gripper_command", {"data": -1.0})
            assert wait_for(lambda: len(relay.published("/gripper_command")) == 1)
        assert len(relay.published("/target_pose")) == 1


def test_the_auth_op_is_sent_once_even_when_the_connection_opens_before_the_bridge_listens(tmp_path, monkeypatch):
    # roslibpy.Ros() dials in its constructor; on a loaded machine the socket can open before RosBridge
    # registers its "ready" listener. Force that order: the auth op must still be the first frame.
    import roslibpy

    ros_init = roslibpy.Ros.__init__

    def connected_before_returning(self, *args, **kwargs):
        ros_init(self, *args, **kwargs)
        assert wait_for(lambda: self.is_connected)

    monkeypatch.setattr(roslibpy.Ros, "__init__", connected_before_returning)
    secret_file = tmp_path / "rosauth_secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    with RosbridgeRelay(secret=SECRET) as relay:
        bridge = RosBridge(BridgeConfig(port=relay.port, rosauth_secret_file=str(secret_file))).connect()
        try:
            bridge.subscribe(CHATTER, lambda m: None)
            assert wait_for(lambda: relay.counts["subscribe"] == 1)
            assert bridge.drops == 0 and relay.counts["refused"] == 0
            assert relay.counts["auth"] == 0  # a second auth op on a session would be dispatched and counted
        finally:
            bridge.close()
