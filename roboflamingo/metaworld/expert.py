"""Meta-World's scripted policies (``metaworld.policies``) behind our ``Policy`` protocol.

The policy of a task reads Meta-World's full 39-d observation (``metaworld_obs``: object poses and
goal, privileged, as the tabletop expert reads ``scene_obs``). Which task: the one given to
``set_task`` (generation, expert-check), else the one the instruction names (an evaluation sentence,
a unique training description or a task name; evaluation hands the expert only sentences).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from roboflamingo.metaworld.env import FULL_OBS, FULL_OBS_DIM, expert_policy, sawyer_robot
from roboflamingo.types import Observation


class MetaWorldExpert:
    """``reset()``, ``step(obs, instruction) -> action`` (float32 (4,), in [-1, 1]).

    ``noise``: std of Gaussian noise added to the xyz deltas (the action returned is the one the
    robot executes, noise included), from a generator seeded by ``seed``.
    """

    def __init__(self, task: str | None = None, noise: float = 0.0, seed: int = 0):
        # Meta-World's policies warn whenever a gain saturates an action, i.e. at almost every step.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
        self.robot = sawyer_robot()
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self._fixed: str | None = None
        self._policies: dict[str, Any] = {}
        if task is not None:
            self.set_task(task)

    def set_task(self, task: str | None) -> None:
        """Act for ``task`` whatever the instruction says; None reads the task from instructions."""
        if task is not None:
            from roboflamingo.metaworld.tasks import resolve_tasks

            (task,) = resolve_tasks([task], source="MetaWorldExpert task")
        self._fixed = task

    def reset(self) -> None:
        pass  # Meta-World's scripted policies are memoryless

    def _policy(self, task: str) -> Any:
        if task not in self._policies:
            self._policies[task] = expert_policy(task)
        return self._policies[task]

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        if FULL_OBS not in obs:
            raise ValueError(f"the Meta-World expert reads observation['{FULL_OBS}'] (Meta-World's "
                             f"{FULL_OBS_DIM}-d observation), which this observation lacks: {sorted(obs)}")
        full = np.asarray(obs[FULL_OBS], dtype=np.float64)
        if full.shape != (FULL_OBS_DIM,) or not np.all(np.isfinite(full)):
            raise ValueError(f"observation['{FULL_OBS}'] must be {FULL_OBS_DIM} finite numbers, got shape {full.shape}")
        if self._fixed is not None:
            task = self._fixed
        else:
            from roboflamingo.metaworld.tasks import task_table

            task = task_table().task_for_instruction(instruction)
        action = np.asarray(self._policy(task).get_action(full), dtype=np.float64)
        if self.noise:
            action[:3] += self.rng.normal(0.0, self.noise, 3)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
