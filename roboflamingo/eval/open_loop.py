"""``roboflamingo action-error``: per-task open-loop action error on held-out demonstrations.

    roboflamingo action-error checkpoint=runs/demo/train/checkpoints/last split_dir=runs/demo/data/validation

Each language-annotated segment of a held-out split is replayed frame by frame through the policy
(``reset()`` at the segment's start, then ``step`` on every recorded observation, the policy's
history built from the demonstration's own frames) and the executed action, under the checkpoint's
``head.chunking``, is compared with the one the demonstrator sent. With ``sentences=eval`` the
instruction is the task's evaluation sentence, what closed-loop evaluation gives it, so a low error
here and a failure closed-loop point at compounding error and unvisited states rather than at what
was learned. ``contrast=true`` replays each segment with every other task's evaluation sentence in
the same batched forward and reports the closest: whether the instruction decides the action (for
"open" and "close" the demonstrations differ; for LED on and off they are one motion).

Figures per task: ``pose_mae`` (mean |predicted - demonstrated| over the continuous action dims and
all frames, in the action's own units: CALVIN's relative action clipped to [-1, 1], Meta-World's
delta xyz and gripper effort), ``gripper_acc`` (frames whose open/close matches; absent for a robot
without a binary gripper), and with ``contrast`` ``closest_other`` / ``closest_other_pose_mae``.
``swap_images`` adds ``image_effect``: each frame is replayed once more with the same state,
sentence and history but the cameras of the next segment (another stretch of demonstration, often
another episode, at the same offset), and the mean |action difference| is reported: near 0, the
policy does not look at its cameras (docs/model.md, "Is the policy looking?").
Cameras, state and action are read as the split's ``robot.json`` names them, and the evaluation
sentences are those of the benchmark the split's tasks belong to (the tabletop's or Meta-World's).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.config import require_choice, require_positive
from roboflamingo.data.layout import (
    DatasetError,
    SplitIndex,
    frame_path,
    load_split_index,
    read_frame,
)
from roboflamingo.io import atomic_write_json

SENTENCES = ("eval", "annotation")


@dataclass
class Job:
    """``roboflamingo action-error``: replay held-out demonstrations through a checkpoint.

    Args:
        checkpoint: the policy directory (``save_pretrained`` or a training checkpoint).
        split_dir: a split in our layout with ``episode_*.npz`` frames, e.g. ``<data.root>/validation``
            (the tabletop's, Meta-World's or any robot's: its ``robot.json`` names the keys).
        sentences: the instruction given for a segment: ``eval`` (its task's evaluation sentence:
            ``envs/instructions/eval.yaml`` for the tabletop's tasks, ``metaworld/tasks.yaml``'s for
            Meta-World's) or ``annotation`` (the segment's own training-style sentence).
        contrast: also replay every segment with each other task's evaluation sentence (one batched
            forward) and report the closest other task and its error.
        max_segments_per_task: replay at most this many segments per task; 0 replays them all.
        swap_images: also replay every frame with the next segment's camera images (same state,
            sentence and history) and report ``image_effect``, the mean |action difference|: whether
            the policy looks at its cameras at all.
        out: a JSON file for the figures; empty prints them only.
        device: where the policy runs (``auto``: CUDA when available).
        torch_threads: intra-op threads; 0 uses the cores other processes leave free.
    """

    checkpoint: str = ""
    split_dir: str = ""
    sentences: str = "eval"
    contrast: bool = True
    max_segments_per_task: int = 0
    swap_images: bool = False
    out: str = ""
    device: str = "auto"
    torch_threads: int = 0

    def __post_init__(self) -> None:
        require_choice("sentences", self.sentences, SENTENCES)
        require_positive("max_segments_per_task", self.max_segments_per_task, allow_zero=True)
        require_positive("torch_threads", self.torch_threads, allow_zero=True)
        for name in ("checkpoint", "split_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (roboflamingo action-error checkpoint=<dir> split_dir=<dir>)")


def _segments(index: SplitIndex, max_per_task: int) -> list[tuple[str, str, int, int]]:
    """(task, annotation, first, last) of each segment, in the split's order, capped per task."""
    count: dict[str, int] = {}
    out = []
    for (first, last), sentence, task in zip(index.segments.tolist(), index.instructions, index.tasks):
        if max_per_task and count.get(task, 0) >= max_per_task:
            continue
        count[task] = count.get(task, 0) + 1
        out.append((task, sentence, int(first), int(last)))
    if not out:
        raise DatasetError(f"{index.split_dir}: no annotated segments to replay")
    return out


def evaluation_sentences_for(tasks: list[str], where: str) -> dict[str, str]:
    """Task -> evaluation sentence, from the benchmark that names every one of ``tasks``: the
    tabletop's (CALVIN's task names) or Meta-World's."""
    from roboflamingo.eval.items import evaluation_sentences
    from roboflamingo.metaworld.tasks import task_table

    for table in (evaluation_sentences(), dict(task_table().eval)):
        if all(t in table for t in tasks):
            return table
    raise ValueError(f"{where}: no evaluation sentence for tasks {sorted(tasks)} "
                     "(neither the tabletop's envs/instructions/eval.yaml nor Meta-World's tasks.yaml names them all)")


