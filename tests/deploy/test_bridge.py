"""``RosBridge``: a publish the bridge refuses is never counted as sent (issue 31 item 9)."""

import threading

from roboflamingo.config import load
from roboflamingo.deploy.bridge import RosBridge
from roboflamingo.deploy.messages import encode_pose_stamped
from roboflamingo.deploy.ros_node import ControlConfig, ControlNode, Job
from roboflamingo.deploy.safety import SafetyConfig

from .rosbridge_mock import START_POSE, FakeRobot, RosbridgeRelay, wait_for
from .test_ros_node import ConstantPolicy


def test_a_node_whose_commands_are_refused_stops_with_a_named_hold_and_counts_none():
    """Without a secret, the first session to advertise the command topics owns them; a node that
    comes second must notice that its publishes are refused instead of counting them as sent."""
    with RosbridgeRelay() as relay:
        cfg = load("ros", Job, [f"deploy.port={relay.port}"]).deploy
        rogue = RosBridge(cfg).connect()
        rogue.advertise(cfg.topics.target_pose)
        rogue.advertise(cfg.topics.gripper_command)
        rogue.publish(cfg.topics.target_pose, encode_pose_stamped(START_POSE[:3], START_POSE[3:], 1.0, "b", 1))
        assert wait_for(lambda: relay.command_owner.get(cfg.topics.target_pose.name) is not None)
        robot = FakeRobot(cfg).start()
        job = Job(deploy=cfg, control=ControlConfig(rate_hz=50.0, static_size=8, gripper_size=8, instruction="go"),
                  safety=SafetyConfig())
        node = ControlNode(job, ConstantPolicy(action=(0, 0, 0, 0, 0, 0, 1)))
        result = {}
        thread = threading.Thread(target=lambda: result.update(node.run()), daemon=True)
        thread.start()
        try:
            assert node.ready.wait(10)
            # fresh frames keep coming until the node gives up (or the wait runs out)
            assert wait_for(lambda: robot.publish_obs() or not thread.is_alive(), timeout_s=20, interval_s=0.05)
        finally:
            node.stop()
            thread.join(10)
            robot.close()
            rogue.close()
        assert result["ended"] == "command_refused", result
        assert result["holds"].get("command_refused") == 1
        assert result["commands"] == 0 and result["refused_publishes"] >= 1
        assert node.bridge.refused.startswith(f"a publish on {cfg.topics.gripper_command.name}") or \
            node.bridge.refused.startswith(f"a publish on {cfg.topics.target_pose.name}")
        assert robot.command_count() == 0  # none of the node's commands reached the robot
        assert relay.counts["refused"] >= 1


def test_a_status_error_for_another_op_or_topic_is_not_a_refusal():
    with RosbridgeRelay() as relay:
        cfg = load("ros", Job, [f"deploy.port={relay.port}"]).deploy
        bridge = RosBridge(cfg).connect()
        try:
            bridge.advertise(cfg.topics.target_pose)
            bridge._on_status({"op": "status", "level": "warning", "msg": "x", "id": f"publish:{cfg.topics.target_pose.name}:1"})
            bridge._on_status({"op": "status", "level": "error", "msg": "x", "id": "subscribe:/camera:3"})
            bridge._on_status({"op": "status", "level": "error", "msg": "x", "id": "publish:/not_ours:3"})
            assert not bridge.refused and not bridge.refusals
            assert bridge.publish(cfg.topics.target_pose, encode_pose_stamped([0, 0, 0.5], [0, 0, 0], 1.0, "b", 1))
            assert wait_for(lambda: len(relay.published(cfg.topics.target_pose.name)) == 1)
            bridge._on_status({"op": "status", "level": "error", "msg": "PermissionError: no",
                               "id": f"publish:{cfg.topics.target_pose.name}:7"})
            assert bridge.refusals[cfg.topics.target_pose.name] == 1 and "PermissionError: no" in bridge.refused
            assert not bridge.publish(cfg.topics.target_pose, {"pose": {}})  # nothing goes out after a refusal
        finally:
            bridge.close()
