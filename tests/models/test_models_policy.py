"""The policy's core promises: incremental step() == batched forward, freezing, overfitting, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import (
    assert_step_batch_equals_steps,
    frame_obs,
    make_batch,
    make_stats,
    micro_config,
    micro_head,
    open_gates,
)

from roboflamingo.models.config import LM_FAMILIES
from roboflamingo.models.policy import RoboFlamingoPolicy

HEADS = ["lstm", "transformer", "mlp"]


def _step_outputs(policy, batch, i: int, frames: int):
    policy.reset()
    poses, grips = [], []
    with torch.inference_mode():
        for t in range(frames):
            pose, grip = policy.step_outputs(frame_obs(batch, i, t), batch["instruction"][i])
            poses.append(pose)
            grips.append(grip)
    return torch.stack(poses), torch.stack(grips)


@pytest.mark.parametrize("kind", HEADS)
def test_step_equals_batched_forward(kind):
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(use_state=True), micro_head(kind), make_stats())
    open_gates(policy)
    # Two instructions of different lengths: the shorter one is padded in the batch but not in step().
    batch = make_batch(b=2, t=4)
    with torch.no_grad():
        pose, grip = policy.predict(batch)
    for i in range(2):
        step_pose, step_grip = _step_outputs(policy, batch, i, 4)
        torch.testing.assert_close(step_pose, pose[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step_grip, grip[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,history", [("lstm", "sliding"), ("lstm", "running"), ("transformer", "sliding")])
def test_step_equals_forward_past_the_window(kind, history):
    """Episodes outlast the training window: the cached history must keep matching forward()."""
    torch.manual_seed(1)
    policy = RoboFlamingoPolicy.from_config(micro_config(window=3), micro_head(kind, lstm_history=history), make_stats())
    open_gates(policy)
    batch = make_batch(b=1, t=7, instructions=("stack the blocks",))
    with torch.no_grad():
        pose, grip = policy.predict(batch)
    step_pose, step_grip = _step_outputs(policy, batch, 0, 7)
    torch.testing.assert_close(step_pose, pose[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step_grip, grip[0], atol=1e-5, rtol=1e-5)
    if kind == "lstm" and history == "sliding":
        # Frame 6's output depends only on frames 4..6: a 3-frame window starting at 4 gives it.
        short = {k: (v[:, 4:] if k != "instruction" else v) for k, v in batch.items()}
        with torch.no_grad():
            torch.testing.assert_close(policy.predict(short)[0][0, -1], pose[0, -1], atol=1e-5, rtol=1e-5)


def test_step_returns_a_relative_action_and_satisfies_the_protocol(stats):
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), stats)
    batch = make_batch(b=1, t=2)
    policy.reset()
    for t in range(2):
        action = policy.step(frame_obs(batch, 0, t), "open the drawer")
        assert action.shape == (7,) and action.dtype == np.float32
        assert np.all(np.abs(action[:6]) <= 1.0)
        assert action[6] in (-1.0, 1.0)


def test_forward_reports_both_losses_and_respects_the_action_mask(stats):
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), stats)
    batch = make_batch()
    loss, logs = policy(batch)
    assert {"loss", "pose_loss", "gripper_loss", "gripper_acc"} <= set(logs)
    hc = policy.head_config
    assert logs["loss"] == pytest.approx(hc.pose_loss_weight * logs["pose_loss"]
                                         + hc.gripper_loss_weight * logs["gripper_loss"], rel=1e-5)
    # Masked-out targets do not count: garbage there leaves the loss as it was.
    masked = dict(batch, action_mask=batch["action_mask"].clone(), actions=batch["actions"].clone())
    masked["action_mask"][:, :, 1] = False
    _, ref = policy(masked)
    masked["actions"][:, :, 1] = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0]) * 0.9
    _, changed = policy(masked)
    assert changed["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert ref["loss"] != pytest.approx(logs["loss"], rel=1e-6)


def test_frozen_parameters_never_change_and_frozen_towers_stay_in_eval(stats):
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(dropout=0.1), stats)
    policy.train()
    assert not policy.backbone.vision_encoder.training and not policy.backbone.lang_encoder.training
    assert policy.action_head.training and policy.backbone.perceiver.training
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    assert frozen and trainable
    assert all(n.startswith(("backbone.vision_encoder.", "backbone.lang_encoder.")) for n in frozen)
    opt = torch.optim.AdamW(policy.optimizer_param_groups(0.1), lr=1e-2)
    for _ in range(2):
        loss, _ = policy(make_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(policy.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(after[name], before), f"frozen parameter {name} changed"
    changed = [n for n, before in trainable.items() if not torch.equal(after[n], before)]
    assert any(n.startswith("backbone.gated_cross_attn_layers.") for n in changed)
    assert any(n.startswith("backbone.perceiver.") for n in changed)
    assert any(n.startswith("action_head.") for n in changed)


def test_freezing_options_change_what_trains(stats):
    base = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), stats)
    emb = base.backbone.lang_encoder.get_input_embeddings().weight
    with_emb = RoboFlamingoPolicy.from_config(micro_config(train_embeddings=True, freeze_resampler=True), micro_head(), stats)
    perceiver = sum(p.numel() for p in base.backbone.perceiver.parameters())
    assert with_emb.num_trainable_parameters() == base.num_trainable_parameters() - perceiver + emb.numel()
    assert with_emb.backbone.lang_encoder.get_input_embeddings().weight.requires_grad
    vit = RoboFlamingoPolicy.from_config(micro_config(unfreeze_vision=True), micro_head(), stats)
    vit.train()
    assert vit.backbone.vision_encoder.training
    assert not vit.backbone.vision_encoder.proj.requires_grad  # unused by the policy
    assert vit.num_trainable_parameters() > base.num_trainable_parameters()


def test_weight_decay_only_on_cross_attention_matrices(stats):
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), stats)
    groups = {g["name"]: g for g in policy.optimizer_param_groups(0.1)}
    names = {id(p): n for n, p in policy.named_parameters()}
    decayed = [names[id(p)] for p in groups["xattn_weights"]["params"]]
    assert groups["xattn_weights"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert decayed and all(n.startswith("backbone.gated_cross_attn_layers.") for n in decayed)
    assert not any(n.endswith("_gate") or ".norm." in n or n.endswith("bias") for n in decayed)
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == policy.num_trainable_parameters()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_policy_overfits_a_handful_of_windows(kind, stats):
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(kind, hidden_size=32), stats)
    policy.train()
    batch = make_batch(b=4, t=4, seed=3, instructions=("open the drawer", "close the drawer", "lift the red block",
                                                      "turn on the led"))
    # Like a demonstration segment, each window keeps one action chunk (one per instruction).
    batch["actions"] = batch["actions"][:, :1, :1].expand_as(batch["actions"]).clone()
    opt = torch.optim.AdamW(policy.optimizer_param_groups(0.0), lr=3e-3)
    first = None
    for _ in range(100):
        loss, logs = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else logs["loss"]
    policy.eval()
    with torch.no_grad():
        final = policy(batch)[1]["loss"]
    assert final <= first / 10, f"loss went {first:.4f} -> {final:.4f}"


def test_fusion_pre_uses_one_resampler_pass_for_both_cameras(stats):
    post = RoboFlamingoPolicy.from_config(micro_config(fusion="post"), micro_head(), stats)
    pre = RoboFlamingoPolicy.from_config(micro_config(fusion="pre"), micro_head(), stats)
    x = torch.randn(3, 3, 32, 32)
    latents = micro_config().resampler.num_latents
    with torch.no_grad():
        assert post.backbone.encode_images(x, x)[0].shape[1] == 2 * latents
        assert pre.backbone.encode_images(x, x)[0].shape[1] == latents
        loss, _ = pre(make_batch())
    assert torch.isfinite(loss)


def test_original_style_outputs_can_be_selected(stats):
    """The original's tanh pose head (for its published weights) is one switch away."""
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(pose_tanh=True, input_norm=False), stats)
    assert isinstance(policy.action_head.input_norm, torch.nn.Identity)
    with torch.no_grad():
        pose, _ = policy.predict(make_batch())
    assert pose.abs().max() <= 1.0


