"""What the field reports: CALVIN's long-horizon metrics and per-task success.

One ``ChainResult`` per evaluated chain (a single-task episode is a chain of length 1). The numbers
follow ``calvin_agent/evaluation/evaluate_policy.py``:

- ``completed`` is the number of consecutive successful subtasks (0..5);
- average length = mean(completed);
- success rate after i tasks = fraction of chains with ``completed >= i`` (``count_success``);
- per-task success counts only the subtasks that were attempted: every completed one, plus the one
  that failed; subtasks after the first failure were never tried and count nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

CHAIN_LEN = 5


@dataclass
class ChainResult:
    """The outcome of one chain (or one single-task episode).

    ``steps[k]`` is the number of control steps subtask k ran for (its success step, or ``ep_len``
    when it failed); ``len(steps) == min(completed + 1, len(tasks))``. ``policy_s``/``env_s``/``wall_s``
    are seconds spent in the policy, in the simulator and in total; ``cpu_s`` is the CPU time the
    evaluating process (all its threads) used, which tells contention apart from real work.
    """

    index: int
    tasks: list[str]
    completed: int
    steps: list[int] = field(default_factory=list)
    policy_s: float = 0.0
    env_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    video: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.completed <= len(self.tasks):
            raise ValueError(f"chain {self.index}: completed={self.completed} outside 0..{len(self.tasks)}")

    @property
    def attempted(self) -> list[tuple[str, bool]]:
        """(task, success) for every subtask that was tried."""
        tried = self.tasks[: min(self.completed + 1, len(self.tasks))]
        return [(task, k < self.completed) for k, task in enumerate(tried)]

    @property
    def env_steps(self) -> int:
        return int(sum(self.steps))

    @property
    def failed_task(self) -> str | None:
        """The subtask the chain failed on; None when it completed every one."""
        return None if self.completed == len(self.tasks) else self.tasks[self.completed]

    @property
    def outcome(self) -> str:
        """A short label for file names: ``success`` or ``fail-<task>``."""
        return "success" if self.failed_task is None else f"fail-{self.failed_task}"

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ChainResult:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in record.items() if k in names})


def per_task_counts(results: Iterable[ChainResult]) -> dict[str, dict[str, float]]:
    """``{task: {success, total, rate}}`` over attempted subtasks, tasks sorted by name."""
    counts: dict[str, list[int]] = {}
    for result in results:
        for task, ok in result.attempted:
            entry = counts.setdefault(task, [0, 0])
            entry[0] += int(ok)
            entry[1] += 1
    return {
        task: {"success": s, "total": n, "rate": s / n}
        for task, (s, n) in sorted(counts.items())
    }


def first_and_later_counts(results: Iterable[ChainResult]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {"first": {...}, "later": {...}}}``: a chain's first subtask starts from its initial
    state, a later one wherever the previous subtask left the arm; a task that succeeds first and fails
    later fails at the handover, not at the task."""
    counts: dict[str, dict[str, list[int]]] = {}
    for result in results:
        for k, (task, ok) in enumerate(result.attempted):
            entry = counts.setdefault(task, {"first": [0, 0], "later": [0, 0]})["first" if k == 0 else "later"]
            entry[0] += int(ok)
            entry[1] += 1
    return {task: {where: {"success": s, "total": n, "rate": s / n if n else None} for where, (s, n) in c.items()}
            for task, c in sorted(counts.items())}


def summarize_chains(results: list[ChainResult], chain_len: int = CHAIN_LEN) -> dict[str, Any]:
    """CALVIN's long-horizon summary: average length, success after 1..chain_len tasks, per task (also
    split into first and later subtasks)."""
    n = len(results)
    lengths = [r.completed for r in results]
    rates = [sum(length >= i for length in lengths) / n if n else 0.0 for i in range(1, chain_len + 1)]
    return {
        "mode": "chains",
        "num_chains": n,
        "avg_len": sum(lengths) / n if n else 0.0,
        "success_rates": rates,
        "per_task": per_task_counts(results),
        "per_task_first_later": first_and_later_counts(results),
    }


def summarize_episodes(results: list[ChainResult]) -> dict[str, Any]:
    """Single-task summary: success per task, pooled over episodes and averaged over tasks."""
    per_task = per_task_counts(results)
    episodes = sum(v["total"] for v in per_task.values())
    successes = sum(v["success"] for v in per_task.values())
    return {
        "mode": "single_task",
        "num_episodes": len(results),
        "success_rate": successes / episodes if episodes else 0.0,
        "task_average": sum(v["rate"] for v in per_task.values()) / len(per_task) if per_task else 0.0,
        "per_task": per_task,
    }


def running_postfix(results: list[ChainResult], chain_len: int = CHAIN_LEN) -> str:
    """The progress-bar text CALVIN prints: ``1/5 : 90% | 2/5 : 70% | ... | len 3.10``."""
    if not results:
        return ""
    summary = summarize_chains(results, chain_len)
    parts = [f"{i}/{chain_len}: {rate:.0%}" for i, rate in enumerate(summary["success_rates"], 1)]
    return " | ".join(parts) + f" | len {summary['avg_len']:.2f}"
