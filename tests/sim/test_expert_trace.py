"""The scripted expert's actions for every task are exactly those recorded in ``expert_traces.json``.

A regression guard for refactors of the expert (and of the angle wrap and action integration it
shares with the simulator): the generated datasets, and so the demo's results, depend on every bit of
its actions. The expert runs against a kinematic stand-in for the simulator (the TCP follows the
target exactly, a closing hand carries the nearest block), which is pure numpy, so the trace depends
on the expert alone and not on PyBullet. Each task starts from a state sampled as ``expert-check``
samples it, prefix tasks included, with waypoint noise, and once more with homing.

Regenerate (only when a change of the expert's behaviour is intended, and say so in the commit):
``PYTHONPATH=. python tests/sim/test_expert_trace.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.robots import calvin as T
from roboflamingo.sim.chains import initial_state_to_obs
from roboflamingo.sim.expert import ScriptedExpert
from roboflamingo.sim.rollout import sample_episode
from roboflamingo.sim.scene import BLOCK_NAMES, load_scene
from roboflamingo.sim.tasks import TaskOracle

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "expert_traces.json"
SEED = 7
NOISE = 0.01
MAX_STEPS = 400  # per subtask; the expert is done long before on a perfectly tracking arm
GRASP_REACH = 0.05


def expert_trace(task: str, home: bool) -> tuple[int, str]:
    """(number of actions, sha256 of their float32 bytes) over the task and its prefix."""
    oracle = TaskOracle.default()
    scene = load_scene("D")
    rng = np.random.default_rng([SEED, oracle.tasks.index(task), int(home)])
    episode = sample_episode(task, rng, oracle)
    robot_obs, scene_obs = initial_state_to_obs(episode.initial_state, scene, rng=rng)
    expert = ScriptedExpert(scene, noise=NOISE, seed=SEED, home=home)
    digest = hashlib.sha256()
    n = 0
    held: tuple[int, np.ndarray] | None = None
    for sub in episode.tasks:
        expert.set_task(sub)
        for _ in range(MAX_STEPS):
            action = expert.step({T.ROBOT_OBS: robot_obs.copy(), T.SCENE_OBS: scene_obs.copy()}, sub)
            assert action.dtype == np.float32 and action.shape == (T.ACTION_DIM,)
            digest.update(action.tobytes())
            n += 1
            pos = np.asarray(expert.target_pos, dtype=float).copy()
            closing = action[6] < 0
            if closing and robot_obs[14] >= 0:
                dists = [np.linalg.norm(scene_obs[6 + 6 * k: 9 + 6 * k] - pos) for k in range(len(BLOCK_NAMES))]
                k = int(np.argmin(dists))
                held = (k, scene_obs[6 + 6 * k: 9 + 6 * k] - pos) if dists[k] < GRASP_REACH else None
            if not closing:
                held = None
            if held is not None:
                k, offset = held
                scene_obs[6 + 6 * k: 9 + 6 * k] = pos + offset
            robot_obs = robot_obs.copy()
            robot_obs[:3] = pos
            robot_obs[3:6] = expert.target_euler
            robot_obs[6] = 0.08 if not closing else (0.05 if held is not None else 0.0)
            robot_obs[14] = action[6]
            if expert.done:
                break
    return n, digest.hexdigest()


def all_traces() -> dict[str, dict[str, list]]:
    tasks = TaskOracle.default().tasks
    return {("home:" if home else "") + t: list(expert_trace(t, home)) for home in (False, True) for t in tasks}


@pytest.fixture(scope="module")
def recorded():
    return json.loads(FIXTURE.read_text())


def test_fixture_covers_every_task(recorded):
    tasks = TaskOracle.default().tasks
    assert set(recorded) == set(tasks) | {"home:" + t for t in tasks}


@pytest.mark.parametrize("home", [False, True])
def test_expert_actions_match_the_recording(recorded, home):
    mismatched = {}
    for task in TaskOracle.default().tasks:
        key = ("home:" if home else "") + task
        got = list(expert_trace(task, home))
        if got != recorded[key]:
            mismatched[key] = (got, recorded[key])
    assert not mismatched, f"the expert's actions changed for {sorted(mismatched)}: {mismatched}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=. python tests/sim/test_expert_trace.py --write")
    FIXTURE.write_text(json.dumps(all_traces(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
