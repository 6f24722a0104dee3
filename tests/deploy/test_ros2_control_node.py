"""``roboflamingo ros`` on a real ROS 2 graph, over both links: through rosbridge_server (the node in the
project venv, roslibpy) and as a native rclpy node (the node in the ROS 2 venv). One control loop and
safety filter; the same checks for each. An independent rclpy node (``ros2_probe.py``) plays the robot
driver: it streams camera frames, the TCP pose and joint states, and records the commands that arrive.
"""

import json

import numpy as np
import pytest

from roboflamingo.config import load
from roboflamingo.deploy.messages import euler_from_quat
from roboflamingo.deploy.ros_node import Job as RosJob
from roboflamingo.deploy.safety import rotation_angle

from .ros2_helpers import START_POSE, ProbeClient, graph, robot_stream  # noqa: F401  (graph is a fixture)
from .rosbridge_mock import wait_for

pytestmark = pytest.mark.slow
LINKS = ("rosbridge", "rclpy")
CFG = load("ros", RosJob, ["deploy=ros2"]).deploy  # a real arm's topics: JPEG cameras, no simulator state
T = CFG.topics
PERIOD_S = 0.2  # the driver's frame period: far longer than a cycle, so "within one cycle" is sharp


def start_node(graph, link: str, tmp_path, *overrides: str):  # noqa: F811
    args = ["ros", "deploy=ros2", f"deploy.link={link}", "policy=random", "control.instruction=open the drawer",
            "control.static_size=32", "control.gripper_size=32", "safety.max_duration_s=120",
            f"stats_path={tmp_path / 'stats.json'}", *overrides]
    if link == "rosbridge":
        _, port = graph.rosbridge()
        return graph.roboflamingo([*args, f"deploy.port={port}"], "ros (rosbridge)", native=False)
    return graph.roboflamingo(args, "ros (rclpy)", native=True)


def start_driver(graph):  # noqa: F811
    probe = ProbeClient(graph, [(T.target_pose.name, T.target_pose.type), (T.gripper_command.name, T.gripper_command.type)])
    probe.request("stream", name="robot", period_s=PERIOD_S, messages=robot_stream(CFG))
    return probe


def commands(probe) -> list[dict]:
    return probe.received(T.target_pose.name)


@pytest.mark.parametrize("link", LINKS)
def test_commands_arrive_as_stamped_ros2_poses_and_the_estop_stops_them_within_one_cycle(graph, link, tmp_path):  # noqa: F811
    probe = start_driver(graph)
    node = start_node(graph, link, tmp_path)
    assert wait_for(lambda: len(commands(probe)) >= 3, 120), node.output()

    poses = commands(probe)
    for c in poses:
        assert c["type"] == "geometry_msgs/msg/PoseStamped" and c["frame_id"] == CFG.frame_id
        assert 0 <= c["recv"] - c["stamp"] < 0.5  # stamped at publish time, on the same (wall) clock
    stamps = [c["stamp"] for c in poses]
    assert stamps == sorted(stamps)
    first = poses[0]["msg"]["pose"]
    position = np.array([first["position"][k] for k in "xyz"])
    euler = euler_from_quat([first["orientation"][k] for k in "xyzw"])
    assert np.linalg.norm(position - START_POSE[:3]) <= 0.035 + 1e-6  # the safety filter's step cap
    assert rotation_angle(euler, START_POSE[3:]) <= 0.09 + 1e-6  # and its rotation cap
    grippers = probe.received(T.gripper_command.name)
    assert grippers and all(g["type"] == "std_msgs/msg/Float32" and g["msg"]["data"] in (-1.0, 1.0) for g in grippers)

    t_estop = probe.publish(T.estop.name, T.estop.type, {"data": True})
    assert node.wait(60) == 3, node.output()  # 3: ended by the e-stop
    after = [c for c in commands(probe) if c["stamp"] > t_estop]
    assert len(after) <= 1, after  # at most the command of the cycle already past its last e-stop check
    summary = json.loads((tmp_path / "stats.json").read_text())
    assert summary["ended"] == "estop"
    # Every command the node counted reaches the driver; only the last may be lost when the node exits
    # right after sending it (its publisher goes with it before the reliable resend).
    assert wait_for(lambda: len(commands(probe)) >= summary["commands"] - 1, 10)
    assert len(commands(probe)) <= summary["commands"]


@pytest.mark.parametrize("link", LINKS)
def test_a_stale_camera_stops_commands_within_one_cycle(graph, link, tmp_path):  # noqa: F811
    probe = start_driver(graph)
    node = start_node(graph, link, tmp_path)
    assert wait_for(lambda: len(commands(probe)) >= 2, 120), node.output()
    # The static camera's driver falls 2 s behind (its stamps; the other topics stay fresh).
    t_stale = probe.request("offset", name="robot", topic=T.rgb_static.name, stamp_offset_s=-2.0)["published"]
    before = len(commands(probe))
    # A few more frames go by (all stale): no command answers them.
    for _ in range(3):
        probe.request("offset", name="robot", topic=T.rgb_static.name, stamp_offset_s=-2.0)
    after = [c for c in commands(probe) if c["stamp"] > t_stale]
    assert len(after) <= 1, after
    assert len(commands(probe)) <= before + 1
    probe.publish(T.estop.name, T.estop.type, {"data": True})
    assert node.wait(60) == 3, node.output()
    summary = json.loads((tmp_path / "stats.json").read_text())
    assert summary["holds"].get("stale", 0) >= 1, summary
