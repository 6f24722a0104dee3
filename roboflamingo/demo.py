"""``roboflamingo demo``: from nothing to a policy that works, on the built-in tabletop.

Stages, each kept under ``run_dir`` and skipped on a rerun once complete::

    data/           expert demonstrations in CALVIN's layout (``roboflamingo generate``), packed
    train/          the policy (``roboflamingo train``), checkpoints/last
    eval/expert_*   the scripted expert under the same protocol, for reference
    eval/policy_*   the trained policy: 5-task chains and single-task episodes, and the open-loop
                    action error on the held-out demonstrations (``policy_open_loop.json``)
    seed_<s>/       with ``seeds`` > 1, each further training seed's train/ and eval/policy_*
    report/         results.json, results.md, results.png, a rollout frame strip

Seeds: the policy is trained with ``seed``, ``seed + 1``, ... on the same demonstrations and
evaluated on the same episodes, so the spread is that of training alone (diffusion_policy reports
every result as mean and spread over 3 training seeds). The first seed's stages are a one-seed
demo's, so raising ``seeds`` reuses them.

The demo trains and evaluates on one scene (``configs/experiment/abc_to_d.yaml``: trains on three,
evaluates on the fourth), always with the evaluation sentences, which never appear in the training
annotations, so what it measures is instruction following on unseen wording.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from roboflamingo.config import require_positive, save_yaml
from roboflamingo.data.config import DataConfig
from roboflamingo.eval.config import EvalConfig
from roboflamingo.io import atomic_write_json, atomic_write_text
from roboflamingo.models.config import HeadConfig, ModelConfig
from roboflamingo.policies import PolicyKind, PolicySourceConfig
from roboflamingo.sim.config import EnvConfig
from roboflamingo.sim.generate import Job as GenerateJob
from roboflamingo.train.config import TrainConfig, check_data_fits_model

# Articulated-object tasks from five of CALVIN's categories: learnable from a few minutes of CPU
# training, and together enough for 5-task chains.
DEMO_TASKS = [
    "move_slider_left",
    "move_slider_right",
    "open_drawer",
    "close_drawer",
    "turn_on_led",
    "turn_off_led",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
]


# What the demo sets in its stages' configs from its own fields (so that data, training and evaluation
# agree on them); setting one of these inside ``generate`` or ``eval`` would be ignored, so it is refused.
SHARED = {
    "generate": ("root", "train_scenes", "val_scenes", "tasks", "workers", "seed", "progress", "env"),
    "eval": ("mode", "chain_seed", "tasks", "workers", "progress"),
}


@dataclass
class Job:
    """``configs/demo.yaml``: the stages' own configs, and what the demo shares between them.

    Args:
        run_dir: every stage's output; delete a stage's folder to redo it.
        tasks: the demo's task set (demonstrated, trained and evaluated).
        train_scenes: scenes of the training demonstrations; empty = ``env.scene``, the evaluation
            scene (``[A, B, C]`` with ``env.scene: D`` is CALVIN's ABC->D generalization split).
        workers: processes for generation and evaluation, and with ``seeds`` > 1 how many training seeds
            train at once (each on ``train.threads`` threads; a seed is evaluated as soon as it is
            trained, while later ones train): training is the demo's longest stage.
        seed: the demonstrations', the first training run's and the evaluation episodes' seed.
        seeds: training seeds: ``seed``, ``seed + 1``, ... each trained and evaluated on the same data
            and episodes; the report gives each seed's figures and their mean and sample standard
            deviation. The first seed's stages are a one-seed demo's (raising it reuses them).
        open_loop: replay the held-out demonstrations through each trained policy with the
            evaluation sentences (``roboflamingo action-error``) and report the per-task action error.
        progress: progress bars in every stage.
        env: the simulator (scene, camera sizes, renderer) for data and evaluation alike.
        generate: the demonstrations (``roboflamingo generate``; its root, scenes, tasks, workers, seed,
            progress and env come from the fields above).
        eval: the evaluation protocol of every evaluated policy (``eval.num_videos``: videos of the
            trained policy's first chains; mode, chain_seed, tasks, workers and progress come from the demo).
        model, head, data, train: the policy and its training recipe.
    """

    run_dir: str = "runs/demo"
    tasks: list[str] = field(default_factory=lambda: list(DEMO_TASKS))
    train_scenes: list[str] = field(default_factory=list)
    workers: int = 2
    seed: int = 0
    seeds: int = 1
    open_loop: bool = True
    progress: bool = True
    env: EnvConfig = field(default_factory=EnvConfig)
    generate: GenerateJob = field(default_factory=GenerateJob)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        require_positive("workers", self.workers)
        require_positive("seeds", self.seeds)
        for group, names in SHARED.items():
            sub = getattr(self, group)
            defaults = {f.name: f for f in fields(sub)}
            for name in names:
                f = defaults[name]
                default = f.default_factory() if f.default is MISSING else f.default
                if getattr(sub, name) != default:
                    raise ValueError(f"{group}.{name} is set by the demo for every stage; "
                                     f"set {'seed' if name == 'chain_seed' else name} (or leave it) instead")
        check_data_fits_model(self.data, self.model)
        self.head.chunking.check(self.model.act_steps)

    def generate_job(self, root: Path) -> GenerateJob:
        """The data stage's job: the demo's recipe with the shared values filled in."""
        return replace(self.generate, root=str(root), train_scenes=list(self.train_scenes or [self.env.scene]),
                       val_scenes=[self.env.scene], tasks=list(self.tasks), workers=self.workers, seed=self.seed,
                       progress=self.progress, env=self.env)

    def eval_config(self, mode: str, videos: bool) -> EvalConfig:
        """One evaluation's protocol: ``eval`` with the shared values; videos only where asked."""
        return replace(self.eval, mode=mode, chain_seed=self.seed, tasks=list(self.tasks), workers=self.workers,
                       num_videos=self.eval.num_videos if videos else 0, progress=self.progress)


# --------------------------------------------------------------------------------------- stages
def _banner(stage: str, what: str) -> None:
    print(f"\n== demo: {stage}: {what}", flush=True)


def stage_data(job: Job, root: Path) -> None:
    from roboflamingo.data import pack
    from roboflamingo.sim import generate

    if (root / "manifest.json").is_file():
        _banner("data", f"{root} is complete, skipped")
    else:
        _banner("data", f"expert demonstrations of {len(job.tasks)} tasks -> {root}")
        if generate.run(job.generate_job(root)):
            raise RuntimeError("generate failed")
    packed = all((root / split / "packed" / "manifest.json").is_file() for split in ("training", "validation"))
    if packed:
        _banner("pack", "packed shards are complete, skipped")
        return
    _banner("pack", "memory-mapped shards for fast training")
    if pack.run(pack.Job(data=_data_cfg(job, root), verify_existing=False, progress=job.progress)):
        raise RuntimeError("pack failed")


def _data_cfg(job: Job, root: Path) -> DataConfig:
    return replace(job.data, root=str(root))


def _last_step(train_dir: Path) -> int | None:
    last = train_dir / "checkpoints" / "last"
    if not last.exists():
        return None
    trainer = last.resolve().name  # step_0000300
    return int(trainer.split("_")[-1]) if trainer.startswith("step_") else None


def stage_train(job: Job, data_root: Path, train_dir: Path, seed: int) -> Path:
    from roboflamingo.train import loop

    done = _last_step(train_dir)
    if done is not None and done >= job.train.steps:
        _banner("train", f"{train_dir} finished {done} steps, skipped")
        return train_dir / "checkpoints" / "last"
    _banner("train", f"{job.model.name} policy, seed {seed}, {job.train.steps} steps -> {train_dir}")
    train = replace(job.train, progress=job.train.progress and job.progress)
    tjob = loop.Job(model=job.model, head=job.head, data=_data_cfg(job, data_root), train=train,
                    run_dir=str(train_dir), seed=seed, resume=done is not None)
    if loop.run(tjob):
        raise RuntimeError("train failed")
    return train_dir / "checkpoints" / "last"


def _train_seed(job: Job, data_root: Path, index: int) -> None:
    stage_train(replace(job, progress=False), data_root, seed_dir(Path(job.run_dir), job, index) / "train",
                job.seed + index)


def start_training_seeds(job: Job, data_root: Path, pool: Executor) -> dict[int, Future]:
    """Submit every unfinished seed's training to ``pool`` (``workers`` processes): the demo evaluates
    each seed as soon as its training ends, while later seeds still train, so no core idles while an
    odd seed trains alone. Results are those of training one after the other: each run's thread count
    is ``train.threads`` either way, and that is what its numerics depend on."""
    pending = [i for i in range(job.seeds)
               if (_last_step(seed_dir(Path(job.run_dir), job, i) / "train") or 0) < job.train.steps]
    if len(pending) < 2:
        return {}
    _banner("train", f"seeds {[job.seed + i for i in pending]}, {min(job.workers, len(pending))} at a time")
    return {i: pool.submit(_train_seed, job, data_root, i) for i in pending}


def start_expert_beside_training(job: Job, root: Path, modes: tuple[tuple[str, str], ...],
                                 stack: ExitStack) -> dict[str, Future]:
    """While the first seed trains in this process on ``train.threads`` of the ``workers`` cores, the
    scripted expert (which does not depend on it) is evaluated on the cores it leaves free, in a
    process of its own; its episodes are seeded, so their results do not depend on the worker count."""
    free = job.workers - job.train.threads
    if job.train.threads == 0 or free < 1 or (_last_step(root / "train") or 0) >= job.train.steps:
        return {}
    _banner("eval", f"expert policy beside the training, on {free} worker(s)")
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    stack.callback(pool.shutdown, cancel_futures=True)
    side = replace(job, workers=free, progress=False)
    return {key: pool.submit(stage_expert, side, root, mode, key) for mode, key in modes}


def stage_expert(job: Job, root: Path, mode: str, key: str) -> dict[str, Any]:
    """The scripted expert under the demo's protocol, in ``eval/expert_<key>``: once per demo, as it
    does not depend on the training seed."""
    return stage_eval(job, root / "eval" / f"expert_{key}", "expert", None, mode)


def stage_eval(job: Job, out: Path, policy: str, checkpoint: Path | None, mode: str) -> dict[str, Any]:
    from roboflamingo.eval import run as eval_run

    cfg = job.eval_config(mode, videos=policy == "checkpoint" and mode == "chains")
    _banner("eval", f"{policy} policy, {mode} -> {out}")
    source = PolicySourceConfig(PolicyKind(policy), checkpoint=str(checkpoint) if checkpoint else None,
                                scene=job.env.scene, seed=job.seed)
    ejob = eval_run.Job(env=job.env, eval=cfg, policy=source, run_dir=str(out))
    if eval_run.run(ejob):
        raise RuntimeError(f"eval of the {policy} policy failed")
    return json.loads((out / "results.json").read_text())


def stage_open_loop(job: Job, out: Path, checkpoint: Path, split_dir: Path) -> dict[str, Any]:
    """Per-task open-loop action error on the held-out demonstrations (``eval.open_loop``), kept in
    ``out`` with the checkpoint's fingerprint, and reused while that fingerprint holds."""
    from roboflamingo.eval.open_loop import open_loop_errors
    from roboflamingo.eval.policies import PolicySpec
    from roboflamingo.threads import choose_threads

    source = PolicySourceConfig(PolicyKind.checkpoint, checkpoint=str(checkpoint), scene=job.env.scene)
    spec = PolicySpec(source, torch_threads=choose_threads(job.eval.torch_threads))
    identity = spec.identity()
    if out.is_file():
        kept = json.loads(out.read_text())
        if kept.get("identity") == identity:
            _banner("open-loop", f"{out} is complete, skipped")
            return kept
    _banner("open-loop", f"held-out demonstrations of {split_dir} through the policy -> {out}")
    result = open_loop_errors(spec(), split_dir) | {"identity": identity}
    atomic_write_json(out, result)
    return result


# --------------------------------------------------------------------------------------- report
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def mean_std(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (n - 1; None for one value) of one figure over seeds."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def _pooled(per_task: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-task success counts summed over seeds (one seed: its own table)."""
    out: dict[str, list[int]] = {}
    for table in per_task:
        for task, c in table.items():
            entry = out.setdefault(task, [0, 0])
            entry[0] += c["success"]
            entry[1] += c["total"]
    return {task: {"success": s, "total": n, "rate": s / n} for task, (s, n) in sorted(out.items())}


def seed_figures(seed: int, res: dict[str, Any]) -> dict[str, Any]:
    """One training seed's figures, as the report lists them."""
    single = res["single_task"]
    out = {
        "seed": seed,
        "avg_len": res["chains"]["avg_len"],
        "success_rates": res["chains"]["success_rates"],
        "single_task_average": single["task_average"],
        "single_task_per_task": {t: c["rate"] for t, c in single["per_task"].items()},
    }
    if "open_loop" in res:
        ol = res["open_loop"]
        out["open_loop"] = {"pose_mae": ol["pose_mae"], "gripper_acc": ol["gripper_acc"],
                            "per_task": ol["per_task"]}
    return out


def summary_table(policies: list[tuple[int, dict[str, Any]]], expert: dict[str, Any], name: str = "policy") -> str:
    head = "| policy | 1/5 | 2/5 | 3/5 | 4/5 | 5/5 | avg len | single-task (mean over tasks) |"
    rows = [head, "|" + "---|" * 8]

    def row(who: str, res: dict[str, Any]) -> str:
        rates = " | ".join(_pct(r) for r in res["chains"]["success_rates"])
        return f"| {who} | {rates} | {res['chains']['avg_len']:.2f} | {_pct(res['single_task']['task_average'])} |"

    if len(policies) == 1:
        rows.append(row(f"{name} policy", policies[0][1]))
    else:
        rows += [row(f"{name} policy, seed {seed}", res) for seed, res in policies]
        rates = [mean_std([res["chains"]["success_rates"][k] for _, res in policies]) for k in range(5)]
        avg = mean_std([res["chains"]["avg_len"] for _, res in policies])
        single = mean_std([res["single_task"]["task_average"] for _, res in policies])
        rows.append(f"| mean ± std ({len(policies)} seeds) | "
                    + " | ".join(f"{_pct(r['mean'])} ± {_pct(r['std'])}" for r in rates)
                    + f" | **{avg['mean']:.2f} ± {avg['std']:.2f}** | {_pct(single['mean'])} ± {_pct(single['std'])} |")
    rows.append(row("scripted expert", expert))
    return "\n".join(rows)


def per_task_table(policies: list[tuple[int, dict[str, Any]]], expert: dict[str, Any], tasks: list[str],
                   name: str = "policy") -> str:
    """Single-task successes per task: one column per seed, then the expert's."""
    heads = [f"{name} policy"] if len(policies) == 1 else [f"seed {seed}" for seed, _ in policies]
    rows = [f"| task | {' | '.join(heads)} | scripted expert |", "|" + "---|" * (len(heads) + 2)]
    for task in tasks:
        cells = []
        for res in [r for _, r in policies] + [expert]:
            t = res["single_task"]["per_task"].get(task, {"success": 0, "total": 0})
            cells.append(f"{t['success']}/{t['total']}")
        rows.append(f"| {task} | {' | '.join(cells)} |")
    return "\n".join(rows)


def _per_seed_table(policies: list[tuple[int, dict[str, Any]]], tasks: list[str],
                    cell: Callable[[dict[str, Any], str], str]) -> str:
    """A row per task, a column per seed, each cell ``cell(that seed's results, task)``."""
    heads = [f"seed {seed}" for seed, _ in policies]
    rows = [f"| task | {' | '.join(heads)} |", "|" + "---|" * (len(heads) + 1)]
    rows += [f"| {task} | {' | '.join(cell(res, task) for _, res in policies)} |" for task in tasks]
    return "\n".join(rows)


def handover_table(policies: list[tuple[int, dict[str, Any]]], tasks: list[str]) -> str:
    """Per task and seed, in the chains: successes as a chain's first subtask / as a later one (which
    starts wherever the previous subtask left the arm)."""
    def cell(res: dict[str, Any], task: str) -> str:
        split = res["chains"].get("per_task_first_later", {}).get(task)
        if split is None:
            return "- / -"
        return " / ".join(f"{w['success']}/{w['total']}" if w["total"] else "-" for w in (split["first"], split["later"]))

    return _per_seed_table(policies, tasks, cell)


def open_loop_table(policies: list[tuple[int, dict[str, Any]]], tasks: list[str]) -> str:
    """Per task and seed: pose error with the evaluation sentence / with the closest other task's."""
    def cell(res: dict[str, Any], task: str) -> str:
        e = res["open_loop"]["per_task"].get(task)
        if e is None:
            return "-"
        other = f" / {e['closest_other_pose_mae']:.3f} ({e['closest_other']})" if "closest_other" in e else ""
        return f"{e['pose_mae']:.3f}{other}"

    return _per_seed_table(policies, tasks, cell)


def write_report(job: Job, report_dir: Path, policies: list[tuple[int, dict[str, Any]]], expert: dict[str, Any],
                 eval_dirs: dict[str, Path], timings: dict[str, float]) -> dict[str, Any]:
    """``policies``: (training seed, its evaluations) per seed. The top-level figures are over all
    seeds: means of the rates, per-task counts summed (one seed: exactly its own figures)."""
    chains = [res["chains"] for _, res in policies]
    singles = [res["single_task"] for _, res in policies]
    n = len(policies)
    results = {
        "avg_len": sum(c["avg_len"] for c in chains) / n,
        "success_rates": [sum(c["success_rates"][k] for c in chains) / n for k in range(len(chains[0]["success_rates"]))],
        "num_chains": chains[0]["num_chains"],
        "per_task": _pooled([c["per_task"] for c in chains]),
        "single_task": {
            "task_average": sum(s["task_average"] for s in singles) / n,
            "success_rate": sum(s["success_rate"] for s in singles) / n,
            "per_task": _pooled([s["per_task"] for s in singles]),
            "num_episodes": singles[0]["num_episodes"],
        },
        "seeds": [seed_figures(seed, res) for seed, res in policies],
        "spread": {
            "avg_len": mean_std([c["avg_len"] for c in chains]),
            "single_task_average": mean_std([s["task_average"] for s in singles]),
            "single_task_per_task": {t: mean_std([s["per_task"].get(t, {"rate": 0.0})["rate"] for s in singles])
                                     for t in job.tasks},
        },
        "expert": {
            "avg_len": expert["chains"]["avg_len"],
            "success_rates": expert["chains"]["success_rates"],
            "num_chains": expert["chains"]["num_chains"],
            "single_task_average": expert["single_task"]["task_average"],
            "single_task_per_task": expert["single_task"]["per_task"],
        },
        "tasks": list(job.tasks),
        "scene": job.env.scene,
        "train_scenes": list(job.train_scenes or [job.env.scene]),
        "stage_seconds": timings,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    clips = failure_clips(job, policies, report_dir)
    if clips:
        results["failure_videos"] = {str(seed): {t: str(p.relative_to(job.run_dir)) for t, p in by_task.items()}
                                     for seed, by_task in clips.items()}
    atomic_write_json(report_dir / "results.json", results)
    seeds = ", ".join(str(seed) for seed, _ in policies)
    md = (
        "# roboflamingo demo\n\n"
        f"Trained on scene(s) {', '.join(job.train_scenes or [job.env.scene])}, evaluated on scene {job.env.scene}; "
        f"tasks: {', '.join(job.tasks)}; evaluation sentences unseen in training; training seed(s) {seeds}.\n\n"
        + summary_table(policies, expert, job.model.name) + "\n\n"
        + per_task_table(policies, expert, job.tasks, job.model.name) + "\n"
    )
    if all("per_task_first_later" in res["chains"] for _, res in policies):
        md += ("\n## Chains: each task as the first subtask / as a later one\n\n"
               "A later subtask starts wherever the previous one left the arm; a task that succeeds first "
               "and fails later fails at the handover:\n\n" + handover_table(policies, job.tasks) + "\n")
    if all("open_loop" in res for _, res in policies):
        md += ("\n## Open-loop action error on the held-out demonstrations\n\n"
               "Mean |predicted - demonstrated| relative pose action per task, with the task's evaluation "
               "sentence / with the closest other task's sentence (which other task):\n\n"
               + open_loop_table(policies, job.tasks) + "\n")
    if clips:
        md += "\n## Failure clips\n\n" + failure_table(clips, report_dir) + "\n"
    atomic_write_text(report_dir / "results.md", md)
    png = eval_dirs["policy_chains"] / "results.png"
    if png.is_file():
        shutil.copyfile(png, report_dir / "results.png")
    videos = sorted((eval_dirs["policy_chains"] / "videos").glob("*.mp4"))
    if videos:
        frame_strip(videos[0], report_dir / "rollout.png")
    return results


def failure_clips(job: Job, policies: list[tuple[int, dict[str, Any]]], report_dir: Path) -> dict[int, dict[str, Path]]:
    """Per seed and failed task, its first failure's video (``eval.failure_videos``): from the
    single-task episodes where the task failed there, else from the chains. Each gets a frame strip
    in ``report/failures/`` so the report shows where the arm went without opening a video."""
    out: dict[int, dict[str, Path]] = {}
    for seed, res in policies:
        base = seed_dir(Path(job.run_dir), job, seed - job.seed) / "eval"
        by_task: dict[str, Path] = {}
        for key, mode in (("policy_tasks", "single_task"), ("policy_chains", "chains")):
            for task, paths in res[mode].get("failure_videos", {}).items():
                if task not in by_task and (base / key / paths[0]).is_file():
                    by_task[task] = base / key / paths[0]
        if by_task:
            out[seed] = dict(sorted(by_task.items()))
            for task, video in out[seed].items():
                frame_strip(video, report_dir / "failures" / f"{task}_seed{seed}.png")
    return out


def failure_table(clips: dict[int, dict[str, Path]], report_dir: Path) -> str:
    seeds = sorted(clips)
    tasks = sorted({t for by_task in clips.values() for t in by_task})
    rows = ["| task | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for task in tasks:
        cells = []
        for seed in seeds:
            video = clips[seed].get(task)
            cells.append("-" if video is None else
                         f"[video]({os.path.relpath(video, report_dir)}) · [frames](failures/{task}_seed{seed}.png)")
        rows.append(f"| {task} | {' | '.join(cells)} |")
    return "\n".join(rows)


def frame_strip(video: Path, out: Path, frames: int = 6) -> None:
    """A row of evenly spaced frames from a rollout video, for docs/demo.md."""
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(video)) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not images:
        return
    picks = np.linspace(0, len(images) - 1, min(frames, len(images))).round().astype(int)
    strip = np.concatenate([images[i] for i in picks], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(out)


def seed_dir(root: Path, job: Job, index: int) -> Path:
    """Where training seed ``job.seed + index`` keeps its train/ and eval/policy_* (the first: ``root``)."""
    return root if index == 0 else root / f"seed_{job.seed + index}"


def run(job: Job) -> int:
    root = Path(job.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_yaml(job, root / "config.yaml")
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        timings[name] = round(time.perf_counter() - start, 1)
        return out

    modes = (("chains", "chains"), ("single_task", "tasks"))
    stack = ExitStack()
    try:
        data_root = root / "data"
        timed("data", stage_data, job, data_root)
        training: dict[int, Future] = {}
        if job.seeds > 1 and job.workers > 1:
            # spawn: a fresh interpreter per training (no forked torch or renderer state). On an error,
            # trainings not started are dropped and running ones finish (a rerun resumes from them).
            pool = ProcessPoolExecutor(min(job.workers, job.seeds), mp_context=get_context("spawn"))
            stack.callback(pool.shutdown, cancel_futures=True)
            training = start_training_seeds(job, data_root, pool)
        expert_runs = start_expert_beside_training(job, root, modes, stack) if not training else {}
        expert: dict[str, Any] = {}
        policies: list[tuple[int, dict[str, Any]]] = []
        first_dirs: dict[str, Path] = {}
        for index in range(job.seeds):
            seed, base = job.seed + index, seed_dir(root, job, index)
            tag = "" if index == 0 else f"_seed{seed}"
            if index in training:
                timed(f"train_wait{tag}", training[index].result)
            checkpoint = timed(f"train{tag}", stage_train, job, data_root, base / "train", seed)
            if index == 0:
                for mode, key in modes:
                    run_expert = expert_runs[key].result if key in expert_runs else partial(stage_expert, job, root, mode, key)
                    expert["chains" if mode == "chains" else "single_task"] = timed(f"eval_expert_{key}", run_expert)
            results: dict[str, Any] = {}
            for mode, key in modes:
                out = base / "eval" / f"policy_{key}"
                first_dirs.setdefault(f"policy_{key}", out)
                results["chains" if mode == "chains" else "single_task"] = timed(
                    f"eval_policy_{key}{tag}", stage_eval, job, out, "checkpoint", checkpoint, mode)
            if job.open_loop:
                results["open_loop"] = timed(f"open_loop{tag}", stage_open_loop, job,
                                             base / "eval" / "policy_open_loop.json", checkpoint, data_root / "validation")
            policies.append((seed, results))
    except (RuntimeError, ValueError) as e:
        print(f"roboflamingo demo: {e}", file=sys.stderr)
        return 2
    finally:
        stack.close()
    report = write_report(job, root / "report", policies, expert, first_dirs, timings)
    print("\n" + summary_table(policies, expert, job.model.name))
    print(f"\nreport: {root / 'report'}")
    line = {k: report[k] for k in ("avg_len", "success_rates", "num_chains")} | {
        "single_task_average": report["single_task"]["task_average"], "expert_avg_len": report["expert"]["avg_len"],
        "seeds": job.seeds}
    if job.seeds > 1:
        line |= {"avg_len_std": report["spread"]["avg_len"]["std"],
                 "single_task_average_std": report["spread"]["single_task_average"]["std"]}
    print(json.dumps(line))
    return 0
