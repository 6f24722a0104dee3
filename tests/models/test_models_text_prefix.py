"""The frozen text prefix (layers below the first cross-attention block), computed once per instruction:
features, losses and gradients as the full LM pass gives them, in every LM family; recomputed when a
prefix weight changes; never used while the prefix trains."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_batch, make_stats, micro_config, micro_head, open_gates

from roboflamingo.models.config import LM_FAMILIES, LMConfig
from roboflamingo.models.policy import RoboFlamingoPolicy

SENTENCES = ["open the drawer", "push the blue block to the left", "open the drawer",
             "turn on the light bulb please", "open the drawer"]


def _policy(family: str, every: int = 3, layers: int = 3, **model) -> RoboFlamingoPolicy:
    torch.manual_seed(0)
    base = micro_config(family).lm
    lm = LMConfig(**{**base.__dict__, "num_layers": layers, "cross_attn_every_n_layers": every})
    policy = RoboFlamingoPolicy.from_config(micro_config(family, lm=lm, **model), micro_head(), make_stats())
    open_gates(policy)
    return policy


def _features(policy: RoboFlamingoPolicy, sentences: list[str], cached: bool) -> torch.Tensor:
    bb = policy.backbone
    torch.manual_seed(1)
    n = len(sentences)
    cams = [torch.rand(n, 3, 32, 32), torch.rand(n, 3, 32, 32)]
    ids, mask = policy.tokenize(sentences)
    usable = bb.text_prefix.usable
    if not cached:
        bb.text_prefix.usable = lambda: False
    try:
        return bb(cams, ids, mask)
    finally:
        bb.text_prefix.usable = usable


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_cached_prefix_gives_the_full_lm_features_in_every_family(family):
    policy = _policy(family).eval()
    assert policy.backbone.text_prefix.depth == 2 and policy.backbone.text_prefix.usable()
    full = _features(policy, SENTENCES, cached=False)
    with torch.no_grad():
        fast = _features(policy, SENTENCES, cached=True)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    # One entry per distinct instruction, each computed on its own.
    assert len(policy.backbone.text_prefix._cache) == 3


def test_a_batch_does_not_change_an_instruction_s_prefix():
    """An instruction's prefix is the same whichever instructions share its batch (computed alone)."""
    policy = _policy("bert").eval()
    prefix = policy.backbone.text_prefix
    with torch.no_grad():
        alone = prefix.hidden(*policy.tokenize(["open the drawer"]))
        prefix._cache.clear()
        ids, mask = policy.tokenize(["push the blue block to the left", "open the drawer"])
        together = prefix.hidden(ids, mask)
    n = int(mask[1].sum())
    torch.testing.assert_close(together[1, :n], alone[0], rtol=0, atol=0)
    assert not together[1, n:].any()  # padding


def test_training_loss_and_gradients_match_the_full_pass():
    policy = _policy("bert")
    policy.train()
    batch = make_batch(b=3, t=2, instructions=tuple(SENTENCES[:3]))
    grads = []
    for cached in (False, True):
        policy.zero_grad()
        usable = policy.backbone.text_prefix.usable
        if not cached:
            policy.backbone.text_prefix.usable = lambda: False
        loss, _ = policy(batch)
        policy.backbone.text_prefix.usable = usable
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in policy.parameters() if p.requires_grad]))
    assert policy.backbone.text_prefix._cache, "training with a frozen prefix used the cache"
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    for fast, full in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-6)


def test_a_changed_prefix_weight_is_recomputed():
    policy = _policy("llama").eval()
    with torch.no_grad():
        _features(policy, SENTENCES[:2], cached=True)
        layer = policy.backbone.lang_encoder.model.layers[0]
        layer.mlp.down_proj.weight.mul_(1.5)  # in place: the same tensor, a new version
        fast = _features(policy, SENTENCES[:2], cached=True)
    full = _features(policy, SENTENCES[:2], cached=False)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)


def test_a_reloaded_state_dict_is_recomputed():
    policy, other = _policy("gpt2").eval(), _policy("gpt2").eval()
    with torch.no_grad():
        for p in other.backbone.lang_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
        _features(policy, SENTENCES[:2], cached=True)
        policy.load_state_dict(other.state_dict())
        fast = _features(policy, SENTENCES[:2], cached=True)
    torch.testing.assert_close(fast, _features(other, SENTENCES[:2], cached=False), rtol=1e-5, atol=1e-6)


def test_trainable_embeddings_or_dropout_bypass_the_cache():
    policy = _policy("bert", train_embeddings=True)
    policy.train()
    assert not policy.backbone.text_prefix.usable()
    loss, _ = policy(make_batch(b=2, t=1))
    loss.backward()
    assert policy.backbone.lang_encoder.get_input_embeddings().weight.grad is not None
    assert not policy.backbone.text_prefix._cache
    frozen = _policy("bert").eval()
    frozen.backbone.lang_encoder.train()  # dropout on: the prefix is no function of the tokens
    assert not frozen.backbone.text_prefix.usable()


def test_no_prefix_when_the_first_layer_has_a_block():
    policy = _policy("mpt", every=1, layers=2).eval()
    assert policy.backbone.text_prefix.depth == 0 and not policy.backbone.text_prefix.usable()


def test_the_cache_is_bounded():
    policy = _policy("bert").eval()
    prefix = policy.backbone.text_prefix
    prefix.max_floats = 32 * 12  # about two instructions of the micro LM
    with torch.no_grad():
        for sentence in SENTENCES + ["close the drawer", "slide the door to the right"]:
            _features(policy, [sentence], cached=True)
    assert prefix._floats <= prefix.max_floats + 32 * 16
    assert sum(v.numel() for v in prefix._cache.values()) == prefix._floats


def test_a_prefix_cached_at_inference_trains_afterwards():
    """Rollouts during training (train.rollout_every) step under inference mode; the instructions they
    cache must still serve the next training step, whose backward saves the prefix."""
    policy = _policy("bert").eval()
    batch = make_batch(b=2, t=1, instructions=tuple(SENTENCES[:2]))
    with torch.inference_mode():
        _features(policy, SENTENCES[:2], cached=True)
    policy.train()
    loss, _ = policy(batch)
    loss.backward()
    assert all(p.grad is not None for p in policy.action_head.parameters() if p.requires_grad)
