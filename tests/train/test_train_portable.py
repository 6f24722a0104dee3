"""A trained policy leaves the machine it was trained on: its checkpoint moved, its frozen towers renamed
away and found again through the search path, bundled with nothing else on disk, its optimizer state
dropped; every time the same actions, bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from roboflamingo import RoboFlamingoPolicy, cli
from roboflamingo.models.config import LMConfig, VisionConfig
from roboflamingo.models.lm_adapters import build_lm
from roboflamingo.models.text import build_tokenizer
from roboflamingo.models.towers import TowerNotFoundError
from roboflamingo.models.vision import build_vision_encoder
from roboflamingo.train.checkpoint import CheckpointError, find_resumable

# Each test trains its own run (its towers are moved or deleted): ~6 s apiece on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture
def search_path(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBOFLAMINGO_WEIGHTS", raising=False)
    (tmp_path / "hf-cache").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def trained(tmp_path, train_args, search_path):
    """Two training steps of the fast tiny model whose vision encoder and LM are read from files."""
    towers = tmp_path / "pretrained"
    towers.mkdir()
    torch.manual_seed(21)
    vision = VisionConfig(name="custom", image_size=32, width=64, layers=1, patch_size=8)
    torch.save(build_vision_encoder(vision).state_dict(), towers / "open_clip_vit.pt")
    lm_cfg = LMConfig(family="llama", hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                      max_positions=64, bpe_merges=2000)
    build_lm(lm_cfg, vocab=len(build_tokenizer(lm_cfg))).save_pretrained(towers / "llama-tiny")
    run_dir = tmp_path / "run"
    args = train_args(run_dir, "train.steps=2", "train.checkpoint_every=1", "train.val_every=0",
                      f"model.vision.weights={towers / 'open_clip_vit.pt'}", f"model.lm.path={towers / 'llama-tiny'}")
    assert cli.main(["train", *args]) == 0
    return run_dir, towers


def _actions(source) -> np.ndarray:
    policy = RoboFlamingoPolicy.from_pretrained(source)
    rng = np.random.default_rng(5)
    policy.reset()
    return np.stack([policy.step({"rgb_static": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                                  "rgb_gripper": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                                  "robot_obs": rng.normal(0, 1, 15)}, "open the drawer") for _ in range(6)])


def test_a_moved_checkpoint_finds_its_renamed_towers_and_acts_identically(trained, tmp_path, monkeypatch):
    run_dir, towers = trained
    expected = _actions(run_dir)  # the run directory names its last checkpoint
    moved = tmp_path / "colleague" / "policy"
    shutil.copytree(run_dir / "checkpoints" / "last" / "pretrained_model", moved)
    shutil.rmtree(run_dir)
    weights = tmp_path / "weights"
    shutil.move(towers, weights)  # the towers leave their recorded paths...
    (weights / "open_clip_vit.pt").rename(weights / "ViT-custom.bin")  # ...and get other names
    (weights / "llama-tiny").rename(weights / "lm")
    with pytest.raises(TowerNotFoundError, match=r"'open_clip_vit\.pt' \(open_clip custom, \d+ bytes, sha256 "
                                                 r"[0-9a-f]{64}\) was not found"):
        RoboFlamingoPolicy.from_pretrained(moved)
    monkeypatch.setenv("ROBOFLAMINGO_WEIGHTS", str(weights))
    np.testing.assert_array_equal(_actions(moved), expected)


def test_a_bundled_export_needs_nothing_else_on_disk(trained, tmp_path, capsys):
    run_dir, towers = trained
    expected = _actions(run_dir / "checkpoints" / "last")
    assert cli.main(["export", str(run_dir), str(tmp_path / "ship"), "--bundle"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bundled"] is True
    shutil.rmtree(run_dir)
    shutil.rmtree(towers)
    shutil.move(tmp_path / "ship", tmp_path / "robot_pc")
    assert sorted(p.name for p in (tmp_path / "robot_pc").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "towers"]
    np.testing.assert_array_equal(_actions(tmp_path / "robot_pc"), expected)


def test_without_its_optimizer_state_it_loads_for_inference_and_is_not_resumed(trained, tmp_path):
    run_dir, _ = trained
    last = (run_dir / "checkpoints" / "last").resolve()
    expected = _actions(last)
    shutil.rmtree(last / "training_state")
    np.testing.assert_array_equal(_actions(last), expected)
    np.testing.assert_array_equal(_actions(run_dir), expected)
    # Resuming needs it: the newest checkpoint is passed over for the previous, complete one.
    warnings: list[str] = []
    assert find_resumable(run_dir / "checkpoints", warn=warnings.append).name == "step_0000001"
    assert "training_state/trainer.pt is missing" in warnings[0]
    shutil.rmtree(run_dir / "checkpoints" / "step_0000001" / "training_state")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        find_resumable(run_dir / "checkpoints", warn=lambda _: None)


def test_the_saved_config_is_absolute_and_identifies_the_towers(trained):
    run_dir, towers = trained
    config = json.loads((run_dir / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert config["model"]["vision"]["weights"] == str(towers / "open_clip_vit.pt")
    assert config["towers"]["lm"]["path"] == str(towers / "llama-tiny")
    assert Path(config["towers"]["vision"]["path"]).is_absolute()
