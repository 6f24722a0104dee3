"""``roboflamingo expert-check``: success rate of the scripted expert per task.

For each task, ``episodes_per_task`` random initial states (CALVIN's symbolic states with jittered
block poses) are rolled out with the same oracle as the evaluation; tasks that need a prefix (a
grasped block, a block in the drawer, a stack) get it from the expert first, and a failed prefix is
redrawn (counted in ``prefix_failures``) so that the table measures the task itself. Cameras are
off: the expert reads state only. The last printed line is JSON with ``per_task``, ``min_success``
and ``mean_success``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from roboflamingo.config import require_positive
from roboflamingo.sim.config import EnvConfig

MAX_PREFIX_RETRIES = 5


@dataclass
class Job:
    """``roboflamingo expert-check``: the scripted expert's success rate on each task.

    Args:
        scene: the scene to check (D is the evaluation scene).
        episodes_per_task: episodes per task, each from a random CALVIN-style initial state.
        tasks: the tasks to check; empty = all 34.
        seed: the episodes' initial states and block placements.
        workers: processes, each with its own simulator.
        max_steps: steps allowed per subtask (CALVIN's EP_LEN).
        progress: show a progress bar.
    """

    scene: str = "D"
    episodes_per_task: int = 20
    tasks: list[str] = field(default_factory=list)
    seed: int = 0
    workers: int = 2
    max_steps: int = 360
    progress: bool = True

    def __post_init__(self) -> None:
        require_positive("episodes_per_task", self.episodes_per_task)
        require_positive("workers", self.workers)
        require_positive("max_steps", self.max_steps)
        from roboflamingo.sim.scene import load_scene
        from roboflamingo.sim.tasks import TaskOracle

        load_scene(self.scene)  # a bad scene fails here, naming its file and field
        TaskOracle.default().check_names(self.tasks, source="expert_check.tasks")


def _check_task(args: tuple[str, str, int, int, int]) -> tuple[str, int, int, int, float]:
    """(task, successes, episodes, prefix failures, mean steps) for one task."""
    from roboflamingo.sim.env import TabletopEnv
    from roboflamingo.sim.expert import ScriptedExpert
    from roboflamingo.sim.rollout import reset_to_episode, run_subtask, sample_episode
    from roboflamingo.sim.tasks import TaskOracle

    scene, task, episodes, seed, max_steps = args
    oracle = TaskOracle.default()
    env = TabletopEnv(EnvConfig(scene=scene, render=False))
    expert = ScriptedExpert(env.scene)
    rng = np.random.default_rng([seed, oracle.tasks.index(task)])
    successes = prefix_failures = 0
    steps = []
    try:
        for _ in range(episodes):
            for _attempt in range(MAX_PREFIX_RETRIES):
                episode = sample_episode(task, rng, oracle)
                obs, _ = reset_to_episode(env, episode, rng)
                ok = True
                for sub in episode.tasks[:-1]:
                    expert.set_task(sub)
                    ok, obs, _ = run_subtask(env, expert, oracle, sub, sub, obs, max_steps)
                    if not ok:
                        break
                if ok:
                    break
                prefix_failures += 1
            if not ok:
                continue
            expert.set_task(task)
            ok, obs, n = run_subtask(env, expert, oracle, task, task, obs, max_steps)
            successes += int(ok)
            steps.append(n)
    finally:
        env.close()
    return task, successes, episodes, prefix_failures, float(np.mean(steps)) if steps else float("nan")


def run(job: Job) -> int:
    from roboflamingo.sim.scene import load_scene
    from roboflamingo.sim.tasks import TaskOracle

    load_scene(job.scene)  # fail early, naming the file, on a bad scene
    oracle = TaskOracle.default()
    tasks = list(job.tasks) or oracle.tasks
    oracle.check_names(tasks, source="expert_check.tasks")
    args = [(job.scene, t, job.episodes_per_task, job.seed, job.max_steps) for t in tasks]
    results = {}
    bar = tqdm(total=len(tasks), desc="expert-check", disable=not job.progress)
    if job.workers > 1:
        with mp.get_context("spawn").Pool(min(job.workers, len(tasks))) as pool:
            for r in pool.imap_unordered(_check_task, args):
                results[r[0]] = r
                bar.update()
    else:
        for a in args:
            r = _check_task(a)
            results[r[0]] = r
            bar.update()
    bar.close()
    width = max(map(len, tasks))
    print(f"{'task':<{width}}  success  episodes  prefix_failures  mean_steps")
    per_task = {}
    for t in tasks:
        _, s, n, pf, steps = results[t]
        per_task[t] = s / n
        print(f"{t:<{width}}  {s / n:7.2f}  {n:8d}  {pf:15d}  {steps:10.1f}")
    summary = {
        "scene": job.scene,
        "episodes_per_task": job.episodes_per_task,
        "per_task": per_task,
        "min_success": min(per_task.values()),
        "mean_success": float(np.mean(list(per_task.values()))),
        "prefix_failures": {t: results[t][3] for t in tasks},
        "mean_steps": {t: round(results[t][4], 1) for t in tasks},
    }
    print(json.dumps(summary))
    return 0
