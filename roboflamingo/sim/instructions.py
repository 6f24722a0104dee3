"""Language for the 34 tasks (``envs/instructions/{train,eval}.yaml``).

``train``: several paraphrases per task, used to annotate demonstrations. ``eval``: exactly one
sentence per task, used by the long-horizon evaluation: CALVIN's new_playtable_validation.yaml
verbatim, and never among the training sentences.
"""

from __future__ import annotations

from functools import lru_cache

import yaml

from roboflamingo.sim.scene import envs_dir
from roboflamingo.sim.tasks import TaskError, TaskOracle

SPLITS = ("train", "eval")


@lru_cache(maxsize=4)
def _load(split: str) -> dict[str, tuple[str, ...]]:
    if split not in SPLITS:
        raise ValueError(f"instructions split must be one of {list(SPLITS)}, got {split!r}")
    path = envs_dir() / "instructions" / f"{split}.yaml"
    if not path.is_file():
        raise TaskError(f"{path}: instruction file not found")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: expected a mapping of task name -> sentences")
    oracle = TaskOracle.default()
    out = {}
    for task, sentences in raw.items():
        oracle.check_names([task], source=f"{path}: field '{task}'")
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s for s in sentences):
            raise TaskError(f"{path}: field '{task}' must be a non-empty sentence or list of sentences")
        if split == "eval" and len(sentences) != 1:
            raise TaskError(f"{path}: field '{task}' must be exactly one evaluation sentence, got {len(sentences)}")
        out[task] = tuple(sentences)
    missing = [t for t in oracle.tasks if t not in out]
    if missing:
        raise TaskError(f"{path}: tasks without instructions: {missing}")
    return out


def load_instructions(split: str = "train") -> dict[str, list[str]]:
    """Task name -> sentences (``eval``: a list with exactly one sentence per task)."""
    return {task: list(s) for task, s in _load(split).items()}


@lru_cache(maxsize=1)
def _sentence_to_task() -> dict[str, str]:
    table: dict[str, str] = {}
    for split in SPLITS:
        for task, sentences in _load(split).items():
            for s in sentences:
                table[s.strip().lower()] = task
    return table


def task_for_instruction(instruction: str) -> str:
    """The task an instruction (train or eval sentence, or a task name) asks for; ValueError if none."""
    key = instruction.strip().lower()
    if key in _load("train"):
        return key
    table = _sentence_to_task()
    if key not in table:
        raise ValueError(f"instruction {instruction!r} is not a sentence of envs/instructions/{{train,eval}}.yaml "
                         f"nor a task name")
    return table[key]
