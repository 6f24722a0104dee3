"""A robot, as data: its cameras, its proprioceptive state and its action.

Every layer reads shapes, names and units from a :class:`RobotDescription` instead of constants:
datasets carry one (``robot.json`` beside a split, or derived from a LeRobot dataset's
``meta/info.json``), a checkpoint saves the one it was trained on, the policy validates
observations against it and returns actions in the robot's units, and the server and ROS node
announce and enforce it. CALVIN's Franka is the built-in ``calvin`` (``roboflamingo.robots.calvin``);
other robots are YAML files (``roboflamingo/robots/*.yaml``, or any path) that
``roboflamingo.robots.load_robot`` reads: a new robot needs a file, not code.

Observation (one control step, numpy)::

    <camera.name>  uint8 (H, W, 3)      one entry per camera, in ``cameras`` order (the model's image slots)
    <state.key>    float (len(names),)  proprioception; the policy reads the entries ``state.use``

Action (what ``step`` returns, in the robot's units)::

    float32 (len(action.names),)  continuous dims regressed (MSE on normalized values), clipped to
                                  [low, high]; binary gripper dims (``action.grippers``) classified
                                  (cross-entropy) and returned as exactly ``close`` or ``open``

Training batch (B windows of T frames, A future actions per frame)::

    <camera.name>  uint8 (B, T, 3, H, W)  or float (B, T, 3, S, S) already preprocessed
    <state.key>    float32 (B, T, state dim)
    actions        float32 (B, T, A, action dim)
    action_mask    bool (B, T, A)
    instruction    list[str] of length B
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ACTION_MODES = ("relative", "absolute")
ACTION_SPACES = ("end_effector", "joint")
ROBOT_FILE = "robot.json"


class RobotMismatch(ValueError):
    """Data, a checkpoint or a client of one robot met a policy or dataset of another."""


def _names(where: str, names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"{where} must be a non-empty list of names, got {names!r}")
    out = tuple(str(n) for n in names)
    if any(not n for n in out):
        raise ValueError(f"{where} has an empty name: {list(out)}")
    if len(set(out)) != len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise ValueError(f"{where} names must be unique, {dup} repeat")
    return out


def _indices(where: str, values: Any, dim: int) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    bad = [v for v in out if not 0 <= v < dim]
    if bad:
        raise ValueError(f"{where} {bad} out of range for {dim} dimensions")
    if len(set(out)) != len(out):
        raise ValueError(f"{where} repeats an index: {list(out)}")
    return out


def _bounds(where: str, values: Any, dim: int, default: float) -> tuple[float, ...]:
    if values is None:
        return (default,) * dim
    # None (JSON's null) stands for an unbounded entry.
    out = tuple(default if v is None else float(v) for v in values)
    if len(out) != dim:
        raise ValueError(f"{where} must have {dim} values (one per name), got {len(out)}")
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{where} contains NaN")
    return out


@dataclass(frozen=True)
class Camera:
    """One camera: its observation key and native frame size (frames of another size are accepted
    and resized by the model; the size is what datasets and clients are checked against)."""

    name: str
    height: int
    width: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("robot camera needs a name (its observation key)")
        for key in ("height", "width"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"robot camera '{self.name}': {key} must be > 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class StateSpec:
    """Proprioception: one float vector under ``key``; ``use`` picks the entries the policy reads
    (empty: all). ``low``/``high`` are the physical range of each entry (data far outside is refused).

    ``angles`` are the entries that are angles in radians which wrap at +-pi (an end effector's euler
    angles). Pointing down, a gripper's roll sits at +-pi and flips sign under rotations of a few
    milliradians; normalized as a plain number that flip is a jump of 2 pi, which a policy learns to
    read its own motion from (docs/demo/diagnosis.md). These entries are normalized around their
    circular mean instead, so the wrap is continuous (``models/normalization.py``).
    """

    names: tuple[str, ...]
    key: str = "robot_obs"
    use: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    angles: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        names = _names("robot state.names", self.names)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "use", _indices("robot state.use", self.use, len(names)))
        object.__setattr__(self, "angles", _indices("robot state.angles", self.angles, len(names)))
        object.__setattr__(self, "low", _bounds("robot state.low", self.low or None, len(names), -math.inf))
        object.__setattr__(self, "high", _bounds("robot state.high", self.high or None, len(names), math.inf))
        if not self.key:
            raise ValueError("robot state.key must name the observation entry")

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def used(self) -> tuple[int, ...]:
        """The entries the policy reads, in order."""
        return self.use or tuple(range(self.dim))


@dataclass(frozen=True)
class ActionSpec:
    """The action vector under ``key`` in a dataset, and what each dimension is.

    ``grippers`` are binary gripper dims (classified; values exactly ``close`` or ``open``); every
    other dim is continuous and regressed. A gripper commanded by position is a continuous dim
    listed in ``gripper_positions``. ``low``/``high`` bound each continuous dim: predictions are
    clipped to them and data outside them is refused.
    """

    names: tuple[str, ...]
    key: str = "actions"
    grippers: tuple[int, ...] = ()
    gripper_positions: tuple[int, ...] = ()
    close: float = -1.0
    open: float = 1.0
    mode: str = "relative"
    space: str = "end_effector"
    rate_hz: float = 30.0
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        names = _names("robot action.names", self.names)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "grippers", _indices("robot action.grippers", self.grippers, len(names)))
        object.__setattr__(self, "gripper_positions",
                           _indices("robot action.gripper_positions", self.gripper_positions, len(names)))
        both = set(self.grippers) & set(self.gripper_positions)
        if both:
            raise ValueError(f"robot action dims {sorted(both)} are both binary grippers and gripper positions")
        object.__setattr__(self, "low", _bounds("robot action.low", self.low or None, len(names), -math.inf))
        object.__setattr__(self, "high", _bounds("robot action.high", self.high or None, len(names), math.inf))
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"robot action.low must be <= action.high, got {list(self.low)} / {list(self.high)}")
        if self.mode not in ACTION_MODES:
            raise ValueError(f"robot action.mode must be one of {list(ACTION_MODES)}, got '{self.mode}'")
        if self.space not in ACTION_SPACES:
            raise ValueError(f"robot action.space must be one of {list(ACTION_SPACES)}, got '{self.space}'")
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"robot action.rate_hz must be a positive number, got {self.rate_hz}")
        if not (math.isfinite(self.close) and math.isfinite(self.open) and self.close != self.open):
            raise ValueError(f"robot action.close/open must be two different numbers, got {self.close}/{self.open}")
        if not self.key:
            raise ValueError("robot action.key must name the dataset entry")

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def continuous(self) -> tuple[int, ...]:
        """The regressed dims, in order."""
        return tuple(i for i in range(self.dim) if i not in self.grippers)

    @property
    def gripper_threshold(self) -> float:
        """A gripper value above this is ``open`` (the midpoint of close and open)."""
        return (self.close + self.open) / 2

    @property
    def open_is_greater(self) -> bool:
        return self.open > self.close


@dataclass(frozen=True)
class RobotDescription:
    """Cameras (their order is the model's image-slot order), state and action of one robot."""

    name: str
    cameras: tuple[Camera, ...]
    state: StateSpec
    action: ActionSpec
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("robot description needs a name")
        cams = tuple(self.cameras)
        if not cams:
            raise ValueError(f"robot '{self.name}' needs at least one camera")
        object.__setattr__(self, "cameras", cams)
        _names(f"robot '{self.name}' camera names", [c.name for c in cams])
        keys = [c.name for c in cams] + [self.state.key]
        if len(set(keys)) != len(keys):
            raise ValueError(f"robot '{self.name}': camera names and state.key must differ, got {keys}")

    # -- names --------------------------------------------------------------------------------------

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    @property
    def observation_keys(self) -> tuple[str, ...]:
        """What a policy of this robot reads from an observation."""
        return (*self.camera_names, self.state.key)

    def features(self) -> dict[str, dict[str, Any]]:
        """LeRobot-style features (type, shape, names), for handshakes and reports."""
        out: dict[str, dict[str, Any]] = {}
        for cam in self.cameras:
            out[cam.name] = {"type": "VISUAL", "shape": [cam.height, cam.width, 3], "dtype": "uint8"}
        out[self.state.key] = {"type": "STATE", "shape": [self.state.dim], "dtype": "float32",
                               "names": list(self.state.names)}
        out["action"] = {"type": "ACTION", "shape": [self.action.dim], "dtype": "float32",
                         "names": list(self.action.names), "grippers": list(self.action.grippers),
                         "mode": self.action.mode, "space": self.action.space, "rate_hz": self.action.rate_hz}
        return out

    def summary(self) -> str:
        """One line naming the shapes, for error messages."""
        cams = ", ".join(f"{c.name} {c.height}x{c.width}" for c in self.cameras)
        return (f"robot '{self.name}' (cameras: {cams}; {self.state.key}: {self.state.dim}-d; "
                f"action: {self.action.dim}-d {self.action.mode} {self.action.space}, "
                f"grippers {list(self.action.grippers)})")

    # -- (de)serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; an infinite (unbounded) limit is written as null."""
        d = asdict(self)
        d["extra"] = dict(self.extra)
        for part in ("state", "action"):
            for key in ("low", "high"):
                d[part][key] = [None if math.isinf(v) else v for v in d[part][key]]
        return json.loads(json.dumps(d, default=list))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "robot") -> RobotDescription:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: a robot description must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"name", "cameras", "state", "action", "description", "extra"}
        if unknown:
            raise ValueError(f"{where}: unknown robot description fields {sorted(unknown)}")
        try:
            cams = d["cameras"]
            if not isinstance(cams, Sequence) or isinstance(cams, str):
                raise ValueError(f"cameras must be a list, got {cams!r}")
            return cls(
                name=str(d["name"]),
                cameras=tuple(Camera(**c) for c in cams),
                state=StateSpec(**_tuples(d["state"])),
                action=ActionSpec(**_tuples(d["action"])),
                description=str(d.get("description", "")),
                extra=dict(d.get("extra") or {}),
            )
        except KeyError as e:
            raise ValueError(f"{where}: robot description is missing field {e}") from None
        except TypeError as e:
            raise ValueError(f"{where}: malformed robot description ({e})") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        from roboflamingo.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    # -- compatibility ------------------------------------------------------------------------------

    def shapes(self) -> tuple:
        """What must agree between a policy and the data or client it meets (names aside)."""
        a = self.action
        return (self.camera_names, self.state.key, self.state.dim, a.dim, a.grippers, a.mode, a.space)

    def require_compatible(self, other: RobotDescription, what: str, other_what: str) -> None:
        """Raise :class:`RobotMismatch` naming both descriptions unless the shapes agree."""
        if self.shapes() != other.shapes():
            raise RobotMismatch(f"{what} is for {self.summary()}, but {other_what} is for {other.summary()}")

    # -- checks -------------------------------------------------------------------------------------

    def check_observation(self, obs: Any, keys: Sequence[str] | None = None) -> None:
        """Raise a ValueError naming the key and what was expected when ``obs`` does not fit."""
        keys = tuple(self.observation_keys if keys is None else keys)
        if not isinstance(obs, Mapping):
            raise ValueError(f"observation must be a dict with keys {list(keys)}, got {type(obs).__name__}")
        cams = set(self.camera_names)
        for key in keys:
            if key not in obs:
                raise ValueError(f"observation is missing key '{key}' (expected keys {list(keys)} of "
                                 f"{self.summary()})")
            value = np.asarray(obs[key])
            if key in cams:
                if value.ndim != 3 or value.shape[-1] != 3:
                    raise ValueError(f"observation['{key}'] must be an (H, W, 3) image, got shape {value.shape}")
                if value.dtype != np.uint8:
                    raise ValueError(f"observation['{key}'] must be uint8, got {value.dtype}")
                continue
            if key == self.state.key and value.shape != (self.state.dim,):
                raise ValueError(f"observation['{key}'] must have shape ({self.state.dim},) for "
                                 f"{self.summary()}, got {value.shape}")
            if not np.issubdtype(value.dtype, np.number) or not np.all(np.isfinite(value)):
                raise ValueError(f"observation['{key}'] contains NaN, inf or non-numbers")

    def check_action(self, action: Any, where: str = "action") -> np.ndarray:
        """A float64 copy of ``action`` after checking its shape and finiteness."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action.dim,) or not np.all(np.isfinite(a)):
            raise ValueError(f"{where} must be {self.action.dim} finite numbers for {self.summary()}, "
                             f"got {np.array2string(np.asarray(action), threshold=20)}")
        return a


def _tuples(d: Any) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise TypeError(f"expected a mapping, got {type(d).__name__}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
