"""CALVIN's rollout of one subtask, written once for the evaluator and the demonstration recorder.

``calvin_agent/evaluation/evaluate_policy.py``'s ``rollout``: ``policy.reset()``, take ``start_info``
from the environment, then for up to ``ep_len`` steps act with the subtask's instruction, step, and
ask the oracle after every step whether *this* subtask is done relative to ``start_info``.

``subtask_steps`` is that loop as a generator: it yields an ``ActionRequest`` per control step and
is sent the action, so whoever drives it decides where the policy runs (``drive`` steps one policy
in this process; the batched evaluator answers many requests with one forward). ``eval.protocol``
chains subtasks into CALVIN's long-horizon protocol; ``sim.rollout`` records the scripted expert's
demonstrations through the same loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from roboflamingo.robots.calvin import CALVIN
from roboflamingo.types import Observation, Policy

R = TypeVar("R")


class SubtaskEnv(Protocol):
    """What one subtask needs from a simulator plus its task oracle."""

    def step(self, action: np.ndarray) -> Observation: ...

    def info(self) -> Any:
        """A snapshot of the state the oracle compares (CALVIN's ``env.get_info()``)."""

    def successful(self, start_info: Any, task: str) -> bool:
        """Whether ``task`` was achieved between ``start_info`` and now."""


@dataclass
class ActionRequest:
    """What a rollout needs next: an action for ``obs`` under ``instruction``; ``new_episode`` says the
    policy must forget its history first (the subtask's ``policy.reset()``)."""

    obs: Observation
    instruction: str
    new_episode: bool


@dataclass
class StepTimes:
    """Seconds spent waiting for actions (``policy_s``) and in the simulator and oracle (``env_s``)."""

    policy_s: float = 0.0
    env_s: float = 0.0


def check_action(action: Any, policy: Policy) -> np.ndarray:
    """The policy's action as float32 in its robot's shape (CALVIN's for a policy that names none); a
    wrong shape or NaN is the policy's bug, named as such."""
    dim = (getattr(policy, "robot", None) or CALVIN).action.dim
    arr = np.asarray(action, dtype=np.float32)
    if arr.shape != (dim,):
        raise ValueError(f"{type(policy).__name__}.step returned shape {arr.shape}, expected ({dim},)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{type(policy).__name__}.step returned a non-finite action {arr.tolist()}")
    return arr


SubtaskSteps = Generator[ActionRequest, np.ndarray, tuple[bool, Observation, int]]


def subtask_steps(
    env: SubtaskEnv,
    task: str,
    instruction: str,
    obs: Observation,
    ep_len: int,
    on_step: Callable[[Observation, np.ndarray, Observation], None] | None = None,
    times: StepTimes | None = None,
) -> SubtaskSteps:
    """One subtask from ``obs``; returns (success, last observation, steps taken).

    ``on_step(obs, action, next_obs)`` sees every transition (recording, video); ``times``
    accumulates where the time went.
    """
    start_info = env.info()
    for t in range(ep_len):
        t0 = time.perf_counter()
        action = yield ActionRequest(obs, instruction, new_episode=t == 0)
        t1 = time.perf_counter()
        next_obs = env.step(action)
        success = env.successful(start_info, task)
        if times is not None:
            times.policy_s += t1 - t0
            times.env_s += time.perf_counter() - t1
        if on_step is not None:
            on_step(obs, action, next_obs)
        obs = next_obs
        if success:
            return True, obs, t + 1
    return False, obs, ep_len


def drive(steps: Generator[ActionRequest, np.ndarray, R], policy: Policy) -> R:
    """Answer a rollout's requests with one single-stream policy (``reset`` per subtask, ``step`` per
    frame) and return what the rollout returns."""
    try:
        request = next(steps)
        while True:
            if request.new_episode:
                policy.reset()
            request = steps.send(check_action(policy.step(request.obs, request.instruction), policy))
    except StopIteration as done:
        return done.value


def perform_setup(env: SubtaskEnv, expert: Policy, tasks: list[str], obs: Observation, ep_len: int,
                  where: str) -> Observation:
    """``expert`` (a scripted one) performs each of ``tasks`` in turn, unscored, to bring the scene into a
    state no initial state gives (a block in the hand for ``place_in_drawer``); returns the observation
    after the last. A failed task raises, naming ``where`` (the episode) and the task."""
    for task in tasks:
        success, obs, _ = drive(subtask_steps(env, task, task, obs, ep_len), expert)
        if not success:
            raise RuntimeError(f"{where}: the scripted expert failed {task!r} of the setup {tasks}, so the "
                               f"episode's task cannot start")
    return obs


class OracleEnv:
    """A Gymnasium environment with our CALVIN-style API plus a task oracle, as a ``SubtaskEnv``.

    ``oracle.successful(start_info, now_info, tasks)`` returns the achieved subset of ``tasks``. The
    info dicts that ``reset`` and ``step`` return are the ``get_info()`` snapshots the oracle
    compares; they are kept rather than queried again, since each snapshot repeats every contact
    query. ``info``: the current snapshot when the environment was reset before it was wrapped.
    """

    def __init__(self, env: Any, oracle: Any, info: Any = None):
        self.env = env
        self.oracle = oracle
        self._info = info

    def reset_state(self, robot_obs: np.ndarray, scene_obs: np.ndarray, seed: int | None = None) -> Observation:
        obs, self._info = self.env.reset(seed=seed, options={"robot_obs": robot_obs, "scene_obs": scene_obs})
        return obs

    def step(self, action: np.ndarray) -> Observation:
        # terminated/truncated are ignored on purpose: the protocol alone decides when a subtask ends.
        obs, _reward, _terminated, _truncated, self._info = self.env.step(action)
        return obs

    def info(self) -> Any:
        return self._info

    def successful(self, start_info: Any, task: str) -> bool:
        return task in self.oracle.successful(start_info, self._info, {task})
