"""The model/head config groups, the inspect command, and strict vision-weight loading."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import micro_config

from roboflamingo import cli
from roboflamingo.config import ConfigError, load
from roboflamingo.models.inspect import Job
from roboflamingo.models.vision import build_vision_encoder

MODELS = ["tiny", "tiny_minilm", "mid", "of3b_mpt1b", "of4b", "of9b_mpt7b"]
ORIGINAL_3B_TRAINABLE = 1_088_187_703


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("head", ["lstm", "transformer", "mlp"])
def test_every_group_composes(model, head):
    job = load("inspect", Job, [f"model={model}", f"head={head}"])
    assert job.model.name == model and job.head.type == head


def test_a_bad_override_names_the_field():
    with pytest.raises(ConfigError, match="model.lm.family must be one of"):
        load("inspect", Job, ["model.lm.family=rwkv"])


def _last_json(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_inspect_tiny_prints_one_json_line_last(capsys):
    assert cli.main(["inspect", "model=tiny", "head=transformer"]) == 0
    out = _last_json(capsys)
    assert out["model"] == "tiny" and out["head"] == "transformer"
    assert 0 < out["trainable_params"] < out["total_params"] < 20_000_000


def test_inspect_counts_the_keypoint_readout(capsys):
    assert cli.main(["inspect", "model=tiny", "model.keypoints=4"]) == 0
    out = _last_json(capsys)
    width = 128  # tiny's ViT: a LayerNorm (2 x 128) and a 128 -> 4 projection with bias
    assert out["params_by_part"]["keypoints"] == out["trainable_by_part"]["keypoints"] == 2 * width + width * 4 + 4


def test_inspect_of3b_matches_the_original_trainable_count(capsys):
    assert cli.main(["inspect", "model=of3b_mpt1b"]) == 0
    out = _last_json(capsys)
    assert abs(out["trainable_params"] - ORIGINAL_3B_TRAINABLE) / ORIGINAL_3B_TRAINABLE < 0.02
    assert out["num_xattn_blocks"] == 24
    assert out["trainable_by_part"]["gated_cross_attn_layers"] == 24 * 36_708_354
    assert out["trainable_by_part"]["lm_input_embeddings"] == 50_280 * 2048


def test_vision_weights_load_strictly(tmp_path):
    cfg = micro_config().vision
    source = build_vision_encoder(cfg)
    full_clip = {f"visual.{k}": v for k, v in source.state_dict().items()}
    full_clip["text.token_embedding.weight"] = torch.zeros(3, 2)  # the text tower is ignored
    torch.save(full_clip, tmp_path / "clip.pt")
    cfg.weights = str(tmp_path / "clip.pt")
    loaded = build_vision_encoder(cfg)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    del full_clip["visual.conv1.weight"]
    full_clip["visual.extra"] = torch.zeros(1)
    torch.save(full_clip, tmp_path / "bad.pt")
    cfg.weights = str(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"missing keys \[conv1.weight\]; unexpected keys \[extra\]"):
        build_vision_encoder(cfg)
    cfg.weights = str(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="model.vision.weights"):
        build_vision_encoder(cfg)
