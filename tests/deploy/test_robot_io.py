"""The ROS node in a joint-space robot's own terms: its cameras and JointState in, joint targets out.

An SO-101 (``roboflamingo/robots/so101.yaml``: 6 absolute joint positions, gripper as a position,
cameras ``front`` and ``wrist``) is driven by a fake policy that declares ``robot = so101``, first
through an in-memory bridge on a fake clock, then through the loopback rosbridge relay with the real
roslibpy client on both sides.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from roboflamingo.config import load
from roboflamingo.deploy import ros_node
from roboflamingo.deploy.config import BridgeConfig, TopicConfig, TopicsConfig
from roboflamingo.deploy.messages import (
    decode_joint_command,
    encode_image,
    encode_joint_state,
    encode_pose_stamped,
)
from roboflamingo.deploy.robot_io import JointIO, parse_state_source, state_sources
from roboflamingo.deploy.ros_node import ControlConfig, ControlNode, Job
from roboflamingo.deploy.safety import SafetyConfig
from roboflamingo.robot import RobotMismatch
from roboflamingo.robots import load_robot

from .rosbridge_mock import FakeJointRobot, RosbridgeRelay
from .test_ros_node import Clock, ConstantPolicy, FakeBridge

SO101 = load_robot("so101")
JOINTS = [n.removesuffix(".pos") for n in SO101.state.names]  # LeRobot's motor names, as ROS joints
LOW, HIGH = np.array(SO101.action.low), np.array(SO101.action.high)
HOME = np.array([0.0, -40.0, 30.0, 10.0, 0.0, 20.0])  # inside the limits
RATE_HZ = 10.0
VELOCITY = 50.0  # units per second: 5 per command at 10 Hz


class So101Policy:
    """A stand-in for an SO-101 checkpoint: checks every observation against the description and
    returns the next of ``actions`` (6 absolute joint targets), or the state it was given."""

    robot = SO101

    def __init__(self, actions=None):
        self.actions = [np.asarray(a, np.float32) for a in actions] if actions is not None else None
        self.observations = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def step(self, obs, instruction):
        self.robot.check_observation(obs)
        self.observations.append(obs)
        if self.actions is None:
            return np.asarray(obs[self.robot.state.key], np.float32)
        return self.actions[min(len(self.observations), len(self.actions)) - 1]


def so101_deploy(command_type="sensor_msgs/JointState", **kw) -> BridgeConfig:
    cameras = {"front": TopicConfig("/cam/front"), "wrist": TopicConfig("/cam/wrist", "sensor_msgs/Image")}
    topics = TopicsConfig(joint_command=TopicConfig("/joint_command", command_type))
    return BridgeConfig(robot="so101", ros_version=2, frame_id="base_link", cameras=cameras, topics=topics, **kw)


def make_node(policy, clock=None, deploy=None, **safety):
    safety.setdefault("max_joint_velocity", [VELOCITY])
    job = Job(deploy=deploy or so101_deploy(), control=ControlConfig(rate_hz=RATE_HZ),
              safety=SafetyConfig(max_obs_age_s=0.5, **safety))
    bridge = FakeBridge()
    node = ControlNode(job, policy, bridge=bridge, clock=clock or Clock())
    node.start()
    return node, bridge


def deliver(node, bridge, stamp, joints=HOME, names=JOINTS, extra=()):
    d = node.job.deploy
    bridge.subs[d.cameras["front"].name](encode_image(np.full((24, 32, 3), 90, np.uint8), stamp, "f", 2, compressed=True))
    bridge.subs[d.cameras["wrist"].name](encode_image(np.full((12, 16, 3), 200, np.uint8), stamp, "w", 2, compressed=False))
    positions = [*joints, *(v for _, v in extra)]
    bridge.subs[d.topics.joint_state.name](encode_joint_state([*names, *(n for n, _ in extra)], positions, stamp, "b", 2))


def commands(bridge, topic="/joint_command"):
    return [decode_joint_command(m) for t, m in bridge.published if t == topic]


def test_a_joint_space_cycle_reads_the_state_by_joint_name_and_commands_a_joint_state():
    clock, policy = Clock(), So101Policy()
    node, bridge = make_node(policy, clock)
    assert node.stamped == ["front", "wrist", "joint_state"]  # one image topic per camera, no CALVIN topics
    assert node.cycle() == "no_observation:front"
    # joints in another order than the description's, with one the robot does not read
    order = [5, 3, 0, 1, 4, 2]
    deliver(node, bridge, clock.t, joints=HOME[order], names=[JOINTS[i] for i in order], extra=[("camera_pan", 7.0)])
    bridge.subs[node.topics.instruction.name]({"data": "pick up the cube"})
    assert node.cycle() == "command"
    obs = policy.observations[-1]
    np.testing.assert_allclose(obs["state"], HOME)  # in the description's order, by name
    assert obs["state"].dtype == np.float32
    assert obs["front"].shape == (24, 32, 3) and obs["wrist"].shape == (12, 16, 3)  # as sent: the model resizes
    assert set(obs) == {"front", "wrist", "state"}
    ((topic, msg),) = bridge.published
    assert topic == "/joint_command" and msg["name"] == JOINTS
    np.testing.assert_allclose(msg["position"], HOME)  # the policy asked to stay where it is
    assert set(msg["header"]["stamp"]) == {"sec", "nanosec"} and msg["header"]["frame_id"] == "base_link"
    assert node.summary()["commands"] == 1 and policy.resets == 1


def test_joint_limits_and_the_velocity_cap_bound_every_joint_trajectory_command():
    far = np.array([500.0, -500.0, 100.0, -100.0, 37.0, 150.0])  # beyond the limits on four joints
    clock, policy = Clock(), So101Policy([far])
    node, bridge = make_node(policy, clock, deploy=so101_deploy("trajectory_msgs/JointTrajectory"))
    bridge.subs[node.topics.instruction.name]({"data": "reach"})
    prev = HOME
    for k in range(40):
        deliver(node, bridge, clock.t + 0.01 * k)
        assert node.cycle() == "command"
    step = VELOCITY / RATE_HZ
    for names, positions in commands(bridge):
        assert names == JOINTS
        assert np.all(positions >= LOW) and np.all(positions <= HIGH)
        assert np.all(np.abs(positions - prev) <= step + 1e-9)
        prev = positions
    np.testing.assert_allclose(prev, np.clip(far, LOW, HIGH))  # it gets there, at the limits
    msg = bridge.published[-1][1]
    assert msg["joint_names"] == JOINTS and len(msg["points"]) == 1
    assert msg["points"][0]["time_from_start"] == {"sec": 0, "nanosec": 100_000_000}  # one control period


def test_configured_joint_limits_tighten_the_descriptions_and_action_scale_slows_the_approach():
    target = np.array([50.0, 50.0, 50.0, 50.0, 50.0, 50.0])
    clock = Clock()
    node, bridge = make_node(So101Policy([target]), clock, joint_min=[-10] * 6, joint_max=[10, 100, 100, 100, 100, 100],
                             action_scale=0.5, max_joint_velocity=[1000.0])
    bridge.subs[node.topics.instruction.name]({"data": "go"})
    deliver(node, bridge, clock.t, joints=[0, 0, 0, 0, 0, 0])
    assert node.cycle() == "command"
    ((_, positions),) = commands(bridge)
    np.testing.assert_allclose(positions, [10, 25, 25, 25, 25, 25])  # half way, the first joint at its limit


def test_an_arm_outside_its_joint_limits_or_missing_a_joint_holds():
    clock = Clock()
    node, bridge = make_node(So101Policy(), clock)
    bridge.subs[node.topics.instruction.name]({"data": "go"})
    deliver(node, bridge, clock.t, joints=[*HOME[:5], 120.0])  # gripper past 100
    assert node.cycle() == "outside_workspace" and bridge.published == []
    deliver(node, bridge, clock.t + 0.01, joints=HOME[:5], names=JOINTS[:5])  # no gripper joint
    assert node.cycle() == "bad_message" and bridge.published == []
    deliver(node, bridge, clock.t + 0.02)
    assert node.cycle() == "command"
    assert node.holds == {"outside_workspace": 1, "bad_message": 1}


def test_state_sources_read_velocities_the_tcp_pose_and_the_gripper_width():
    robot = load_robot({
        "name": "probe", "cameras": [{"name": "cam", "height": 8, "width": 8}],
        "state": {"key": "state", "names": ["j1", "j1_vel", "ee_z", "ee_yaw", "ee_qw", "width"]},
        "action": {"key": "action", "names": ["j1"], "mode": "absolute", "space": "joint", "low": [-1], "high": [1]},
    })
    deploy = BridgeConfig(cameras={"cam": TopicConfig("/cam")}, state_sources=[
        "j1", "velocity:j1", "pose:z", "pose:yaw", "pose:qw", "gripper_width"],
        topics=TopicsConfig(gripper_width=TopicConfig("/width", "std_msgs/Float64")))
    io = JointIO(robot, deploy, SafetyConfig(max_joint_velocity=[1.0]), 0.1)
    assert set(io.stamped) == {"cam", "joint_state", "tcp_pose"} and set(io.plain) == {"gripper_width"}
    js = encode_joint_state(["j1"], [0.25], 5.0, "b", 1)
    js["velocity"] = [-0.5]
    items = {
        "cam": (encode_image(np.zeros((8, 8, 3), np.uint8), 5.0, "c", 1, compressed=False), 5.0),
        "joint_state": (js, 5.0),
        "tcp_pose": (encode_pose_stamped([0.1, 0.2, 0.3], [0.0, 0.0, 0.5], 5.0, "b", 1), 5.0),
        "gripper_width": ({"data": 0.04}, 5.0),
    }
    obs, measured = io.observation(items)
    np.testing.assert_allclose(obs["state"], [0.25, -0.5, 0.3, 0.5, np.cos(0.25), 0.04], rtol=1e-6)
    np.testing.assert_allclose(measured, [0.25])
    js["velocity"] = []
    with pytest.raises(ValueError, match="JointState.velocity has 0 values for 1 names"):
        io.observation(items)


def test_state_source_mistakes_name_the_entry():
    with pytest.raises(ValueError, match=r"deploy.state_sources\[0\] \(state 'a'\) 'pose:w'"):
        parse_state_source("pose:w", "deploy.state_sources[0] (state 'a')")
    with pytest.raises(ValueError, match="deploy.state_sources must have 6 entries"):
        state_sources(SO101, BridgeConfig(state_sources=["a"]))
    assert parse_state_source("effort:elbow", "x").kind == "effort"


def test_a_binary_gripper_goes_to_the_gripper_topic_before_the_joint_targets():
    robot = load_robot({
        "name": "arm3", "cameras": [{"name": "cam", "height": 8, "width": 8}],
        "state": {"key": "state", "names": ["a", "b", "c"], "low": [-1, -1, -1], "high": [1, 1, 1]},
        "action": {"key": "action", "names": ["a", "b", "c", "grip"], "grippers": [3], "close": 0, "open": 1,
                   "mode": "relative", "space": "joint"},
    })
    policy = ConstantPolicy(action=(0.5, -5.0, 0.0, 0.2))  # relative steps; grip below 0.5: close
    policy.robot = robot
    job = Job(deploy=BridgeConfig(cameras={"cam": TopicConfig("/cam")}, command_joints=["ja", "jb", "jc", ""]),
              control=ControlConfig(rate_hz=10), safety=SafetyConfig(max_joint_velocity=[2.0, 2.0, 2.0, 2.0]))
    bridge, clock = FakeBridge(), Clock()
    node = ControlNode(job, policy, bridge=bridge, clock=clock)
    node.start()
    bridge.subs["/cam"](encode_image(np.zeros((8, 8, 3), np.uint8), clock.t, "c", 1, compressed=True))
    # the state reads joints a, b, c by their names; the commands go to ja, jb, jc (deploy.command_joints)
    bridge.subs[job.deploy.topics.joint_state.name](
        encode_joint_state(["a", "b", "c", "ja", "jb", "jc"], [0.3, -0.1, 0.2, 0.9, 0, 0], clock.t, "b", 1))
    bridge.subs[job.deploy.topics.instruction.name]({"data": "go"})
    assert node.cycle() == "command"
    (g_topic, g_msg), (j_topic, j_msg) = bridge.published
    assert (g_topic, g_msg) == (job.deploy.topics.gripper_command.name, {"data": 0.0})
    assert j_topic == "/joint_command" and j_msg["name"] == ["ja", "jb", "jc"]
    # relative, from the measured ja, jb, jc: a stops at its limit (the state's range of 'a'), b moves
    # by at most 2/s over 0.1 s
    np.testing.assert_allclose(j_msg["position"], [1.0, -0.2, 0.0])
    np.testing.assert_allclose(policy.observations[-1]["state"], [0.3, -0.1, 0.2])


def test_a_policy_for_another_robot_is_refused_naming_both():
    with pytest.raises(RobotMismatch, match=r"deploy.robot=so101 is for robot 'so101' .*the policy is for robot 'calvin'"):
        make_node(ConstantPolicy())  # a policy object without .robot is CALVIN's


def test_end_effector_robots_other_than_calvins_layout_are_refused():
    policy = ConstantPolicy()
    policy.robot = load_robot("libero_panda")
    with pytest.raises(ValueError, match="robot 'libero_panda'.*is neither"):
        ControlNode(Job(), policy, bridge=FakeBridge(), clock=Clock())


@pytest.mark.parametrize("deploy, safety, match", [
    (BridgeConfig(robot="so101"), {"max_joint_velocity": [1.0]}, "deploy.cameras.front.name"),
    (so101_deploy(), {}, "safety.max_joint_velocity must be set"),
    (so101_deploy(), {"max_joint_velocity": [1.0, 2.0]}, "must have 1 or 6 values"),
    (so101_deploy(), {"max_joint_velocity": [1.0], "joint_min": [0.0] * 5, "joint_max": [1.0] * 5},
     "safety.joint_min must have 6 values"),
    (so101_deploy(command_joints=["a"]), {"max_joint_velocity": [1.0]}, "deploy.command_joints must have 6 entries"),
])
def test_what_a_joint_space_robot_needs_is_asked_for_by_key(deploy, safety, match):
    with pytest.raises(ValueError, match=match):
        ControlNode(Job(deploy=deploy, safety=SafetyConfig(**safety)), So101Policy(), bridge=FakeBridge(), clock=Clock())


def test_aloha_without_joint_limits_is_refused():
    policy = So101Policy()
    policy.robot = load_robot("aloha")
    cams = {c: TopicConfig(f"/{c}") for c in policy.robot.camera_names}
    with pytest.raises(ValueError, match=r"joints \['left_waist'.*no finite limits: set safety.joint_min"):
        ControlNode(Job(deploy=BridgeConfig(cameras=cams), safety=SafetyConfig(max_joint_velocity=[1.0])),
                    policy, bridge=FakeBridge(), clock=Clock())


def test_the_command_refuses_a_calvin_policy_on_an_so101_deploy(capsys):
    job = load("ros", Job, ["deploy=so101", "policy=random", "safety.max_joint_velocity=[60]"])
    assert ros_node.run(job) == 2
    err = capsys.readouterr().err
    assert "robot 'so101'" in err and "robot 'calvin'" in err


# -- through the loopback rosbridge with the real roslibpy client -----------------------------------


@pytest.mark.parametrize("command_type", ["trajectory_msgs/msg/JointTrajectory", "sensor_msgs/msg/JointState"])
def test_so101_is_driven_in_joint_space_through_the_relay_within_its_limits(command_type):
    targets = [np.array([90.0, -120.0, 0.0, 40.0, -100.0, 130.0]), np.array([-30.0, 10.0, 60.0, -5.0, 0.0, 0.0])]
    policy = So101Policy([targets[0]] * 12 + [targets[1]] * 40)
    with RosbridgeRelay() as relay:
        job = load("ros", Job, ["deploy=so101", f"deploy.port={relay.port}", f"deploy.topics.joint_command.type={command_type}",
                                f"control.rate_hz={RATE_HZ * 20}", "safety.max_joint_velocity=[2000]"])
        robot = FakeJointRobot(job.deploy, JOINTS, HOME).start()
        node = ControlNode(job, policy)
        result = {}
        thread = threading.Thread(target=lambda: result.update(node.run()), daemon=True)
        thread.start()
        try:
            assert node.ready.wait(10)
            robot.say("sort the blocks")
            assert robot.drive(30) >= 28
        finally:
            node.stop()
            thread.join(10)
            robot.close()
        routed = relay.published(job.deploy.topics.joint_command.name)
        assert relay.topic_types[job.deploy.topics.joint_command.name] == command_type
    step = 2000 / (RATE_HZ * 20)  # the velocity cap over one control period: 10 per command
    prev = HOME
    assert len(robot.commands) == len(routed) == result["commands"] >= 28
    for names, positions in robot.commands:
        assert names == JOINTS
        assert np.all(positions >= LOW) and np.all(positions <= HIGH)
        assert np.all(np.abs(positions - prev) <= step + 1e-6)
        prev = positions
    reached = [p for _, p in robot.commands[:12]]
    np.testing.assert_allclose(reached[-1], np.clip(targets[0], LOW, HIGH))  # clipped to the limits, then held
    if command_type.endswith("JointTrajectory"):
        point = routed[-1].msg["points"][0]
        assert point["time_from_start"] == {"sec": 0, "nanosec": 5_000_000}  # 1 / 200 Hz
    assert all(set(p.msg["header"]["stamp"]) == {"sec", "nanosec"} for p in routed)
    # the policy saw the robot's own state each cycle: the last command it sent, as the arm followed it
    np.testing.assert_allclose(policy.observations[1]["state"], robot.commands[0][1], atol=1e-4)



def test_a_remote_policy_tells_the_node_its_robot_through_the_handshake():
    from roboflamingo.deploy.client import PolicyClient
    from roboflamingo.deploy.server import PolicyServer, ServerThread
    from roboflamingo.policies import PolicySource

    target = np.array([5.0, -35.0, 30.0, 10.0, 0.0, 20.0])
    source = PolicySource("so101", lambda: So101Policy([target]), SO101.observation_keys, robot=SO101)
    with ServerThread(PolicyServer(source, port=0)) as thread, PolicyClient(thread.url) as client:
        assert not hasattr(PolicyClient, "robot") and client.robot == SO101  # from the handshake, not a default
        clock = Clock()
        node, bridge = make_node(client, clock)
        assert node.robot == SO101 and node.joints is not None
        bridge.subs[node.topics.instruction.name]({"data": "go"})
        deliver(node, bridge, clock.t)
        assert node.cycle() == "command"
    ((names, positions),) = commands(bridge)
    assert names == JOINTS
    np.testing.assert_allclose(positions, HOME + np.clip(target - HOME, -5, 5))  # capped at 50/s over 0.1 s
