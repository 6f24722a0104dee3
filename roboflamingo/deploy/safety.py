"""The safety layer between a policy's relative actions and the commands a robot receives.

Pure and clock-free (time is passed in), so every guarantee is checked by property tests:

* ``SafetyFilter`` turns 7-d relative actions into absolute end-effector targets the way CALVIN's
  ``use_target_pose`` does (``pos += a[:3] * 0.02``, ``euler += a[3:6] * 0.05``, accumulated on a target
  that starts at the measured TCP), multiplied by ``action_scale`` for cautious first runs, then
  clamps the position into the workspace box and caps the change from the previous command (Euclidean
  translation; rotation per axis and as the composed rotation angle). Because each command is the
  previous one plus a capped step toward a point inside the (convex) box, no command ever leaves the
  box or moves further than the caps.
* ``JointSafetyFilter`` does the same for a joint-space robot in its own units: joint limits (the
  description's and ``joint_min``/``joint_max``) and a joint-velocity cap per control period.
* ``CommandGate`` decides each cycle whether a command may go out at all: never after the e-stop
  (latched), never after the time limit, and not while any required observation is missing, older
  than ``max_obs_age_s`` by its header stamp, stamped more than ``max_obs_age_s`` ahead of the
  clock, or stamped with no finite time at all (stale or future data means hold, i.e. send nothing).
* ``LatencyLog`` keeps per-stage timings and reports percentiles.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from roboflamingo.config import require_positive
from roboflamingo.deploy.messages import quat_from_euler
from roboflamingo.robot import RobotDescription
from roboflamingo.robots.calvin import (
    ACTION_DIM,
    GRIPPER_CLOSE,
    GRIPPER_INDEX,
    GRIPPER_OPEN,
    POSE_DIM,
    TCP_ORN,
    TCP_POS,
    action_deltas,
    integrate_action,
)
from roboflamingo.types import wrap_angle

# Physical sense for the limits (issue 31): a limit beyond its bound is refused unless it is named in
# ``safety.beyond_bounds``, and then logged. Tabletop arms reach about 0.85 m (Franka) to 1.3 m (UR10),
# so no workspace corner is 2 m from the base; a Franka moves at most 1.7 m/s and 2.5 rad/s, so one
# command at a 15 Hz control rate never needs 0.1 m or 0.5 rad; CALVIN-style policies act on frames at
# most a few hundred ms old, so an observation 2 s old describes a scene that is gone.
BOUNDS = {
    "workspace": 2.0,  # |coordinate| of either workspace corner, m
    "max_step_m": 0.1,
    "max_step_rad": 0.5,
    "max_obs_age_s": 2.0,
}
LOG = logging.getLogger("roboflamingo.safety")


@dataclass
class SafetyConfig:
    """Limits applied to every command; positions in the robot base frame (m), angles in rad.

    Args:
        workspace_min, workspace_max: corners of the box every commanded position stays in; each
            coordinate within +-2 m of the base (``BOUNDS``).
        max_step_m: largest translation between consecutive commands, m (at most 0.1).
        max_step_rad: largest rotation between consecutive commands, rad (at most 0.5).
        action_scale: multiplies every action, e.g. 0.2-0.5 for a first run on new hardware (at most 1).
        max_obs_age_s: observations older than this by their header stamp mean hold, s (at most 2).
        max_duration_s: stop commanding after this long, s; 0 = no limit.
        beyond_bounds: the limits allowed past their physical bound (workspace, max_step_m,
            max_step_rad, max_obs_age_s), e.g. ``[max_step_m]`` for a fast gantry; each one is
            logged as a warning. Empty: every limit must be within its bound.
        joint_min, joint_max: lower and upper limit of each action dimension's joint, in the
            robot's units, one per action dimension (binary grippers' entries unused); they tighten
            the description's limits (action.low/high for absolute joint targets, state.low/high of
            the same-named joint for relative ones). Every joint needs a finite limit from one of the
            two. Joint-space robots only (their description's ``action.space: joint``), which are
            limited in their own units instead of the workspace box and step caps.
        max_joint_velocity: the fastest any joint may be commanded to move, in the robot's units per
            second: one value for all joints or one per action dimension. Each command moves a joint
            by at most this over one control period (1 / control.rate_hz). Required for joint space.
    """

    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.9, 0.25])
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.5, 1.0])
    max_step_m: float = 0.035
    max_step_rad: float = 0.09
    action_scale: float = 1.0
    max_obs_age_s: float = 0.5
    max_duration_s: float = 0.0
    joint_min: list[float] = field(default_factory=list)
    joint_max: list[float] = field(default_factory=list)
    max_joint_velocity: list[float] = field(default_factory=list)
    beyond_bounds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("workspace_min", "workspace_max"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"safety.{name} must be 3 finite numbers (x, y, z), got {list(values)}")
        for i, axis in enumerate("xyz"):
            if self.workspace_min[i] >= self.workspace_max[i]:
                raise ValueError(
                    f"safety.workspace_min.{axis} must be < workspace_max.{axis}, "
                    f"got {self.workspace_min[i]} >= {self.workspace_max[i]}"
                )
        require_positive("safety.max_step_m", self.max_step_m)
        require_positive("safety.max_step_rad", self.max_step_rad)
        require_positive("safety.action_scale", self.action_scale)
        if self.action_scale > 1.0:
            raise ValueError(f"safety.action_scale must be <= 1, got {self.action_scale}")
        require_positive("safety.max_obs_age_s", self.max_obs_age_s)
        require_positive("safety.max_duration_s", self.max_duration_s, allow_zero=True)
        for name in ("joint_min", "joint_max"):
            values = getattr(self, name)
            if any(math.isnan(v) for v in values):
                raise ValueError(f"safety.{name} must hold numbers, got {list(values)}")
        if self.joint_min and self.joint_max and len(self.joint_min) != len(self.joint_max):
            raise ValueError(f"safety.joint_min and safety.joint_max must have one value per action dimension "
                             f"each, got {len(self.joint_min)} and {len(self.joint_max)}")
        for i, (lo, hi) in enumerate(zip(self.joint_min, self.joint_max)):
            if lo >= hi:
                raise ValueError(f"safety.joint_min[{i}] must be < safety.joint_max[{i}], got {lo} >= {hi}")
        if not all(math.isfinite(v) and v > 0 for v in self.max_joint_velocity):
            raise ValueError(f"safety.max_joint_velocity must hold positive finite numbers, "
                             f"got {list(self.max_joint_velocity)}")
        self._check_bounds()

    def _check_bounds(self) -> None:
        unknown = sorted(set(self.beyond_bounds) - set(BOUNDS))
        if unknown:
            raise ValueError(f"safety.beyond_bounds names {unknown}; it may name {sorted(BOUNDS)}")
        corner = max(abs(v) for v in (*self.workspace_min, *self.workspace_max))
        values = {"workspace": corner, **{k: getattr(self, k) for k in BOUNDS if k != "workspace"}}
        for name, value in values.items():
            if value <= BOUNDS[name]:
                continue
            what = "a coordinate of safety.workspace_min/workspace_max" if name == "workspace" else f"safety.{name}"
            if name not in self.beyond_bounds:
                raise ValueError(
                    f"{what} is {value}, beyond its physical bound {BOUNDS[name]}; if the robot really "
                    f"needs it, add {name} to safety.beyond_bounds (logged)"
                )
            LOG.warning("SAFETY LIMIT BEYOND ITS BOUND: %s is %s (bound %s), allowed by safety.beyond_bounds",
                        what, value, BOUNDS[name])


class SafetyError(RuntimeError):
    """The filter cannot produce a safe command (e.g. the robot starts outside the workspace)."""


def rotation_angle(euler_a: np.ndarray, euler_b: np.ndarray) -> float:
    """Angle (rad) of the rotation between two orientations given as euler xyz."""
    qa, qb = quat_from_euler(euler_a), quat_from_euler(euler_b)
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(qa, qb)))))


def cap_rotation(prev: np.ndarray, turn: np.ndarray, max_rad: float) -> np.ndarray:
    """``prev + s * turn`` (euler xyz) with the largest s in [0, 1] whose rotation is <= ``max_rad``.

    Capping each euler angle is not enough: increments of a on all three axes compose to a rotation
    of up to about 2.2 a (more near gimbal lock), so the composed rotation is capped too. Shrinking
    the turn (rather than slerping) keeps every per-axis bound and CALVIN's accumulation otherwise.
    """
    full = wrap_angle(prev + turn)
    if rotation_angle(prev, full) <= max_rad:
        return full
    lo, hi = 0.0, 1.0  # lo always satisfies the cap (s = 0 is no rotation at all)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if rotation_angle(prev, wrap_angle(prev + mid * turn)) <= max_rad:
            lo = mid
        else:
            hi = mid
    return wrap_angle(prev + lo * turn)


@dataclass
class Command:
    """An absolute end-effector target: position (3), euler xyz (3), gripper -1 close / +1 open."""

    position: np.ndarray
    euler: np.ndarray
    gripper: float

    @property
    def pose(self) -> np.ndarray:
        return np.concatenate([self.position, self.euler])


class SafetyFilter:
    def __init__(self, cfg: SafetyConfig) -> None:
        self.cfg = cfg
        self.low = np.asarray(cfg.workspace_min, dtype=np.float64)
        self.high = np.asarray(cfg.workspace_max, dtype=np.float64)
        self.target: np.ndarray | None = None

    def in_workspace(self, position: np.ndarray) -> bool:
        p = np.asarray(position, dtype=np.float64)
        return bool(np.all(p >= self.low) and np.all(p <= self.high))

    def reset(self, tcp_pose: np.ndarray) -> None:
        """Start accumulating from the measured TCP pose (xyz, euler xyz), as CALVIN does on reset."""
        pose = np.asarray(tcp_pose, dtype=np.float64).reshape(-1)
        if pose.shape != (POSE_DIM,) or not np.all(np.isfinite(pose)):
            raise SafetyError(f"tcp pose must be {POSE_DIM} finite numbers, got {pose}")
        if not self.in_workspace(pose[TCP_POS]):
            # Jumping into the box would exceed the step cap; a person must move the arm first.
            raise SafetyError(
                f"tcp position {np.round(pose[TCP_POS], 4).tolist()} is outside the workspace box "
                f"{self.low.tolist()}..{self.high.tolist()}; move the arm inside before starting"
            )
        self.target = np.concatenate([pose[TCP_POS], wrap_angle(pose[TCP_ORN])])

    def apply(self, action: np.ndarray) -> Command:
        if self.target is None:
            raise SafetyError("SafetyFilter.apply before reset(tcp_pose)")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,) or not np.all(np.isfinite(a)):
            raise SafetyError(f"action must be {ACTION_DIM} finite numbers, got {a}")
        a = np.clip(a, -1.0, 1.0)
        scale = self.cfg.action_scale
        prev_pos, prev_orn = self.target[TCP_POS], self.target[TCP_ORN]

        # where CALVIN's integration puts the target (the position; the turn is capped below instead)
        desired, _ = integrate_action(prev_pos, prev_orn, a, self.low, self.high, scale)
        step = desired - prev_pos
        norm = float(np.linalg.norm(step))
        if norm > self.cfg.max_step_m:
            step *= self.cfg.max_step_m / norm
        position = np.clip(prev_pos + step, self.low, self.high)  # guards against rounding only

        turn = np.clip(wrap_angle(action_deltas(a, scale)[1]), -self.cfg.max_step_rad, self.cfg.max_step_rad)
        euler = cap_rotation(prev_orn, turn, self.cfg.max_step_rad)

        gripper = GRIPPER_OPEN if a[GRIPPER_INDEX] >= 0 else GRIPPER_CLOSE
        self.target = np.concatenate([position, euler])
        return Command(position.copy(), euler.copy(), gripper)


@dataclass
class JointCommand:
    """Position targets of a joint-space robot, one per action dimension in the robot's units; a binary
    gripper's entry is exactly its description's ``close`` or ``open``."""

    positions: np.ndarray


def joint_limits(robot: RobotDescription, cfg: SafetyConfig) -> tuple[np.ndarray, np.ndarray]:
    """The position limits of each action dimension's joint: the description's, tightened by
    ``safety.joint_min/joint_max``; a continuous dimension left without a finite limit is an error."""
    a = robot.action
    low, high = np.full(a.dim, -np.inf), np.full(a.dim, np.inf)
    if a.mode == "absolute":
        low, high = np.array(a.low), np.array(a.high)
    else:  # the action bounds a step; where the joint may be is its state entry's range
        state = dict(zip(robot.state.names, zip(robot.state.low, robot.state.high)))
        for i, name in enumerate(a.names):
            low[i], high[i] = state.get(name, (-np.inf, np.inf))
    for key in ("joint_min", "joint_max"):
        values = getattr(cfg, key)
        if values and len(values) != a.dim:
            raise ValueError(f"safety.{key} must have {a.dim} values (one per action dimension of "
                             f"{robot.summary()}), got {len(values)}")
    if cfg.joint_min:
        low = np.maximum(low, np.asarray(cfg.joint_min, dtype=np.float64))
    if cfg.joint_max:
        high = np.minimum(high, np.asarray(cfg.joint_max, dtype=np.float64))
    cont = list(a.continuous)
    open_ended = [a.names[i] for i in cont if not (np.isfinite(low[i]) and np.isfinite(high[i]))]
    if open_ended:
        raise ValueError(f"joints {open_ended} of {robot.summary()} have no finite limits: set safety.joint_min "
                         "and safety.joint_max (one value per action dimension), or low/high in the description")
    empty = [a.names[i] for i in cont if low[i] >= high[i]]
    if empty:
        raise ValueError(f"joints {empty}: safety.joint_min/joint_max and the description's limits leave no "
                         f"range ({low.tolist()} .. {high.tolist()})")
    return low, high


class JointSafetyFilter:
    """Joint-space actions into joint position targets, in the robot's units.

    Absolute targets are approached (``action_scale`` of the way from the previous target for
    cautious first runs), relative ones accumulated on a target that starts at the measured joints,
    as CALVIN's end-effector target does. Each target is clipped into the joint limits and moves at
    most ``max_joint_velocity * period_s`` per joint from the previous command, so no command leaves
    the limits or asks for more than the velocity cap over a control period. Binary grippers are
    exactly ``close`` or ``open``.
    """

    def __init__(self, robot: RobotDescription, cfg: SafetyConfig, period_s: float) -> None:
        a = robot.action
        if a.space != "joint":
            raise ValueError(f"JointSafetyFilter is for joint-space robots, not {robot.summary()}")
        require_positive("control period", period_s)
        self.robot, self.cfg, self.action = robot, cfg, a
        self.low, self.high = joint_limits(robot, cfg)
        velocity = cfg.max_joint_velocity
        if not velocity:
            raise ValueError(f"safety.max_joint_velocity must be set for the joint-space {robot.summary()}: "
                             "the fastest a joint may move, in its units per second (one value, or one per "
                             "action dimension)")
        if len(velocity) not in (1, a.dim):
            raise ValueError(f"safety.max_joint_velocity must have 1 or {a.dim} values (one per action "
                             f"dimension), got {len(velocity)}")
        self.max_step = np.broadcast_to(np.asarray(velocity, dtype=np.float64) * period_s, (a.dim,)).copy()
        self.continuous = np.array(a.continuous, dtype=int)
        self.target: np.ndarray | None = None

    def within_limits(self, joints: np.ndarray) -> bool:
        c = self.continuous
        q = np.asarray(joints, dtype=np.float64)[c]
        return bool(np.all(q >= self.low[c]) and np.all(q <= self.high[c]))

    def reset(self, joints: np.ndarray) -> None:
        """Start from the measured joint positions (one per action dimension; binary grippers' unused)."""
        q = np.asarray(joints, dtype=np.float64).reshape(-1)
        c = self.continuous
        if q.shape != (self.action.dim,) or not np.all(np.isfinite(q[c])):
            raise SafetyError(f"measured joints must be {self.action.dim} numbers (finite for "
                              f"{[self.action.names[i] for i in c]}), got {q}")
        outside = [f"{self.action.names[i]}={q[i]:.4g} not in [{self.low[i]:.4g}, {self.high[i]:.4g}]"
                   for i in c if not self.low[i] <= q[i] <= self.high[i]]
        if outside:
            # Clipping the first target would jump past the velocity cap; a person must move the arm.
            raise SafetyError(f"joints outside their limits: {'; '.join(outside)}; move the arm inside before starting")
        self.target = q.copy()
        self.target[list(self.action.grippers)] = self.action.open  # a binary gripper starts open

    def apply(self, action: np.ndarray) -> JointCommand:
        if self.target is None:
            raise SafetyError("JointSafetyFilter.apply before reset(joints)")
        a, spec = np.asarray(action, dtype=np.float64).reshape(-1), self.action
        if a.shape != (spec.dim,) or not np.all(np.isfinite(a)):
            raise SafetyError(f"action must be {spec.dim} finite numbers for {self.robot.summary()}, got {a}")
        c, prev = self.continuous, self.target
        scale = self.cfg.action_scale
        if spec.mode == "relative":
            desired = prev[c] + scale * a[c]
        else:
            desired = prev[c] + scale * (a[c] - prev[c])
        desired = np.clip(desired, self.low[c], self.high[c])
        step = np.clip(desired - prev[c], -self.max_step[c], self.max_step[c])
        out = prev.copy()
        out[c] = np.clip(prev[c] + step, self.low[c], self.high[c])  # guards against rounding only
        for i in spec.grippers:
            opened = a[i] >= spec.gripper_threshold if spec.open_is_greater else a[i] <= spec.gripper_threshold
            out[i] = spec.open if opened else spec.close
        self.target = out
        return JointCommand(out.copy())


class HoldReason(StrEnum):
    """Why a control cycle sends nothing. The values are the keys of the ROS node's ``holds`` counts
    in its JSON summary (a StrEnum, so they serialise as these strings)."""

    ESTOP = "estop"
    TIME_LIMIT = "time_limit"
    NO_OBSERVATION = "no_observation"
    STALE = "stale"
    FUTURE = "future"
    DISCONNECTED = "disconnected"
    NO_NEW_OBSERVATION = "no_new_observation"
    NO_INSTRUCTION = "no_instruction"
    BAD_MESSAGE = "bad_message"
    OUTSIDE_WORKSPACE = "outside_workspace"
    POLICY_ERROR = "policy_error"
    BAD_ACTION = "bad_action"
    STALE_ACTION = "stale_action"
    COMMAND_REFUSED = "command_refused"  # the bridge refused a command: someone else owns the arm


HOLD_ESTOP = HoldReason.ESTOP
HOLD_TIME_LIMIT = HoldReason.TIME_LIMIT
TERMINAL_HOLDS = (HOLD_ESTOP, HOLD_TIME_LIMIT, HoldReason.COMMAND_REFUSED)  # the node stops rather than waits


@dataclass(frozen=True)
class Hold:
    """A hold and, for the observation checks, the observation it is about.

    ``str(hold)`` is the node's cycle result and log text: ``"stale:rgb_static"``, or the bare reason.
    """

    reason: HoldReason
    observation: str = ""

    def __str__(self) -> str:
        return f"{self.reason}:{self.observation}" if self.observation else str(self.reason)


class CommandGate:
    """Per-cycle go / hold decision. Returns ``None`` to go or the ``Hold``."""

    def __init__(self, max_obs_age_s: float, max_duration_s: float = 0.0) -> None:
        self.max_obs_age_s = max_obs_age_s
        self.max_duration_s = max_duration_s
        self.started: float | None = None
        self.estopped = False

    def start(self, now: float) -> None:
        self.started = now

    def engage_estop(self) -> None:
        # Latched on purpose: releasing needs a deliberate restart, not a stray "false" message.
        self.estopped = True

    def check(self, now: float, stamps: dict[str, float | None]) -> Hold | None:
        if self.estopped:
            return Hold(HoldReason.ESTOP)
        if self.started is not None and self.max_duration_s and now - self.started >= self.max_duration_s:
            return Hold(HoldReason.TIME_LIMIT)
        for name, stamp in stamps.items():
            if stamp is None:
                return Hold(HoldReason.NO_OBSERVATION, name)
            if not math.isfinite(stamp):
                # A NaN age would pass both comparisons below and never go stale (issue 31).
                return Hold(HoldReason.STALE, name)
            age = now - stamp
            if age > self.max_obs_age_s:
                return Hold(HoldReason.STALE, name)
            if age < -self.max_obs_age_s:
                # Stamped ahead of our clock: a skewed or forged clock. Such a message would never
                # go stale, so it is treated like a stale one.
                return Hold(HoldReason.FUTURE, name)
        return None


class LatencyLog:
    """Per-stage latency samples (ms) with percentile summaries."""

    def __init__(self, max_samples: int = 100_000) -> None:
        self.max_samples = max_samples
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, ms: float) -> None:
        values = self.samples.setdefault(name, [])
        if len(values) < self.max_samples:
            values.append(float(ms))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, values in self.samples.items():
            if values:
                arr = np.asarray(values)
                p50, p90, p99 = np.percentile(arr, [50, 90, 99])
                out[name] = {
                    "count": len(values),
                    "p50_ms": round(float(p50), 3),
                    "p90_ms": round(float(p90), 3),
                    "p99_ms": round(float(p99), 3),
                    "max_ms": round(float(arr.max()), 3),
                }
        return out
