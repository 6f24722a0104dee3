"""The safety layer between a policy's relative actions and the commands a robot receives.

Pure and clock-free (time is passed in), so every guarantee is checked by property tests:

* ``SafetyFilter`` turns 7-d relative actions into absolute end-effector targets the way CALVIN's
  ``use_target_pose`` does (``pos += a[:3] * 0.02``, ``euler += a[3:6] * 0.05``, accumulated on a target
  that starts at the measured TCP), multiplied by ``action_scale`` for cautious first runs, then
  clamps the position into the workspace box and caps the change from the previous command (Euclidean
  translation; rotation per axis and as the composed rotation angle). Because each command is the
  previous one plus a capped step toward a point inside the (convex) box, no command ever leaves the
  box or moves further than the caps.
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
from roboflamingo.types import (
    ACTION_DIM,
    GRIPPER_CLOSE,
    GRIPPER_INDEX,
    GRIPPER_OPEN,
    POSE_DIM,
    TCP_ORN,
    TCP_POS,
    action_deltas,
    integrate_action,
    wrap_angle,
)

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
        workspace_min / workspace_max: corners of the box every commanded position stays in; each
            coordinate within +-2 m of the base (``BOUNDS``).
        max_step_m: largest translation between consecutive commands, m (at most 0.1).
        max_step_rad: largest rotation between consecutive commands, rad (at most 0.5).
        action_scale: multiplies every action, e.g. 0.2-0.5 for a first run on new hardware (at most 1).
        max_obs_age_s: observations older than this by their header stamp mean hold, s (at most 2).
        max_duration_s: stop commanding after this long, s; 0 = no limit.
        beyond_bounds: the limits allowed past their physical bound (workspace, max_step_m,
            max_step_rad, max_obs_age_s), e.g. ``[max_step_m]`` for a fast gantry; each one is
            logged as a warning. Empty: every limit must be within its bound.
    """

    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.9, 0.25])
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.5, 1.0])
    # Per-command caps. A full CALVIN action moves sqrt(3) * 2 cm, so 0.035 passes it unchanged.
    max_step_m: float = 0.035
    # The angle of the rotation between commands (and each euler increment). A full CALVIN action
    # turns 0.05 rad on each axis, about sqrt(3) * 0.05 = 0.087 rad in all, so 0.09 passes it too.
    max_step_rad: float = 0.09
    action_scale: float = 1.0  # e.g. 0.2-0.5 for a first run on new hardware (openvla#192)
    max_obs_age_s: float = 0.5  # observations older than this (header stamp) mean hold
    max_duration_s: float = 0.0  # stop commanding after this long; 0 = no limit
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
