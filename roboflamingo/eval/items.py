"""The work list: CALVIN chains from the sequence generator, or single-task episodes.

Chains come from ``roboflamingo.sim.chains.sample_chains``: exactly CALVIN's ``get_sequences`` with
``eval.sequences=calvin`` (the default in calvin_env), else our generator of the same distribution (192
symbolic initial states, 5 tasks from 5 categories, each valid from the state reached before). A
single-task episode starts from a generator state in which its task is valid (for the 7 tasks no
such state allows, after the scripted expert's shortest setup), drawn per task with ``chain_seed``,
so the same config always evaluates the same episodes. The instruction is the task's evaluation
sentence (``load_instructions('eval')`` or ``eval.calvin_instructions``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.protocol import EvalItem


def evaluation_sentences(path: str | None = None) -> dict[str, str]:
    """Task -> its evaluation sentence (the first one listed, as CALVIN's evaluator takes)."""
    if not path:
        from roboflamingo.sim.instructions import load_instructions

        return {task: sentences[0] for task, sentences in load_instructions("eval").items()}
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"eval.calvin_instructions: {file} not found")
    raw = yaml.safe_load(file.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a mapping task -> [sentence, ...]")
    out = {}
    for task, sentences in raw.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not sentences or not isinstance(sentences[0], str):
            raise ValueError(f"{file}: field '{task}' must be a sentence or a non-empty list of sentences")
        out[str(task)] = sentences[0]
    return out


def _sentences_for(tasks: list[str], sentences: dict[str, str], where: str) -> list[str]:
    missing = [t for t in tasks if t not in sentences]
    if missing:
        raise ValueError(f"{where}: no evaluation sentence for tasks {missing}")
    return [sentences[t] for t in tasks]


def chain_items(num: int, seed: int, sentences: dict[str, str], tasks: list[str] | None = None,
                calvin: bool = False) -> list[EvalItem]:
    from roboflamingo.sim.chains import sample_chains

    return [
        EvalItem(i, dict(c.initial_state), list(c.tasks), _sentences_for(list(c.tasks), sentences, f"chain {i}"))
        for i, c in enumerate(sample_chains(num, seed, tasks=list(tasks) if tasks else None, calvin=calvin))
    ]


def single_task_items(tasks: list[str], episodes: int, seed: int, sentences: dict[str, str]) -> list[EvalItem]:
    """``episodes`` one-task items per task, from generator states where the task is valid, or after
    the scripted expert's setup where none is (``sim.chains.single_task_episodes``)."""
    from roboflamingo.sim.chains import single_task_episodes
    from roboflamingo.sim.tasks import TaskOracle

    oracle = TaskOracle.default()
    names = list(tasks) or list(oracle.tasks)
    oracle.check_names(names, source="eval.tasks")
    for task in names:
        _sentences_for([task], sentences, "eval.tasks")
    try:
        drawn = single_task_episodes(names, episodes, seed, oracle)
    except ValueError as e:
        raise ValueError(f"eval.{e}") from None
    return [EvalItem(i, dict(state), [task], [sentences[task]], list(setup))
            for i, (task, state, setup) in enumerate(drawn)]


def build_items(cfg: EvalConfig) -> list[EvalItem]:
    sentences = evaluation_sentences(cfg.calvin_instructions)
    if cfg.mode == "chains":
        return chain_items(cfg.num_chains, cfg.chain_seed, sentences, cfg.tasks, calvin=cfg.calvin_sequences)
    return single_task_items(list(cfg.tasks), cfg.episodes_per_task, cfg.chain_seed, sentences)
