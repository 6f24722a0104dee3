"""Perceiver resampler: a fixed set of learned latents attends to a frame's patch tokens.

Follows OpenFlamingo's ``helpers.PerceiverResampler`` (same parameter names, so published weights map
one to one) with one frame per media item and no time/frame embeddings, which is how RoboFlamingo
uses it: ``(N, v, D) -> (N, num_latents, D)``.
"""

from __future__ import annotations

import torch
from torch import nn

from roboflamingo.models.config import ResamplerConfig


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """OpenFlamingo's FeedForward: LayerNorm, bias-free up/down projections, GELU."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x (N, v, D) media tokens, latents (N, n, D) -> (N, n, D)."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        h = self.heads
        q = self.to_q(latents)
        # Latents attend to the media and to themselves, as in the original.
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))  # (N, h, *, d)
        sim = (q * self.scale) @ k.transpose(-1, -2)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = sim.softmax(dim=-1) @ v  # (N, h, n, d)
        return self.to_out(out.transpose(1, 2).flatten(2))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, cfg: ResamplerConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, cfg.dim_head, cfg.heads), feed_forward(dim, cfg.ff_mult)])
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, v, D) patch tokens -> (N, num_latents, D)."""
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
