"""The shared vocabulary every robot uses: the training batch's keys and the policy protocol.

A robot's own names, shapes and units are data (``roboflamingo.robot.RobotDescription``); CALVIN's
are in ``roboflamingo.robots.calvin``. The batch schema is documented in ``roboflamingo.robot``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

ACTIONS = "actions"
ACTION_MASK = "action_mask"
INSTRUCTION = "instruction"

Observation = dict[str, np.ndarray]


def wrap_angle(x: np.ndarray | float) -> np.ndarray:
    """Angles to [-pi, pi)."""
    return (np.asarray(x, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


@runtime_checkable
class Policy(Protocol):
    """What the evaluator, the policy server and the ROS node need from a policy."""

    def reset(self) -> None:
        """Forget the history; called at the start of every subtask."""

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        """Return one action in the robot's units (binary grippers exactly close or open)."""
