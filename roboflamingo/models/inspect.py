"""``roboflamingo inspect model=NAME``: build a policy without weights and print its sizes.

The last line printed is one JSON object with ``total_params`` and ``trainable_params`` (and a
per-part breakdown), so scripts can ``tail -n1`` it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from roboflamingo.models.config import HeadConfig, ModelConfig


@dataclass
class Job:
    """``roboflamingo inspect``: build a policy and print its parameter counts as one JSON line.

    Args:
        model, head: the policy to build.
        device: ``meta`` (shapes only, reads no weight files) or a real device to also allocate.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    device: str = "meta"


def _count(params) -> int:
    return sum(p.numel() for p in params)


def summarize(policy) -> dict:
    from torch import nn

    bb = policy.backbone
    parts = {
        "vision_encoder": _count(bb.vision_encoder.parameters()),
        "perceiver": _count(bb.perceiver.parameters()),
        "lang_encoder": _count(bb.lang_encoder.parameters()),
        "gated_cross_attn_layers": _count(bb.gated_cross_attn_layers.parameters()),
        "action_head": _count(policy.action_head.parameters()),
    }
    if bb.keypoints is not None:
        parts["keypoints"] = _count(bb.keypoints.parameters())
    trainable = {name: _count([part] if isinstance(part, nn.Parameter) else part.parameters())
                 for name, part in policy.trainable_modules().items()}
    return {
        "model": policy.model_config.name,
        "head": policy.head_config.type,
        "total_params": policy.num_parameters(),
        "trainable_params": policy.num_trainable_parameters(),
        "params_by_part": parts,
        "trainable_by_part": trainable,
        "num_xattn_blocks": sum(b is not None for b in bb.gated_cross_attn_layers),
    }


def run(job: Job) -> int:
    from roboflamingo.models.policy import RoboFlamingoPolicy

    policy = RoboFlamingoPolicy.from_config(job.model, job.head, device=job.device)
    summary = summarize(policy)
    print(f"model {summary['model']} + head {summary['head']} on {job.device}")
    for name, n in summary["params_by_part"].items():
        print(f"  {name:<26}{n:>15,}")
    print(f"  {'total':<26}{summary['total_params']:>15,}")
    print(f"  {'trainable':<26}{summary['trainable_params']:>15,}")
    print(json.dumps(summary), flush=True)
    return 0
