"""AdamW over the policy's parameter groups and the warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from roboflamingo.train.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based).

    Linear warmup reaches the full rate at step ``warmup_steps - 1`` (never a zero-lr first step),
    then ``constant`` holds it (the original recipe), ``linear``/``cosine`` decay to ``min_lr_ratio``
    at the last step.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, cfg.steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    if cfg.schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_optimizer(policy: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW on ``policy.optimizer_param_groups``: weight decay on the cross-attention weights only
    (not gates, norms, biases, embeddings or the head), as in the original recipe."""
    groups = policy.optimizer_param_groups(cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("the policy has no trainable parameters (optimizer_param_groups returned none)")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("optimizer_param_groups lists a parameter more than once")
    frozen = [p for p in params if not p.requires_grad]
    if frozen:
        raise ValueError(f"optimizer_param_groups includes {len(frozen)} frozen parameters (requires_grad=False)")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                          policy: nn.Module, cfg: TrainConfig) -> None:
    """After a resume loaded the optimizer's and scheduler's states: the run's own settings again.

    Those states carry the hyperparameters they were saved with (the base learning rate, weight decay,
    betas, eps), and a resume may change them (every ``train.*`` key): without this they would be
    recorded as changed and silently not applied.
    """
    fresh = policy.optimizer_param_groups(cfg.weight_decay)
    if len(fresh) != len(optimizer.param_groups):
        raise ValueError(f"the resumed optimizer has {len(optimizer.param_groups)} parameter groups, "
                         f"the policy {len(fresh)}")
    factor = lr_factor(scheduler.last_epoch, cfg)
    for group, spec in zip(optimizer.param_groups, fresh):
        group.update(weight_decay=spec.get("weight_decay", 0.0), betas=tuple(cfg.betas), eps=cfg.eps,
                     initial_lr=cfg.lr, lr=cfg.lr * factor)
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
