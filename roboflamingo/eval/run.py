"""``roboflamingo eval``: closed-loop evaluation with CALVIN's long-horizon protocol.

    roboflamingo eval checkpoint=runs/train/checkpoints/last       # a trained policy (policy.checkpoint=)
    roboflamingo eval policy=expert eval.num_chains=100            # the scripted expert
    roboflamingo eval policy=random eval.workers=4                 # the floor
    roboflamingo eval checkpoint=... eval.batch_size=8             # 8 simulators, one batched forward per step
    roboflamingo eval checkpoint=... eval.calvin_dataset=task_D_D/validation   # the real calvin_env
    torchrun --nproc_per_node=8 -m roboflamingo.cli eval checkpoint=...        # chains split over ranks

Rerunning the same command resumes: finished chains are read back from ``<run_dir>/records/`` and
skipped. The report (``results.json``, ``results.md``, ``results.png``, ``videos/``) lands in ``run_dir``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roboflamingo.config import save_yaml
from roboflamingo.eval.calvin_adapter import INSTALL_HINT
from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.envs import EnvSpec
from roboflamingo.eval.items import build_items
from roboflamingo.eval.policies import PolicySpec, default_torch_threads
from roboflamingo.eval.report import headline, markdown, write_report
from roboflamingo.eval.runner import evaluate_items
from roboflamingo.models.towers import TowerNotFoundError
from roboflamingo.policies import LOCAL_KINDS, PolicyKind, PolicySourceConfig
from roboflamingo.process import torchrun_ranks
from roboflamingo.robot import RobotDescription
from roboflamingo.sim.config import EnvConfig


@dataclass
class Job:
    """The ``eval`` command's config (``configs/eval.yaml``).

    Args:
        env: the tabletop simulator (ignored when ``eval.calvin_dataset`` selects the real CALVIN).
        eval: protocol, parallelism and report settings.
        policy: the policy source (``policy=checkpoint|expert|random``, ``checkpoint=<dir>``); the
            expert acts in ``env.scene`` (``configs/eval.yaml``).
        run_dir: where records, report and videos go; rerunning into it resumes.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    policy: PolicySourceConfig = field(default_factory=PolicySourceConfig)
    run_dir: str = "runs/eval"

    def __post_init__(self) -> None:
        self.policy.check(LOCAL_KINDS, "eval")


def make_specs(job: Job) -> tuple[PolicySpec, EnvSpec]:
    """The picklable policy and environment factories a job describes (ValueError when inconsistent)."""
    cfg = job.eval
    threads = cfg.torch_threads or default_torch_threads(cfg.workers, cfg.batch_size, cfg.batch_groups)
    policy = PolicySpec(job.policy, torch_threads=threads, precision=cfg.precision)
    if cfg.calvin_dataset:
        env = EnvSpec("calvin", job.env, cfg.calvin_dataset, cfg.calvin_tasks_config)
    else:
        env = EnvSpec("tabletop", job.env)
    return policy, env


def check_checkpoint(directory: str, robot: RobotDescription, env_name: str) -> None:
    """A policy checkpoint's config and manifest (the sha256 of every file of a training checkpoint),
    its weights file's header, and that it acts for ``robot``: what loading it in each worker would
    otherwise fail on (as a traceback from every worker)."""
    from safetensors import safe_open

    from roboflamingo.models.checkpoint import WEIGHTS_FILE, hub_resolve, read_saved

    saved = read_saved(hub_resolve(directory))
    saved.robot.require_compatible(robot, f"checkpoint={directory}", env_name)
    weights = saved.directory / WEIGHTS_FILE
    try:
        with safe_open(str(weights), "pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own types for a garbled header
        raise ValueError(f"{weights}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def evaluate_and_report(job: Any, items: list, policy_spec: Any, env_spec: Any, cfg: EvalConfig, run_dir: Path,
                        title: str, details: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Run ``items`` through the runner (resuming from ``run_dir``), then write and print the report:
    the runner's summary with the title, both identities and ``details(summary)`` (the protocol, and
    whatever the benchmark adds). Every benchmark's ``eval`` ends here."""
    identity: dict[str, Any] = {"policy": policy_spec.identity(), "env": env_spec.identity()}
    if torchrun_ranks().rank == 0:
        save_yaml(job, run_dir / "config.yaml")
    try:
        summary = evaluate_items(items, policy_spec, env_spec, cfg, run_dir, identity)
    except TowerNotFoundError as e:  # a moved checkpoint whose frozen towers are nowhere on the search path
        print(f"roboflamingo eval: {e}", file=sys.stderr)
        return 2
    if summary is None:  # ranks > 0: rank 0 merges and reports
        return 0
    summary.update({"title": title, "policy": identity["policy"], "env": identity["env"]})
    summary.update(details(summary))
    paths = write_report(run_dir, summary, title)
    print(markdown(summary, title))
    print(f"report: {paths['json']}, {paths['md']}, {paths['png']}")
    print(json.dumps(headline(summary)))
    return 0


def title(job: Job) -> str:
    src = job.policy
    who = f"checkpoint {src.checkpoint}" if src.kind is PolicyKind.checkpoint else f"{src.kind.value} policy"
    where = f"CALVIN ({job.eval.calvin_dataset})" if job.eval.calvin_dataset else f"tabletop scene {job.env.scene}"
    return f"{who} on {where}"


def run(job: Job) -> int:
    from roboflamingo.robots.calvin import CALVIN

    try:
        policy_spec, env_spec = make_specs(job)
        if job.policy.kind is PolicyKind.checkpoint:
            # Both worlds are CALVIN's robot; a checkpoint of another robot would be fed the wrong shapes.
            check_checkpoint(job.policy.checkpoint, CALVIN, f"the {env_spec.kind} environment")
    except (ValueError, OSError) as e:
        print(f"roboflamingo eval: {e}", file=sys.stderr)
        return 2
    if env_spec.kind == "calvin" and importlib.util.find_spec("calvin_env") is None:
        print(f"roboflamingo eval: eval.calvin_dataset is set, but {INSTALL_HINT}", file=sys.stderr)
        return 2
    protocol = {"mode": job.eval.mode, "ep_len": job.eval.ep_len, "num_chains": job.eval.num_chains,
                "chain_seed": job.eval.chain_seed, "episodes_per_task": job.eval.episodes_per_task}
    return evaluate_and_report(job, build_items(job.eval), policy_spec, env_spec, job.eval, Path(job.run_dir),
                               title(job), lambda summary: {"protocol": protocol})
