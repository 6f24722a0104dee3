"""CALVIN's long-horizon rollout, written once for every environment and policy.

The protocol (``calvin_agent/evaluation/evaluate_policy.py``, ``evaluate_sequence`` / ``rollout``):

1. the environment is reset to the chain's initial state **once per chain**;
2. for each subtask: ``policy.reset()``, take ``start_info`` from the environment, then for up to
   ``ep_len`` steps act with the subtask's evaluation sentence and ask the oracle, after every step,
   whether *this* subtask (only the target task) is done relative to ``start_info``
   (``roboflamingo.subtask.subtask_steps``, the loop the demonstrations are recorded with too);
3. robot and scene carry over between subtasks (no reset); the first failure ends the chain.

An environment enters through the small ``EvalEnv`` interface below (the tabletop through
``GymOracleEnv``, the real ``calvin_env`` through ``calvin_adapter.CalvinEnv``); a policy through the
``Policy`` protocol of ``roboflamingo.types`` (``reset()``, ``step(obs, instruction)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from roboflamingo.eval.metrics import ChainResult
from roboflamingo.robots.calvin import RGB_GRIPPER, RGB_STATIC
from roboflamingo.subtask import (
    ActionRequest,
    OracleEnv,
    StepTimes,
    SubtaskEnv,
    drive,
    perform_setup,
    subtask_steps,
)
from roboflamingo.types import Observation, Policy

# ActionRequest and drive are the subtask loop's (roboflamingo.subtask); the chain runners use them from here
__all__ = ["ActionRequest", "ChainSteps", "EvalEnv", "EvalItem", "GymOracleEnv", "chain_steps", "drive",
           "rollout_chain", "side_by_side"]


@dataclass
class EvalItem:
    """One unit of work: a chain (or a single-task episode) with its instructions.

    ``initial_state`` is the generator's symbolic state (``led``, ``lightbulb``, ``slider``,
    ``drawer``, ``red_block``, ...); each environment turns it into its own continuous state.
    ``setup``: tasks the environment's scripted expert performs after the reset, unscored and
    unrecorded, before the policy's first task: a single-task episode of a task that no initial state
    allows (``place_in_drawer`` after a lift).
    """

    index: int
    initial_state: dict[str, Any]
    tasks: list[str]
    instructions: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.instructions) != len(self.tasks):
            raise ValueError(f"chain {self.index}: {len(self.tasks)} tasks but {len(self.instructions)} instructions")


class EvalEnv(SubtaskEnv, Protocol):
    """What the protocol needs from a simulator plus its task oracle: a ``SubtaskEnv`` that can be put
    into a chain's initial state and draw video frames."""

    def reset_to(self, initial_state: dict[str, Any], seed: int) -> Observation:
        """Put robot and scene into the chain's initial state; return the first observation."""

    def frame(self, obs: Observation) -> np.ndarray:
        """An RGB uint8 (H, W, 3) frame for rollout videos."""

    def close(self) -> None: ...


ChainSteps = Generator[ActionRequest, np.ndarray, ChainResult]


def chain_steps(
    env: EvalEnv,
    item: EvalItem,
    ep_len: int,
    on_obs: Callable[[Observation], None] | None = None,
) -> ChainSteps:
    """CALVIN's protocol for one chain as a generator: it yields an ``ActionRequest`` per control step,
    is sent the action, and returns the ``ChainResult``. Whoever drives it decides where the policy
    runs: ``rollout_chain`` steps one policy in this process, the batched evaluator answers many
    chains' requests with one forward.

    ``on_obs`` sees the observation after the reset and after every step (the video recorder).
    Timing: ``policy_s`` is the time spent waiting for actions, ``env_s`` the simulator's.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    obs = env.reset_to(item.initial_state, seed=item.index)
    if item.setup:
        perform = getattr(env, "perform_setup", None)
        if perform is None:
            raise ValueError(f"item {item.index}: {item.tasks} starts after {item.setup}, performed by a scripted "
                             f"expert, and {type(env).__name__} has none (the tabletop has)")
        obs = perform(item.setup, obs, ep_len, item.index)
    times = StepTimes(env_s=time.perf_counter() - start)
    if on_obs is not None:
        on_obs(obs)
    on_step = None if on_obs is None else (lambda _obs, _action, next_obs: on_obs(next_obs))
    completed, steps = 0, []
    for task, instruction in zip(item.tasks, item.instructions):
        success, obs, t = yield from subtask_steps(env, task, instruction, obs, ep_len, on_step, times)
        steps.append(t)
        if not success:
            break
        completed += 1
    return ChainResult(
        index=item.index,
        tasks=list(item.tasks),
        completed=completed,
        steps=steps,
        policy_s=times.policy_s,
        env_s=times.env_s,
        wall_s=time.perf_counter() - start,
        cpu_s=time.process_time() - cpu_start,
    )


def rollout_chain(
    env: EvalEnv,
    policy: Policy,
    item: EvalItem,
    ep_len: int,
    on_obs: Callable[[Observation], None] | None = None,
) -> ChainResult:
    """Run one chain under CALVIN's protocol with ``policy`` and return how far it got."""
    return drive(chain_steps(env, item, ep_len, on_obs), policy)


def side_by_side(obs: Observation) -> np.ndarray:
    """Static and wrist camera next to each other, the wrist view scaled to the static height."""
    static = np.asarray(obs[RGB_STATIC])
    if RGB_GRIPPER not in obs:
        return static
    gripper = np.asarray(obs[RGB_GRIPPER])
    h = static.shape[0]
    rows = np.arange(h) * gripper.shape[0] // h
    w = max(1, round(gripper.shape[1] * h / gripper.shape[0]))
    cols = np.arange(w) * gripper.shape[1] // w
    return np.concatenate([static, gripper[rows][:, cols]], axis=1)


class GymOracleEnv(OracleEnv):
    """A Gymnasium environment with our CALVIN-style API plus a task oracle, as an ``EvalEnv``.

    ``to_state(initial_state) -> (robot_obs, scene_obs)`` turns the generator's symbolic state into the
    continuous one passed to ``reset(options=...)``; stepping and the oracle are ``OracleEnv``'s.
    ``frames_from_obs=False`` (cameras off) renders video frames with ``env.render()`` instead of
    reusing the observation's images.
    """

    def __init__(
        self,
        env: Any,
        oracle: Any,
        to_state: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]],
        frames_from_obs: bool = True,
        expert: Callable[[], Policy] | None = None,
    ):
        super().__init__(env, oracle)
        self.to_state = to_state
        self.frames_from_obs = frames_from_obs
        self.expert = expert

    def reset_to(self, initial_state: dict[str, Any], seed: int) -> Observation:
        return self.reset_state(*self.to_state(initial_state), seed=seed)

    def perform_setup(self, tasks: list[str], obs: Observation, ep_len: int, index: int) -> Observation:
        """An item's ``setup``: ``expert()`` performs each task in turn, under the subtask loop."""
        if self.expert is None:
            raise ValueError(f"item {index}: starts after {tasks}, and this environment was given no scripted expert")
        return perform_setup(self, self.expert(), tasks, obs, ep_len, f"item {index}")

    def frame(self, obs: Observation) -> np.ndarray:
        if self.frames_from_obs:
            return side_by_side(obs)
        return np.asarray(self.env.render())

    def close(self) -> None:
        self.env.close()
