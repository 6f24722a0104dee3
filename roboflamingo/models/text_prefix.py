"""The frozen text prefix: the LM layers below the first cross-attention block, once per instruction.

Those layers never see the image. While they and the input embeddings are frozen (and in eval mode),
their output is a function of the instruction's tokens alone, so it is computed once per distinct
instruction, on that instruction alone, and the layers are skipped in the batched pass. With the
demo's one block before MiniLM's last layer that is 5 of its 6 layers: a training step of the tiny
policy on one CPU thread goes from about 300 to about 210 ms, and inference skips them as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _PrefixReached(Exception):
    """Stops the LM at the first cross-attention layer once its input is captured."""


class _SkippedLayer(nn.Module):
    """Stands in for a prefix layer in the batched pass: its output is already in the cache."""

    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (hidden_states, None) if self.returns_tuple else hidden_states


class TextPrefix:
    """The frozen LM layers below the first cross-attention block, computed once per instruction.

    Each distinct instruction's hidden states entering that block are computed on the instruction
    alone (so they do not depend on which other instructions share a batch) and kept until a weight
    of the prefix changes (an update, a load, a move to another device or dtype), the cache outgrows
    ``max_floats``, or autocast changes. A batch then enters the LM with those layers skipped.
    """

    def __init__(self, lm: nn.Module, layers: nn.ModuleList, depth: int, returns_tuple: bool,
                 max_floats: int = 64 * 2**20):
        self.lm, self.layers, self.depth = lm, layers, depth
        self.skip = _SkippedLayer(returns_tuple)
        self.max_floats = max_floats
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._floats = 0
        self._stamp: tuple = ()

    def _params(self) -> list[torch.Tensor]:
        return [*self.lm.get_input_embeddings().parameters(),
                *(p for layer in self.layers[: self.depth] for p in layer.parameters())]

    def usable(self) -> bool:
        """The prefix is a function of the tokens: no layer below the block, no trainable
        embedding, no dropout."""
        return self.depth > 0 and not self.lm.training and not any(p.requires_grad for p in self._params())

    def _check_stamp(self) -> None:
        params = self._params()
        stamp = (tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params),
                 torch.is_autocast_enabled(params[0].device.type),
                 torch.get_autocast_dtype(params[0].device.type))
        if stamp != self._stamp:
            self._cache.clear()
            self._floats = 0
            self._stamp = stamp

    @torch.no_grad()
    def _compute(self, ids: list[int], device: torch.device) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def grab(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _PrefixReached

        handle = self.layers[self.depth].register_forward_pre_hook(grab, with_kwargs=True, prepend=True)
        row = torch.tensor([ids], dtype=torch.long, device=device)
        try:
            self.lm.base_model(input_ids=row, attention_mask=torch.ones_like(row), use_cache=False)
        except _PrefixReached:
            pass
        finally:
            handle.remove()
        return captured[0][0]  # (L, D)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (N, L), right-padded -> the hidden states entering the first
        cross-attention layer (N, L, D); zero at padding, which the later layers and pooling mask."""
        self._check_stamp()
        lengths = attention_mask.long().sum(dim=1).tolist()
        rows = [tuple(r[:n]) for r, n in zip(input_ids.tolist(), lengths)]
        for key in dict.fromkeys(rows):
            if key not in self._cache:
                value = self._compute(list(key), input_ids.device)
                if self._floats + value.numel() > self.max_floats:
                    self._cache.clear()
                    self._floats = 0
                self._cache[key] = value
                self._floats += value.numel()
        first = self._cache[rows[0]]
        out = first.new_zeros((len(rows), input_ids.shape[1], first.shape[-1]))
        for i, key in enumerate(rows):
            out[i, : len(key)] = self._cache[key]
        return out

    @contextlib.contextmanager
    def skipped(self, prefix: torch.Tensor) -> Iterator[None]:
        """For the duration of the block the prefix layers pass their input through and the first
        cross-attention layer receives ``prefix`` (N, L, D) instead (before its block's hook runs)."""

        def substitute(module, args, kwargs):
            return ((prefix, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": prefix})

        saved = [self.layers[i] for i in range(self.depth)]
        for i in range(self.depth):
            self.layers[i] = self.skip
        handle = self.layers[self.depth].register_forward_pre_hook(substitute, with_kwargs=True, prepend=True)
        try:
            yield
        finally:
            handle.remove()
            for i, layer in enumerate(saved):
                self.layers[i] = layer
