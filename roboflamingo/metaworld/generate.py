"""``roboflamingo generate env=metaworld``: Meta-World's scripted experts recorded in our layout.

Output (CALVIN's split layout, as the Sawyer's description names the frame keys)::

    <root>/training/ and <root>/validation/
        episode_%07d.npz        one frame: corner2 (uint8 (size, size, 3)), state (4), action (4: the
                                action the expert sent at this frame), metaworld_obs (39, privileged;
                                the description's state with env.state=full)
        ep_start_end_ids.npy    (N, 2) inclusive first/last frame of each episode
        ep_lens.npy             (N,)
        lang_annotations/auto_lang_ann.npy
                                one annotation per episode, all its frames: "ann" is LeRobot's task
                                description, "task" the Meta-World task name; "emb" zeros (N, 1, 384)
        robot.json              the Sawyer's description, the camera at the recorded size
        env_config.yaml         the MetaWorldConfig the images were drawn with (evaluate with the same)
    <root>/manifest.json        the job; per split and task: episodes, frames, failed rollouts; per
                                split, each episode's task, seed and frame range (a replay needs no more)

A unit of work is one demonstration: the task's scripted policy from a freshly seeded reset until
``info["success"]`` (frames after it are not recorded, as evaluation ends there too); a rollout that
reaches ``max_path_length`` without success is discarded and redrawn with the next seed (counted in
the manifest), up to ``max_attempts``. Seeds come from (seed, split, task, index, attempt) and are
at least 2**20, so demonstrations never share an initial state with evaluation, whose episode k has
seed ``eval.chain_seed + k``; the dataset does not depend on the number of workers. Units are
written under ``<root>/.work/`` and renamed when complete, so an interrupted run resumes; the splits
are assembled (hard links) under temporary names and renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from roboflamingo.config import require_positive, save_yaml
from roboflamingo.io import atomic_write_json
from roboflamingo.metaworld.config import MetaWorldConfig
from roboflamingo.recording import (
    done_dir,
    link_frames,
    move_into_place,
    new_split_dir,
    prepare_work,
    read_meta,
    record_unit,
    run_units,
    worker_env,
    write_index,
    write_unit,
)
from roboflamingo.robot import ROBOT_FILE

SPLITS = ("training", "validation")
SEED_FLOOR = 2**20


@dataclass
class Job:
    """``roboflamingo generate env=metaworld``: Meta-World's scripted experts recorded in our layout.

    Args:
        root: output directory.
        tasks: Meta-World tasks, difficulty groups (easy, medium, hard, very_hard), mt10 or all;
            empty = all 50.
        episodes_per_task: successful demonstrations per task in the training split (LeRobot's MT50
            set has 50 per task).
        val_episodes_per_task: successful demonstrations per task in the validation split; 0 = none.
        max_attempts: rollouts tried per demonstration; a failed one is discarded and redrawn with a
            new seed.
        noise: std of Gaussian noise added to the expert's xyz deltas (recorded as executed), for
            diversity; 0 = none.
        paraphrases: annotate each demonstration with a sentence drawn from its task's LeRobot
            description and our paraphrases (``metaworld/tasks.yaml``), seeded by the unit; false:
            LeRobot's description only, as ``lerobot/metaworld_mt50``.
        workers: processes, each with its own simulator.
        seed: seed of every demonstration's initial state and annotation (with the split, task and index).
        progress: show a progress bar.
        env: camera, image size and render preset of the recorded images.
    """

    root: str = "data/metaworld"
    tasks: list[str] = field(default_factory=list)
    episodes_per_task: int = 50
    val_episodes_per_task: int = 2
    max_attempts: int = 5
    noise: float = 0.0
    paraphrases: bool = True
    workers: int = 2
    seed: int = 0
    progress: bool = True
    env: MetaWorldConfig = field(default_factory=MetaWorldConfig)

    def __post_init__(self) -> None:
        from roboflamingo.metaworld.tasks import resolve_tasks

        require_positive("episodes_per_task", self.episodes_per_task)
        require_positive("val_episodes_per_task", self.val_episodes_per_task, allow_zero=True)
        require_positive("max_attempts", self.max_attempts)
        require_positive("noise", self.noise, allow_zero=True)
        require_positive("workers", self.workers)
        if self.env.render == "off":
            raise ValueError("env.render=off records no images; generate needs env.render=fast or lerobot")
        resolve_tasks(self.tasks, source="generate.tasks")


@dataclass(frozen=True)
class Unit:
    split: str
    task: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.task}_{self.index:06d}"


def episode_seed(seed: int, split: str, task_index: int, index: int, attempt: int) -> int:
    """The initial-state seed of one rollout: >= 2**20, so never an evaluation episode's seed."""
    state = np.random.SeedSequence([seed, SPLITS.index(split), task_index, index, attempt]).generate_state(1)[0]
    return SEED_FLOOR + int(state) % (2**31 - SEED_FLOOR)


def annotation(job: Job, unit: Unit) -> str:
    """The instruction a demonstration is annotated with (``Job.paraphrases``)."""
    from roboflamingo.metaworld.tasks import task_table

    sentences = task_table().training_sentences(unit.task)  # LeRobot's description first
    if not job.paraphrases:
        sentences = sentences[:1]
    key = [job.seed, SPLITS.index(unit.split), unit.index, *unit.task.encode()]
    return sentences[int(np.random.default_rng(key).integers(len(sentences)))]


