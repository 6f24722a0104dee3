"""Checkpoints are atomic, verified against their manifest, and fall back past a bad one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from roboflamingo.train.checkpoint import (
    CheckpointError,
    find_resumable,
    list_checkpoints,
    load_trainer_state,
    verify_checkpoint,
    write_checkpoint,
)


def _save_weights(value: float):
    def save(directory: Path) -> None:
        save_file({"w": torch.full((64,), value)}, str(directory / "model.safetensors"))

    return save


def _weights(step_dir: Path) -> Path:
    return step_dir / "pretrained_model" / "model.safetensors"


def _state(step_dir: Path) -> Path:
    return step_dir / "training_state" / "trainer.pt"


def _write(root: Path, step: int, keep: int = 0) -> Path:
    return write_checkpoint(root, step, _save_weights(float(step)), {"step": step, "epoch": 0}, keep=keep)


def test_write_verify_and_last_pointer(tmp_path):
    root = tmp_path / "checkpoints"
    _write(root, 5)
    path = _write(root, 10)
    assert path == root / "step_0000010"
    manifest = verify_checkpoint(path)
    assert set(manifest["files"]) == {"pretrained_model/model.safetensors", "training_state/trainer.pt"}
    assert os.readlink(root / "last") == "step_0000010"  # relative: the run dir can be moved
    assert load_trainer_state(root / "last")["step"] == 10
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _weights(p).write_bytes(_weights(p).read_bytes()[:100]),
         r"pretrained_model/model\.safetensors has 100 bytes, the manifest says \d+ \(truncated"),
        (lambda p: _state(p).write_bytes(bytes(reversed(_state(p).read_bytes()))),
         r"training_state/trainer\.pt does not match its sha256"),
        (lambda p: _weights(p).unlink(), r"model\.safetensors is missing"),
        (lambda p: p.joinpath("manifest.json").unlink(), r"incomplete: manifest\.json is missing"),
        (lambda p: p.joinpath("manifest.json").write_text("{"), r"manifest\.json is unreadable"),
    ],
    ids=["truncated", "bit-rot", "missing-file", "no-manifest", "bad-manifest"],
)
def test_damaged_checkpoint_is_refused_with_a_clear_error(tmp_path, damage, message):
    path = _write(tmp_path, 3)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(path)
    with pytest.raises(CheckpointError, match="step_0000003"):
        load_trainer_state(path)


def test_resume_falls_back_to_the_previous_complete_checkpoint(tmp_path):
    for step in (2, 4, 6):
        _write(tmp_path, step)
    weights = _weights(tmp_path / "step_0000006")
    weights.write_bytes(weights.read_bytes()[:-8])
    (tmp_path / ".step_0000008.abc.tmp").mkdir()  # a save cut short by a crash
    warnings: list[str] = []
    assert find_resumable(tmp_path, warn=warnings.append) == tmp_path / "step_0000004"
    assert len(warnings) == 1 and "step_0000006 is corrupt" in warnings[0]


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    assert find_resumable(tmp_path / "nothing") is None
    path = _write(tmp_path, 1)
    _state(path).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        find_resumable(tmp_path, warn=lambda _: None)


def test_pruning_keeps_the_newest_and_always_a_fallback(tmp_path):
    for step in range(1, 6):
        _write(tmp_path, step, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000005", "step_0000004", "step_0000003"]
    _write(tmp_path, 6, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000006", "step_0000005"]


def test_a_failed_save_leaves_the_previous_checkpoint_and_pointer(tmp_path):
    _write(tmp_path, 1)

    def broken(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path, 2, broken, {"step": 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000001"]
    assert os.readlink(tmp_path / "last") == "step_0000001"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_training_state_is_optional_for_the_policy_required_for_resuming(tmp_path):
    """Shipping a policy drops training_state/: the checkpoint still verifies for inference, and
    resuming refuses it (falling back to one that still has its state)."""
    _write(tmp_path, 1)
    path = _write(tmp_path, 2)
    shutil.rmtree(path / "training_state")
    assert verify_checkpoint(path)["step"] == 2
    with pytest.raises(CheckpointError, match=r"step_0000002 is corrupt: training_state/trainer\.pt is missing"):
        verify_checkpoint(path, require_training_state=True)
    with pytest.raises(CheckpointError, match=r"training_state/trainer\.pt is missing"):
        load_trainer_state(path)
    assert find_resumable(tmp_path, warn=lambda _: None) == tmp_path / "step_0000001"
    # A file that is there must still match: a damaged policy is refused either way.
    _weights(path).write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"pretrained_model/model\.safetensors has 1 bytes"):
        verify_checkpoint(path)


def test_a_checkpoint_of_the_first_format_still_verifies_and_resumes():
    """tests/fixtures/checkpoints/v1: config.yaml, model.safetensors and trainer.pt side by side."""
    v1 = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "v1" / "step_0000002"
    assert set(verify_checkpoint(v1, require_training_state=True)["files"]) == {
        "config.yaml", "model.safetensors", "trainer.pt"}
    state = load_trainer_state(v1)
    assert state["step"] == 2 and {"optimizer", "scheduler", "rng"} <= set(state)
