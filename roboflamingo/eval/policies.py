"""Which policy to evaluate: one picklable spec, one factory.

Worker processes are started with ``spawn``/``forkserver``, so they cannot inherit a live policy; each
receives a ``PolicySpec`` and builds its own. The evaluator sees the result only through ``reset()`` /
``step(obs, instruction)``, or, batched, through ``PolicySpec.slot_policy()`` (one model for every
simulator of the rank, see ``batching``).

- ``checkpoint``: a ``RoboFlamingoPolicy.from_pretrained`` directory (``checkpoint=<dir>``);
- ``expert``: the tabletop's scripted expert (an upper bound and a check of the protocol);
- ``random``: uniform random actions (a lower bound: it should score about 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.eval.batching import BatchedModel, PerSlotPolicies, SlotPolicy
from roboflamingo.eval.config import PRECISIONS
from roboflamingo.threads import choose_threads
from roboflamingo.types import ACTION_DIM, GRIPPER_CLOSE, GRIPPER_INDEX, GRIPPER_OPEN, Observation, Policy

POLICY_KINDS = ("checkpoint", "expert", "random")


class RandomPolicy:
    """Uniform random relative actions with a random open/close gripper: the floor of every score."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        action = self.rng.uniform(-1.0, 1.0, size=ACTION_DIM).astype(np.float32)
        action[GRIPPER_INDEX] = GRIPPER_OPEN if self.rng.random() < 0.5 else GRIPPER_CLOSE
        return action


class TorchPolicy:
    """A ``RoboFlamingoPolicy`` stepped without autograd on its device."""

    def __init__(self, model: Any):
        import torch

        self._torch = torch
        self.model = model

    def reset(self) -> None:
        self.model.reset()

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        with self._torch.inference_mode():
            action = self.model.step(obs, instruction)
        if isinstance(action, self._torch.Tensor):
            action = action.detach().cpu().numpy()
        return np.asarray(action, dtype=np.float32)

    def step_batch(self, observations, instructions, histories) -> tuple[np.ndarray, list]:
        """B independent episodes in one forward (``RoboFlamingoPolicy.step_batch``)."""
        return self.model.step_batch(observations, instructions, histories)


@dataclass(frozen=True)
class PolicySpec:
    """Everything a worker needs to build its own copy of the policy.

    Args:
        kind: ``checkpoint``, ``expert`` or ``random``.
        checkpoint: the checkpoint directory (``kind=checkpoint`` only).
        device: ``auto``, ``cpu`` or ``cuda`` for a checkpoint.
        torch_threads: intra-op threads for a checkpoint on CPU; 0 leaves torch's default.
        precision: ``fp32``, ``bf16`` or ``fp16`` for the checkpoint's frozen towers.
        scene: the tabletop scene the expert acts in.
        seed: seed of the random policy (each worker adds its worker id).
    """

    kind: str
    checkpoint: str | None = None
    device: str = "auto"
    torch_threads: int = 0
    precision: str = "fp32"
    scene: str = "D"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy must be one of {list(POLICY_KINDS)}, got '{self.kind}'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got '{self.precision}'")
        if self.kind == "checkpoint":
            if not self.checkpoint:
                raise ValueError("policy=checkpoint needs checkpoint=<dir> (a directory written by save_pretrained)")
            if not Path(self.checkpoint).is_dir():
                raise ValueError(f"checkpoint={self.checkpoint}: not a directory")
        elif self.checkpoint:
            raise ValueError(f"checkpoint={self.checkpoint} is only read with policy=checkpoint, not policy={self.kind}")

    def identity(self) -> dict[str, Any]:
        """What distinguishes this policy's results from another's (for the resume fingerprint)."""
        if self.kind == "checkpoint":
            root = Path(self.checkpoint).resolve()
            files = {p.name: p.stat().st_size for p in sorted(root.iterdir()) if p.is_file()}
            out = {"kind": self.kind, "checkpoint": str(root), "files": files}
            if self.precision != "fp32":  # fp32 records from before the option keep their fingerprint
                out["precision"] = self.precision
            return out
        if self.kind == "expert":
            return {"kind": self.kind, "scene": self.scene}
        return {"kind": self.kind, "seed": self.seed}

    def __call__(self, worker: int = 0) -> Policy:
        return make_policy(self, worker)

    def slot_policy(self) -> SlotPolicy:
        """The batched evaluator's policy: the checkpoint loaded once for all slots; the expert and
        the random floor one instance per slot (slot i seeded like worker i)."""
        if self.kind == "checkpoint":
            return BatchedModel(make_policy(self))
        return PerSlotPolicies(partial(make_policy, self))


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    # Under torchrun each rank takes its own GPU (LOCAL_RANK), not all of them cuda:0.
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local) % torch.cuda.device_count()}" if local else "cuda"


def make_policy(spec: PolicySpec, worker: int = 0) -> Policy:
    """Build the policy a spec describes (called once per worker process)."""
    if spec.kind == "random":
        return RandomPolicy(seed=spec.seed + worker)
    if spec.kind == "expert":
        from roboflamingo.sim.expert import ScriptedExpert

        return ScriptedExpert(spec.scene)
    import torch

    from roboflamingo.models.policy import RoboFlamingoPolicy

    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    device = _resolve_device(spec.device)
    model = RoboFlamingoPolicy.from_pretrained(spec.checkpoint, map_location=device)
    model.to(device)
    model.eval()
    if spec.precision != "fp32":
        model.set_precision(spec.precision)
    return TorchPolicy(model)


def default_torch_threads(workers: int, batch_size: int = 0) -> int:
    """This worker's share of the cores other processes leave free; batched, the one policy gets them
    all (the simulators wait for its forward, so it would otherwise leave cores idle)."""
    return choose_threads(0, 1 if batch_size else workers)
