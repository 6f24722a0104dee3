"""Spatial-softmax keypoints: where in the image things are, read straight from the patch tokens.

The resampler pools a frame's tokens into a few latents and the LM sees them through one gated
cross-attention; trained from scratch on a small dataset that path carries which task it is but not
where the object is (docs/model.md, "Is the policy looking?"). Here K learned heatmaps over the token
grid each give their expected (x, y), as in Levine et al. 2016 (robomimic, diffusion_policy), and the
head reads those 2K numbers per camera beside the LM's feature.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SpatialSoftmax(nn.Module):
    """Patch tokens (N, v, D) on a square grid -> K expected (x, y) positions in [-1, 1], (N, 2K)."""

    def __init__(self, dim: int, num_keypoints: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heatmaps = nn.Linear(dim, num_keypoints)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        v = tokens.shape[-2]
        side = math.isqrt(v)
        if side * side != v:
            raise ValueError(f"keypoints need a square grid of patch tokens, got {v} tokens")
        logits = self.heatmaps(self.norm(tokens))  # (N, v, K)
        weights = logits.float().softmax(dim=-2)
        axis = torch.linspace(-1.0, 1.0, side, device=tokens.device)
        # Tokens are row-major: token i sits at row i // side, column i % side.
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij")[::-1], dim=-1).reshape(v, 2)  # (x, y)
        return torch.einsum("nvk,vc->nkc", weights, grid).flatten(1).to(tokens.dtype)
