"""Which policy to evaluate: one picklable spec over the shared policy source (``roboflamingo.policies``).

Worker processes are started with ``spawn``/``forkserver``, so they cannot inherit a live policy; each
receives a ``PolicySpec`` and builds its own with ``build_policy``. The evaluator sees the result only
through ``reset()`` / ``step(obs, instruction)``, or, batched, through ``eval.runner.slot_policy`` (one
model for every simulator of the rank, see ``batching``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from roboflamingo.config import require_choice
from roboflamingo.eval.config import PRECISIONS
from roboflamingo.policies import LOCAL_KINDS, PolicyKind, PolicySourceConfig, build_policy
from roboflamingo.threads import choose_threads
from roboflamingo.types import Policy


@dataclass(frozen=True)
class PolicySpec:
    """Everything a worker needs to build its own copy of the policy.

    Args:
        source: the policy source (kind, checkpoint, device, scene, seed).
        torch_threads: intra-op threads for a checkpoint on CPU; 0 leaves torch's default.
        precision: ``fp32``, ``bf16`` or ``fp16`` for the checkpoint's frozen towers (checked by
            ``EvalConfig`` and ``RoboFlamingoPolicy.set_precision``).
    """

    source: PolicySourceConfig
    torch_threads: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.source.check(LOCAL_KINDS, "eval")
        require_choice("precision", self.precision, PRECISIONS)

    @property
    def kind(self) -> PolicyKind:
        return self.source.kind

    def identity(self) -> dict[str, Any]:
        """What distinguishes this policy's results from another's (for the resume fingerprint)."""
        src, kind = self.source, self.source.kind.value
        if src.kind is PolicyKind.checkpoint:
            from roboflamingo.models.hub import resolve

            root = resolve(src.checkpoint).resolve()  # the policy directory, wherever it was named from
            files = {p.name: p.stat().st_size for p in sorted(root.iterdir()) if p.is_file()}
            out = {"kind": kind, "checkpoint": str(root), "files": files}
            if self.precision != "fp32":  # fp32 records from before the option keep their fingerprint
                out["precision"] = self.precision
            if src.chunking.is_set:  # likewise records made with the checkpoint's own chunking
                out["chunking"] = {k: v for k, v in src.chunking.__dict__.items() if v is not None}
            return out
        if src.kind is PolicyKind.expert:
            return {"kind": kind, "scene": src.scene}
        return {"kind": kind, "seed": src.seed}

    def __call__(self, worker: int = 0) -> Policy:
        return build_policy(self.source, worker, self.torch_threads, self.precision)


def default_torch_threads(workers: int, batch_size: int = 0, batch_groups: int = 1) -> int:
    """This worker's share of the cores other processes leave free. Batched, the one policy gets them
    all (the simulators wait for its forward, so it would otherwise leave cores idle); with G groups,
    a 1/G share, since the other groups' simulators step during each forward (on 2 cores, 2 threads
    there ran the pipelined layout 0.98x today's layout, 1 thread 1.18-1.29x: bench_eval.py)."""
    return choose_threads(0, batch_groups if batch_size else workers)
