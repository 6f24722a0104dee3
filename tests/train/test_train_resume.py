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
    with step 4 already logged. Resumed from the run directory alone (its own config.yaml)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(cli_command(train_args(run_dir, *RECIPE)), env={**subprocess_env, CRASH_AFTER_STEP_ENV: "4"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=240)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-2000:]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000003"]
    assert max(_losses(run_dir)) == 4  # logged after the checkpoint: must be replaced on resume

    assert cli.main(["train", f"resume={run_dir}"]) == 0
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
    assert "model.lm.hidden_size is 64 there, 32 now" in capsys.readouterr().err


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


def test_resume_from_the_run_directory_alone_trains_on_with_longer_steps_recorded(
    reference, tmp_path, train_args, final_weights, capsys
):
    """`train resume=<run_dir> train.steps=12` after a 6-step run: nothing else retyped, the same
    weights and losses as the uninterrupted 12-step run, the change recorded. How the chunks will be
    executed may change too (inference only): the checkpoints saved after the resume carry it."""
    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, *RECIPE, "train.steps=6")]) == 0
    capsys.readouterr()
    assert cli.main(["train", f"resume={run_dir}", "train.steps=12", "head.chunking.ensemble=true"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "at step 6" in err and "resume changes train.steps: 6 -> 12" in err
    _assert_same_weights(final_weights(run_dir), final_weights(reference))
    assert _losses(run_dir) == _losses(reference)
    records = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert records == [{"step": 6, "changed": {"head.chunking.ensemble": [False, True], "train.steps": [6, 12]}}]
    from roboflamingo.config import load_yaml
    from roboflamingo.models.policy import RoboFlamingoPolicy
    from roboflamingo.train.job import Job

    assert load_yaml(run_dir / "config.yaml", Job).train.steps == 12
    assert RoboFlamingoPolicy.from_pretrained(run_dir / "checkpoints" / "last").head_config.chunking.ensemble
    # Nothing to do: a resume at the final step changes nothing and records nothing.
    assert cli.main(["train", f"resume={run_dir}"]) == 0
    assert len((run_dir / "resumes.jsonl").read_text().splitlines()) == 1


def test_a_shorter_run_validated_at_its_end_resumes_to_the_uninterrupted_run(reference, tmp_path, train_args,
                                                                             final_weights):
    """A 3-step run validates at its final step 3, which the uninterrupted run (validating every 6)
    does not; resumed to 12 steps, it still trains with the same dropout masks from step 4 on."""
    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, *RECIPE, "train.steps=3")]) == 0
    assert cli.main(["train", f"resume={run_dir}", "train.steps=12"]) == 0
    _assert_same_weights(final_weights(run_dir), final_weights(reference))
    assert _losses(run_dir) == _losses(reference)


@pytest.mark.parametrize("override, named", [
    ("data.window_stride=2", "data.window_stride is 1 there, 2 now"),
    ("seed=8", "seed is 7 there, 8 now"),
    ("head.hidden_size=32", "head.hidden_size is 0 there, 32 now"),
    ("model=tiny", "model.vision.image_size is 32 there, 64 now"),  # a group choice sets its whole section
], ids=["data", "seed", "head", "model-group"])
def test_resume_refuses_an_override_that_changes_what_is_trained(reference, tmp_path, override, named, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, symlinks=True)
    before = (run_dir / "config.yaml").read_text()
    assert cli.main(["train", f"resume={run_dir}", override]) == 2
    err = capsys.readouterr().err
    assert named in err and f"resume={run_dir}" in err
    assert (run_dir / "config.yaml").read_text() == before  # nothing written for a refused resume
    assert cli.main(["train", f"resume={run_dir}", f"run_dir={tmp_path / 'other'}"]) == 2
    assert "names a run directory, but run_dir=" in capsys.readouterr().err


V1_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "v1"
# The overrides the first-format fixture was trained with (its README), on conftest's dataset.
V1_OVERRIDES = [
    "model=tiny", "head=lstm", "model.window=4", "model.vision.image_size=32", "model.vision.width=32",
    "model.vision.head_width=16", "model.vision.layers=1", "model.resampler.depth=1", "model.resampler.num_latents=8",
    "model.resampler.heads=2", "model.resampler.dim_head=16", "model.lm.hidden_size=32", "model.lm.num_heads=2",
    "model.lm.intermediate_size=64", "model.lm.bpe_merges=300", "model.lm.xattn_heads=2", "model.lm.xattn_dim_head=16",
    "model.use_state=true", "head.num_layers=2", "head.hidden_size=16", "head.state_dim=8", "data.batch_size=2",
    "data.num_workers=0", "train.steps=2", "train.checkpoint_every=1", "train.val_every=0", "train.lr=1e-2",
    "train.threads=1", "train.progress=false", "seed=3",
]


def test_a_run_checkpointed_in_the_first_format_resumes(tmp_path, dataset):
    """A run directory whose checkpoint is flat (config.yaml, model.safetensors, trainer.pt) trains on,
    and its next checkpoint is written in the current layout."""
    from roboflamingo.config import load, save_yaml
    from roboflamingo.train.job import Job

    run_dir = tmp_path / "run"
    save_yaml(load("train", Job, [*V1_OVERRIDES, f"data.root={dataset}", f"run_dir={run_dir}"]), run_dir / "config.yaml")
    shutil.copytree(V1_RUN / "step_0000002", run_dir / "checkpoints" / "step_0000002")
    (run_dir / "checkpoints" / "last").symlink_to("step_0000002")
    assert cli.main(["train", f"resume={run_dir}", "train.steps=3"]) == 0
    new = run_dir / "checkpoints" / "step_0000003"
    assert verify_checkpoint(new, require_training_state=True)["step"] == 3
    assert (new / "pretrained_model" / "config.json").is_file() and (new / "training_state" / "trainer.pt").is_file()


def test_resume_names_a_run_that_is_not_there(tmp_path, capsys):
    assert cli.main(["train", f"resume={tmp_path / 'typo'}"]) == 2
    assert f"resume={tmp_path / 'typo'}: no run to continue there ({tmp_path / 'typo' / 'config.yaml'} does not exist)" \
        in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_a_resume_applies_a_changed_learning_rate_and_weight_decay(tmp_path, train_args):
    """The optimizer's and scheduler's saved states carry the old hyperparameters; the resumed run
    trains with the ones it was given (they are recorded as changed, so they must also apply)."""
    from roboflamingo.train.config import TrainConfig
    from roboflamingo.train.optim import lr_factor

    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, "train.steps=3", "train.lr=1e-3", "train.log_every=1",
                                          "train.warmup_steps=2", "train.schedule=cosine")]) == 0
    assert cli.main(["train", f"resume={run_dir}", "train.steps=6", "train.lr=2e-4", "train.weight_decay=0.5"]) == 0
    lrs = {r["step"]: r["train/lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
           if "train/lr" in r}
    new = TrainConfig(steps=6, lr=2e-4, warmup_steps=2, schedule="cosine")
    for step in (4, 5, 6):
        assert lrs[step] == pytest.approx(2e-4 * lr_factor(step - 1, new), rel=1e-9)
    state = torch.load(run_dir / "checkpoints" / "last" / "training_state" / "trainer.pt", weights_only=True)
    decays = sorted(g["weight_decay"] for g in state["optimizer"]["param_groups"])
    assert decays == [0.0, 0.5]
