"""Gated cross-attention from text tokens to visual latents (OpenFlamingo's GatedCrossAttentionBlock).

``tanh`` gates start at zero (the original's; ``model.lm.xattn_gate_init`` changes it), so an untrained
block is the identity and the frozen LM's output is unchanged until training opens the gates.
Parameter names follow the original.
"""

from __future__ import annotations

import torch
from torch import nn

from roboflamingo.models.resampler import feed_forward


class MaskedCrossAttention(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_attends: torch.Tensor | None) -> torch.Tensor:
        """x (N, L, dim) text states, media (N, M, dim_visual) latents of the frame's one image,
        text_attends (N, L) bool: tokens at or after the ``<image>`` token (the original's
        ``only_attend_immediate_media`` with a single image). Returns (N, L, dim)."""
        h = self.heads
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(media).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))
        sim = (q * self.scale) @ k.transpose(-1, -2)  # (N, h, L, M)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        if text_attends is not None:
            # Text before the first <image> has no media to attend to: its output is zero.
            attn = attn * text_attends[:, None, :, None].to(attn.dtype)
        out = attn @ v
        return self.to_out(out.transpose(1, 2).flatten(2))


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4,
                 gate_init: float = 0.0):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads)
        self.attn_gate = nn.Parameter(torch.tensor([float(gate_init)]))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([float(gate_init)]))

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_attends: torch.Tensor | None) -> torch.Tensor:
        x = self.attn(x, media, text_attends) * self.attn_gate.tanh() + x
        x = self.ff(x) * self.ff_gate.tanh() + x
        return x
