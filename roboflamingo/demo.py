"""``roboflamingo demo``: from nothing to a policy that works, on the built-in tabletop.

Stages, each kept under ``run_dir`` and skipped on a rerun once complete::

    data/           expert demonstrations in CALVIN's layout (``roboflamingo generate``), packed
    train/          the policy (``roboflamingo train``), checkpoints/last
    eval/expert_*   the scripted expert under the same protocol, for reference
    eval/policy_*   the trained policy: 5-task chains and single-task episodes
    report/         results.json, results.md, results.png, a rollout frame strip

The demo trains and evaluates on one scene (``configs/experiment/abc_to_d.yaml``: trains on three,
evaluates on the fourth), always with the evaluation sentences, which never appear in the training
annotations, so what it measures is instruction following on unseen wording.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import MISSING, dataclass, field, fields, replace
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
        workers: processes for generation and evaluation.
        seed: the demonstrations', the training's and the evaluation chains' seed.
        progress: progress bars in every stage.
        env: the simulator (scene, camera sizes, renderer) for data and evaluation alike.
        generate: the demonstrations (``roboflamingo generate``; its root, scenes, tasks, workers, seed,
            progress and env come from the fields above).
        eval: the evaluation protocol of every evaluated policy (``eval.num_videos``: videos of the
            trained policy's first chains; mode, chain_seed, tasks, workers and progress come from the demo).
        model / head / data / train: the policy and its training recipe.
    """

    run_dir: str = "runs/demo"
    tasks: list[str] = field(default_factory=lambda: list(DEMO_TASKS))
    train_scenes: list[str] = field(default_factory=list)
    workers: int = 2
    seed: int = 0
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


def stage_train(job: Job, data_root: Path, train_dir: Path) -> Path:
    from roboflamingo.train import loop

    done = _last_step(train_dir)
    if done is not None and done >= job.train.steps:
        _banner("train", f"{train_dir} finished {done} steps, skipped")
        return train_dir / "checkpoints" / "last"
    _banner("train", f"{job.model.name} policy, {job.train.steps} steps -> {train_dir}")
    train = replace(job.train, progress=job.train.progress and job.progress)
    tjob = loop.Job(model=job.model, head=job.head, data=_data_cfg(job, data_root), train=train,
                    run_dir=str(train_dir), seed=job.seed, resume=done is not None)
    if loop.run(tjob):
        raise RuntimeError("train failed")
    return train_dir / "checkpoints" / "last"


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


# --------------------------------------------------------------------------------------- report
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def summary_table(policy: dict[str, Any], expert: dict[str, Any], name: str = "policy") -> str:
    head = "| policy | 1/5 | 2/5 | 3/5 | 4/5 | 5/5 | avg len | single-task (mean over tasks) |"
    rows = [head, "|" + "---|" * 8]
    for who, res in ((f"{name} policy", policy), ("scripted expert", expert)):
        rates = " | ".join(_pct(r) for r in res["chains"]["success_rates"])
        rows.append(f"| {who} | {rates} | {res['chains']['avg_len']:.2f} | {_pct(res['single_task']['task_average'])} |")
    return "\n".join(rows)


def per_task_table(policy: dict[str, Any], expert: dict[str, Any], tasks: list[str], name: str = "policy") -> str:
    rows = [f"| task | {name} policy | scripted expert |", "|---|---|---|"]
    for task in tasks:
        cells = []
        for res in (policy, expert):
            t = res["single_task"]["per_task"].get(task, {"success": 0, "total": 0})
            cells.append(f"{t['success']}/{t['total']}")
        rows.append(f"| {task} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def write_report(job: Job, report_dir: Path, policy: dict[str, Any], expert: dict[str, Any],
                 eval_dirs: dict[str, Path], timings: dict[str, float]) -> dict[str, Any]:
    chains, single = policy["chains"], policy["single_task"]
    results = {
        "avg_len": chains["avg_len"],
        "success_rates": chains["success_rates"],
        "num_chains": chains["num_chains"],
        "per_task": chains["per_task"],
        "single_task": {
            "task_average": single["task_average"],
            "success_rate": single["success_rate"],
            "per_task": single["per_task"],
            "num_episodes": single["num_episodes"],
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
    atomic_write_json(report_dir / "results.json", results)
    md = (
        "# roboflamingo demo\n\n"
        f"Trained on scene(s) {', '.join(job.train_scenes or [job.env.scene])}, evaluated on scene {job.env.scene}; tasks: {', '.join(job.tasks)}; evaluation sentences unseen in training.\n\n"
        + summary_table(policy, expert, job.model.name) + "\n\n" + per_task_table(policy, expert, job.tasks, job.model.name) + "\n"
    )
    atomic_write_text(report_dir / "results.md", md)
    png = eval_dirs["policy_chains"] / "results.png"
    if png.is_file():
        shutil.copyfile(png, report_dir / "results.png")
    videos = sorted((eval_dirs["policy_chains"] / "videos").glob("*.mp4"))
    if videos:
        frame_strip(videos[0], report_dir / "rollout.png")
    return results


def frame_strip(video: Path, out: Path, frames: int = 6) -> None:
    """A row of evenly spaced frames from a rollout video, for the README."""
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(video)) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not images:
        return
    picks = np.linspace(0, len(images) - 1, min(frames, len(images))).round().astype(int)
    strip = np.concatenate([images[i] for i in picks], axis=1)
    Image.fromarray(strip).save(out)


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

    try:
        data_root = root / "data"
        timed("data", stage_data, job, data_root)
        checkpoint = timed("train", stage_train, job, data_root, root / "train")
        dirs = {f"{who}_{mode}": root / "eval" / f"{who}_{mode}" for who in ("expert", "policy")
                for mode in ("chains", "tasks")}
        results: dict[str, dict[str, Any]] = {"expert": {}, "policy": {}}
        for who, policy, ckpt in (("expert", "expert", None), ("policy", "checkpoint", checkpoint)):
            for mode, key in (("chains", "chains"), ("single_task", "tasks")):
                res = timed(f"eval_{who}_{key}", stage_eval, job, dirs[f"{who}_{key}"], policy, ckpt, mode)
                results[who]["chains" if mode == "chains" else "single_task"] = res
    except (RuntimeError, ValueError) as e:
        print(f"roboflamingo demo: {e}", file=sys.stderr)
        return 2
    report = write_report(job, root / "report", results["policy"], results["expert"], dirs, timings)
    print("\n" + summary_table(results["policy"], results["expert"], job.model.name))
    print(f"\nreport: {root / 'report'}")
    print(json.dumps({k: report[k] for k in ("avg_len", "success_rates", "num_chains")}
                     | {"single_task_average": report["single_task"]["task_average"],
                        "expert_avg_len": report["expert"]["avg_len"]}))
    return 0
