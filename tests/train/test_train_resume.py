"""Interrupted runs continue exactly: a run that dies right after a step (the fault hook, at a chosen
step; and once a real SIGKILL at whatever step it lands), or a corrupt newest checkpoint."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from roboflamingo import cli
from roboflamingo.process import CRASH_EXIT_CODE
from roboflamingo.train.checkpoint import CheckpointError, verify_checkpoint
from roboflamingo.train.loop import CRASH_AFTER_STEP_ENV

STEPS = 12
RECIPE = [f"train.steps={STEPS}", "train.checkpoint_every=3", "train.keep_checkpoints=3", "train.log_every=1",
          "train.val_every=6", "train.val_batches=2", "train.warmup_steps=3", "train.lr=1e-3", "seed=7"]


def _losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in lines if "train/loss" in r}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ from the uninterrupted run: {different[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, train_args) -> Path:
    """The uninterrupted run (in process)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(["train", *train_args(run_dir, *RECIPE)]) == 0
    return run_dir


@pytest.mark.slow
def test_a_run_that_dies_after_a_step_resumes_to_the_uninterrupted_weights_and_losses(
    reference, tmp_path, train_args, cli_command, subprocess_env, final_weights
):
    """Dies hard (no clean-up, as a SIGKILL would) right after step 4: past the checkpoint of step 3,
    with step 4 already logged."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(cli_command(train_args(run_dir, *RECIPE)), env={**subprocess_env, CRASH_AFTER_STEP_ENV: "4"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=240)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-2000:]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000003"]
    assert max(_losses(run_dir)) == 4  # logged after the checkpoint: must be replaced on resume

    assert cli.main(["train", *train_args(run_dir, *RECIPE, "resume=true")]) == 0
    _assert_same_weights(final_weights(run_dir), final_weights(reference))
    assert _losses(run_dir) == _losses(reference)  # steps after the checkpoint replaced, not duplicated


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_uninterrupted(
    reference, tmp_path, train_args, cli_command, subprocess_env, final_weights
):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli_command(train_args(run_dir, *RECIPE)), env=subprocess_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = run_dir / "checkpoints" / "step_0000003"
    deadline = time.monotonic() + 180
    while not first.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before the kill:\n{err[-2000:]}"
    assert first.is_dir()
    assert not (run_dir / "checkpoints" / f"step_{STEPS:07d}").exists(), "killed too late to test a resume"

    assert cli.main(["train", *train_args(run_dir, *RECIPE, "resume=true")]) == 0
    _assert_same_weights(final_weights(run_dir), final_weights(reference))
    # Steps the killed run logged after its checkpoint are replaced, not duplicated.
    assert _losses(run_dir) == _losses(reference)


def test_corrupt_newest_checkpoint_is_refused_and_previous_used(
    reference, tmp_path, train_args, final_weights, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, symlinks=True)
    ckpts = run_dir / "checkpoints"
    shutil.rmtree(ckpts / f"step_{STEPS:07d}")  # as if the run had died before its final save
    weights = ckpts / "step_0000009" / "pretrained_model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a truncated copy

    with pytest.raises(CheckpointError,
                       match=r"step_0000009 is corrupt: pretrained_model/model\.safetensors has \d+ bytes.*truncated"):
        verify_checkpoint(ckpts / "step_0000009")

    assert cli.main(["train", *train_args(run_dir, *RECIPE, "resume=true")]) == 0
    err = capsys.readouterr().err
    assert "refusing checkpoint" in err and "step_0000009 is corrupt" in err
    assert "resumed from" in err and "step_0000006 at step 6" in err
    _assert_same_weights(final_weights(run_dir), final_weights(reference))
    assert (ckpts / "last").resolve().name == f"step_{STEPS:07d}"


def test_existing_run_needs_resume_and_the_same_model(reference, tmp_path, train_args, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, symlinks=True)
    assert cli.main(["train", *train_args(run_dir, *RECIPE)]) == 2
    assert "pass resume=true" in capsys.readouterr().err
    assert cli.main(["train", *train_args(run_dir, *RECIPE, "resume=true", "model.lm.hidden_size=32")]) == 2
    assert "model differ" in capsys.readouterr().err


def test_every_checkpoint_holds_what_resume_needs(reference):
    last = (reference / "checkpoints" / "last").resolve()
    manifest = verify_checkpoint(last)
    assert {"pretrained_model/model.safetensors", "pretrained_model/config.json",
            "training_state/trainer.pt"} <= set(manifest["files"])
    state = torch.load(last / "training_state" / "trainer.pt", weights_only=True)
    assert state["step"] == STEPS
    assert {"optimizer", "scheduler", "rng", "epoch", "batches_in_epoch"} <= set(state)
    assert len(state["rng"]) == 1 and {"python", "numpy", "torch"} <= set(state["rng"][0])
    from roboflamingo.models.policy import RoboFlamingoPolicy

    policy = RoboFlamingoPolicy.from_pretrained(last)
    assert set(policy.normalization()) >= {"action_mean", "action_std", "robot_obs_mean", "robot_obs_std"}