@pytest.mark.parametrize("kind,history", [("lstm", "sliding"), ("lstm", "running"), ("transformer", "sliding"),
                                          ("mlp", "sliding")])
def test_step_batch_equals_separate_steps(kind, history):
    """B episodes of different ages and instructions, reset on their own, through one batched call:
    every action equals that episode's own step() sequence."""
    torch.manual_seed(2)
    policy = RoboFlamingoPolicy.from_config(micro_config(window=3, use_state=True), micro_head(kind, lstm_history=history), make_stats())
    open_gates(policy)
    b, t = 4, 8
    batch = make_batch(b=b, t=t, instructions=("stack the blocks", "open the drawer", "push the blue block left"))
    # Episode i starts at frame starts[i] and episode 2 restarts at frame 5 (a new subtask).
    starts, restart = [0, 1, 3, 0], (2, 5)
    assert_step_batch_equals_steps(policy, batch, starts, restart)


def test_step_batch_refuses_mismatched_inputs(stats):
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), stats)
    obs = frame_obs(make_batch(b=1, t=1), 0, 0)
    with pytest.raises(ValueError, match="2 observations but 1 histories"):
        policy.step_batch([obs, obs], ["a", "b"], [None])
    with pytest.raises(ValueError, match="observation 1: .*rgb_static"):
        policy.step_batch([obs, {"rgb_gripper": obs["rgb_gripper"]}], ["a", "b"], [None, None])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("family", LM_FAMILIES)
def test_half_precision_towers_run_and_stay_close_to_fp32(stats, family, precision):
    """eval.precision on CPU: the half-precision path runs end to end for every LM family (the real
    3B/9B models are MPT, whose half-precision LayerNorms used to get fp32 hidden states from the
    cross-attention and refuse them); its actions stay near fp32's."""
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(family), micro_head(), stats)
    open_gates(policy)
    batch = make_batch(b=2, t=3)
    obs = [frame_obs(batch, i, 0) for i in range(2)]
    ref, _ = policy.step_batch(obs, batch["instruction"], [None, None])
    policy.set_precision(precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert all(p.dtype == dtype for p in policy.backbone.vision_encoder.parameters())
    assert all(p.dtype == dtype for p in policy.backbone.lang_encoder.parameters())
    trained = (policy.action_head, policy.backbone.perceiver, policy.backbone.gated_cross_attn_layers)
    assert all(p.dtype == torch.float32 for m in trained for p in m.parameters())
    low, _ = policy.step_batch(obs, batch["instruction"], [None, None])
    assert np.all(np.isfinite(low)) and low.shape == ref.shape
    assert np.abs(low[:, :6] - ref[:, :6]).max() < 0.1  # bf16 keeps ~3 significant digits, fp16 ~4
    with pytest.raises(ValueError, match="precision must be one of"):
        policy.set_precision("int8")
