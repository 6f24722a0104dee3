"""No bad value trains (issue 18): corrupt shards and non-finite losses stop the run with exit code 2
before any checkpoint points at a poisoned policy; eval/serve refuse damaged policy checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from roboflamingo import cli
from roboflamingo.data.pack import pack_split
from roboflamingo.models.policy import RoboFlamingoPolicy

STEPS = ["train.steps=3", "train.checkpoint_every=1", "train.log_every=1", "train.val_every=0"]


@pytest.fixture
def packed_copy(dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    pack_split(root / "training", root / "training" / "packed", progress=False)
    return root


def test_a_nan_in_a_packed_shard_is_refused_before_training(packed_copy, tmp_path, train_args, capsys):
    path = packed_copy / "training" / "packed" / "shard_00000" / "rel_actions.npy"
    arr = np.load(path, mmap_mode="r+")
    arr[5, 1] = np.nan
    arr.flush()
    del arr
    run_dir = tmp_path / "run"
    args = [*train_args(run_dir, *STEPS), f"data.root={packed_copy}", "data.use_packed=always"]
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "shard_00000/rel_actions.npy: sha256 does not match" in err
    assert not (run_dir / "checkpoints" / "last").exists()


def test_a_non_finite_loss_stops_the_run_and_no_checkpoint_points_at_it(tmp_path, train_args, monkeypatch, capsys):
    forward = RoboFlamingoPolicy.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        loss, logs = forward(self, batch)
        calls["n"] += self.training  # training steps only: each checkpoint's validation forward is eval mode
        return (loss * float("nan"), logs) if calls["n"] == 2 and self.training else (loss, logs)

    monkeypatch.setattr(RoboFlamingoPolicy, "forward", poisoned)
    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, *STEPS)]) == 2
    assert "step 2: the training loss is nan" in capsys.readouterr().err
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert ckpts == ["step_0000001"]  # the step before; nothing after the NaN
    weights = RoboFlamingoPolicy.from_pretrained(run_dir / "checkpoints" / "last")
    assert all(torch.isfinite(p).all() for p in weights.parameters())


@pytest.fixture(scope="module")
def trained(train_args, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", *train_args(run_dir, "train.steps=1", "train.checkpoint_every=1", "train.val_every=0")]) == 0
    return run_dir / "checkpoints" / "step_0000001"


WEIGHTS = "pretrained_model/model.safetensors"


def _flip(path, offset_from_end=64):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / "manifest.json").unlink(), r"incomplete: manifest\.json is missing"),
        (lambda d: _flip(d / WEIGHTS), r"pretrained_model/model\.safetensors does not match its sha256"),
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), "must be a JSON object, got a list"),
        (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:1000]),
         r"pretrained_model/model\.safetensors has 1000 bytes"),
    ],
    ids=["deleted-manifest", "bit-flip", "manifest-list", "truncated"],
)
def test_a_damaged_training_checkpoint_is_refused_by_eval_and_serve(trained, tmp_path, damage, match):
    from roboflamingo.policies import PolicySourceConfig, policy_source

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    damage(ckpt)
    with pytest.raises(ValueError, match=match):
        RoboFlamingoPolicy.from_pretrained(ckpt)
    with pytest.raises(ValueError, match=match):  # what `serve checkpoint=` and the ROS node build on
        policy_source(PolicySourceConfig(checkpoint=str(ckpt)))


def test_an_exported_policy_without_manifest_still_names_a_truncated_or_non_finite_file(trained, tmp_path):
    policy = RoboFlamingoPolicy.from_pretrained(trained)
    out = tmp_path / "export"
    policy.save_pretrained(out)  # config.json + model.safetensors only
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-100])
    with pytest.raises(ValueError, match=rf"{weights}: not a readable safetensors file"):
        RoboFlamingoPolicy.from_pretrained(out)
    # a NaN written into a weight (the header is JSON, the data follows it)
    header_len = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + header_len])
    name, meta = next((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + header_len + meta["data_offsets"][0]
    bad = bytearray(good)
    bad[start : start + 4] = np.float32(np.nan).tobytes()
    weights.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=rf"tensor '{name}' holds NaN or inf"):
        RoboFlamingoPolicy.from_pretrained(out)


# -- issue 31 item 6: a diverged but finite policy never becomes a checkpoint ---------------------------
def _checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").exists() else []


def test_a_run_that_diverges_at_once_writes_no_checkpoint(tmp_path, train_args, capsys):
    """train.lr=1e30 puts every weight near 1e30 after one step: finite, and useless."""
    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, *STEPS, "train.lr=1e30", "train.grad_clip=0")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("roboflamingo train: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "step 1: weight '" in err and "the run diverged (is train.lr=1e+30 too high?)" in err
    assert _checkpoints(run_dir) == [] and not (run_dir / "checkpoints" / "last").exists()


def test_divergence_after_a_good_checkpoint_leaves_last_on_it(tmp_path, train_args, monkeypatch, capsys):
    from roboflamingo.train import loop

    build = loop.build_optimizer

    def exploding(policy, cfg):
        opt = build(policy, cfg)
        calls = {"n": 0}

        class Exploding(type(opt)):
            def step(self, *a, **k):
                out = super().step(*a, **k)
                calls["n"] += 1
                if calls["n"] == 2:  # the second update blows up, finitely
                    with torch.no_grad():
                        for p in policy.parameters():
                            if p.requires_grad:
                                p.mul_(1e20)
                return out

        opt.__class__ = Exploding
        return opt

    monkeypatch.setattr(loop, "build_optimizer", exploding)
    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, *STEPS)]) == 2
    assert "step 2: weight '" in capsys.readouterr().err
    assert _checkpoints(run_dir) == ["step_0000001"]
    assert (run_dir / "checkpoints" / "last").resolve().name == "step_0000001"
    policy = RoboFlamingoPolicy.from_pretrained(run_dir / "checkpoints" / "last")
    assert max(float(p.abs().max()) for p in policy.parameters()) < loop.MAX_WEIGHT_ABS


def test_a_policy_whose_forward_fails_only_in_eval_mode_is_not_saved(tmp_path, train_args, monkeypatch, capsys):
    """Weights in range are not enough: the checkpoint must also act (the validation forward)."""
    forward = RoboFlamingoPolicy.forward

    def broken_in_eval(self, batch):
        loss, logs = forward(self, batch)
        return (loss if self.training else loss * float("inf")), logs

    monkeypatch.setattr(RoboFlamingoPolicy, "forward", broken_in_eval)
    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, *STEPS)]) == 2
    assert "step 1: a forward pass on the step's last batch gives the loss inf" in capsys.readouterr().err
    assert _checkpoints(run_dir) == []


@pytest.mark.parametrize("lr", ["1e300", "1e37", "inf"])
def test_a_learning_rate_beyond_float32_is_one_line_not_a_traceback(tmp_path, train_args, capsys, lr):
    assert cli.main(["train", *train_args(tmp_path / "run", *STEPS, f"train.lr={lr}")]) == 2
    err = capsys.readouterr().err
    assert "train.lr must be" in err and "Traceback" not in err and err.count("\n") == 2  # + the --help hint


@pytest.mark.parametrize("command", ["eval", "serve"])
@pytest.mark.parametrize("damage", ["bit-flip", "truncated", "deleted-manifest"])
def test_eval_and_serve_refuse_a_corrupt_last_in_one_line(trained, tmp_path, capsys, command, damage):
    """Issue 31 item 10: `eval` printed a traceback (exit 1) where `serve` printed one line (exit 2)."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000001"
    shutil.copytree(trained, ckpt)
    (tmp_path / "run" / "checkpoints" / "last").symlink_to("step_0000001")
    if damage == "bit-flip":
        _flip(ckpt / WEIGHTS)
    elif damage == "truncated":
        (ckpt / WEIGHTS).write_bytes((ckpt / WEIGHTS).read_bytes()[:1000])
    else:
        (ckpt / "manifest.json").unlink()
    last = tmp_path / "run" / "checkpoints" / "last"
    extra = ["eval.num_chains=1", f"run_dir={tmp_path / 'eval'}"] if command == "eval" else ["port=0", "duration_s=0.01"]
    assert cli.main([command, f"checkpoint={last}", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"roboflamingo {command}: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "checkpoints/last is " in err  # named as the user gave it
