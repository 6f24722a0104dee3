"""``roboflamingo ros``: drive a robot through rosbridge with a policy, behind a safety layer.

The robot's graph is reached through ``deploy.link``: rosbridge (``bridge.RosBridge``, no ROS on this
host) or a native ROS 2 node (``rclpy_bridge.RclpyBridge``); both hand this loop rosbridge-style dicts.

Each control cycle (at most ``control.rate_hz``; with ``wait_for_new_obs`` only once per new camera
frame):

1. hold (publish nothing) on e-stop, time limit, a dropped bridge, or an observation that is missing or
   older than ``safety.max_obs_age_s`` by its header stamp;
2. on a new instruction, reset the policy and restart the targets at the measured TCP (end-effector
   space) or joints (joint space);
3. build the observation and step the policy, in process or through ``roboflamingo serve``;
4. check the e-stop again (inference may have taken a while), pass the action through the safety
   filter and publish the command.

What the observation and the command are depends on the robot the policy is for (its description:
``policy.robot``, a checkpoint's ``robot.json``, a server's handshake; ``deploy.robot`` may name the
robot driven, and a policy for another one is refused naming both):

* CALVIN's layout (end-effector space): ``rgb_static``, ``rgb_gripper``, ``robot_obs`` (15), and
  ``scene_obs`` when a simulator provides it; the relative action becomes a clamped, step-capped
  absolute target; the gripper command goes out, then the target pose;
* a joint-space robot (``roboflamingo.deploy.robot_io``): one image topic per camera, the state from
  JointState by joint names and/or the TCP pose; position targets within the joint limits and
  velocity caps, as a ``JointState`` or ``JointTrajectory`` (``deploy.topics.joint_command.type``).

Latency percentiles (decode, inference, observation age at publish, full cycle) are logged every
``control.log_every_s`` and returned in the summary.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roboflamingo.config import require_positive
from roboflamingo.deploy.bridge import make_bridge
from roboflamingo.deploy.config import BridgeConfig
from roboflamingo.deploy.messages import (
    MessageError,
    decode_float_array,
    decode_image,
    decode_joint_state,
    decode_pose_stamped,
    encode_float,
    encode_pose_stamped,
    header_stamp,
)
from roboflamingo.deploy.robot_io import JointIO, node_robot
from roboflamingo.deploy.safety import (
    HOLD_ESTOP,
    TERMINAL_HOLDS,
    Command,
    CommandGate,
    Hold,
    HoldReason,
    LatencyLog,
    SafetyConfig,
    SafetyError,
    SafetyFilter,
)
from roboflamingo.io import atomic_write_json
from roboflamingo.policies import PolicyKind, PolicySourceConfig, policy_source
from roboflamingo.robot import RobotDescription
from roboflamingo.robots.calvin import (
    ARM_JOINT_STATES,
    CALVIN,
    RGB_GRIPPER,
    RGB_STATIC,
    ROBOT_OBS,
    ROBOT_OBS_DIM,
    SCENE_OBS,
    SCENE_OBS_DIM,
)
from roboflamingo.types import Policy

LOG = logging.getLogger("roboflamingo.ros")
COMMAND = "command"
WAITING = "no_new_observation"


@dataclass
class ControlConfig:
    """The control loop: its rate, the images the policy sees, the instruction, when to stop.

    Args:
        rate_hz: upper bound on commands per second.
        wait_for_new_obs: never act twice on the same camera frame (a cycle waits for a newer stamp).
        static_size: the static camera's images are resized to this square size (CALVIN's 200)
            before the policy sees them; 0 keeps the camera's size.
        gripper_size: the same for the gripper camera (CALVIN's 84).
        initial_gripper: ``robot_obs``'s gripper action before the first command of an episode: 1
            open, -1 closed.
        instruction: a fixed instruction; empty: listen on the instruction topic.
        max_commands: stop after this many commands; 0: no limit.
        log_every_s: seconds between the latency percentiles logged while running.
        max_instruction_chars: longer instruction messages are ignored (logged once).
    """

    rate_hz: float = 15.0
    wait_for_new_obs: bool = True
    static_size: int = 200
    gripper_size: int = 84
    initial_gripper: float = 1.0
    instruction: str = ""
    max_commands: int = 0
    log_every_s: float = 5.0
    max_instruction_chars: int = 1000

    def __post_init__(self) -> None:
        require_positive("control.rate_hz", self.rate_hz)
        require_positive("control.max_instruction_chars", self.max_instruction_chars)
        require_positive("control.static_size", self.static_size, allow_zero=True)
        require_positive("control.gripper_size", self.gripper_size, allow_zero=True)
        if self.initial_gripper not in (-1.0, 1.0):
            raise ValueError(f"control.initial_gripper must be -1 or 1, got {self.initial_gripper}")
        require_positive("control.max_commands", self.max_commands, allow_zero=True)
        require_positive("control.log_every_s", self.log_every_s)


@dataclass
class Job:
    """``roboflamingo ros``: the bridge (group ``deploy``), the loop, safety, and the policy source.

    Args:
        policy: a ``roboflamingo serve`` server (the default: ``server=ws://...``), or in process:
            ``checkpoint=<dir>``, ``policy=expert`` or ``policy=random``.
        stats_path: write the run summary (latency percentiles, holds) here as JSON; empty: not written.
    """

    deploy: BridgeConfig = field(default_factory=BridgeConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    policy: PolicySourceConfig = field(default_factory=lambda: PolicySourceConfig(PolicyKind.remote, device="cpu"))
    stats_path: str = ""

    def __post_init__(self) -> None:
        self.policy.check(command="ros")


def make_policy(job: Job) -> Policy:
    return policy_source(job.policy).factory()


def is_estop_release(msg: Any) -> bool:
    """True only for an explicit "not stopped" e-stop message: data false or 0."""
    data = msg.get("data") if isinstance(msg, dict) else None
    return data is False or (type(data) in (int, float) and data == 0)


class _Latest:
    """Newest message per input, written by the network thread and read by the control thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[dict, float]] = {}

    def put(self, key: str, msg: dict, stamp: float) -> None:
        with self._lock:
            self._items[key] = (msg, stamp)

    def stamp(self, key: str) -> float | None:
        with self._lock:
            item = self._items.get(key)
        return None if item is None else item[1]

    def snapshot(self) -> dict[str, tuple[dict, float]]:
        with self._lock:
            return dict(self._items)


class SystemClock:
    """Every time the node reads, and its one way of waiting; tests substitute a fake that advances itself.

    ``now`` is the wall clock because header stamps are wall time; ``monotonic`` paces the loop and
    measures latency, so that a wall-clock step (NTP) neither stalls nor races it.
    """

    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)

    @staticmethod
    def wait(event: threading.Event, timeout_s: float) -> bool:
        """Block until ``event`` is set or ``timeout_s`` passes; True when it was set."""
        return event.wait(timeout_s)


