"""The report of an evaluation: ``results.json``, ``results.md`` and ``results.png`` in the run directory.

``results.json`` keeps CALVIN's numbers under plain names (``avg_len``, ``success_rates`` for 1..5,
``per_task`` with success/total/rate, ``num_chains``) plus how fast the evaluation ran. ``eval_info.json``
repeats the per-task and overall success in the shape LeRobot's ``lerobot-eval`` writes (``per_task``
entries of ``task_group``/``task_id``/``metrics``, ``per_group``, ``overall``, rates as ``pc_success``
in percent), so tools that read LeRobot evaluations can read ours. The plot uses
matplotlib's object API on the Agg canvas, so it never touches a display or global pyplot state.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from roboflamingo.io import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
EVAL_INFO_JSON = "eval_info.json"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(summary: dict[str, Any], title: str = "Evaluation") -> str:
    """A Markdown report: the leaderboard row, then per-task success."""
    lines = [f"# {title}", ""]
    if summary["mode"] == "chains":
        rates = summary["success_rates"]
        header = " | ".join(str(i) for i in range(1, len(rates) + 1))
        lines += [
            f"{summary['num_chains']} chains of {len(rates)} tasks; success rate after i tasks in a row, "
            "and the average number completed.",
            "",
            f"| {header} | Avg. Len |",
            "|" + "---|" * (len(rates) + 1),
            "| " + " | ".join(_pct(r) for r in rates) + f" | {summary['avg_len']:.2f} |",
        ]
    else:
        lines += [
            f"{summary['num_episodes']} single-task episodes: success {_pct(summary['success_rate'])} "
            f"pooled, {_pct(summary['task_average'])} averaged over tasks.",
        ]
    groups = summary.get("per_group")
    if groups:  # Meta-World's difficulty groups: the mean of each group's task rates
        lines += ["", "| group | tasks | episodes | success (mean over tasks) |", "|---|---|---|---|"]
        lines += [f"| {g} | {c['tasks']} | {c['total']} | {_pct(c['rate'])} |" for g, c in groups.items()]
    split = summary.get("per_task_first_later")
    if split:  # chains: the first subtask starts from the chain's initial state, later ones at a handover
        lines += ["", "| task | success | attempted | rate | as first subtask | as a later one |", "|---|---|---|---|---|---|"]
    else:
        lines += ["", "| task | success | attempted | rate |", "|---|---|---|---|"]
    for task, c in summary["per_task"].items():
        row = f"| {task} | {c['success']} | {c['total']} | {_pct(c['rate'])} |"
        if split:
            row += "".join(f" {w['success']}/{w['total']} |" if w["total"] else " - |"
                           for w in (split[task]["first"], split[task]["later"]))
        lines.append(row)
    failures = summary.get("failure_videos")
    if failures:
        lines += ["", "Failure videos (the first of each failed task, by chain index):", ""]
        lines += [f"- {task}: " + ", ".join(f"[{Path(p).name}]({p})" for p in paths) for task, paths in failures.items()]
    speed = summary.get("speed")
    if speed:
        lines += [
            "",
            f"Speed: {speed['chains_per_min']:.2f} chains/min, {speed['env_steps_per_s']:.1f} env steps/s "
            f"({_layout(speed)} x {speed['world_size']} rank(s)); policy "
            f"{speed['policy_ms_per_step']:.2f} ms/step, simulator {speed['env_ms_per_step']:.2f} ms/step.",
        ]
    return "\n".join(lines) + "\n"


def _layout(speed: dict[str, Any]) -> str:
    if speed.get("batch_size"):
        return f"{speed['batch_size']} simulators, one batched policy"
    return f"{speed['workers']} worker(s)"


def plot_png(summary: dict[str, Any], title: str = "Evaluation") -> bytes:
    """Success vs chain length (chains mode) beside per-task success bars, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_task = summary["per_task"]
    chains = summary["mode"] == "chains"
    height = max(4.0, 0.22 * len(per_task) + 1.5)
    fig = Figure(figsize=(12 if chains else 7, height))
    FigureCanvasAgg(fig)
    if chains:
        ax_len, ax_task = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
        rates = summary["success_rates"]
        xs = list(range(1, len(rates) + 1))
        ax_len.plot(xs, [100 * r for r in rates], marker="o")
        ax_len.set_xticks(xs)
        ax_len.set_ylim(0, 105)
        ax_len.set_xlabel("tasks completed in a row")
        ax_len.set_ylabel("success rate (%)")
        ax_len.set_title(f"avg len {summary['avg_len']:.2f} over {summary['num_chains']} chains")
        ax_len.grid(alpha=0.3)
    else:
        ax_task = fig.subplots(1, 1)
    names = list(per_task)
    ax_task.barh(range(len(names)), [100 * per_task[t]["rate"] for t in names])
    ax_task.set_yticks(range(len(names)))
    ax_task.set_yticklabels([f"{t} ({per_task[t]['total']})" for t in names], fontsize=7)
    ax_task.invert_yaxis()
    ax_task.set_xlim(0, 100)
    ax_task.set_xlabel("success rate (%) over attempts")
    ax_task.set_title("per task")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def eval_info(summary: dict[str, Any], task_group: str = "calvin") -> dict[str, Any]:
    """``summary`` in LeRobot's ``eval_info.json`` shape (``scripts/lerobot_eval.py``, ``eval_policy_all``).

    We keep success counts, not per-episode rewards, so each task's ``metrics`` carries
    ``pc_success`` and ``n_episodes`` (LeRobot's aggregate keys) rather than per-episode lists. A
    summary with ``task_groups`` (task -> group, Meta-World's difficulty groups) is grouped by them.
    """
    per_task = summary["per_task"]
    success = sum(int(c["success"]) for c in per_task.values())
    total = sum(int(c["total"]) for c in per_task.values())
    overall: dict[str, Any] = {"pc_success": 100.0 * success / total if total else float("nan"), "n_episodes": total}
    task_groups = summary.get("task_groups") or {}
    per_group: dict[str, Any] = {}
    for task, c in per_task.items():
        group = per_group.setdefault(task_groups.get(task, task_group), {"success": 0, "n_episodes": 0})
        group["success"] += int(c["success"])
        group["n_episodes"] += int(c["total"])
    per_group = {g: {"pc_success": 100.0 * v["success"] / v["n_episodes"] if v["n_episodes"] else float("nan"),
                     "n_episodes": v["n_episodes"]} for g, v in per_group.items()}
    if summary.get("mode") == "chains":
        overall["avg_len"] = summary["avg_len"]
    speed = summary.get("speed") or {}
    if "wall_s" in speed:
        overall["eval_s"] = speed["wall_s"]
    if not task_groups:
        per_group = {task_group: dict(overall)}
    return {
        "per_task": [
            {"task_group": task_groups.get(task, task_group), "task_id": task,
             "metrics": {"pc_success": 100.0 * c["rate"], "n_episodes": int(c["total"])}}
            for task, c in per_task.items()
        ],
        "per_group": per_group,
        "overall": overall,
    }


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures a script reads from an evaluation's last output line: CALVIN's row for chains
    (``avg_len``, ``success_rates``), success pooled and averaged over tasks for single-task episodes,
    and each difficulty group's rate where the benchmark has groups (Meta-World)."""
    if summary.get("mode") == "chains":
        line = {k: summary[k] for k in ("avg_len", "success_rates", "num_chains")}
    else:
        line = {k: summary[k] for k in ("success_rate", "task_average", "num_episodes")}
    if summary.get("per_group"):
        line["per_group"] = {g: v["rate"] for g, v in summary["per_group"].items()}
    return line


def write_report(run_dir: str | Path, summary: dict[str, Any], title: str = "Evaluation") -> dict[str, Path]:
    """Write the report files (results.json/.md/.png, eval_info.json) atomically; return their paths."""
    run_dir = Path(run_dir)
    paths = {"json": run_dir / RESULTS_JSON, "md": run_dir / RESULTS_MD, "png": run_dir / RESULTS_PNG,
             "eval_info": run_dir / EVAL_INFO_JSON}
    atomic_write_json(paths["json"], summary)
    atomic_write_json(paths["eval_info"], eval_info(summary))
    atomic_write_text(paths["md"], markdown(summary, title))
    atomic_write_bytes(paths["png"], plot_png(summary, title))
    return paths
