"""``roboflamingo generate``: roll out the scripted expert into a CALVIN-layout dataset.

Output (CALVIN's layout, one split per directory)::

    <root>/training/ and <root>/validation/
        episode_%07d.npz        one frame: rgb_static, rgb_gripper (uint8 HWC), robot_obs (15),
                                scene_obs (24), actions (7: next frame's TCP xyz + euler, gripper),
                                rel_actions (7: the relative action the expert sent)
        ep_start_end_ids.npy    (N, 2) inclusive first/last frame of each contiguous recording
        ep_lens.npy             (N,)
        scene_info.npy          {"calvin_scene_<X>": [first, last]} per scene
        statistics.yaml         robot_obs / scene_obs NormalizeVector mean+std, act_min/max_bound
        lang_annotations/auto_lang_ann.npy
                                {"language": {"ann", "task", "emb"}, "info": {"indx", "episodes"}};
                                "emb" is zeros (N, 1, 384): no sentence encoder runs here, so
                                consumers embed "ann" themselves.
        env_config.yaml         the simulator settings used (with the renderer actually used)
        robot.json              the robot description (CALVIN's Franka, ``roboflamingo.robots.calvin``)
    <root>/manifest.json        the job and what each split holds

A *unit* of work is one recording: a 5-task chain (``mode: chains``) or one task with the prefix it
needs (``mode: single``). Every successful subtask becomes a language-annotated segment of its own
frames (the expert finishes a task in about 25-100 steps). Units are independent and seeded from
(seed, split, scene, index), so the dataset does not depend on the number of workers. Each unit is
written into ``<root>/.work/<split>/`` under a temporary name and renamed when complete; an
interrupted run resumes from the completed units. The splits are assembled (hard links) under
temporary names and renamed into place at the end, so nothing half-written is ever visible.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from roboflamingo.config import require_choice, require_positive
from roboflamingo.io import atomic_write_json, atomic_write_yaml
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
from roboflamingo.robots import calvin as T
from roboflamingo.sim.config import EnvConfig

MODES = ("chains", "single", "both")
SPLITS = (("training", "train_scenes"), ("validation", "val_scenes"))


@dataclass
class Job:
    """``roboflamingo generate``: scripted-expert demonstrations written in CALVIN's dataset layout.

    Args:
        root: output directory; ``training/`` and ``validation/`` are written under it.
        train_scenes, val_scenes: scenes per split (ABC -> D by default).
        mode: ``chains`` (5-task chains from CALVIN's initial states), ``single`` (one task per unit), or
            ``both`` (the single units, then the chains: most subtasks start from the neutral pose, the
            chains' later ones from wherever the previous subtask ended).
        tasks: the tasks demonstrated and annotated (``chains``: chains drawn from these only); empty =
            all 34.
        episodes_per_task, val_episodes_per_task: ``single`` units per task and scene.
        chains_per_scene, val_chains_per_scene: ``chains`` units per scene.
        noise: std (m) of the jitter added to the expert's free-space waypoints, for diversity.
        dart: std of Gaussian noise (in the action's [-1, 1] units; 1 is 2 cm) added to the position
            deltas the robot is sent, the expert correcting from wherever the arm went and the
            expert's own action recorded as the label (DART: demonstrations of recovering from the
            drift a policy makes); 0 = none.
        handover: fraction of the ``single`` units whose task starts where another task (of another
            category, performed but not recorded) ended, as a chain's later subtasks start; the rest
            start from the neutral pose. A policy that saw only neutral starts rarely completes a
            chain's second task.
        handover_home: in those units the expert first returns to the neutral pose and then performs
            the task as from a neutral start: one way back for every task instead of a way to each
            task from everywhere (in the demo it trained worse policies than plain handover;
            docs/demo.md).
        workers: processes, each with its own simulator; the data do not depend on it.
        seed: every unit is seeded from (seed, split, scene, index).
        progress: show a progress bar.
        env: the simulator: camera sizes, renderer, and ``max_episode_steps``, the steps allowed per
            subtask; ``env.scene`` is not read (each split names its scenes).
    """

    root: str = "data/tabletop"
    train_scenes: list[str] = field(default_factory=lambda: ["A", "B", "C"])
    val_scenes: list[str] = field(default_factory=lambda: ["D"])
    mode: str = "chains"
    tasks: list[str] = field(default_factory=list)
    episodes_per_task: int = 10
    val_episodes_per_task: int = 2
    chains_per_scene: int = 100
    val_chains_per_scene: int = 20
    noise: float = 0.01
    dart: float = 0.0
    handover: float = 0.0
    handover_home: bool = False
    workers: int = 2
    seed: int = 0
    progress: bool = True
    env: EnvConfig = field(default_factory=EnvConfig)

    def __post_init__(self) -> None:
        require_choice("mode", self.mode, MODES)
        require_positive("workers", self.workers)
        # Zero is a valid count for the kind of unit that `both` mixes in, never for the only kind.
        for name, needed in (("episodes_per_task", "single"), ("chains_per_scene", "chains")):
            require_positive(name, getattr(self, name), allow_zero=self.mode != needed)
        for name in ("val_episodes_per_task", "val_chains_per_scene", "noise", "dart"):
            require_positive(name, getattr(self, name), allow_zero=True)
        if not 0.0 <= self.handover <= 1.0:
            raise ValueError(f"handover must be a fraction in [0, 1], got {self.handover}")
        if self.handover_home and not self.handover:
            raise ValueError("handover_home applies to handover units: set handover > 0")
        if not self.train_scenes:
            raise ValueError("train_scenes must name at least one scene")
        from roboflamingo.sim.scene import load_scene
        from roboflamingo.sim.tasks import TaskOracle

        for scene in [*self.train_scenes, *self.val_scenes]:
            load_scene(scene)  # a bad scene fails here, naming its file and field
        oracle = TaskOracle.default()
        oracle.check_names(self.tasks, source="generate.tasks")
        if self.handover:
            tasks = self.tasks or oracle.tasks
            for task in tasks:
                if all(oracle.specs[t].category == oracle.specs[task].category for t in tasks):
                    raise ValueError(f"handover > 0 needs, for every task, another task of another category "
                                     f"to start from; {task!r} has none in tasks {tasks}")


@dataclass(frozen=True)
class Unit:
    split: str
    scene: str
    index: int  # within (split, scene)

    @property
    def name(self) -> str:
        return f"{self.scene}_{self.index:06d}"


def _single_units(job: Job, split: str, tasks: list[str]) -> int:
    if job.mode == "chains":
        return 0
    return (job.episodes_per_task if split == "training" else job.val_episodes_per_task) * len(tasks)


def plan_units(job: Job, tasks: list[str]) -> list[Unit]:
    """Per (split, scene): the single-task units first (indices 0..S-1), then the chains."""
    units = []
    for split, attr in SPLITS:
        for scene in getattr(job, attr):
            n = _single_units(job, split, tasks)
            if job.mode != "single":
                n += job.chains_per_scene if split == "training" else job.val_chains_per_scene
            units += [Unit(split, scene, i) for i in range(n)]
    return units


# ------------------------------------------------------------------ one unit (in a worker process)
_ENVS: dict = {}


def _env(job: Job, scene: str):
    from roboflamingo.sim.env import TabletopEnv

    return worker_env(_ENVS, scene, replace(job.env, scene=scene), TabletopEnv)


def _unit_tasks(job: Job, unit: Unit, tasks: list[str], rng: np.random.Generator, oracle):
    from roboflamingo.sim.chains import sample_initial_state, sequences_for_state
    from roboflamingo.sim.rollout import Episode, sample_episode, sample_handover

    if unit.index < _single_units(job, unit.split, tasks):
        task = tasks[unit.index % len(tasks)]
        if job.handover and rng.random() < job.handover:
            return sample_handover(task, rng, oracle, tasks)
        return sample_episode(task, rng, oracle)
    # With a task subset, chains are drawn from that subset only (as evaluation draws them), so
    # every subtask is demonstrated and annotated, each starting where the previous one ended.
    subset = list(job.tasks) or None
    state = sample_initial_state(rng, oracle, subset)
    (seq,) = sequences_for_state(state, 1, int(rng.integers(2**31)), oracle, subset)
    return Episode(state, seq)


def run_unit(job: Job, unit: Unit, tasks: list[str], out_dir: Path) -> dict:
    """Roll out one unit into ``out_dir`` (frames numbered from 0) and return its metadata."""
    from roboflamingo.sim.expert import ScriptedExpert
    from roboflamingo.sim.instructions import load_instructions
    from roboflamingo.sim.rollout import CorrectedNoise, reset_to_episode, run_subtask
    from roboflamingo.sim.tasks import TaskOracle

    split_id = [s for s, _ in SPLITS].index(unit.split)
    key = [job.seed, split_id, ord(unit.scene[0]) if unit.scene else 0, unit.index]
    rng = np.random.default_rng(key)
    # its own stream, so that the noise leaves every other draw (and so dart=0 data) as it was
    dart_rng = np.random.default_rng([*key, 1]) if job.dart else None
    oracle = TaskOracle.default()
    sentences = load_instructions("train")
    env = _env(job, unit.scene)
    expert = ScriptedExpert(env.scene, noise=job.noise, seed=int(rng.integers(2**31)))
    episode = _unit_tasks(job, unit, tasks, rng, oracle)
    homing = (ScriptedExpert(env.scene, noise=job.noise, seed=int(rng.integers(2**31)), home=True)
              if job.handover_home and episode.unrecorded else None)
    obs, _ = reset_to_episode(env, episode, rng)
    frames: list[dict] = []
    segments = []
    for k, task in enumerate(episode.tasks):
        buf: list[dict] = []

        recorded = k >= episode.unrecorded
        actor = homing if homing is not None and recorded else expert
        actor.set_task(task)
        if dart_rng is not None:
            actor = CorrectedNoise(actor, job.dart, dart_rng)

        def record(o, a, nxt, buf=buf, actor=actor):
            # with DART the label is the action the expert meant, not the noisy one the robot was sent
            label = actor.clean if isinstance(actor, CorrectedNoise) else a
            absolute = np.concatenate([nxt[T.ROBOT_OBS][T.TCP_POSE], [a[T.GRIPPER_INDEX]]])
            buf.append({T.RGB_STATIC: o[T.RGB_STATIC], T.RGB_GRIPPER: o[T.RGB_GRIPPER],
                        T.ROBOT_OBS: o[T.ROBOT_OBS], T.SCENE_OBS: o[T.SCENE_OBS],
                        T.ACTIONS: absolute, T.REL_ACTIONS: np.asarray(label, dtype=np.float64)})

        ok, obs, _ = run_subtask(env, actor, oracle, task, task, obs, job.env.max_episode_steps,
                                 on_step=record if recorded else None)
        if not ok:
            break  # the recording ends with the last completed subtask
        if not recorded:
            continue
        if task in tasks:
            ann = sentences[task][int(rng.integers(len(sentences[task])))]
            segments.append({"start": len(frames), "end": len(frames) + len(buf) - 1, "task": task, "ann": ann})
        frames += buf
    return write_unit(out_dir, frames, {"unit": asdict(unit), "frames": len(frames), "segments": segments,
                                        "tasks": episode.tasks, "renderer": env.renderer_used,
                                        "stats": _frame_stats(frames)})


def _frame_stats(frames: list[dict]) -> dict:
    if not frames:
        return {}
    r = np.stack([f[T.ROBOT_OBS] for f in frames])
    s = np.stack([f[T.SCENE_OBS] for f in frames])
    a = np.stack([f[T.ACTIONS] for f in frames])
    return {"n": len(frames), "robot_sum": r.sum(0).tolist(), "robot_sq": (r**2).sum(0).tolist(),
            "scene_sum": s.sum(0).tolist(), "scene_sq": (s**2).sum(0).tolist(),
            "act_min": a.min(0).tolist(), "act_max": a.max(0).tolist()}


def _work(args) -> tuple[Unit, int]:
    job, unit, tasks, work = args
    meta = record_unit(work, unit.split, unit.name, lambda out: run_unit(job, unit, tasks, out))
    return unit, meta["frames"]


# ------------------------------------------------------------------ assembling the splits
def _assemble_split(root: Path, work: Path, split: str, units: list[Unit]) -> dict:
    tmp = new_split_dir(root, split)
    offset = 0
    ep_ids, ann, task_names, indx, scene_info = [], [], [], [], {}
    n_stats, robot_sum, robot_sq, scene_sum, scene_sq = 0, 0.0, 0.0, 0.0, 0.0
    act_min, act_max = np.full(7, np.inf), np.full(7, -np.inf)
    renderers = set()
    for unit in units:
        src, meta = read_meta(work, split, unit.name)
        renderers.add(meta["renderer"])
        n = meta["frames"]
        if n == 0:
            continue
        link_frames(src, tmp, n, offset)
        ep_ids.append([offset, offset + n - 1])
        first, last = scene_info.get(f"calvin_scene_{unit.scene}", [offset, offset])
        scene_info[f"calvin_scene_{unit.scene}"] = [min(first, offset), max(last, offset + n - 1)]
        for seg in meta["segments"]:
            ann.append(seg["ann"])
            task_names.append(seg["task"])
            indx.append((offset + seg["start"], offset + seg["end"]))
        st = meta["stats"]
        n_stats += st["n"]
        robot_sum = robot_sum + np.array(st["robot_sum"])
        robot_sq = robot_sq + np.array(st["robot_sq"])
        scene_sum = scene_sum + np.array(st["scene_sum"])
        scene_sq = scene_sq + np.array(st["scene_sq"])
        act_min = np.minimum(act_min, st["act_min"])
        act_max = np.maximum(act_max, st["act_max"])
        offset += n
    if offset == 0:
        raise RuntimeError(f"generate: split '{split}' has no frames (every rollout failed)")
    ep_ids = write_index(tmp, ep_ids, ann, task_names, indx)
    np.save(tmp / "scene_info.npy", scene_info, allow_pickle=True)

    def normalize(total, sq):
        mean = total / n_stats
        std = np.sqrt(np.maximum(sq / n_stats - mean**2, 0.0))
        return [{"_target_": "calvin_models.calvin_agent.utils.transforms.NormalizeVector",
                 "mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}]

    stats = {"robot_obs": normalize(robot_sum, robot_sq), "scene_obs": normalize(scene_sum, scene_sq),
             "act_min_bound": act_min.tolist(), "act_max_bound": act_max.tolist()}
    atomic_write_yaml(tmp / "statistics.yaml", stats)
    # The split says which robot recorded it, so readers need not assume CALVIN's.
    T.CALVIN.save(tmp / ROBOT_FILE)
    move_into_place(tmp, root / split)
    return {"frames": offset, "recordings": len(ep_ids), "annotations": len(ann), "scenes": scene_info,
            "renderers": sorted(renderers)}


def run(job: Job) -> int:
    from roboflamingo.config import save_yaml
    from roboflamingo.sim.scene import load_scene
    from roboflamingo.sim.tasks import TaskOracle

    for scene in [*job.train_scenes, *job.val_scenes]:
        load_scene(scene)  # a bad scene fails here, naming its file and field
    oracle = TaskOracle.default()
    tasks = list(job.tasks) or oracle.tasks
    oracle.check_names(tasks, source="generate.tasks")
    root = Path(job.root)
    record = {k: v for k, v in asdict(job).items() if k not in ("workers", "progress")}
    work = prepare_work(root, record, [split for split, _ in SPLITS])
    units = plan_units(job, tasks)
    todo = [u for u in units if not done_dir(work, u.split, u.name).is_dir()]
    run_units(_work, [(job, u, tasks, work) for u in todo], len(units), job.workers, job.progress,
              "generate", "rollout")
    summary = {}
    for split, attr in SPLITS:
        split_units = [u for u in units if u.split == split]
        if not split_units:
            continue
        summary[split] = _assemble_split(root, work, split, split_units)
        renderer = summary[split]["renderers"][0] if summary[split]["renderers"] else job.env.renderer
        env_cfg = replace(job.env, scene=getattr(job, attr)[0], renderer=renderer)
        save_yaml(env_cfg, root / split / "env_config.yaml")
    atomic_write_json(root / "manifest.json", {"job": asdict(job), "tasks": tasks, "splits": summary})
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"root": str(root), **{k: {"frames": v["frames"], "annotations": v["annotations"]}
                                            for k, v in summary.items()}}))
    return 0