def open_loop_errors(policy: Any, split_dir: str | Path, sentences: str = "eval", contrast: bool = True,
                     max_segments_per_task: int = 0, swap_images: bool = False) -> dict[str, Any]:
    """Replay ``split_dir``'s segments through ``policy`` (a ``RoboFlamingoPolicy`` in eval mode, or
    anything with its ``step_batch``); see the module docstring for the figures."""
    require_choice("sentences", sentences, SENTENCES)
    split_dir = Path(split_dir)
    index = load_split_index(split_dir, check_files=False)
    robot = index.robot
    segments = _segments(index, max_segments_per_task)
    tasks = sorted({task for task, *_ in segments})
    eval_sentence = evaluation_sentences_for(tasks, str(split_dir)) if sentences == "eval" or contrast else {}
    others = tasks if contrast else []
    observed = (*robot.camera_names, robot.state.key)
    continuous = list(robot.action.continuous)
    gripper = robot.action.grippers[0] if robot.action.grippers else None
    threshold = robot.action.gripper_threshold
    # Per task: summed |error| per instruction (own first, then each task's sentence), frames, gripper hits.
    sums: dict[str, dict[str, Any]] = {t: {"err": np.zeros(1 + len(others)), "frames": 0, "grip": 0, "segments": 0,
                                           "swap": 0.0} for t in tasks}
    swap = swap_images and len(segments) > 1
    for k, (task, annotation, first, last) in enumerate(segments):
        own = eval_sentence[task] if sentences == "eval" else annotation
        instructions = [own] + [eval_sentence[o] for o in others] + ([own] if swap else [])
        histories: list[Any] = [None] * len(instructions)
        acc = sums[task]
        _, _, other_first, other_last = segments[(k + 1) % len(segments)]
        for offset, frame_id in enumerate(range(first, last + 1)):
            frame = read_frame(frame_path(split_dir, frame_id), robot=robot)
            obs = {key: frame[key] for key in observed}
            batch = [obs] * (1 + len(others))
            if swap:
                elsewhere = read_frame(frame_path(split_dir, min(other_first + offset, other_last)), robot=robot)
                batch.append(obs | {key: elsewhere[key] for key in robot.camera_names})
            actions, histories = policy.step_batch(batch, instructions, histories)
            target = frame[robot.action.key].astype(np.float64)
            if swap:
                acc["swap"] += float(np.abs(actions[-1, continuous] - actions[0, continuous]).mean())
                actions = actions[:-1]
            acc["err"] += np.abs(actions[:, continuous] - target[continuous]).mean(axis=1)
            if gripper is not None:
                acc["grip"] += int((actions[0, gripper] > threshold) == (target[gripper] > threshold))
            acc["frames"] += 1
        acc["segments"] += 1
    per_task: dict[str, dict[str, Any]] = {}
    for task in tasks:
        acc = sums[task]
        mae = acc["err"] / acc["frames"]
        entry = {"segments": acc["segments"], "frames": acc["frames"], "pose_mae": float(mae[0]),
                 "gripper_acc": acc["grip"] / acc["frames"] if gripper is not None else None}
        if others:
            rivals = [(float(mae[1 + k]), o) for k, o in enumerate(others) if o != task]
            if rivals:
                best, name = min(rivals)
                entry |= {"closest_other": name, "closest_other_pose_mae": best}
        if swap:
            entry["image_effect"] = acc["swap"] / acc["frames"]
        per_task[task] = entry
    return {
        "split_dir": str(split_dir),
        "robot": robot.name,
        "sentences": sentences,
        "pose_mae": float(np.mean([e["pose_mae"] for e in per_task.values()])),
        "gripper_acc": (float(np.mean([e["gripper_acc"] for e in per_task.values()]))
                        if gripper is not None else None),
        "per_task": per_task,
    } | ({"image_effect": float(np.mean([e["image_effect"] for e in per_task.values()]))} if swap else {})


def markdown(result: dict[str, Any]) -> str:
    """The per-task table of :func:`open_loop_errors`' figures."""
    contrast = any("closest_other" in e for e in result["per_task"].values())
    swapped = any("image_effect" in e for e in result["per_task"].values())
    head = ("| task | segments | pose MAE | gripper acc |" + (" closest other task's sentence | its pose MAE |" if contrast else "")
            + (" image effect |" if swapped else ""))
    rows = [head, "|" + "---|" * (4 + 2 * contrast + swapped)]
    for task, e in result["per_task"].items():
        grip = "-" if e["gripper_acc"] is None else f"{e['gripper_acc']:.0%}"
        row = f"| {task} | {e['segments']} | {e['pose_mae']:.3f} | {grip} |"
        if contrast:
            row += f" {e.get('closest_other', '-')} | {e['closest_other_pose_mae']:.3f} |" if "closest_other" in e else " - | - |"
        if swapped:
            row += f" {e['image_effect']:.2e} |"
        rows.append(row)
    return "\n".join(rows)


def run(job: Job) -> int:
    from roboflamingo.policies import PolicyKind, PolicySourceConfig, build_policy

    try:
        if not Path(job.split_dir).is_dir():
            raise ValueError(f"split_dir={job.split_dir}: not a directory (a split in our layout, e.g. <data.root>/validation)")
        source = PolicySourceConfig(PolicyKind.checkpoint, checkpoint=job.checkpoint, device=job.device)
        source.check()
        from roboflamingo.threads import choose_threads

        model = build_policy(source, torch_threads=choose_threads(job.torch_threads))
        result = open_loop_errors(model, job.split_dir, job.sentences, job.contrast, job.max_segments_per_task,
                                  job.swap_images)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"roboflamingo action-error: {e}", file=sys.stderr)
        return 2
    result["checkpoint"] = str(Path(job.checkpoint).resolve())
    if job.out:
        atomic_write_json(Path(job.out), result)
    print(markdown(result))
    print(json.dumps({k: result[k] for k in ("pose_mae", "gripper_acc", "image_effect") if k in result}))
    return 0
