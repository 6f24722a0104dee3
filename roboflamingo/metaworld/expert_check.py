"""``roboflamingo expert-check env=metaworld``: success of Meta-World's scripted policies per task.

Each task runs ``episodes_per_task`` episodes with the evaluation's seeds (episode k: ``seed + k``,
as ``eval`` seeds its episode k with ``eval.chain_seed + k``), the object and goal positions drawn
from the seed, until ``info["success"]`` or ``max_path_length``. This is the reference row beside a
learned policy's evaluation. Cameras are off unless ``env.render`` asks for them (the scripted
policies read Meta-World's full observation). The last printed line is JSON with ``per_task``,
``per_group`` (the mean over a difficulty group's tasks), ``mean_success``, ``min_success`` and
``mean_steps`` (to success).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from roboflamingo.config import require_positive
from roboflamingo.metaworld.config import MetaWorldConfig


@dataclass
class Job:
    """``roboflamingo expert-check env=metaworld``: success of the scripted policies per task.

    Args:
        tasks: Meta-World tasks, difficulty groups (easy, medium, hard, very_hard), mt10 or all;
            empty = all 50.
        episodes_per_task: seeded episodes per task.
        seed: episode k of every task has seed ``seed + k``.
        max_steps: steps allowed per episode; 0 is the task's ``max_path_length`` (500).
        workers: processes, each with its own simulator.
        progress: show a progress bar.
        env: the environment (cameras off by default: the scripted policies read state only).
    """

    tasks: list[str] = field(default_factory=list)
    episodes_per_task: int = 10
    seed: int = 0
    max_steps: int = 0
    workers: int = 2
    progress: bool = True
    env: MetaWorldConfig = field(default_factory=lambda: MetaWorldConfig(render="off"))

    def __post_init__(self) -> None:
        from roboflamingo.metaworld.tasks import resolve_tasks

        require_positive("episodes_per_task", self.episodes_per_task)
        require_positive("max_steps", self.max_steps, allow_zero=True)
        require_positive("workers", self.workers)
        resolve_tasks(self.tasks, source="expert_check.tasks")


def check_task(args: tuple[str, int, int, int, MetaWorldConfig]) -> dict:
    """One task's episodes: successes, and steps to success of each successful episode."""
    from roboflamingo.metaworld.env import MetaWorldEnv
    from roboflamingo.metaworld.expert import MetaWorldExpert

    task, episodes, seed, max_steps, cfg = args
    env = MetaWorldEnv(task, cfg=cfg)
    expert = MetaWorldExpert(task)
    limit = min(max_steps or env.max_path_length, env.max_path_length)
    steps, successes = [], 0
    try:
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + k)
            for t in range(limit):
                obs, _, success, truncated, _ = env.step(expert.step(obs, task))
                if success:
                    successes += 1
                    steps.append(t + 1)
                    break
                if truncated:
                    break
    finally:
        env.close()
    return {"task": task, "successes": successes, "episodes": episodes,
            "mean_steps": float(np.mean(steps)) if steps else float("nan"),
            "max_steps": int(max(steps)) if steps else 0}


def group_means(per_task: dict[str, float]) -> dict[str, float]:
    """The mean success of each difficulty group's checked tasks (groups with none left out)."""
    from roboflamingo.metaworld.tasks import task_table

    table = task_table()
    out = {}
    for group, members in table.groups.items():
        rates = [per_task[t] for t in members if t in per_task]
        if rates:
            out[group] = float(np.mean(rates))
    return out


def run(job: Job) -> int:
    from roboflamingo.metaworld.tasks import resolve_tasks, task_table

    tasks = resolve_tasks(job.tasks, source="expert_check.tasks")
    args = [(t, job.episodes_per_task, job.seed, job.max_steps, job.env) for t in tasks]
    results: dict[str, dict] = {}
    bar = tqdm(total=len(tasks), desc="expert-check metaworld", disable=not job.progress)
    if job.workers > 1 and len(tasks) > 1:
        with mp.get_context("spawn").Pool(min(job.workers, len(tasks))) as pool:
            for r in pool.imap_unordered(check_task, args):
                results[r["task"]] = r
                bar.update()
    else:
        for a in args:
            r = check_task(a)
            results[r["task"]] = r
            bar.update()
    bar.close()
    table = task_table()
    width = max(map(len, tasks))
    print(f"{'task':<{width}}  {'group':<9}  success  episodes  mean_steps  max_steps")
    per_task = {}
    for t in tasks:
        r = results[t]
        per_task[t] = r["successes"] / r["episodes"]
        print(f"{t:<{width}}  {table.group_of(t):<9}  {per_task[t]:7.2f}  {r['episodes']:8d}  "
              f"{r['mean_steps']:10.1f}  {r['max_steps']:9d}")
    per_group = group_means(per_task)
    print("  ".join(f"{g}: {v:.3f}" for g, v in per_group.items()))
    summary = {
        "env": "metaworld",
        "episodes_per_task": job.episodes_per_task,
        "seed": job.seed,
        "per_task": per_task,
        "per_group": per_group,
        "mean_success": float(np.mean(list(per_task.values()))),
        "min_success": min(per_task.values()),
        "mean_steps": {t: round(results[t]["mean_steps"], 1) for t in tasks},
    }
    print(json.dumps(summary))
    return 0
