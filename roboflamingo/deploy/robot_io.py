"""What the ROS node reads and writes for a robot, by its description (``RobotDescription``).

CALVIN's Franka (end-effector space, 7-d relative actions) keeps the node's own path: CALVIN's
``robot_obs`` from the TCP pose and joint states, relative actions integrated into target poses
(``ros_node.ControlNode.build_observation``, ``safety.SafetyFilter``). A joint-space robot
(``action.space: joint``, e.g. ``so101``, ``aloha``) goes through :class:`JointIO`:

* inputs: one image topic per camera (``deploy.cameras``), ``topics.joint_state`` (always: the
  commanded joints' measured positions start each episode), ``topics.tcp_pose`` when a state entry
  reads the pose, ``topics.gripper_width`` when one reads it;
* observation: each camera's frame as sent (the model resizes), and the state vector entry by entry
  from its source (``deploy.state_sources``: joint positions, velocities or efforts by joint name,
  end-effector pose fields, the gripper width);
* commands: position targets for the continuous action dims (``deploy.command_joints``) as one
  ``sensor_msgs/JointState`` or ``trajectory_msgs/JointTrajectory`` (``topics.joint_command.type``;
  a trajectory point is reached one control period after its stamp), after
  ``safety.JointSafetyFilter`` (joint limits, joint-velocity caps); binary grippers on
  ``topics.gripper_command``, first, as the end-effector path does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from roboflamingo.deploy.config import BridgeConfig, TopicConfig
from roboflamingo.deploy.messages import (
    decode_float_array,
    decode_image,
    decode_joint_values,
    decode_pose_stamped,
    encode_float,
    encode_float_array,
    encode_joint_command,
)
from roboflamingo.deploy.safety import JointCommand, JointSafetyFilter, SafetyConfig
from roboflamingo.robot import RobotDescription
from roboflamingo.robots import load_robot

JOINT_STATE = "joint_state"
TCP_POSE = "tcp_pose"
GRIPPER_WIDTH = "gripper_width"
# pose:<field> -> index into (x, y, z, roll, pitch, yaw) or the raw quaternion (qx, qy, qz, qw)
POSE_FIELDS = ("x", "y", "z", "roll", "pitch", "yaw")
QUAT_FIELDS = ("qx", "qy", "qz", "qw")
JOINT_KINDS = {"position": "position", "velocity": "velocity", "effort": "effort"}


@dataclass(frozen=True)
class StateSource:
    """Where one state entry comes from: ``kind`` position|velocity|effort (of joint ``name``), pose
    (field ``name``) or gripper_width."""

    kind: str
    name: str = ""

    @property
    def topic(self) -> str:
        if self.kind == "pose":
            return TCP_POSE
        return GRIPPER_WIDTH if self.kind == GRIPPER_WIDTH else JOINT_STATE


def motor_name(name: str) -> str:
    """LeRobot names a motor's position ``<motor>.pos``; ROS names the joint ``<motor>``."""
    return name.removesuffix(".pos")


def parse_state_source(text: str, where: str) -> StateSource:
    kind, sep, rest = text.partition(":")
    if not sep:
        return StateSource(GRIPPER_WIDTH) if text == GRIPPER_WIDTH else StateSource("position", text)
    if kind == "pose":
        if rest not in POSE_FIELDS + QUAT_FIELDS:
            raise ValueError(f"{where} '{text}': pose fields are {list(POSE_FIELDS + QUAT_FIELDS)}")
        return StateSource("pose", rest)
    if kind in JOINT_KINDS and rest:
        return StateSource(JOINT_KINDS[kind], rest)
    raise ValueError(f"{where} '{text}' is not a joint name, velocity:<joint>, effort:<joint>, "
                     f"pose:<field> or gripper_width")


def _one_per_entry(option: str, given: list[str], names: tuple[str, ...], what: str,
                   robot: RobotDescription) -> list[str]:
    """``given`` (one text per entry of ``names``), or the motor names of ``names`` when empty."""
    if given and len(given) != len(names):
        raise ValueError(f"deploy.{option} must have {len(names)} entries (one per {what} of "
                         f"{robot.summary()}: {list(names)}), got {len(given)}")
    return list(given) or [motor_name(n) for n in names]


def state_sources(robot: RobotDescription, deploy: BridgeConfig) -> list[StateSource]:
    """One source per state entry of ``robot``, from ``deploy.state_sources`` or the state names."""
    names = robot.state.names
    texts = _one_per_entry("state_sources", list(deploy.state_sources), names, "state entry", robot)
    return [parse_state_source(t, f"deploy.state_sources[{i}] (state '{names[i]}')") for i, t in enumerate(texts)]


def command_joints(robot: RobotDescription, deploy: BridgeConfig) -> list[str]:
    """The joint each action dimension commands (binary grippers' entries unused)."""
    names = robot.action.names
    joints = _one_per_entry("command_joints", list(deploy.command_joints), names, "action dimension", robot)
    unnamed = [names[i] for i in robot.action.continuous if not joints[i]]
    if unnamed:
        raise ValueError(f"deploy.command_joints leaves action dims {unnamed} without a joint name")
    return joints


