"""Policy heads: per-frame backbone features (B, T, D) -> a chunk of A future actions per frame.

Every head has two paths that compute the same function:

- ``forward(x)`` on a whole window (training), and
- ``step(x_t, cache)`` on one new frame (inference), carrying ``cache`` between calls, so the
  backbone runs once per control step and the head never needs the window re-encoded.

History semantics (what makes the two paths equal):

- LSTM, ``lstm_history=sliding`` (default): the output at frame t is the LSTM run from a zero state
  over frames ``max(0, t-W+1)..t``. Up to W frames this is the running hidden state; past W, ``step``
  re-runs the LSTM over the last W cached features (W cheap LSTM steps, no backbone work) and
  ``forward`` on a longer sequence does the same per frame. Training windows have length W, so
  inference sees exactly what training saw; the original does the same.
- LSTM, ``lstm_history=running``: one hidden state for the whole episode (forward on T frames = one
  LSTM pass over all T).
- Transformer: causal attention over at most W frames (a band mask) with a learned relative-position
  bias, so cached keys/values of the last W frames give the same result as the batched band mask.
- MLP: each frame on its own.

Outputs: ``pose`` (..., A, C), the robot's C continuous action dims in normalized units, and
``gripper`` logits (..., A, G, 2) for its G binary grippers, class 1 = open.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from roboflamingo.models.config import HeadConfig


class MLP(nn.Module):
    """Linear/ReLU stack, named like the original's ``MLPTanhHead.mlp`` (without its output squashing)."""

    def __init__(self, dims: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ActionHead(nn.Module):
    """Shared parts: the optional state embedding and the pose / gripper output MLPs."""

    def __init__(self, cfg: HeadConfig, in_dim: int, act_steps: int, window: int, state_dim: int | None,
                 outputs: tuple[int, int]):
        super().__init__()
        self.cfg = cfg
        self.act_steps = act_steps
        self.window = window
        self.state_encoder = (
            nn.Sequential(nn.Linear(state_dim, cfg.state_dim), nn.ReLU()) if state_dim is not None else None
        )
        self.in_dim = in_dim + (cfg.state_dim if state_dim is not None else 0)
        # Max-pooled LM states carry an offset and no fixed scale; normalizing them keeps the LSTM's
        # gates out of saturation (a tiny policy fitted ~10x faster with it). Off to mirror the original.
        self.input_norm = nn.LayerNorm(self.in_dim) if cfg.input_norm else nn.Identity()
        self.continuous_dim, self.num_grippers = outputs
        if self.continuous_dim + self.num_grippers < 1:
            raise ValueError("an action head needs at least one continuous or gripper output")
        # A robot without a regressed dim (or without a binary gripper) gets no such MLP at all, so no
        # untrained parameters sit in its checkpoint.
        self.actions = MLP([cfg.hidden_size, *cfg.mlp_widths, self.continuous_dim * act_steps]) \
            if self.continuous_dim else None
        self.gripper = MLP([cfg.hidden_size, *cfg.mlp_widths, 2 * self.num_grippers * act_steps]) \
            if self.num_grippers else None

    def fuse(self, feature: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        if self.state_encoder is not None:
            if state is None:
                raise ValueError("this policy uses robot_obs (model.use_state=true) but no state was given")
            feature = torch.cat([feature, self.state_encoder(state)], dim=-1)
        return self.input_norm(feature)

    def outputs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (..., hidden) -> continuous (..., A, C), gripper logits (..., A, G, 2)."""
        if self.actions is None:
            pose = h.new_zeros((*h.shape[:-1], self.act_steps, 0))
        else:
            pose = self.actions(h).unflatten(-1, (self.act_steps, self.continuous_dim))
            if self.cfg.pose_tanh:
                pose = pose.tanh()
        if self.gripper is None:
            grip = h.new_zeros((*h.shape[:-1], self.act_steps, 0, 2))
        else:
            grip = self.gripper(h).unflatten(-1, (self.act_steps, self.num_grippers, 2))
        return pose, grip

    def forward(self, feature: torch.Tensor, state: torch.Tensor | None = None):
        """feature (B, T, D), state (B, T, S) normalized -> pose (B, T, A, C), gripper (B, T, A, G, 2)."""
        return self.outputs(self.trunk(self.fuse(feature, state)))

    def step(self, feature: torch.Tensor, state: torch.Tensor | None, cache: Any):
        """feature (B, D) of the newest frame -> (pose (B, A, C), gripper (B, A, G, 2)), new cache."""
        h, cache = self.trunk_step(self.fuse(feature, state), cache)
        pose, grip = self.outputs(h)
        return (pose, grip), cache

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trunk_step(self, x: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    # -- batching independent episodes (``RoboFlamingoPolicy.step_batch``) --------------------------
    # A cache holds B episodes along a batch dimension; these three let a caller keep one cache per
    # episode and step any set of them together. Episodes whose caches have the same ``cache_group``
    # can share one ``step``; the head's work is tiny next to the backbone's, so a few groups are cheap.

    def cache_group(self, cache: Any) -> Any:
        """A hashable key: caches with equal keys can be stacked (None: a fresh episode)."""
        return None if cache is None else 0

    def stack_caches(self, caches: list[Any]) -> Any:
        """Per-episode caches of one group -> one cache over all of them (in order)."""
        return None

    def split_cache(self, cache: Any, n: int) -> list[Any]:
        """One cache over n episodes -> n per-episode caches."""
        return [None] * n


def _cat(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _rows(t: torch.Tensor, n: int, dim: int = 0) -> list[torch.Tensor]:
    return list(t.split(1, dim=dim)) if n > 1 else [t]


class LSTMHead(ActionHead):
    """The original's DeterministicDecoder: an LSTM over frame features, then pose/gripper MLPs."""

    def __init__(self, cfg: HeadConfig, in_dim: int, act_steps: int, window: int, state_dim: int | None,
                 outputs: tuple[int, int]):
        super().__init__(cfg, in_dim, act_steps, window, state_dim, outputs)
        self.rnn = nn.LSTM(self.in_dim, cfg.hidden_size, cfg.num_layers, batch_first=True,
                           dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.sliding = cfg.lstm_history == "sliding"

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        if not self.sliding or t <= self.window:
            return self.rnn(x)[0]
        # Past the window every frame's output comes from its own last-W frames, run from zero.
        w = self.window
        head = self.rnn(x[:, :w])[0]
        windows = x.unfold(1, w, 1)[:, 1:].permute(0, 1, 3, 2).reshape(-1, w, d)  # (B*(T-W), W, D)
        tail = self.rnn(windows)[0][:, -1].reshape(b, t - w, -1)
        return torch.cat([head, tail], dim=1)

    def trunk_step(self, x: torch.Tensor, cache):
        feats, state = cache if cache is not None else ([], None)
        if not self.sliding:
            out, state = self.rnn(x[:, None], state)
            return out[:, 0], ([], state)
        feats = feats + [x]
        if len(feats) <= self.window:
            out, state = self.rnn(x[:, None], state)
            return out[:, 0], (feats, state)
        # The oldest frame left the window: re-run from a zero state over the cached features.
        feats = feats[-self.window:]
        return self.rnn(torch.stack(feats, dim=1))[0][:, -1], (feats, None)

    def cache_group(self, cache):
        if cache is None:
            return None
        feats, state = cache
        return (len(feats), state is None)

    def stack_caches(self, caches):
        if caches[0] is None:
            return None
        feats = [_cat([c[0][j] for c in caches]) for j in range(len(caches[0][0]))]
        state = caches[0][1]
        if state is not None:  # (h, c), each (layers, B, hidden)
            state = tuple(_cat([c[1][k] for c in caches], dim=1) for k in range(len(state)))
        return feats, state

    def split_cache(self, cache, n):
        feats, state = cache
        rows = [_rows(f, n) for f in feats]
        states = [None] * n if state is None else list(zip(*(_rows(s, n, dim=1) for s in state)))
        return [([r[i] for r in rows], states[i]) for i in range(n)]


class TransformerHead(ActionHead):
    """Causal transformer over at most ``window`` frames, pre-LN, learned relative-position bias."""

    def __init__(self, cfg: HeadConfig, in_dim: int, act_steps: int, window: int, state_dim: int | None,
                 outputs: tuple[int, int]):
        super().__init__(cfg, in_dim, act_steps, window, state_dim, outputs)
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.in_proj = nn.Linear(self.in_dim, d)
        self.blocks = nn.ModuleList(_Block(d, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers))
        # bias[h, k]: added to the logit of a frame k steps in the past (k < window).
        self.rel_bias = nn.Parameter(torch.zeros(cfg.num_heads, window))
        self.norm = nn.LayerNorm(d)

    def _bias(self, t_q: int, t_k: int, device) -> torch.Tensor:
        """(H, t_q, t_k) additive mask: queries are the last t_q of t_k frames."""
        q = torch.arange(t_k - t_q, t_k, device=device)[:, None]
        k = torch.arange(t_k, device=device)[None, :]
        dist = q - k
        ok = (dist >= 0) & (dist < self.window)
        bias = self.rel_bias[:, dist.clamp(0, self.window - 1)]
        return bias.masked_fill(~ok, float("-inf"))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.in_proj(x)
        bias = self._bias(x.shape[1], x.shape[1], x.device).to(h.dtype)
        for block in self.blocks:
            h = block(h, bias)
        return self.norm(h)

    def trunk_step(self, x: torch.Tensor, cache):
        cache = cache if cache is not None else [None] * len(self.blocks)
        h = self.in_proj(x)[:, None]  # (B, 1, d)
        new_cache = []
        for block, kv in zip(self.blocks, cache):
            h, kv = block.step(h, kv, self.window, self)
            new_cache.append(kv)
        return self.norm(h)[:, 0], new_cache

    def cache_group(self, cache):
        return None if cache is None else cache[0][0].shape[2]  # frames held (<= window)

    def stack_caches(self, caches):
        if caches[0] is None:
            return None
        return [tuple(_cat([c[i][k] for c in caches]) for k in range(2)) for i in range(len(caches[0]))]

    def split_cache(self, cache, n):
        per_block = [list(zip(_rows(k, n), _rows(v, n))) for k, v in cache]
        return [[block[i] for block in per_block] for i in range(n)]


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, T, dh)

    def _attend(self, q, k, v, bias) -> torch.Tensor:
        p = self.drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.proj(out.transpose(1, 2).flatten(2))

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._heads(t) for t in self.qkv(self.ln1(h)).chunk(3, dim=-1))
        h = h + self.drop(self._attend(q, k, v, bias))
        return h + self.drop(self.mlp(self.ln2(h)))

    def step(self, h: torch.Tensor, kv, window: int, head: TransformerHead):
        q, k, v = (self._heads(t) for t in self.qkv(self.ln1(h)).chunk(3, dim=-1))
        if kv is not None:
            # Keep only the last `window` frames' keys/values: older ones are masked out anyway.
            k = torch.cat([kv[0], k], dim=2)[:, :, -window:]
            v = torch.cat([kv[1], v], dim=2)[:, :, -window:]
        bias = head._bias(1, k.shape[2], h.device).to(h.dtype)
        h = h + self._attend(q, k, v, bias)
        return h + self.mlp(self.ln2(h)), (k, v)


class MLPHead(ActionHead):
    """Per-frame MLP: no history (a baseline for what the history-aware heads add)."""

    def __init__(self, cfg: HeadConfig, in_dim: int, act_steps: int, window: int, state_dim: int | None,
                 outputs: tuple[int, int]):
        super().__init__(cfg, in_dim, act_steps, window, state_dim, outputs)
        dims = [self.in_dim] + [cfg.hidden_size] * cfg.num_layers
        layers: list[nn.Module] = []
        for i in range(cfg.num_layers):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU(), nn.Dropout(cfg.dropout)]
        self.mlp = nn.Sequential(*layers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

    def trunk_step(self, x: torch.Tensor, cache):
        return self.mlp(x), None


HEADS = {"lstm": LSTMHead, "transformer": TransformerHead, "mlp": MLPHead}


def build_head(cfg: HeadConfig, in_dim: int, act_steps: int, window: int, state_dim: int | None,
               outputs: tuple[int, int]) -> ActionHead:
    """``outputs``: (continuous action dims C, binary grippers G) of the robot."""
    return HEADS[cfg.type](cfg, in_dim, act_steps, window, state_dim, outputs)
