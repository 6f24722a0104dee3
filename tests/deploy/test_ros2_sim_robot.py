"""``roboflamingo sim-robot deploy=sim_ros2 deploy.link=rclpy``: the tabletop as a ROS 2 node, checked
by an independent rclpy node at the message level (types, frames, stamps, commands taken)."""

import json
import time

import pytest

from roboflamingo.config import load
from roboflamingo.deploy.messages import encode_pose_stamped
from roboflamingo.deploy.sim_robot import Job as SimJob

from .ros2_helpers import ProbeClient, graph  # noqa: F401  (graph is a fixture)
from .rosbridge_mock import wait_for

pytestmark = pytest.mark.slow
SIM = load("sim_robot", SimJob, ["deploy=sim_ros2", "deploy.link=rclpy", "env.static_size=48", "env.gripper_size=24"])
T = SIM.deploy.topics


def test_the_sim_robot_publishes_ros2_messages_with_real_stamps_and_steps_on_each_command(graph):  # noqa: F811
    probe = ProbeClient(graph, [(t.name, t.type) for t in (T.rgb_static, T.rgb_gripper, T.tcp_pose, T.joint_state,
                                                            T.scene_obs, T.instruction)])
    started = time.time()
    robot = graph.roboflamingo(
        ["sim-robot", "deploy=sim_ros2", "deploy.link=rclpy", "env.static_size=48", "env.gripper_size=24",
         "max_steps=2", "duration_s=120", "idle_republish_s=0.1"],
        "sim-robot",
    )
    assert wait_for(lambda: len(probe.received(T.joint_state.name)) >= 3, 90), robot.output()

    static, gripper = probe.received(T.rgb_static.name), probe.received(T.rgb_gripper.name)
    for images, frame, size in ((static, "static_camera", 48), (gripper, "gripper_camera", 24)):
        first = images[0]
        assert first["type"] == "sensor_msgs/msg/Image" and first["frame_id"] == frame
        m = first["msg"]
        assert (m["height"], m["width"], m["encoding"], m["step"]) == (size, size, "rgb8", size * 3)
        assert m["data"] == f"<{size * size * 3} bytes>"
    pose = probe.received(T.tcp_pose.name)[0]
    assert pose["type"] == "geometry_msgs/msg/PoseStamped" and pose["frame_id"] == "panda_link0"
    joints = probe.received(T.joint_state.name)
    assert joints[0]["type"] == "sensor_msgs/msg/JointState" and joints[0]["frame_id"] == "panda_link0"
    assert joints[0]["msg"]["name"] == [*SIM.deploy.arm_joints, *SIM.deploy.finger_joints]
    assert len(joints[0]["msg"]["position"]) == 9
    scene = probe.received(T.scene_obs.name)[0]
    assert scene["type"] == "std_msgs/msg/Float64MultiArray" and len(scene["msg"]["data"]) == 24
    instruction = probe.received(T.instruction.name)[0]
    assert instruction["type"] == "std_msgs/msg/String" and instruction["msg"]["data"]

    # Real stamps: wall time (header stamps are compared with the receiver's clock), taken when the
    # observation is published, one stamp for all of an observation's messages, and increasing.
    stamps = [j["stamp"] for j in joints]
    assert all(started - 1 < s <= j["recv"] + 0.01 for s, j in zip(stamps, joints))
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert {s["stamp"] for s in static} & set(stamps) and {p["stamp"] for p in probe.received(T.tcp_pose.name)} & set(stamps)

    # Commands: each target pose (with the gripper command before it) is one environment step.
    p = pose["msg"]["pose"]
    target = {"header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": "panda_link0"}, "pose": p}
    assert encode_pose_stamped([0, 0, 0], [0, 0, 0], 0.0, "panda_link0", 2).keys() == target.keys()
    def width() -> float:
        return sum(probe.received(T.joint_state.name)[-1]["msg"]["position"][7:])

    for _ in range(2):
        before = width()
        probe.publish(T.gripper_command.name, T.gripper_command.type, {"data": -1.0})
        probe.publish(T.target_pose.name, T.target_pose.type, target)
        # The robot keeps only the newest target: wait for this step (the gripper closing) before the next.
        assert wait_for(lambda b=before: width() < b - 1e-4, 30), robot.output()
    assert robot.wait(60) == 1, robot.output()  # 1: the episode ended without success
    result = json.loads(next(line for line in reversed(robot.lines) if line.startswith("{")))
    assert result["steps"] == 2 and result["ended"] == "max_steps"
