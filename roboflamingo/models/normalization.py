"""Per-dimension normalization statistics, kept as buffers so they travel inside the checkpoint.

A policy without statistics refuses to run (lerobot PR #4446 shows what a silent pass-through does).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from roboflamingo.robots.calvin import ACTION_DIM, ROBOT_OBS_DIM

STAT_SHAPES = {
    "action_mean": ACTION_DIM,
    "action_std": ACTION_DIM,
    "robot_obs_mean": ROBOT_OBS_DIM,
    "robot_obs_std": ROBOT_OBS_DIM,
}
# A dimension that never moves in the data would otherwise blow up its normalized values.
MIN_STD = 1e-3


def identity_stats() -> dict[str, np.ndarray]:
    """Statistics that leave actions and state as they are: CALVIN's rel_actions are already in
    [-1, 1] (the original normalizes nothing), and random-init models have no data to measure."""
    return {
        key: (np.zeros if key.endswith("_mean") else np.ones)(dim, np.float32) for key, dim in STAT_SHAPES.items()
    }


class Normalizer(nn.Module):
    def __init__(self):
        super().__init__()
        for key, dim in STAT_SHAPES.items():
            self.register_buffer(key, torch.full((dim,), float("nan")))
        self._ready: bool | None = None

    def set(self, stats: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        missing = [k for k in STAT_SHAPES if k not in stats]
        if missing:
            raise ValueError(f"normalization stats are missing {missing} (expected keys {list(STAT_SHAPES)})")
        for key, dim in STAT_SHAPES.items():
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
        return {k: getattr(self, k).detach().cpu().numpy().copy() for k in STAT_SHAPES}

    def check(self) -> None:
        if self._ready is None:
            self._ready = all(torch.isfinite(getattr(self, k)).all().item() for k in STAT_SHAPES)
        if not self._ready:
            raise RuntimeError(
                "the policy has no normalization statistics: call set_normalization(stats) with "
                f"{list(STAT_SHAPES)} (e.g. from roboflamingo.data.dataset.compute_normalization)"
            )

    def recheck(self) -> None:
        """The buffers were written from outside ``set`` (a checkpoint load): check them again on use."""
        self._ready = None

    def _load_from_state_dict(self, *args, **kwargs):
        self.recheck()
        return super()._load_from_state_dict(*args, **kwargs)

    def normalize_pose(self, pose: torch.Tensor) -> torch.Tensor:
        return (pose - self.action_mean[:6]) / self.action_std[:6]

    def unnormalize_pose(self, pose: torch.Tensor) -> torch.Tensor:
        return pose * self.action_std[:6] + self.action_mean[:6]

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.robot_obs_mean) / self.robot_obs_std
