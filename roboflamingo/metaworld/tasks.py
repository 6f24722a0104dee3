"""Meta-World's task table (``tasks.yaml`` beside this module): names, difficulty groups, MT10, and
the training and evaluation sentences.

Tasks are named as Meta-World names them (``drawer-open-v3``); a selection (``generate.tasks``,
``eval.tasks``, ``expert-check tasks=``) may also name a difficulty group (``easy``, ``medium``,
``hard``, ``very_hard``), ``mt10``, or ``all`` (the 50, group by group), and a task without its
``-v3`` suffix. Reading this module needs no MuJoCo.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

GROUPS = ("easy", "medium", "hard", "very_hard")
GROUP_SIZES = {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}  # LeRobot's split
SUFFIX = "-v3"
TABLE_FILE = "roboflamingo/metaworld/tasks.yaml"


class TaskError(ValueError):
    """An unknown task or group, or a malformed task table; the message names where it came from."""


@dataclass(frozen=True)
class TaskTable:
    """``tasks`` (all 50, group by group), ``groups`` (name -> tasks), ``mt10``, and the sentences:
    ``train`` (LeRobot's description per task), ``paraphrases`` (our further training wordings) and
    ``eval`` (ours, unseen wording)."""

    tasks: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]]
    mt10: tuple[str, ...]
    train: Mapping[str, str]
    eval: Mapping[str, str]
    paraphrases: Mapping[str, tuple[str, ...]]

    def training_sentences(self, task: str) -> tuple[str, ...]:
        """LeRobot's description first, then the paraphrases: what a demonstration may be annotated with."""
        return (self.train[task], *self.paraphrases.get(task, ()))

    def group_of(self, task: str) -> str:
        for name, members in self.groups.items():
            if task in members:
                return name
        raise TaskError(f"'{task}' is not a Meta-World task")

    def resolve(self, selection: Iterable[str], source: str = "tasks") -> list[str]:
        """Task names, groups, ``mt10`` and ``all`` expanded into tasks (order kept, repeats dropped);
        an empty selection is every task."""
        out: list[str] = []
        items = list(selection)
        for item in items or ["all"]:
            name = str(item).strip()
            if name == "all":
                picked = list(self.tasks)
            elif name in self.groups:
                picked = list(self.groups[name])
            elif name == "mt10":
                picked = list(self.mt10)
            elif name in self.train:
                picked = [name]
            elif name + SUFFIX in self.train:
                picked = [name + SUFFIX]
            else:
                import difflib

                close = difflib.get_close_matches(name, [*self.train, *self.groups, "mt10", "all"], n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise TaskError(f"{source}: '{name}' is neither a Meta-World task nor a group "
                                f"({', '.join([*GROUPS, 'mt10', 'all'])}){hint}")
            out += [t for t in picked if t not in out]
        return out

    def task_for_instruction(self, instruction: str) -> str:
        """The task an evaluation sentence, a unique training description or a task name asks for."""
        key = " ".join(instruction.strip().lower().split())
        if key in self.train:
            return key
        hits = {t for t in self.tasks if key in {s.lower() for s in (self.eval[t], *self.training_sentences(t))}}
        if len(hits) == 1:
            return hits.pop()
        if hits:
            raise ValueError(f"instruction {instruction!r} is the training description of several tasks "
                             f"({sorted(hits)}); name the task or use its evaluation sentence")
        raise ValueError(f"instruction {instruction!r} is not a sentence of {TABLE_FILE} nor a task name")


def _sentences(raw: object, field: str, tasks: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise TaskError(f"{TABLE_FILE}: field '{field}' must map task -> sentence")
    out = {}
    for task, sentence in raw.items():
        if task not in tasks:
            raise TaskError(f"{TABLE_FILE}: field '{field}.{task}' is not a task of the groups")
        if not isinstance(sentence, str) or not sentence.strip():
            raise TaskError(f"{TABLE_FILE}: field '{field}.{task}' must be a non-empty sentence")
        out[str(task)] = sentence.strip()
    missing = [t for t in tasks if t not in out]
    if missing:
        raise TaskError(f"{TABLE_FILE}: field '{field}' lacks tasks {missing}")
    return out


@lru_cache(maxsize=1)
def task_table() -> TaskTable:
    """The table, validated: every task in exactly one group, both sentence sets complete, evaluation
    sentences unique and never a training description."""
    text = (resources.files("roboflamingo.metaworld") / "tasks.yaml").read_text()
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise TaskError(f"{TABLE_FILE}: expected a mapping with groups, mt10, train, eval")
    groups_raw = raw.get("groups")
    if not isinstance(groups_raw, dict) or list(groups_raw) != list(GROUPS):
        raise TaskError(f"{TABLE_FILE}: field 'groups' must list {list(GROUPS)} in this order")
    groups = {g: tuple(str(t) for t in groups_raw[g]) for g in GROUPS}
    tasks = tuple(t for g in GROUPS for t in groups[g])
    if len(set(tasks)) != len(tasks):
        raise TaskError(f"{TABLE_FILE}: a task is in two groups: {sorted({t for t in tasks if tasks.count(t) > 1})}")
    mt10 = tuple(str(t) for t in raw.get("mt10") or ())
    if len(mt10) != 10 or not set(mt10) <= set(tasks):
        raise TaskError(f"{TABLE_FILE}: field 'mt10' must name 10 tasks of the groups, got {list(mt10)}")
    train = _sentences(raw.get("train"), "train", tasks)
    evaluation = _sentences(raw.get("eval"), "eval", tasks)
    seen = {s.lower() for s in train.values()}
    reused = [t for t, s in evaluation.items() if s.lower() in seen]
    if reused:
        raise TaskError(f"{TABLE_FILE}: evaluation sentences of {reused} are training descriptions")
    if len({s.lower() for s in evaluation.values()}) != len(evaluation):
        raise TaskError(f"{TABLE_FILE}: two tasks share an evaluation sentence")
    paraphrases = _paraphrases(raw.get("paraphrases") or {}, tasks, train, evaluation)
    return TaskTable(tasks, groups, mt10, train, evaluation, paraphrases)


def _paraphrases(raw: object, tasks: tuple[str, ...], train: Mapping[str, str],
                 evaluation: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Each a list of non-empty sentences of one task, never an evaluation sentence nor another task's
    training sentence (the expert reads the task back from any of them)."""
    if not isinstance(raw, dict):
        raise TaskError(f"{TABLE_FILE}: field 'paraphrases' must map task -> [sentence, ...]")
    out: dict[str, tuple[str, ...]] = {}
    owner = {s.lower(): t for t, s in train.items()}
    unseen = {s.lower(): t for t, s in evaluation.items()}
    for task, sentences in raw.items():
        where = f"{TABLE_FILE}: field 'paraphrases.{task}'"
        if task not in tasks:
            raise TaskError(f"{where} is not a task of the groups")
        if not isinstance(sentences, list) or not all(isinstance(x, str) and x.strip() for x in sentences):
            raise TaskError(f"{where} must be a list of non-empty sentences")
        out[task] = tuple(x.strip() for x in sentences)
        for sentence in out[task]:
            key = sentence.lower()
            if key in unseen:
                raise TaskError(f"{where}: '{sentence}' is the evaluation sentence of {unseen[key]}")
            if owner.setdefault(key, task) != task:
                raise TaskError(f"{where}: '{sentence}' is already a training sentence of {owner[key]}")
    return out


def resolve_tasks(selection: Iterable[str], source: str = "tasks") -> list[str]:
    """See :meth:`TaskTable.resolve`."""
    return task_table().resolve(selection, source)
