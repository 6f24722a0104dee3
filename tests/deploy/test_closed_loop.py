"""The whole ROS path on one machine: sim robot <-> rosbridge relay <-> control node <-> policy server.

The scripted expert sits behind ``roboflamingo serve``; the control node reaches it through
``PolicyClient`` and the robot through the real roslibpy client. The simulator runs without its
cameras (black frames still travel as JPEG) because rendering would dominate the test's time and the
expert reads state only.
"""

import threading

from roboflamingo.config import load
from roboflamingo.deploy.client import PolicyClient
from roboflamingo.deploy.relay import RosbridgeRelay
from roboflamingo.deploy.ros_node import ControlNode
from roboflamingo.deploy.ros_node import Job as RosJob
from roboflamingo.deploy.server import PolicyServer, ServerThread
from roboflamingo.deploy.sim_robot import Job as SimJob
from roboflamingo.deploy.sim_robot import SimRobot
from roboflamingo.policies import PolicySourceConfig, policy_source

# Articulation tasks finish in few steps; the test takes the first chain that starts with one.
QUICK_TASKS = {
    "open_drawer",
    "close_drawer",
    "move_slider_left",
    "move_slider_right",
    "turn_on_led",
    "turn_off_led",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
}


def quick_chain_seed() -> int:
    from roboflamingo.sim.chains import sample_chains

    return next(s for s in range(200) if sample_chains(1, s)[0].tasks[0] in QUICK_TASKS)


def test_the_node_completes_a_tabletop_task_with_the_expert_behind_the_server():
    chain_seed = quick_chain_seed()
    with RosbridgeRelay() as relay:
        sim_job = load(
            "sim_robot",
            SimJob,
            [
                f"deploy.port={relay.port}",
                f"chain_seed={chain_seed}",
                "env.render=false",
                "duration_s=100",
            ],
        )
        ros_job = load(
            "ros",
            RosJob,
            [
                "deploy=sim",
                f"deploy.port={relay.port}",
                "control.rate_hz=100",
                "safety.max_duration_s=100",
            ],
        )
        source = policy_source(PolicySourceConfig("expert", scene=sim_job.env.scene))
        with ServerThread(PolicyServer(source, port=0)) as server:
            robot = SimRobot(sim_job)
            assert robot.task in QUICK_TASKS
            robot_result: dict = {}
            robot_thread = threading.Thread(target=lambda: robot_result.update(robot.run()), daemon=True)
            robot_thread.start()
            with PolicyClient(server.url) as client:
                assert "scene_obs" in client.observation_keys
                node = ControlNode(ros_job, client)
                node_result: dict = {}
                node_thread = threading.Thread(target=lambda: node_result.update(node.run()), daemon=True)
                node_thread.start()
                robot_thread.join(110)
                node.stop()
                node_thread.join(10)
            assert server.server.counters["steps"] >= node_result["commands"]

    assert robot_result["success"], (robot_result, node_result)
    assert robot_result["ended"] == "success"
    assert node_result["commands"] >= robot_result["steps"] > 0
    assert node_result["holds"].get("policy_error", 0) == 0
    assert node_result["latency"]["infer_ms"]["count"] == node_result["commands"]
