"""Checkpoint round trip and strict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_helpers import frame_obs, make_batch, make_stats, micro_config, micro_head, open_gates
from safetensors.torch import load_file, save_file

from roboflamingo.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from roboflamingo.models.policy import RoboFlamingoPolicy


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(use_state=True), micro_head("transformer"), make_stats(1))
    open_gates(policy, 0.3)
    policy.save_pretrained(tmp_path / "ckpt")
    return policy, tmp_path / "ckpt"


def test_round_trip_reproduces_the_policy(saved):
    policy, path = saved
    assert (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()
    loaded = RoboFlamingoPolicy.from_pretrained(path)
    assert not loaded.training
    assert loaded.head_config == policy.head_config and loaded.model_config == policy.model_config
    for key, value in policy.normalization().items():
        np.testing.assert_array_equal(loaded.normalization()[key], value)
    batch = make_batch()
    with torch.no_grad():
        for a, b in zip(policy.predict(batch), loaded.predict(batch)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    policy.reset()
    loaded.reset()
    for t in range(3):
        obs = frame_obs(batch, 0, t)
        np.testing.assert_array_equal(policy.step(obs, "open the drawer"), loaded.step(obs, "open the drawer"))
    # The resolved head sizes are written out, so the file alone says what was built.
    saved = json.loads((path / CONFIG_FILE).read_text())
    assert saved["head"]["hidden_size"] == 16 and saved["model"]["lm"]["family"] == "llama"


def test_a_missing_key_is_named(saved):
    _, path = saved
    tensors = load_file(str(path / WEIGHTS_FILE))
    del tensors["action_head.rel_bias"]
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"missing keys \[action_head.rel_bias\]"):
        RoboFlamingoPolicy.from_pretrained(path)


def test_an_unexpected_key_is_named(saved):
    _, path = saved
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors["backbone.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"unexpected keys \[backbone.extra.weight\]"):
        RoboFlamingoPolicy.from_pretrained(path)


def test_a_wrong_shape_is_named(saved):
    _, path = saved
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors["action_head.rel_bias"] = torch.zeros(1, 1)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"'action_head.rel_bias' has shape \(1, 1\), expected \(2, 4\)"):
        RoboFlamingoPolicy.from_pretrained(path)


def test_missing_normalization_statistics_raise(saved, tmp_path):
    _, path = saved
    tensors = load_file(str(path / WEIGHTS_FILE))
    del tensors["normalizer.action_std"]
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"no normalization statistics \(missing \['normalizer.action_std'\]\)"):
        RoboFlamingoPolicy.from_pretrained(path)
    bare = RoboFlamingoPolicy.from_config(micro_config(), micro_head())
    with pytest.raises(RuntimeError, match="no normalization statistics.*set_normalization"):
        bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(RuntimeError, match="no normalization statistics"):
        bare.step(frame_obs(make_batch(), 0, 0), "open the drawer")
    with pytest.raises(RuntimeError, match="no normalization statistics"):
        bare(make_batch())


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a policy checkpoint"):
        RoboFlamingoPolicy.from_pretrained(tmp_path)


def test_save_leaves_other_files_alone(saved):
    policy, path = saved
    (path / "trainer.pt").write_bytes(b"x")
    policy.save_pretrained(path)
    assert (path / "trainer.pt").read_bytes() == b"x"
