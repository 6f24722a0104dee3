"""``roboflamingo eval env=metaworld``: closed-loop evaluation on Meta-World through the same runner.

    roboflamingo eval env=metaworld checkpoint=<dir> eval.tasks=[mt10] eval.episodes_per_task=20
    roboflamingo eval env=metaworld policy=expert eval.tasks=[easy,medium]   # the reference row
    roboflamingo eval env=metaworld policy=random eval.workers=2             # the floor

Each task gets ``eval.episodes_per_task`` episodes; episode k of every task starts from seed
``eval.chain_seed + k`` (object and goal positions, see ``env.MetaWorldEnv``), so every policy meets
the same episodes in any layout (workers, batched, ranks) and a rerun resumes. An episode ends at
Meta-World's ``info["success"]`` or after ``eval.ep_len`` steps (Meta-World's ``max_path_length``,
500). The instruction is the task's evaluation sentence (``tasks.yaml``, never a training
description). The runner is the tabletop's (``eval.runner``): parallel workers, batched simulators,
resume, videos; the report adds success per difficulty group (LeRobot's split, as the SmolVLA paper
reports it) to ``results.md`` and ``eval_info.json``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.config import require_choice
from roboflamingo.eval.config import PRECISIONS, EvalConfig
from roboflamingo.eval.policies import PolicySpec, default_torch_threads
from roboflamingo.eval.protocol import EvalItem
from roboflamingo.metaworld.config import MetaWorldConfig
from roboflamingo.policies import PolicyKind, PolicySourceConfig
from roboflamingo.types import Observation, Policy

MAX_PATH_LENGTH = 500  # every v3 task's; MetaWorldEnv checks the task's own
KINDS = (PolicyKind.checkpoint, PolicyKind.expert, PolicyKind.random)


@dataclass
class Job:
    """The ``eval env=metaworld`` command's config (``configs/eval_metaworld.yaml``).

    Args:
        env: the Meta-World environment: camera, image size and render preset, those the policy was
            trained on (a dataset's ``env_config.yaml`` says which).
        eval: the runner's settings. ``tasks`` takes tasks, difficulty groups, ``mt10`` or ``all``
            (empty: all 50); ``episodes_per_task`` seeded episodes each, episode k with seed
            ``chain_seed + k``; ``ep_len`` at most Meta-World's ``max_path_length`` (500); ``mode``
            must be ``single_task``.
        policy: ``checkpoint`` (``checkpoint=<dir>``, a policy trained on the Sawyer), ``expert``
            (Meta-World's scripted policies) or ``random``.
        run_dir: where records, report and videos go; rerunning into it resumes.
    """

    env: MetaWorldConfig = field(default_factory=MetaWorldConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(mode="single_task", ep_len=MAX_PATH_LENGTH))
    policy: PolicySourceConfig = field(default_factory=PolicySourceConfig)
    run_dir: str = "runs/eval_metaworld"

    def __post_init__(self) -> None:
        from roboflamingo.metaworld.tasks import resolve_tasks

        self.policy.check(KINDS, "eval")
        require_choice("eval.mode (Meta-World)", self.eval.mode, ("single_task",))
        if self.eval.ep_len > MAX_PATH_LENGTH:
            raise ValueError(f"eval.ep_len: Meta-World episodes end after max_path_length = {MAX_PATH_LENGTH} "
                             f"steps, got {self.eval.ep_len}")
        calvin = {k: v for k, v in (("calvin_dataset", self.eval.calvin_dataset),
                                    ("calvin_tasks_config", self.eval.calvin_tasks_config),
                                    ("calvin_instructions", self.eval.calvin_instructions)) if v}
        if calvin:
            raise ValueError(f"eval.{next(iter(calvin))} is CALVIN's; it has no meaning with env=metaworld")
        if self.env.render == "off" and self.policy.kind is PolicyKind.checkpoint:
            raise ValueError("env.render=off draws no images, but a checkpoint policy sees them: use fast or lerobot")
        resolve_tasks(self.eval.tasks, source="eval.tasks")


# ------------------------------------------------------------------ the environment


class MetaWorldEvalEnv:
    """A ``MetaWorldEnv`` as the runner's ``EvalEnv``: an item's initial state is ``{"task", "seed"}``,
    and a task is done when Meta-World's ``info["success"]`` says so."""

    def __init__(self, cfg: MetaWorldConfig):
        from roboflamingo.metaworld.env import MetaWorldEnv

        self.cfg = cfg
        self.env = MetaWorldEnv(cfg=cfg)
        self.robot = self.env.robot
        self._success = False

    def reset_to(self, initial_state: dict[str, Any], seed: int) -> Observation:
        obs, _ = self.env.reset(seed=int(initial_state["seed"]), options={"task": initial_state["task"]})
        self._success = False
        return obs

    def step(self, action: np.ndarray) -> Observation:
        obs, _reward, success, _truncated, _info = self.env.step(action)
        self._success = bool(success)
        return obs

    def info(self) -> dict[str, Any]:
        return {"task": self.env.task, "success": self._success}

    def successful(self, start_info: Any, task: str) -> bool:
        return self._success and self.env.task == task

    def frame(self, obs: Observation) -> np.ndarray:
        if self.cfg.render == "off":
            return self.env.render()
        return np.asarray(obs[self.cfg.camera])

    def close(self) -> None:
        self.env.close()


@dataclass(frozen=True)
class MetaWorldEnvSpec:
    """The picklable factory of ``MetaWorldEvalEnv`` (one per worker process)."""

    cfg: MetaWorldConfig = field(default_factory=MetaWorldConfig)

    def identity(self) -> dict[str, Any]:
        # What the policy sees (camera, size, render preset) and how positions are drawn.
        from importlib.metadata import version

        return {"kind": "metaworld", "env": asdict(self.cfg), "metaworld": version("metaworld")}

    def __call__(self) -> MetaWorldEvalEnv:
        return MetaWorldEvalEnv(self.cfg)


# ------------------------------------------------------------------ the policy


@dataclass(frozen=True)
class MetaWorldPolicySpec:
    """Everything a worker needs to build its own policy: the checkpoint as ``eval`` builds it, or
    Meta-World's scripted policies, or uniform random actions in the Sawyer's bounds. Batched, the
    runner steps a checkpoint once for all slots and the others one instance per slot (slot i
    seeded like worker i), their actions checked against the policy's robot."""

    source: PolicySourceConfig
    torch_threads: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        require_choice("precision", self.precision, PRECISIONS)

    @property
    def kind(self) -> PolicyKind:
        return self.source.kind

    def _checkpoint(self) -> PolicySpec:
        return PolicySpec(self.source, torch_threads=self.torch_threads, precision=self.precision)

    def identity(self) -> dict[str, Any]:
        if self.kind is PolicyKind.checkpoint:
            return self._checkpoint().identity()
        if self.kind is PolicyKind.expert:
            return {"kind": "expert", "env": "metaworld"}
        return {"kind": "random", "seed": self.source.seed, "robot": "metaworld_sawyer"}

    def __call__(self, worker: int = 0) -> Policy:
        from roboflamingo.metaworld.env import sawyer_robot
        from roboflamingo.metaworld.expert import MetaWorldExpert
        from roboflamingo.policies import RandomPolicy

        if self.kind is PolicyKind.expert:
            return MetaWorldExpert()
        if self.kind is PolicyKind.random:
            return RandomPolicy(self.source.seed + worker, robot=sawyer_robot())  # the floor of every score
        return self._checkpoint()(worker)


# ------------------------------------------------------------------ the work list and the report


def build_items(tasks: list[str], episodes: int, seed: int) -> list[EvalItem]:
    """``episodes`` items per task, in task order; episode k of each task has seed ``seed + k``."""
    from roboflamingo.metaworld.tasks import task_table

    sentences = task_table().eval
    return [EvalItem(t * episodes + k, {"task": task, "seed": seed + k}, [task], [sentences[task]])
            for t, task in enumerate(tasks) for k in range(episodes)]


def per_group(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Success per difficulty group: the mean of its evaluated tasks' rates, and the pooled counts."""
    from roboflamingo.metaworld.tasks import task_table

    out = {}
    for group, members in task_table().groups.items():
        rows = [summary["per_task"][t] for t in members if t in summary["per_task"]]
        if rows:
            out[group] = {"tasks": len(rows), "success": sum(r["success"] for r in rows),
                          "total": sum(r["total"] for r in rows),
                          "rate": float(np.mean([r["rate"] for r in rows]))}
    return out


def make_specs(job: Job) -> tuple[MetaWorldPolicySpec, MetaWorldEnvSpec]:
    """The policy and environment factories; a ValueError when the checkpoint is unreadable or not
    the Sawyer's (``RobotMismatch`` naming both robots)."""
    from roboflamingo.eval.run import check_checkpoint
    from roboflamingo.metaworld.env import sawyer_robot

    cfg = job.eval
    threads = cfg.torch_threads or default_torch_threads(cfg.workers, cfg.batch_size, cfg.batch_groups)
    policy = MetaWorldPolicySpec(job.policy, torch_threads=threads, precision=cfg.precision)
    if policy.kind is PolicyKind.checkpoint:
        # the setting that decides the state is named, so a mismatch shows which one to change
        check_checkpoint(job.policy.checkpoint, sawyer_robot(job.env), f"env=metaworld env.state={job.env.state}")
    return policy, MetaWorldEnvSpec(job.env)


def title(job: Job, tasks: list[str]) -> str:
    src = job.policy
    who = f"checkpoint {src.checkpoint}" if src.kind is PolicyKind.checkpoint else f"{src.kind.value} policy"
    return (f"{who} on Meta-World ({len(tasks)} tasks, {job.env.camera} {job.env.size} px, "
            f"{job.env.render} render)")


def run(job: Job) -> int:
    from roboflamingo.eval.run import evaluate_and_report
    from roboflamingo.metaworld.tasks import resolve_tasks, task_table

    try:
        policy_spec, env_spec = make_specs(job)
    except (ValueError, OSError) as e:
        print(f"roboflamingo eval: {e}", file=sys.stderr)
        return 2
    tasks = resolve_tasks(job.eval.tasks, source="eval.tasks")
    items = build_items(tasks, job.eval.episodes_per_task, job.eval.chain_seed)
    table = task_table()

    def details(summary: dict[str, Any]) -> dict[str, Any]:
        return {
            "per_group": per_group(summary),
            "task_groups": {t: table.group_of(t) for t in tasks},
            "protocol": {"mode": "single_task", "ep_len": job.eval.ep_len,
                         "episodes_per_task": job.eval.episodes_per_task,
                         "seeds": [job.eval.chain_seed, job.eval.chain_seed + job.eval.episodes_per_task - 1],
                         "instructions": "evaluation sentences"},
        }

    return evaluate_and_report(job, items, policy_spec, env_spec, job.eval, Path(job.run_dir), title(job, tasks),
                               details)
