"""The ``ros`` and ``sim-robot`` commands end to end through ``cli.main``, bounded in time."""

import json
import threading

import pytest

from roboflamingo import cli
from roboflamingo.deploy.relay import RosbridgeRelay

from .rosbridge_mock import wait_for


def test_ros_reports_a_missing_server_or_bridge(capsys):
    assert cli.main(["ros", "server=ws://127.0.0.1:9"]) == 2
    assert "cannot reach the policy server at ws://127.0.0.1:9" in capsys.readouterr().err
    assert cli.main(["ros", "policy=random", "deploy.port=9", "deploy.connect_timeout_s=0.5"]) == 2
    assert "no rosbridge at ws://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["policy=checkpoint"], "policy=checkpoint needs checkpoint=<dir>"),
        (["server=http://x"], "server must be a ws:// or wss:// URL"),
        (["control.initial_gripper=0.5"], "control.initial_gripper must be -1 or 1"),
        (["safety.workspace_max=[0,0,0]"], "workspace_min.z must be < workspace_max.z"),
        (["deploy.transport=zmq"], "deploy.transport must be one of"),
    ],
)
def test_ros_config_errors_name_the_field(overrides, match, capsys):
    assert cli.main(["ros", *overrides]) == 2
    assert match in capsys.readouterr().err


def test_ros_command_stops_at_its_time_limit(tmp_path):
    with RosbridgeRelay() as relay:
        stats = tmp_path / "stats.json"
        code = cli.main(
            [
                "ros",
                "policy=random",
                f"deploy.port={relay.port}",
                "safety.max_duration_s=0.5",
                f"stats_path={stats}",
            ]
        )
    assert code == 0
    summary = json.loads(stats.read_text())
    assert summary["ended"] == "time_limit" and summary["commands"] == 0
    assert summary["holds"]["no_observation"] >= 1


@pytest.mark.slow
def test_sim_robot_and_ros_commands_run_closed_loop(tmp_path):
    """sim-robot (its cameras on, at a small size) and the node with a random policy, via the CLI."""
    with RosbridgeRelay() as relay:
        sim_result, ros_stats = tmp_path / "sim.json", tmp_path / "ros.json"
        codes = {}
        sim = threading.Thread(
            target=lambda: codes.update(
                sim=cli.main(
                    [
                        "sim-robot",
                        f"deploy.port={relay.port}",
                        "env.renderer=tiny",
                        "env.static_size=48",
                        "env.gripper_size=32",
                        "max_steps=5",
                        "idle_republish_s=1.0",
                        "duration_s=60",
                        f"result_path={sim_result}",
                    ]
                )
            )
        )
        sim.start()
        # Hydra's global state is not thread-safe: compose the node's config once the robot is up.
        assert wait_for(lambda: relay.published("/tcp_pose"), 60)
        codes["ros"] = cli.main(
            [
                "ros",
                "deploy=sim",
                f"deploy.port={relay.port}",
                "policy=random",
                "control.max_commands=5",
                "control.static_size=48",
                "control.gripper_size=32",
                "safety.action_scale=0.5",
                "safety.max_duration_s=60",
                f"stats_path={ros_stats}",
            ]
        )
        sim.join(60)
    assert codes == {"ros": 0, "sim": 1}  # the robot did not solve its task with random actions
    result = json.loads(sim_result.read_text())
    assert result["steps"] == 5 and result["ended"] == "max_steps" and not result["success"]
    summary = json.loads(ros_stats.read_text())
    assert summary["ended"] == "max_commands" and summary["commands"] == 5
