"""CALVIN's long-horizon rollout, written once for every environment and policy.

The protocol (``calvin_agent/evaluation/evaluate_policy.py``, ``evaluate_sequence`` / ``rollout``):

1. the environment is reset to the chain's initial state **once per chain**;
2. for each subtask: ``policy.reset()``, take ``start_info`` from the environment, then for up to
   ``ep_len`` steps act with the subtask's evaluation sentence and ask the oracle, after every step,
   whether *this* subtask (only the target task) is done relative to ``start_info``;
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
from roboflamingo.types import ACTION_DIM, RGB_GRIPPER, RGB_STATIC, Observation, Policy


@dataclass
class EvalItem:
    """One unit of work: a chain (or a single-task episode) with its instructions.

    ``initial_state`` is the generator's symbolic state (``led``, ``lightbulb``, ``slider``,
    ``drawer``, ``red_block``, ...); each environment turns it into its own continuous state.
    """

    index: int
    initial_state: dict[str, Any]
    tasks: list[str]
    instructions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.instructions) != len(self.tasks):
            raise ValueError(f"chain {self.index}: {len(self.tasks)} tasks but {len(self.instructions)} instructions")


class EvalEnv(Protocol):
    """What the protocol needs from a simulator plus its task oracle."""

    def reset_to(self, initial_state: dict[str, Any], seed: int) -> Observation:
        """Put robot and scene into the chain's initial state; return the first observation."""

    def step(self, action: np.ndarray) -> Observation: ...

    def info(self) -> Any:
        """A snapshot of the state the oracle compares (CALVIN's ``env.get_info()``)."""

    def successful(self, start_info: Any, task: str) -> bool:
        """Whether ``task`` was achieved between ``start_info`` and now."""

    def frame(self, obs: Observation) -> np.ndarray:
        """An RGB uint8 (H, W, 3) frame for rollout videos."""

    def close(self) -> None: ...


def check_action(action: Any, policy: Policy) -> np.ndarray:
    """The policy's action as float32 (7,); a wrong shape or NaN is the policy's bug, named as such."""
    arr = np.asarray(action, dtype=np.float32)
    if arr.shape != (ACTION_DIM,):
        raise ValueError(f"{type(policy).__name__}.step returned shape {arr.shape}, expected ({ACTION_DIM},)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{type(policy).__name__}.step returned a non-finite action {arr.tolist()}")
    return arr


@dataclass
class ActionRequest:
    """What a chain needs next: an action for ``obs`` under ``instruction``; ``new_episode`` says the
    policy must forget its history first (the subtask's ``policy.reset()``)."""

    obs: Observation
    instruction: str
    new_episode: bool


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
    policy_s = 0.0
    obs = env.reset_to(item.initial_state, seed=item.index)
    env_s = time.perf_counter() - start
    if on_obs is not None:
        on_obs(obs)
    completed, steps = 0, []
    for task, instruction in zip(item.tasks, item.instructions):
        start_info = env.info()
        success, t = False, 0
        while t < ep_len and not success:
            t0 = time.perf_counter()
            action = yield ActionRequest(obs, instruction, new_episode=t == 0)
            t += 1
            t1 = time.perf_counter()
            obs = env.step(action)
            success = env.successful(start_info, task)
            policy_s += t1 - t0
            env_s += time.perf_counter() - t1
            if on_obs is not None:
                on_obs(obs)
        steps.append(t)
        if not success:
            break
        completed += 1
    return ChainResult(
        index=item.index,
        tasks=list(item.tasks),
        completed=completed,
        steps=steps,
        policy_s=policy_s,
        env_s=env_s,
        wall_s=time.perf_counter() - start,
        cpu_s=time.process_time() - cpu_start,
    )


def drive(steps: ChainSteps, policy: Policy) -> ChainResult:
    """Run a chain's steps with one single-stream policy (``reset`` per subtask, ``step`` per frame)."""
    try:
        request = next(steps)
        while True:
            if request.new_episode:
                policy.reset()
            request = steps.send(check_action(policy.step(request.obs, request.instruction), policy))
    except StopIteration as done:
        return done.value


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


class GymOracleEnv:
    """A Gymnasium environment with our CALVIN-style API plus a task oracle, as an ``EvalEnv``.

    ``to_state(initial_state) -> (robot_obs, scene_obs)`` turns the generator's symbolic state into the
    continuous one passed to ``reset(options=...)``; ``oracle.successful(start_info, now_info, tasks)``
    returns the achieved subset of ``tasks``. The info dicts that ``reset`` and ``step`` return are
    the ``get_info()`` snapshots the oracle compares; they are kept rather than queried again, since
    each snapshot repeats every contact query. ``frames_from_obs=False`` (cameras off) renders video
    frames with ``env.render()`` instead of reusing the observation's images.
    """

    def __init__(
        self,
        env: Any,
        oracle: Any,
        to_state: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]],
        frames_from_obs: bool = True,
    ):
        self.env = env
        self.oracle = oracle
        self.to_state = to_state
        self.frames_from_obs = frames_from_obs
        self._info: Any = None

    def reset_to(self, initial_state: dict[str, Any], seed: int) -> Observation:
        robot_obs, scene_obs = self.to_state(initial_state)
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

    def frame(self, obs: Observation) -> np.ndarray:
        if self.frames_from_obs:
            return side_by_side(obs)
        return np.asarray(self.env.render())

    def close(self) -> None:
        self.env.close()
