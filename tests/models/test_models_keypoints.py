"""model.keypoints: spatial-softmax keypoints from the patch tokens, beside the LM's feature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import assert_step_batch_equals_steps, make_batch, make_stats, micro_config, micro_head

from roboflamingo.models.config import ModelConfig
from roboflamingo.models.keypoints import SpatialSoftmax
from roboflamingo.models.policy import RoboFlamingoPolicy


def test_a_keypoint_lands_on_the_token_that_matches_its_heatmap():
    """Tokens are row-major on the grid; x grows along a row, y down the rows, both in [-1, 1]."""
    side, dim = 4, 8
    points = SpatialSoftmax(dim, 1)
    with torch.no_grad():
        points.norm.weight.fill_(1.0), points.norm.bias.zero_()
        points.heatmaps.weight.zero_(), points.heatmaps.bias.zero_()
        points.heatmaps.weight[0, 0] = 50.0  # the heatmap reads feature 0
    for row, col in [(0, 3), (2, 1), (3, 0)]:
        tokens = torch.zeros(1, side * side, dim)
        tokens[0, :, 1] = 1.0  # LayerNorm needs some spread in every token
        tokens[0, row * side + col, 0] = 5.0
        x, y = points(tokens)[0].tolist()
        assert x == pytest.approx(-1 + 2 * col / (side - 1), abs=1e-3)
        assert y == pytest.approx(-1 + 2 * row / (side - 1), abs=1e-3)


def test_a_grid_that_is_not_square_is_refused():
    with pytest.raises(ValueError, match="square grid"):
        SpatialSoftmax(8, 2)(torch.zeros(1, 12, 8))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_keypoints_must_be_a_count(bad):
    with pytest.raises(ValueError, match="model.keypoints"):
        ModelConfig(keypoints=bad)


def _policy(keypoints: int) -> RoboFlamingoPolicy:
    torch.manual_seed(0)
    return RoboFlamingoPolicy.from_config(micro_config(keypoints=keypoints), micro_head(), make_stats()).eval()


def test_keypoints_let_the_action_see_the_image_with_the_gates_shut():
    """At gate 0 (OpenFlamingo's init) RoboFlamingo's path ignores the images; the keypoints do not,
    and they are trained with the head."""
    batch = make_batch()
    other = batch | {"rgb_static": torch.roll(batch["rgb_static"], shifts=1, dims=0)}
    with torch.no_grad():
        plain = _policy(0)
        torch.testing.assert_close(plain.predict(batch)[0], plain.predict(other)[0], atol=0, rtol=0)
        seeing = _policy(3)
        assert (seeing.predict(batch)[0] - seeing.predict(other)[0]).abs().max() > 1e-6
    assert "keypoints" in seeing.trainable_modules()
    assert all(p.requires_grad for p in seeing.backbone.keypoints.parameters())
    # Two cameras, 3 keypoints each: 12 numbers beside the LM's feature.
    feature = seeing.backbone([torch.zeros(1, 3, 32, 32)] * 2, *seeing.tokenize(["open the drawer"]))
    assert feature.shape == (1, seeing.backbone.lm_dim + 12)
    seeing.train()
    loss, _ = seeing(make_batch())
    loss.backward()
    assert seeing.backbone.keypoints.heatmaps.weight.grad.abs().sum() > 0


def test_keypoints_round_trip_and_step_batch_equals_step(tmp_path):
    policy = _policy(2)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = RoboFlamingoPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.model_config.keypoints == 2
    batch = make_batch()
    with torch.no_grad():
        for a, b in zip(policy.predict(batch), loaded.predict(batch)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    steps = assert_step_batch_equals_steps(loaded, batch, starts=[0, 1], restart=(1, 2))
    assert all(np.isfinite(s).all() for s in steps)