def plan_units(job: Job, tasks: list[str]) -> list[Unit]:
    counts = {"training": job.episodes_per_task, "validation": job.val_episodes_per_task}
    return [Unit(split, task, i) for split in SPLITS for task in tasks for i in range(counts[split])]


# ------------------------------------------------------------------ one unit (in a worker process)
_ENV: dict = {}


def _env(cfg: MetaWorldConfig):
    from roboflamingo.metaworld.env import MetaWorldEnv

    return worker_env(_ENV, "env", cfg, lambda c: MetaWorldEnv(cfg=c))


def run_unit(job: Job, unit: Unit, task_index: int, out_dir: Path) -> dict:
    """Record one successful demonstration into ``out_dir`` (frames from 0); return its metadata."""
    from roboflamingo.metaworld.env import FULL_OBS
    from roboflamingo.metaworld.expert import MetaWorldExpert

    env = _env(job.env)
    robot = env.robot
    cam, state_key, action_key = job.env.camera, robot.state.key, robot.action.key
    frames: list[dict] = []
    seeds = []
    for attempt in range(job.max_attempts):
        seed = episode_seed(job.seed, unit.split, task_index, unit.index, attempt)
        seeds.append(seed)
        expert = MetaWorldExpert(unit.task, noise=job.noise, seed=seed)
        obs, _ = env.reset(seed=seed, options={"task": unit.task})
        frames = []
        success = truncated = False
        while not (success or truncated):
            action = expert.step(obs, unit.task)
            frames.append({cam: obs[cam], state_key: obs[state_key], action_key: action.astype(np.float64),
                           FULL_OBS: obs[FULL_OBS]})
            obs, _, success, truncated, _ = env.step(action)
        if success:
            break
        frames = []
    return write_unit(out_dir, frames, {"unit": asdict(unit), "frames": len(frames),
                                        "seed": seeds[-1] if frames else None,
                                        "failed_attempts": len(seeds) - (1 if frames else 0)})


def _work(args) -> tuple[Unit, int]:
    job, unit, task_index, work = args
    meta = record_unit(work, unit.split, unit.name, lambda out: run_unit(job, unit, task_index, out))
    return unit, meta["frames"]


def _close_worker_env() -> None:
    env = _ENV.pop("env", None)
    if env is not None:
        env.close()


# ------------------------------------------------------------------ assembling the splits
def _assemble_split(job: Job, root: Path, work: Path, split: str, units: list[Unit]) -> dict:
    from roboflamingo.metaworld.env import sawyer_robot
    tmp = new_split_dir(root, split)
    offset = 0
    ep_ids, ann, task_names, indx, episodes = [], [], [], [], []
    per_task: dict[str, dict[str, int]] = {}
    for unit in units:
        src, meta = read_meta(work, split, unit.name)
        counts = per_task.setdefault(unit.task, {"episodes": 0, "frames": 0, "failed_rollouts": 0, "missing": 0})
        counts["failed_rollouts"] += meta["failed_attempts"]
        n = meta["frames"]
        if n == 0:
            counts["missing"] += 1
            continue
        link_frames(src, tmp, n, offset)
        ep_ids.append([offset, offset + n - 1])
        ann.append(annotation(job, unit))
        task_names.append(unit.task)
        indx.append((offset, offset + n - 1))
        episodes.append({"task": unit.task, "seed": meta["seed"], "frames": [offset, offset + n - 1]})
        counts["episodes"] += 1
        counts["frames"] += n
        offset += n
    if offset == 0:
        raise RuntimeError(f"generate: split '{split}' has no frames (every expert rollout failed)")
    ids = write_index(tmp, ep_ids, ann, task_names, indx)
    sawyer_robot(job.env).save(tmp / ROBOT_FILE)
    save_yaml(job.env, tmp / "env_config.yaml")
    move_into_place(tmp, root / split)
    return {"frames": offset, "episodes": len(ids), "per_task": per_task, "episode_list": episodes}


def run(job: Job) -> int:
    from roboflamingo.metaworld.tasks import resolve_tasks

    tasks = resolve_tasks(job.tasks, source="generate.tasks")
    root = Path(job.root)
    record = {k: v for k, v in asdict(job).items() if k not in ("workers", "progress")}
    work = prepare_work(root, record, SPLITS)
    units = plan_units(job, tasks)
    todo = [u for u in units if not done_dir(work, u.split, u.name).is_dir()]
    run_units(_work, [(job, u, tasks.index(u.task), work) for u in todo], len(units), job.workers,
              job.progress, "generate metaworld", "demo", on_close=_close_worker_env)
    summary = {}
    for split in SPLITS:
        split_units = [u for u in units if u.split == split]
        if split_units:
            summary[split] = _assemble_split(job, root, work, split, split_units)
    atomic_write_json(root / "manifest.json", {"job": asdict(job), "tasks": tasks, "splits": summary})
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"root": str(root), **{k: {"frames": v["frames"], "episodes": v["episodes"]}
                                            for k, v in summary.items()}}))
    return 0
