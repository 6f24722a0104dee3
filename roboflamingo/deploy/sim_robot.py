"""``roboflamingo sim-robot``: the tabletop simulator behind rosbridge, playing the part of a real arm.

It publishes what a robot driver would (camera images, ``JointState``, the TCP ``PoseStamped``, all
stamped with the wall clock), plus the operator's instruction and, on a separate privileged topic, the
simulator's ``scene_obs`` for the scripted expert. Each target-pose command is applied as one 30 Hz
environment step: the absolute target is turned back into CALVIN's relative action against the env's
own accumulated target, so a policy behind the ROS path acts exactly as it would in process. After each
step the new observation goes out; without commands the current one is re-published every
``idle_republish_s`` so a node that joins late sees fresh stamps. With ``serve_bridge`` it also starts
the in-process rosbridge relay, so the whole closed loop runs on one machine without ROS.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from roboflamingo.config import require_positive
from roboflamingo.deploy.bridge import make_bridge
from roboflamingo.deploy.config import BridgeConfig
from roboflamingo.deploy.messages import (
    base_type,
    decode_float_array,
    decode_pose_stamped,
    encode_float_array,
    encode_image,
    encode_joint_state,
    encode_pose_stamped,
)
from roboflamingo.io import atomic_write_json
from roboflamingo.robots.calvin import (
    ARM_JOINT_STATES,
    GRIPPER_ACTION,
    GRIPPER_WIDTH,
    RGB_GRIPPER,
    RGB_STATIC,
    ROBOT_OBS,
    SCENE_OBS,
    TCP_ORN,
    TCP_POS,
    relative_action,
)
from roboflamingo.sim.config import EnvConfig

LOG = logging.getLogger("roboflamingo.sim_robot")


@dataclass
class Job:
    """``roboflamingo sim-robot``: the env (group ``env``), the bridge (group ``deploy``) and the episode.

    Args:
        task: the task to perform; empty: the first task of the chain drawn with ``chain_seed``.
        chain_seed: which CALVIN-style chain gives the initial state (and, without ``task``, the task).
        seed: the environment's reset seed.
        instruction: the sentence published as the instruction; empty: the task's evaluation sentence.
        publish_instruction: play the operator: publish the instruction on its topic.
        jpeg_quality: JPEG quality (1-100) of the ``CompressedImage`` camera frames.
        idle_republish_s: without commands, re-publish the current observation this often, so a node
            that joins late sees fresh stamps.
        max_steps: commands applied before giving up; 0: ``env.max_episode_steps``.
        duration_s: wall-clock bound on the episode, in seconds.
        stop_on_success: end the episode when the task oracle reports the task done.
        serve_bridge: start the in-process rosbridge relay on ``deploy.host:deploy.port`` (no ROS needed).
        result_path: write the episode's result (success, steps, why it ended) here as JSON; empty:
            not written.
    """

    deploy: BridgeConfig = field(default_factory=BridgeConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    task: str = ""
    chain_seed: int = 0
    seed: int = 0
    instruction: str = ""
    publish_instruction: bool = True
    jpeg_quality: int = 90
    idle_republish_s: float = 0.25
    max_steps: int = 0
    duration_s: float = 300.0
    stop_on_success: bool = True
    serve_bridge: bool = False
    result_path: str = ""

    def __post_init__(self) -> None:
        require_positive("jpeg_quality", self.jpeg_quality)
        if self.jpeg_quality > 100:
            raise ValueError(f"jpeg_quality must be <= 100, got {self.jpeg_quality}")
        require_positive("idle_republish_s", self.idle_republish_s)
        require_positive("max_steps", self.max_steps, allow_zero=True)
        require_positive("duration_s", self.duration_s)
        if self.serve_bridge and self.deploy.link != "rosbridge":
            raise ValueError("serve_bridge starts a rosbridge relay; it needs deploy.link=rosbridge, "
                             f"got deploy.link={self.deploy.link}")
        self.deploy.check_calvin()  # the tabletop is CALVIN's robot: its topics and the Panda's joints


class Ended(StrEnum):
    """Why a sim-robot episode ended (the result JSON's ``ended``)."""

    SUCCESS = "success"  # the oracle reported the task (with stop_on_success)
    MAX_STEPS = "max_steps"  # commands applied, or the env truncated the episode
    DURATION = "duration"  # the wall-clock bound passed
    STOPPED = "stopped"  # stop() was called


class SimRobot:
    def __init__(self, job: Job, bridge: Any = None) -> None:
        from roboflamingo.sim.env import TabletopEnv

        self.job = job
        self.topics = job.deploy.topics
        self.env = TabletopEnv(job.env)
        self.bridge = bridge if bridge is not None else make_bridge(job.deploy, "roboflamingo_sim_robot")
        self.task, self.instruction, reset_options = self._episode()
        self.obs, _ = self.env.reset(seed=job.seed, options=reset_options)
        self.gripper = float(self.obs[ROBOT_OBS][GRIPPER_ACTION])
        self.steps = 0
        self.success = False
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None
        self._command = threading.Event()
        self._stop = threading.Event()
        self.published = 0

    def _episode(self) -> tuple[str, str, dict]:
        from roboflamingo.sim.chains import initial_state_to_obs, sample_chains
        from roboflamingo.sim.instructions import load_instructions

        chain = sample_chains(1, self.job.chain_seed)[0]
        task = self.job.task or chain.tasks[0]
        robot_obs, scene_obs = initial_state_to_obs(chain.initial_state, self.env.scene)
        instruction = self.job.instruction
        if not instruction:
            sentences = load_instructions("eval")
            if task not in sentences:
                raise ValueError(f"task '{task}' has no evaluation instruction (known: {sorted(sentences)})")
            instruction = sentences[task][0]
        return task, instruction, {"robot_obs": robot_obs, "scene_obs": scene_obs, "task": task}

    # -- bridge callbacks (network thread) ---------------------------------------------------------
    def _on_pose(self, msg: dict) -> None:
        try:
            position, euler = decode_pose_stamped(msg)
        except ValueError as e:
            LOG.warning("ignoring a bad target pose: %s", e)
            return
        with self._lock:
            self._pending = np.concatenate([position, euler])
        self._command.set()

    def _on_gripper(self, msg: dict) -> None:
        try:
            value = float(decode_float_array(msg)[0])
        except (ValueError, IndexError) as e:
            LOG.warning("ignoring a bad gripper command: %s", e)
            return
        with self._lock:
            self.gripper = value

    # -- observation out ---------------------------------------------------------------------------
    def publish_observation(self) -> None:
        t, d, job = time.time(), self.job.deploy, self.job
        obs = self.obs
        topics = self.topics
        robot_obs = np.asarray(obs[ROBOT_OBS], dtype=np.float64)
        msgs = [
            (
                topics.rgb_static,
                encode_image(
                    obs[RGB_STATIC],
                    t,
                    "static_camera",
                    d.ros_version,
                    base_type(topics.rgb_static.type) == "CompressedImage",
                    job.jpeg_quality,
                ),
            ),
            (
                topics.rgb_gripper,
                encode_image(
                    obs[RGB_GRIPPER],
                    t,
                    "gripper_camera",
                    d.ros_version,
                    base_type(topics.rgb_gripper.type) == "CompressedImage",
                    job.jpeg_quality,
                ),
            ),
            (
                topics.tcp_pose,
                encode_pose_stamped(robot_obs[TCP_POS], robot_obs[TCP_ORN], t, d.frame_id, d.ros_version),
            ),
        ]
        if topics.joint_state.name:
            half = robot_obs[GRIPPER_WIDTH] / 2
            msgs.append(
                (
                    topics.joint_state,
                    encode_joint_state(
                        [*d.arm_joints, *d.finger_joints],
                        [*robot_obs[ARM_JOINT_STATES], half, half],
                        t,
                        d.frame_id,
                        d.ros_version,
                    ),
                )
            )
        if topics.gripper_width.name:
            msgs.append((topics.gripper_width, {"data": float(robot_obs[GRIPPER_WIDTH])}))
        if topics.scene_obs.name:
            msgs.append((topics.scene_obs, encode_float_array(obs[SCENE_OBS])))
        if job.publish_instruction and topics.instruction.name:
            msgs.append((topics.instruction, {"data": self.instruction}))
        # Privileged state and the instruction first, so the stamped set completes the observation.
        msgs.sort(key=lambda m: m[0].name not in (topics.scene_obs.name, topics.instruction.name))
        for topic, msg in msgs:
            self.bridge.publish(topic, msg)
        self.published += 1

    def _current_target(self) -> np.ndarray:
        return np.concatenate([self.env.target_pos, self.env.target_euler])

    def apply(self, target_pose: np.ndarray) -> bool:
        """One env step toward ``target_pose``; returns True when the episode is over."""
        with self._lock:
            gripper = self.gripper
        action = relative_action(target_pose, self._current_target(), gripper)
        self.obs, _, terminated, truncated, _ = self.env.step(action)
        self.steps += 1
        self.success = self.success or bool(terminated)
        max_steps = self.job.max_steps or self.job.env.max_episode_steps
        return (self.success and self.job.stop_on_success) or truncated or self.steps >= max_steps

    # -- loop --------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._command.set()

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        ended = Ended.DURATION
        try:
            self._connect()
            LOG.info("sim robot: task %s, instruction %r", self.task, self.instruction)
            self.publish_observation()
            while time.monotonic() - started < self.job.duration_s:
                got = self._command.wait(self.job.idle_republish_s)
                if self._stop.is_set():
                    ended = Ended.STOPPED
                    break
                self._command.clear()
                with self._lock:
                    target, self._pending = self._pending, None
                if got and target is not None:
                    done = self.apply(target)
                    self.publish_observation()
                    if done:
                        ended = Ended.SUCCESS if self.success else Ended.MAX_STEPS
                        break
                else:
                    self.publish_observation()
        finally:
            self.bridge.close()
            self.env.close()
        return {
            "task": self.task,
            "instruction": self.instruction,
            "success": self.success,
            "steps": self.steps,
            "ended": ended,
            "seconds": round(time.monotonic() - started, 3),
        }

    def _connect(self) -> None:
        t = self.topics
        self.bridge.connect()
        self.bridge.subscribe(t.gripper_command, self._on_gripper, queue_length=0)
        self.bridge.subscribe(t.target_pose, self._on_pose, queue_length=0)
        for key in ("rgb_static", "rgb_gripper", "tcp_pose", "joint_state", "gripper_width", "scene_obs"):
            if getattr(t, key).name:
                self.bridge.advertise(getattr(t, key))
        if self.job.publish_instruction and t.instruction.name:
            self.bridge.advertise(t.instruction, latch=True)


def run(job: Job) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    relay = None
    if job.serve_bridge:
        from roboflamingo.deploy.auth import ROSAUTH_ENV, read_secret
        from roboflamingo.deploy.relay import RosbridgeRelay

        try:
            secret = read_secret("", job.deploy.rosauth_secret_file, ROSAUTH_ENV, what="rosauth secret")
            t = job.deploy.topics
            relay = RosbridgeRelay(
                job.deploy.host, job.deploy.port, secret=secret,
                command_topics=(t.target_pose.name, t.gripper_command.name),
            ).start()
        except ValueError as e:  # a public bind without a secret, a weak or exposed secret file
            print(f"roboflamingo sim-robot: {e}", file=sys.stderr)
            return 2
        print(f"rosbridge relay on ws://{job.deploy.host}:{relay.port}", flush=True)
    try:
        result = SimRobot(job).run()
    except ImportError as e:  # deploy.link=rclpy without rclpy
        print(f"roboflamingo sim-robot: {e}", file=sys.stderr)
        return 2
    except TimeoutError as e:  # roslibpy's RosTimeoutError: no bridge at deploy.host:deploy.port
        d = job.deploy
        print(f"roboflamingo sim-robot: no rosbridge at ws://{d.host}:{d.port} ({e})", file=sys.stderr)
        return 2
    finally:
        if relay is not None:
            relay.stop()
    if job.result_path:
        atomic_write_json(job.result_path, result)
    print(json.dumps(result), flush=True)
    return 0 if result["success"] else 1