def check_end_effector_robot(robot: RobotDescription) -> None:
    """The end-effector path integrates CALVIN's relative actions (its scales, its gripper); another
    end-effector layout would need its own scales, so it is refused rather than guessed."""
    if robot.shapes() != CALVIN.shapes():
        raise ValueError(f"the ROS node drives end-effector robots in CALVIN's action layout ({CALVIN.summary()}) "
                         f"and joint-space robots; {robot.summary()} is neither")


class ControlNode:
    def __init__(self, job: Job, policy: Policy, bridge: Any = None, clock: Any = None,
                 robot: RobotDescription | None = None) -> None:
        """``robot``: what the policy is for (its source's description); None reads ``policy.robot``
        (a remote policy's comes from its server's handshake), else CALVIN's."""
        self.job = job
        self.policy = policy
        self.robot = node_robot(job.deploy, policy, robot)
        # A joint-space robot reads and writes through JointIO; CALVIN's layout keeps this node's own path.
        self.joints: JointIO | None = None
        if self.robot.action.space == "joint":
            self.joints = JointIO(self.robot, job.deploy, job.safety, 1.0 / job.control.rate_hz)
        else:
            check_end_effector_robot(self.robot)
            job.deploy.check_calvin()
        self.bridge = bridge if bridge is not None else make_bridge(job.deploy, "roboflamingo_control")
        self.clock = clock if clock is not None else SystemClock()
        self.topics = job.deploy.topics
        self.safety = self.joints.safety if self.joints is not None else SafetyFilter(job.safety)
        self.gate = CommandGate(job.safety.max_obs_age_s, job.safety.max_duration_s)
        self.latency = LatencyLog()
        self.holds: Counter[str] = Counter()
        self.commands = 0
        self.latest = _Latest()
        self.instruction = job.control.instruction
        self.active_instruction: str | None = None
        self.last_obs_stamp = -math.inf
        self.last_gripper = job.control.initial_gripper
        # Inputs by key (a stale or missing one is named by its key) and the command topics, in order.
        if self.joints is not None:
            self.inputs, self.plain_inputs = self.joints.stamped, self.joints.plain
            self.outputs = self.joints.outputs
        else:
            named = {k: getattr(self.topics, k) for k in ("rgb_static", "rgb_gripper", "tcp_pose", "joint_state",
                                                          "gripper_width", "scene_obs")}
            named = {k: topic for k, topic in named.items() if topic.name}
            self.inputs = {k: named[k] for k in ("rgb_static", "rgb_gripper", "tcp_pose", "joint_state") if k in named}
            self.plain_inputs = {k: named[k] for k in ("gripper_width", "scene_obs") if k in named}
            self.outputs = [self.topics.gripper_command, self.topics.target_pose]
        self.stamped = list(self.inputs)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.ready = threading.Event()  # set once every subscription has been sent
        self.estop_at: float | None = None  # clock.monotonic() at the first e-stop message
        self._warned: set[str] = set()

    # -- inputs (network thread) -----------------------------------------------------------------
    def _stamped_callback(self, key: str):
        def callback(msg: dict) -> None:
            stamp = header_stamp(msg)
            if stamp is None:
                # Without a stamp the age check would be meaningless; treat it as arriving now.
                self._warn_once(f"nostamp:{key}", f"{key} messages carry no header stamp; using receive time")
                stamp = self.clock.now()
            elif not math.isfinite(stamp):  # kept as NaN: the gate holds on it as stale
                self._warn_once(f"badstamp:{key}", f"a {key} message has a header stamp that is not a finite "
                                "time; holding until a correctly stamped one arrives")
            self.latest.put(key, msg, stamp)
            self._wake.set()

        return callback

    def _plain_callback(self, key: str):
        def callback(msg: dict) -> None:
            self.latest.put(key, msg, self.clock.now())
            self._wake.set()

        return callback

    def _on_instruction(self, msg: dict) -> None:
        text = msg.get("data")
        if isinstance(text, str):
            if len(text) > self.job.control.max_instruction_chars:
                # A megabyte "instruction" would hold the tokenizer (and the loop) for seconds.
                self._warn_once("long_instruction", f"ignoring an instruction of {len(text)} characters "
                                f"(control.max_instruction_chars={self.job.control.max_instruction_chars})")
                return
            self.instruction = text.strip()
            self._wake.set()

    def _on_estop(self, msg: dict) -> None:
        # Anything but an explicit "off" stops the arm: {"data": 1} from a bridge that sends Bool
        # as an int, or a malformed message, must not be ignored on the one topic that stops it.
        if not is_estop_release(msg):
            if not self.gate.estopped:
                self.estop_at = self.clock.monotonic()
                LOG.error("E-STOP received: no further commands")
            self.gate.engage_estop()
            self._wake.set()

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOG.warning(text)

    def start(self) -> None:
        t = self.topics
        self.bridge.connect()
        # The e-stop is subscribed first so it is live before anything can be commanded.
        if t.estop.name:
            self.bridge.subscribe(t.estop, self._on_estop, queue_length=0)
        for key in self.stamped:
            self.bridge.subscribe(self.inputs[key], self._stamped_callback(key))
        for key, topic in self.plain_inputs.items():
            self.bridge.subscribe(topic, self._plain_callback(key))
        if t.instruction.name and not self.job.control.instruction:
            self.bridge.subscribe(t.instruction, self._on_instruction, queue_length=0)
        for topic in self.outputs:
            self.bridge.advertise(topic)
        self.gate.start(self.clock.now())
        self.ready.set()

    # -- one cycle (control thread) --------------------------------------------------------------
    def _hold(self, hold: Hold | str) -> str:
        hold = hold if isinstance(hold, Hold) else Hold(HoldReason(hold))  # an unknown reason raises
        if hold.reason != WAITING:
            self.holds[hold.reason] += 1
        return str(hold)

    def _restart_episode(self) -> None:
        self.active_instruction = None

    def build_observation(
        self, items: dict[str, tuple[dict, float]]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """CALVIN observation from the newest messages, and the measured TCP pose (6)."""
        c, d = self.job.control, self.job.deploy
        position, euler = decode_pose_stamped(items["tcp_pose"][0])
        joints, width = np.zeros(len(d.arm_joints)), None
        if "joint_state" in items:
            joints, width = decode_joint_state(items["joint_state"][0], d.arm_joints, d.finger_joints)
        if "gripper_width" in items:
            width = float(decode_float_array(items["gripper_width"][0], 1)[0])
        if width is None:
            self._warn_once("width", "no gripper width (finger joints or gripper_width topic); using 0")
            width = 0.0
        robot_obs = np.concatenate([position, euler, [width], joints, [self.last_gripper]]).astype(np.float32)
        if robot_obs.shape != (ROBOT_OBS_DIM,):  # joints come from deploy.arm_joints, which a config sets
            raise ValueError(f"robot_obs from the robot's topics has {robot_obs.size} values, expected "
                             f"{ROBOT_OBS_DIM}: deploy.arm_joints names {len(d.arm_joints)} joints (CALVIN's arm has "
                             f"{ARM_JOINT_STATES.stop - ARM_JOINT_STATES.start})")
        obs = {
            RGB_STATIC: decode_image(items["rgb_static"][0], c.static_size or None),
            RGB_GRIPPER: decode_image(items["rgb_gripper"][0], c.gripper_size or None),
            ROBOT_OBS: robot_obs,
        }
        if "scene_obs" in items:
            obs[SCENE_OBS] = decode_float_array(items["scene_obs"][0], SCENE_OBS_DIM).astype(np.float32)
        return obs, np.concatenate([position, euler])

    def cycle(self) -> str:
        """One decision: returns ``"command"`` or the reason for holding."""
        if getattr(self.bridge, "refused", ""):
            return self._hold(HoldReason.COMMAND_REFUSED)
        now = self.clock.now()
        stamps = {k: self.latest.stamp(k) for k in self.stamped}
        reason = self.gate.check(now, stamps)
        if reason is None and not self.bridge.connected:
            reason = "disconnected"
        if reason is not None:
            if reason == "disconnected":
                # The arm may have been moved meanwhile: resume from the measured pose, not an old target.
                # A stale frame only pauses; the robot keeps tracking the last target, as CALVIN's does.
                self._restart_episode()
            return self._hold(reason)
        obs_stamp = min(stamps.values())  # type: ignore[type-var]
        if self.job.control.wait_for_new_obs and obs_stamp <= self.last_obs_stamp:
            return self._hold(WAITING)
        instruction = self.instruction
        if not instruction:
            return self._hold("no_instruction")
        t0 = self.clock.monotonic()
        items = self.latest.snapshot()
        if self.topics.scene_obs.name and "scene_obs" not in items:
            # On a ROS 2 graph topics arrive in no set order: the camera set can be complete before the
            # first scene state, which the policy that asked for the topic (the expert) cannot do without.
            return self._hold(Hold(HoldReason.NO_OBSERVATION, "scene_obs"))
        try:
            if instruction != self.active_instruction:
                self.last_gripper = self.job.control.initial_gripper
            if self.joints is not None:
                obs, start = self.joints.observation(items)  # measured joints
            else:
                obs, start = self.build_observation(items)  # measured tcp pose
            if instruction != self.active_instruction:
                self.safety.reset(start)
                self.policy.reset()
                self.active_instruction = instruction
                LOG.info("episode start: %r", instruction)
        except (MessageError, KeyError, TypeError, ValueError) as e:
            # A malformed robot message (e.g. JointState positions of None) holds; it never kills the node.
            self._warn_once(f"bad:{type(e).__name__}", f"cannot build an observation: {e}"[:500])
            return self._hold("bad_message")
        except SafetyError as e:
            self._warn_once("workspace", str(e))
            return self._hold("outside_workspace")
        t1 = self.clock.monotonic()
        try:
            action = self.policy.step(obs, instruction)
        except Exception as e:  # a remote policy can fail; hold and start over cleanly
            LOG.warning("policy step failed: %s", e)
            self._restart_episode()
            return self._hold("policy_error")
        t2 = self.clock.monotonic()
        if self.gate.estopped:  # the e-stop may have arrived during inference
            return self._hold(HOLD_ESTOP)
        try:
            cmd = self.safety.apply(action)
        except SafetyError as e:
            LOG.warning("unsafe action: %s", e)
            return self._hold("bad_action")
        t_pub = self.clock.now()
        if t_pub - obs_stamp > self.job.safety.max_obs_age_s:
            # Inference took so long that the action answers a scene that is gone (diffusion_policy drops
            # such actions too); the next fresh frame gets a new one.
            return self._hold("stale_action")
        published = (self.joints.publish(self.bridge, cmd, t_pub) if self.joints is not None
                     else self._publish_target_pose(cmd, t_pub))
        if not published:
            self._restart_episode()
            if getattr(self.bridge, "refused", ""):
                return self._hold(HoldReason.COMMAND_REFUSED)
            return self._hold("disconnected")
        self.last_obs_stamp = obs_stamp
        self.commands += 1
        t3 = self.clock.monotonic()
        self.latency.add("decode_ms", (t1 - t0) * 1000)
        self.latency.add("infer_ms", (t2 - t1) * 1000)
        self.latency.add("cycle_ms", (t3 - t0) * 1000)
        self.latency.add("obs_age_ms", (t_pub - obs_stamp) * 1000)
        return COMMAND

    def _publish_target_pose(self, cmd: Command, t_pub: float) -> bool:
        """CALVIN's end-effector command: the gripper, then the target pose; False when the bridge is down."""
        d = self.job.deploy
        gripper_msg = encode_float(cmd.gripper, self.topics.gripper_command.type)
        pose_msg = encode_pose_stamped(cmd.position, cmd.euler, t_pub, d.frame_id, d.ros_version)
        # Gripper first: a robot that acts on the pose then sees the matching gripper state.
        if not (
            self.bridge.publish(self.topics.gripper_command, gripper_msg)
            and self.bridge.publish(self.topics.target_pose, pose_msg)
        ):
            return False
        self.last_gripper = cmd.gripper
        return True

    # -- loop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> dict[str, Any]:
        period = 1.0 / self.job.control.rate_hz
        result = ""
        try:
            self.start()
            clock = self.clock
            next_allowed = clock.monotonic()
            next_log = clock.monotonic() + self.job.control.log_every_s
            while not self._stop.is_set():
                delay = next_allowed - clock.monotonic()
                if delay > 0 and clock.wait(self._stop, delay):
                    break
                self._wake.clear()
                started = clock.monotonic()
                result = self.cycle()
                if result == COMMAND:
                    next_allowed = started + period
                    if self.job.control.max_commands and self.commands >= self.job.control.max_commands:
                        result = "max_commands"
                        break
                elif result in TERMINAL_HOLDS:
                    break
                else:
                    clock.wait(self._wake, period)  # any new message ends the wait early
                if clock.monotonic() >= next_log:
                    next_log += self.job.control.log_every_s
                    LOG.info(
                        "commands=%d holds=%s latency=%s",
                        self.commands,
                        dict(self.holds),
                        json.dumps(self.latency.summary()),
                    )
        finally:
            self.bridge.close()
        if self._stop.is_set():
            result = "stopped"
        return self.summary(result)

    def summary(self, ended: str = "") -> dict[str, Any]:
        # A refusal comes back after the publish it refuses: those publishes never reached the robot.
        refusals = dict(getattr(self.bridge, "refusals", None) or {})
        return {
            "ended": ended,
            "commands": self.commands - refusals.get(self.topics.target_pose.name, 0),
            "refused_publishes": sum(refusals.values()),
            "holds": dict(self.holds),
            "bridge_drops": getattr(self.bridge, "drops", 0),
            "latency": self.latency.summary(),
        }


def interruptible() -> None:
    """SIGINT and SIGTERM end the node as Ctrl-C does (summary written, commands stopped). A process
    started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
    never raises KeyboardInterrupt: the node would ignore a launcher's stop and lose its summary."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def run(job: Job) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from roboflamingo.deploy.client import PolicyServerError

    try:
        source = policy_source(job.policy)
        policy = source.factory()
    except ValueError as e:  # a weak or exposed token file, a bad checkpoint or its robot.json
        print(f"roboflamingo ros: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # connection refused, unreachable host, handshake timeout, TLS failure
        print(f"roboflamingo ros: cannot reach the policy server at {job.policy.server}: {e}", file=sys.stderr)
        return 2
    except PolicyServerError as e:  # e.g. server_full or unauthorized, answered at the handshake
        print(f"roboflamingo ros: the policy server at {job.policy.server} refused the session: {e}", file=sys.stderr)
        return 2
    try:
        node = ControlNode(job, policy, robot=source.robot)
    except (ImportError, ValueError) as e:  # rclpy missing (deploy.link=rclpy); a policy for another robot; the rosauth secret file
        print(f"roboflamingo ros: {e}", file=sys.stderr)
        return 2
    interruptible()
    try:
        summary = node.run()
    except KeyboardInterrupt:
        node.stop()
        summary = node.summary("interrupted")
    except TimeoutError as e:  # roslibpy's RosTimeoutError: no bridge at deploy.host:deploy.port
        d = job.deploy
        print(f"roboflamingo ros: no rosbridge at ws://{d.host}:{d.port} ({e})", file=sys.stderr)
        return 2
    if job.stats_path:
        atomic_write_json(job.stats_path, summary)
    print(json.dumps(summary), flush=True)
    # 3: stopped for safety (an e-stop, or another session owns the command topics)
    return 3 if summary["ended"] in (HOLD_ESTOP, HoldReason.COMMAND_REFUSED) else 0
