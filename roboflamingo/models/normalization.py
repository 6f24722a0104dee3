"""Per-dimension normalization statistics, kept as buffers so they travel inside the checkpoint.

A policy without statistics refuses to run (lerobot PR #4446 shows what a silent pass-through does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from roboflamingo.robot import RobotDescription

# The buffers keep their first names ("robot_obs" is the state, whatever the robot calls it), so every
# checkpoint written before robot descriptions existed loads unchanged.
STAT_KEYS = ("action_mean", "action_std", "robot_obs_mean", "robot_obs_std")
# A dimension that never moves in the data would otherwise blow up its normalized values.
MIN_STD = 1e-3


def stat_shapes(robot: RobotDescription) -> dict[str, int]:
    """The length of each statistic for ``robot``: the whole action and the whole state vector."""
    return {"action_mean": robot.action.dim, "action_std": robot.action.dim,
            "robot_obs_mean": robot.state.dim, "robot_obs_std": robot.state.dim}


def identity_stats(robot: RobotDescription | None = None) -> dict[str, np.ndarray]:
    """Statistics that leave actions and state as they are (CALVIN's by default): CALVIN's rel_actions
    are already in [-1, 1] (the original normalizes nothing), and random-init models have no data."""
    if robot is None:
        from roboflamingo.robots.calvin import CALVIN

        robot = CALVIN
    return {key: (np.zeros if key.endswith("_mean") else np.ones)(dim, np.float32)
            for key, dim in stat_shapes(robot).items()}


def _index(dims: tuple[int, ...]) -> slice | torch.Tensor:
    """A slice where the dims are one run (CALVIN's pose: [:6], the same kernels as before descriptions
    existed), an index tensor otherwise."""
    if dims and dims == tuple(range(dims[0], dims[0] + len(dims))):
        return slice(dims[0], dims[0] + len(dims))
    return torch.tensor(dims, dtype=torch.long)


class Normalizer(nn.Module):
    def __init__(self, robot: RobotDescription):
        super().__init__()
        self.shapes = stat_shapes(robot)
        for key, dim in self.shapes.items():
            self.register_buffer(key, torch.full((dim,), float("nan")))
        self._continuous = _index(robot.action.continuous)
        # Not persistent: which entries are angles is the robot description's to say (config.json), and
        # checkpoints keep the four statistics as their only buffers.
        angles = torch.zeros(robot.state.dim, dtype=torch.bool)
        angles[list(robot.state.angles)] = True
        self.register_buffer("state_angles", angles, persistent=False)
        self._has_angles = bool(robot.state.angles)
        used = robot.state.used
        self._state_used = None if used == tuple(range(robot.state.dim)) else _index(used)
        self._ready: bool | None = None

    def set(self, stats: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        missing = [k for k in self.shapes if k not in stats]
        if missing:
            raise ValueError(f"normalization stats are missing {missing} (expected keys {list(self.shapes)})")
        for key, dim in self.shapes.items():
            value = torch.as_tensor(np.asarray(stats[key], dtype=np.float32))
            if value.shape != (dim,):
                raise ValueError(f"normalization stats['{key}'] must have shape ({dim},), got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"normalization stats['{key}'] contains NaN or inf")
            if key.endswith("_std"):
                if (value < 0).any():
                    raise ValueError(f"normalization stats['{key}'] must be >= 0")
                value = value.clamp(min=MIN_STD)
            getattr(self, key).copy_(value)
        self._ready = True

    def stats(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).detach().cpu().numpy().copy() for k in self.shapes}

    def check(self) -> None:
        if self._ready is None:
            self._ready = all(torch.isfinite(getattr(self, k)).all().item() for k in self.shapes)
        if not self._ready:
            raise RuntimeError(
                "the policy has no normalization statistics: call set_normalization(stats) with "
                f"{list(self.shapes)} (e.g. from roboflamingo.data.dataset.compute_normalization)"
            )

    def recheck(self) -> None:
        """The buffers were written from outside ``set`` (a checkpoint load): check them again on use."""
        self._ready = None

    def _load_from_state_dict(self, *args, **kwargs):
        self.recheck()
        return super()._load_from_state_dict(*args, **kwargs)

    def _pick(self, values: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(index, slice):
            return values[..., index]
        return values.index_select(-1, index.to(values.device))

    def continuous(self, actions: torch.Tensor) -> torch.Tensor:
        """The regressed dims of actions (..., action dim) -> (..., C)."""
        return self._pick(actions, self._continuous)

    def normalize_continuous(self, values: torch.Tensor) -> torch.Tensor:
        """Continuous action values (..., C) in the robot's units -> normalized."""
        return (values - self.continuous(self.action_mean)) / self.continuous(self.action_std)

    def unnormalize_continuous(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.continuous(self.action_std) + self.continuous(self.action_mean)

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        """The whole state vector (..., S) -> the normalized entries the policy reads.

        Angle entries (``robot.state.angles``) are taken as their offset from ``robot_obs_mean`` (their
        circular mean, ``data/stats.py``) wrapped into [-pi, pi], so a roll crossing +-pi stays continuous.
        """
        offset = state - self.robot_obs_mean
        if self._has_angles:
            offset = torch.where(self.state_angles, wrap_offset(offset), offset)
        state = offset / self.robot_obs_std
        return state if self._state_used is None else self._pick(state, self._state_used)


def wrap_offset(offset: torch.Tensor) -> torch.Tensor:
    """Angle offsets into [-pi, pi]; an offset already inside is returned bit for bit (a policy whose
    statistics centre nothing, like a converted original, sees exactly the values it always saw)."""
    wrapped = torch.remainder(offset + math.pi, 2 * math.pi) - math.pi
    return torch.where(offset.abs() > math.pi, wrapped, offset)