def camera_topics(robot: RobotDescription, deploy: BridgeConfig) -> dict[str, TopicConfig]:
    """The image topic of each camera: ``deploy.cameras[<name>]``, else the ``topics.<name>`` of that
    name (CALVIN's ``rgb_static`` and ``rgb_gripper``)."""
    out = {}
    for cam in robot.camera_names:
        topic = deploy.cameras.get(cam)
        if topic is None and cam in ("rgb_static", "rgb_gripper"):
            topic = getattr(deploy.topics, cam)
        if topic is None or not topic.name:
            raise ValueError(f"deploy.cameras has no image topic for camera '{cam}' of {robot.summary()}: set "
                             f"deploy.cameras.{cam}.name (and .type: sensor_msgs/CompressedImage or Image)")
        out[cam] = topic
    taken = {JOINT_STATE, TCP_POSE, GRIPPER_WIDTH} & set(out)
    if taken:
        raise ValueError(f"cameras {sorted(taken)} of {robot.summary()} share a name with the node's other inputs")
    return out


def node_robot(deploy: BridgeConfig, policy: Any, robot: RobotDescription | None = None) -> RobotDescription:
    """The robot the node drives: ``robot`` (what the policy source said), else the policy's own
    ``.robot`` (a remote policy's comes from its server's handshake), else CALVIN's; checked against
    ``deploy.robot`` when that names one (a policy for another robot is refused, naming both)."""
    policy_robot = robot or getattr(policy, "robot", None) or load_robot("calvin")
    if not deploy.robot:
        return policy_robot
    declared = load_robot(deploy.robot)
    declared.require_compatible(policy_robot, f"deploy.robot={deploy.robot}", "the policy")
    return declared


class JointIO:
    """Observation assembly and command publishing for a joint-space robot (see the module docstring)."""

    def __init__(self, robot: RobotDescription, deploy: BridgeConfig, safety: SafetyConfig, period_s: float) -> None:
        if robot.action.space != "joint":
            raise ValueError(f"JointIO drives joint-space robots, not {robot.summary()}")
        self.robot, self.deploy, self.period_s = robot, deploy, period_s
        self.sources = state_sources(robot, deploy)
        self.joints = command_joints(robot, deploy)
        self.continuous = list(robot.action.continuous)
        self.grippers = list(robot.action.grippers)
        self.safety = JointSafetyFilter(robot, safety, period_s)
        t = deploy.topics
        self.stamped: dict[str, TopicConfig] = dict(camera_topics(robot, deploy))
        needs = {s.topic for s in self.sources}
        self.stamped[JOINT_STATE] = t.joint_state
        if TCP_POSE in needs:
            self.stamped[TCP_POSE] = t.tcp_pose
        self.plain: dict[str, TopicConfig] = {GRIPPER_WIDTH: t.gripper_width} if GRIPPER_WIDTH in needs else {}
        for key, topic in (*self.stamped.items(), *self.plain.items()):
            if not topic.name:
                raise ValueError(f"{robot.summary()} reads {key}: set its topic (deploy.topics.{key}.name)")
        deploy.require("joint_command")
        self.outputs = [t.joint_command]
        if self.grippers:
            deploy.require("gripper_command")
            if len(self.grippers) > 1 and "MultiArray" not in t.gripper_command.type:
                raise ValueError(f"{robot.summary()} has {len(self.grippers)} binary grippers: "
                                 "deploy.topics.gripper_command.type must be a Float32MultiArray or "
                                 f"Float64MultiArray, got '{t.gripper_command.type}'")
            self.outputs.insert(0, t.gripper_command)

    def observation(self, items: Mapping[str, tuple[dict, float]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The policy's observation from the newest messages, and the measured position of each
        action dimension's joint (NaN for binary grippers), where an episode's targets start."""
        joint_msg = items[JOINT_STATE][0]
        pose = None
        if TCP_POSE in self.stamped:  # validated whole (finite position, non-zero quaternion) first
            pose = dict(zip(POSE_FIELDS, np.concatenate(decode_pose_stamped(items[TCP_POSE][0]))))
            pose.update({f"q{k}": float(v) for k, v in items[TCP_POSE][0]["pose"]["orientation"].items()})
        state = np.empty(self.robot.state.dim)
        for i, src in enumerate(self.sources):
            if src.kind == "pose":
                state[i] = pose[src.name]
            elif src.kind == GRIPPER_WIDTH:
                state[i] = float(decode_float_array(items[GRIPPER_WIDTH][0], 1)[0])
            else:
                state[i] = decode_joint_values(joint_msg, [src.name], src.kind)[0]
        measured = np.full(self.robot.action.dim, np.nan)
        measured[self.continuous] = decode_joint_values(joint_msg, [self.joints[i] for i in self.continuous])
        obs = {cam: decode_image(items[cam][0]) for cam in self.robot.camera_names}
        obs[self.robot.state.key] = state.astype(np.float32)
        return obs, measured

    def messages(self, cmd: JointCommand, t: float) -> list[tuple[TopicConfig, dict]]:
        """What one command publishes, in order: the binary grippers, then the joint targets."""
        d, topics = self.deploy, self.deploy.topics
        out = []
        if self.grippers:
            values = [float(cmd.positions[i]) for i in self.grippers]
            typ = topics.gripper_command.type
            out.append((topics.gripper_command,
                        encode_float_array(values) if "MultiArray" in typ else encode_float(values[0], typ)))
        names = [self.joints[i] for i in self.continuous]
        out.append((topics.joint_command, encode_joint_command(
            names, cmd.positions[self.continuous], t, d.frame_id, d.ros_version, topics.joint_command.type,
            self.period_s)))
        return out

    def publish(self, bridge: Any, cmd: JointCommand, t: float) -> bool:
        """Publish one command; False as soon as the bridge refuses a message (disconnected)."""
        return all(bridge.publish(topic, msg) for topic, msg in self.messages(cmd, t))
