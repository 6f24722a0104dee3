"""Test doubles for the ROS path: a loopback rosbridge and a scripted robot that talks through it.

``RosbridgeRelay`` (roboflamingo.deploy.relay) is the loopback websocket server speaking the rosbridge
v2 protocol on 127.0.0.1; ``FakeRobot`` publishes small synthetic camera frames, TCP pose and joint
states through the real roslibpy client and records every command it receives; ``FakeJointRobot``
does the same for a joint-space arm that follows each joint command at once.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from roboflamingo.deploy.bridge import RosBridge
from roboflamingo.deploy.config import BridgeConfig
from roboflamingo.deploy.messages import (
    base_type,
    decode_joint_command,
    decode_pose_stamped,
    encode_image,
    encode_joint_state,
    encode_pose_stamped,
)
from roboflamingo.deploy.relay import RosbridgeRelay

__all__ = ["RosbridgeRelay", "FakeRobot", "FakeJointRobot", "wait_for"]

START_POSE = np.array([0.0, -0.3, 0.6, np.pi, 0.0, np.pi / 2])


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class FakeRobot:
    """Publishes observations on demand; collects (receive time, pose, euler) for each target command."""

    def __init__(self, cfg: BridgeConfig, image_size: int = 32) -> None:
        self.cfg = cfg
        self.bridge = RosBridge(cfg)
        self.rng = np.random.default_rng(0)
        self.image_size = image_size
        self.pose = START_POSE.copy()
        self.commands: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.grippers: list[float] = []
        self._lock = threading.Lock()
        self.new_command = threading.Event()

    def start(self) -> FakeRobot:
        t = self.cfg.topics
        self.bridge.connect()
        self.bridge.subscribe(t.target_pose, self._on_pose, queue_length=0)
        self.bridge.subscribe(
            t.gripper_command, lambda m: self.grippers.append(float(m["data"])), queue_length=0
        )
        for key in ("rgb_static", "rgb_gripper", "tcp_pose", "joint_state"):
            self.bridge.advertise(getattr(t, key))
        # Latched like an operator console: a node that subscribes later still gets the instruction.
        self.bridge.advertise(t.instruction, latch=True)
        self.bridge.advertise(t.estop)
        return self

    def _on_pose(self, msg: dict) -> None:
        position, euler = decode_pose_stamped(msg)
        with self._lock:
            self.commands.append((time.monotonic(), position, euler))
        self.new_command.set()

    def publish_obs(self, stamp: float | None = None) -> None:
        t, v = self.cfg.topics, self.cfg.ros_version
        stamp = time.time() if stamp is None else stamp
        img = self.rng.integers(0, 255, (self.image_size, self.image_size, 3), dtype=np.uint8)
        for topic in (t.rgb_static, t.rgb_gripper):
            compressed = base_type(topic.type) == "CompressedImage"
            self.bridge.publish(topic, encode_image(img, stamp, "cam", v, compressed=compressed))
        self.bridge.publish(
            t.joint_state,
            encode_joint_state(
                [*self.cfg.arm_joints, *self.cfg.finger_joints], [0.1] * 7 + [0.02, 0.02], stamp, "base", v
            ),
        )
        self.bridge.publish(t.tcp_pose, encode_pose_stamped(self.pose[:3], self.pose[3:], stamp, "base", v))

    def say(self, instruction: str) -> None:
        self.bridge.publish(self.cfg.topics.instruction, {"data": instruction})

    def estop(self) -> None:
        self.bridge.publish(self.cfg.topics.estop, {"data": True})

    def command_count(self) -> int:
        with self._lock:
            return len(self.commands)

    def close(self) -> None:
        self.bridge.close()


class FakeJointRobot:
    """A joint-space arm behind the relay: publishes a frame per camera of ``cfg.cameras`` and its
    JointState, moves to each joint command (JointState or JointTrajectory) at once, and records every
    command as (joint names, positions)."""

    def __init__(self, cfg: BridgeConfig, joints: list[str], start: np.ndarray, image_size: int = 16) -> None:
        self.cfg = cfg
        self.bridge = RosBridge(cfg)
        self.joints = list(joints)
        self.positions = np.asarray(start, dtype=np.float64).copy()
        self.image = np.random.default_rng(0).integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        self.commands: list[tuple[list[str], np.ndarray]] = []
        self._lock = threading.Lock()
        self.new_command = threading.Event()

    def start(self) -> FakeJointRobot:
        t = self.cfg.topics
        self.bridge.connect()
        self.bridge.subscribe(t.joint_command, self._on_command, queue_length=0)
        for topic in (*self.cfg.cameras.values(), t.joint_state):
            self.bridge.advertise(topic)
        self.bridge.advertise(t.instruction, latch=True)
        return self

    def _on_command(self, msg: dict) -> None:
        names, positions = decode_joint_command(msg)
        with self._lock:
            self.commands.append((names, positions))
            target = dict(zip(names, positions))
            self.positions = np.array([target.get(j, p) for j, p in zip(self.joints, self.positions)])
        self.new_command.set()

    def publish_obs(self) -> None:
        stamp, v = time.time(), self.cfg.ros_version
        for topic in self.cfg.cameras.values():
            compressed = base_type(topic.type) == "CompressedImage"
            self.bridge.publish(topic, encode_image(self.image, stamp, "cam", v, compressed=compressed))
        with self._lock:
            positions = self.positions.copy()
        self.bridge.publish(self.cfg.topics.joint_state, encode_joint_state(self.joints, positions, stamp, "base", v))

    def drive(self, steps: int, timeout_s: float = 2.0) -> int:
        """Lockstep: publish a frame, wait for the command it produces; returns how many came."""
        got = 0
        for _ in range(steps):
            self.new_command.clear()
            self.publish_obs()
            got += self.new_command.wait(timeout_s)
        return got

    def say(self, instruction: str) -> None:
        self.bridge.publish(self.cfg.topics.instruction, {"data": instruction})

    def close(self) -> None:
        self.bridge.close()
