"""Rolling the scripted expert out on the tabletop: shared by ``generate`` and ``expert-check``.

A task that cannot start from one of CALVIN's initial states (``place_in_drawer`` needs a block in
the hand, ``lift_red_block_drawer`` a block in the drawer, ``unstack_block`` a stack) is reached
through the shortest symbolic prefix of other tasks (for example ``lift_red_block_table`` before
``place_in_drawer``), which the expert performs first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from roboflamingo.sim.chains import (
    initial_state_to_obs,
    initial_states,
    next_states,
    sample_setup,
    shortest_prefix,
)
from roboflamingo.sim.tasks import TaskOracle
from roboflamingo.subtask import OracleEnv, drive, subtask_steps


@dataclass
class Episode:
    """A symbolic initial state and the tasks to perform from it (``prefix`` + [task]).

    ``unrecorded``: how many leading tasks only set up the start (performed, never recorded).
    """

    initial_state: dict
    tasks: list[str] = field(default_factory=list)
    unrecorded: int = 0


def sample_episode(task: str, rng: np.random.Generator, oracle: TaskOracle) -> Episode:
    """A random initial state where ``task`` is valid; if there is none, the shortest prefix."""
    states = initial_states(oracle)
    direct = [s for s in states if len(next_states(s, task, oracle)) == 1]
    if direct:
        return Episode(dict(direct[int(rng.integers(len(direct)))]), [task])
    state, prefix = sample_setup(task, rng, oracle)
    if prefix is not None:
        return Episode(dict(state), [*prefix, task])
    raise RuntimeError(f"no symbolic initial state leads to task {task!r}")


def sample_handover(task: str, rng: np.random.Generator, oracle: TaskOracle, tasks: list[str]) -> Episode:
    """``task`` starting where another task of ``tasks`` ended, as a chain's later subtasks start.

    The task before it is of another category (as in CALVIN's chains) and is performed, not recorded:
    the arm starts by that task's object instead of at the neutral pose. A task that no single task
    leads to from an initial state (``unstack_block`` needs a block lifted and stacked first) starts
    after the shortest unrecorded prefix that ends with such a task.
    """
    states = initial_states(oracle)
    category = oracle.specs[task].category
    before = [t for t in tasks if oracle.specs[t].category != category]
    for _ in range(1000):
        state = states[int(rng.integers(len(states)))]
        first = before[int(rng.integers(len(before)))] if before else None
        nxt = next_states(state, first, oracle) if first else []
        if len(nxt) == 1 and len(next_states(nxt[0], task, oracle)) == 1:
            return Episode(dict(state), [first, task], unrecorded=1)
    for _ in range(100 if before else 0):
        state = states[int(rng.integers(len(states)))]
        prefix = shortest_prefix(state, task, oracle, rng, ends_with=set(before).__contains__)
        if prefix is not None:
            return Episode(dict(state), [*prefix, task], unrecorded=len(prefix))
    raise RuntimeError(f"no task of {tasks} (another category than {task!r}) leads to a state where {task!r} is valid")


class CorrectedNoise:
    """DART (Laskey et al. 2017) around a ``ScriptedExpert``: the robot is sent the expert's action
    plus Gaussian noise on the position deltas (std ``std`` in the action's [-1, 1] units) while the
    expert heads for a free-space waypoint (never near a contact, where a few mm decide a grasp), the
    expert integrates what was sent, and ``clean`` keeps the action the expert meant, the label to
    record. The demonstrations then visit states off the expert's path, each labelled with the
    action that leads back to it: the states a policy drifts into, which plain demonstrations lack.
    """

    def __init__(self, expert, std: float, rng: np.random.Generator):
        self.expert, self.std, self.rng = expert, float(std), rng
        self.clean: np.ndarray | None = None

    def set_task(self, name: str) -> None:
        self.expert.set_task(name)

    def reset(self) -> None:
        self.expert.reset()

    def step(self, obs, instruction: str) -> np.ndarray:
        from roboflamingo.robots.calvin import ACTION_POS

        self.clean = np.asarray(self.expert.step(obs, instruction), dtype=np.float32)
        sent = self.clean.copy()
        noise = self.rng.normal(0.0, self.std, 3)  # drawn at every step, so the stream never depends on the plan
        if self.expert.in_free_space:
            sent[ACTION_POS] = np.clip(sent[ACTION_POS] + noise, -1.0, 1.0)
            self.expert.executed(sent)
        return sent


def reset_to_episode(env, episode: Episode, rng: np.random.Generator):
    robot_obs, scene_obs = initial_state_to_obs(episode.initial_state, env.scene, rng=rng)
    return env.reset(options={"robot_obs": robot_obs, "scene_obs": scene_obs})


def run_subtask(env, policy, oracle: TaskOracle, task: str, instruction: str, obs: dict, max_steps: int,
                on_step: Callable[[dict, np.ndarray, dict], None] | None = None) -> tuple[bool, dict, int]:
    """CALVIN's rollout of one subtask (``roboflamingo.subtask``) on a tabletop ``env`` as it is now.

    ``on_step(obs, action, next_obs)`` sees every transition (for recording). Returns (success, last
    observation, steps taken).
    """
    stepper = OracleEnv(env, oracle, info=env.get_info())
    return drive(subtask_steps(stepper, task, instruction, obs, max_steps, on_step), policy)
