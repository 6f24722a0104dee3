"""Small configs and synthetic batches shared by the model tests (a uniquely named module: other
test folders have a conftest.py too)."""

from __future__ import annotations

import numpy as np
import torch

from roboflamingo.models.config import HeadConfig, LMConfig, ModelConfig, ResamplerConfig, VisionConfig


def micro_config(family: str = "llama", **overrides) -> ModelConfig:
    """Smaller than configs/model/tiny.yaml: every test builds a few of these."""
    lm = LMConfig(family=family, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                  max_positions=48, xattn_heads=2, xattn_dim_head=16, bpe_merges=2000)
    cfg = dict(
        name="micro",
        vision=VisionConfig(name="custom", image_size=32, width=32, layers=1, patch_size=8, head_width=16),
        resampler=ResamplerConfig(depth=1, heads=2, dim_head=16, num_latents=4),
        lm=lm, window=4, act_steps=2,
    )
    cfg.update(overrides)
    return ModelConfig(**cfg)


def micro_head(kind: str = "lstm", **overrides) -> HeadConfig:
    cfg = dict(type=kind, hidden_size=16, num_layers=2, num_heads=2, dropout=0.0, state_dim=8)
    cfg.update(overrides)
    return HeadConfig(**cfg)


def make_stats(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "action_mean": rng.normal(0, 0.1, 7).astype(np.float32),
        "action_std": rng.uniform(0.2, 0.5, 7).astype(np.float32),
        "robot_obs_mean": rng.normal(0, 0.5, 15).astype(np.float32),
        "robot_obs_std": rng.uniform(0.5, 2.0, 15).astype(np.float32),
    }


def make_batch(b: int = 2, t: int = 4, a: int = 2, seed: int = 0,
               instructions: tuple[str, ...] = ("open the drawer", "push the blue block to the left")):
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb_static": torch.randint(0, 256, (b, t, 3, 40, 40), dtype=torch.uint8, generator=g),
        "rgb_gripper": torch.randint(0, 256, (b, t, 3, 24, 24), dtype=torch.uint8, generator=g),
        "robot_obs": torch.randn(b, t, 15, generator=g),
        "actions": torch.cat([torch.rand(b, t, a, 6, generator=g) * 2 - 1,
                              torch.randint(0, 2, (b, t, a, 1), generator=g).float() * 2 - 1], dim=-1),
        "action_mask": torch.ones(b, t, a, dtype=torch.bool),
        "instruction": [instructions[i % len(instructions)] for i in range(b)],
    }


def frame_obs(batch, i: int, t: int) -> dict[str, np.ndarray]:
    """Frame t of window i as a CALVIN observation dict (HWC uint8 images)."""
    return {
        "rgb_static": batch["rgb_static"][i, t].permute(1, 2, 0).numpy(),
        "rgb_gripper": batch["rgb_gripper"][i, t].permute(1, 2, 0).numpy(),
        "robot_obs": batch["robot_obs"][i, t].numpy().astype(np.float64),
    }


def open_gates(policy, value: float = 0.7) -> None:
    """Give the cross-attention a real effect, so tests see the visual path."""
    with torch.no_grad():
        for block in policy.backbone.gated_cross_attn_layers:
            if block is not None:
                block.attn_gate.fill_(value)
                block.ff_gate.fill_(value)


def assert_step_batch_equals_steps(policy, batch, starts: list[int], restart: tuple[int, int]) -> list[np.ndarray]:
    """Episode i of ``batch`` runs from frame ``starts[i]`` (episode ``restart[0]`` resets at frame
    ``restart[1]``), once alone through ``step`` and once beside the others through ``step_batch``:
    every batched action must equal the episode's own. Returns the batched actions."""
    b, t = len(starts), batch["robot_obs"].shape[1]
    expected = {}
    for i in range(b):
        policy.reset()
        for f in range(starts[i], t):
            if (i, f) == restart:
                policy.reset()
            expected[i, f] = policy.step(frame_obs(batch, i, f), batch["instruction"][i])
    histories: list = [None] * b
    out = []
    for f in range(t):
        rows = [i for i in range(b) if f >= starts[i]]
        for i in rows:
            if (i, f) == restart:
                histories[i] = None
        actions, new = policy.step_batch([frame_obs(batch, i, f) for i in rows],
                                         [batch["instruction"][i] for i in rows], [histories[i] for i in rows])
        assert actions.shape == (len(rows), 7) and actions.dtype == np.float32
        for row, i in enumerate(rows):
            histories[i] = new[row]
            np.testing.assert_allclose(actions[row], expected[i, f], atol=1e-5, rtol=1e-5)
            out.append(actions[row])
    return out
