"""A tabletop task completed closed-loop over a real ROS 2 graph, through each link.

The sim robot is a native ROS 2 node (the ROS 2 venv); the scripted expert sits behind
``roboflamingo serve`` (this process); ``roboflamingo ros`` reaches the robot through rosbridge_server
(the node in the project venv, roslibpy) or as a native rclpy node (in the ROS 2 venv). The simulator
runs without its cameras (black frames still travel, as raw ``sensor_msgs/Image``) because rendering
would dominate the test's time and the expert reads state only.
"""

import json

import pytest

from roboflamingo.config import load
from roboflamingo.deploy.server import PolicyServer, ServerThread
from roboflamingo.deploy.sim_robot import Job as SimJob
from roboflamingo.policies import PolicySourceConfig, policy_source

from .ros2_helpers import graph  # noqa: F401  (a fixture)
from .test_closed_loop import QUICK_TASKS, quick_chain_seed

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("link", ("rosbridge", "rclpy"))
def test_the_expert_completes_a_tabletop_task_over_the_ros2_graph(graph, link, tmp_path):  # noqa: F811
    chain_seed = quick_chain_seed()
    sim_args = ["deploy=sim_ros2", "deploy.link=rclpy", f"chain_seed={chain_seed}", "env.render=false", "duration_s=150"]
    scene = load("sim_robot", SimJob, sim_args).env.scene
    with ServerThread(PolicyServer(policy_source(PolicySourceConfig("expert", scene=scene)), port=0)) as server:
        robot = graph.roboflamingo(["sim-robot", *sim_args, f"result_path={tmp_path / 'robot.json'}"], "sim-robot")
        args = ["ros", "deploy=sim_ros2", f"deploy.link={link}", f"server={server.url}", "control.rate_hz=100",
                "safety.max_duration_s=150", f"stats_path={tmp_path / 'node.json'}"]
        if link == "rosbridge":
            _, port = graph.rosbridge()
            node = graph.roboflamingo([*args, f"deploy.port={port}"], "ros (rosbridge)", native=False)
        else:
            node = graph.roboflamingo(args, "ros (rclpy)", native=True)
        code = robot.wait(170)
        node.stop(grace_s=60)  # it writes its summary on SIGINT, which can take seconds on a loaded machine
        node_log = node.output(100)
        robot_result = json.loads((tmp_path / "robot.json").read_text())
        assert code == 0 and robot_result["success"], (robot_result, robot.output(), node.output())
        assert (tmp_path / "node.json").is_file(), node_log
        node_result = json.loads((tmp_path / "node.json").read_text())
        steps = server.server.counters["steps"]

    assert robot_result["task"] in QUICK_TASKS and robot_result["ended"] == "success"
    assert node_result["ended"] in ("interrupted", "stopped")
    assert node_result["commands"] >= robot_result["steps"] > 0
    assert steps >= node_result["commands"]
    assert node_result["holds"].get("policy_error", 0) == 0, node_log
