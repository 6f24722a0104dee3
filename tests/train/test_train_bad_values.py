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
        calls["n"] += 1
        return (loss * float("nan"), logs) if calls["n"] == 2 else (loss, logs)

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
