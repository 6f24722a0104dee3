"""An exponential moving average (EMA) of the trainable weights, as diffusion_policy keeps one.

The optimizer trains the raw weights; the average follows them after every optimizer step with decay
``min(train.ema_decay, (1 + step) / (10 + step))`` (the warm-up keeps the first steps from being
dominated by the random initialisation). Validation, rollouts and checkpoints see the averaged
weights, swapped into the policy for the duration (:meth:`WeightAverage.applied`): what a run saves
is the policy a user evaluates, and the raw weights travel in the checkpoint's training state, so a
resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    def __init__(self, policy: nn.Module, decay: float):
        self.names, self.params = zip(*[(n, p) for n, p in policy.named_parameters() if p.requires_grad])
        self.average = [p.detach().clone() for p in self.params]
        self.decay = decay

    def rate(self, step: int) -> float:
        """The decay used after optimizer step ``step`` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.rate(step))

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Inside the block the policy holds the averaged weights; after it, the raw ones again."""
        raw = [p.detach().clone() for p in self.params]
        self.install()
        try:
            yield
        finally:
            torch._foreach_copy_([p.data for p in self.params], raw)

    @torch.no_grad()
    def install(self) -> None:
        """The policy keeps the averaged weights from now on (training has ended)."""
        torch._foreach_copy_([p.data for p in self.params], self.average)

    def raw_state(self) -> dict[str, torch.Tensor]:
        """The raw (trained) weights by parameter name: what a resumed run continues from."""
        return {n: p.detach().clone() for n, p in zip(self.names, self.params)}

    @torch.no_grad()
    def restore_raw(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Build on a policy loaded from a checkpoint (the averaged weights): those become the
        average, ``state`` (from :meth:`raw_state`) the weights trained on."""
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise KeyError(f"{source}: the training state lacks the raw weights of {missing[:3]} "
                           f"({len(missing)} in all) that train.ema_decay needs")
        self.average = [p.detach().clone() for p in self.params]
        for n, p in zip(self.names, self.params):
            p.copy_(state[n].to(p.device, p.dtype))
