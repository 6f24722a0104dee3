"""The tiny config learns: it overfits a dataset of four windows, and the run directory is complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from roboflamingo import cli
from roboflamingo.data.layout import frame_path
from roboflamingo.data.synthetic import make_frame, write_split
from roboflamingo.models.policy import RoboFlamingoPolicy

# Two instructions whose demonstrations move opposite ways: the labels are learnable from the data,
# so a working loop drives the loss towards zero.
SEGMENTS = [(0, 4, "open_drawer", "open the drawer", 0.6, 1.0), (5, 9, "close_drawer", "close the drawer", -0.6, -1.0)]


def _write_tiny_split(split_dir: Path) -> None:
    write_split(split_dir, [(0, 9)], [s[:4] for s in SEGMENTS], (32, 32), (16, 16))
    for start, end, _, _, pose, gripper in SEGMENTS:
        for f in range(start, end + 1):
            frame = make_frame(f, (32, 32), (16, 16))
            frame["rel_actions"] = np.array([pose] * 6 + [gripper])
            np.savez_compressed(frame_path(split_dir, f), **frame)


@pytest.mark.slow
def test_tiny_config_overfits_a_tiny_dataset(tmp_path):
    _write_tiny_split(tmp_path / "data" / "training")
    run_dir = tmp_path / "run"
    # model=tiny head=lstm train=tiny as shipped, except 4-frame windows so that 2 segments of 5
    # frames give 4 windows: one batch, seen every step.
    args = ["model=tiny", "head=lstm", "train=tiny", "model.window=4", f"data.root={tmp_path / 'data'}",
            "data.batch_size=4", "data.num_workers=0", "data.augment.shift=false", "train.steps=40",
            "train.warmup_steps=3", "train.lr=3e-3", "train.schedule=constant", "train.log_every=5",
            "train.val_every=0", "train.checkpoint_every=20", "train.threads=1", "train.progress=false",
            f"run_dir={run_dir}"]
    assert cli.main(["train", *args]) == 0

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 8
    assert losses[-1] < 0.25 * losses[0], losses
    for key in ("train/lr", "train/grad_norm", "train/samples_per_s", "train/step_ms", "train/data_wait_fraction",
                "train/pose_loss", "train/gripper_loss"):
        assert key in records[-1]

    assert (run_dir / "config.yaml").is_file()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["last", "step_0000020", "step_0000040"]
    policy = RoboFlamingoPolicy.from_pretrained(run_dir / "checkpoints" / "last")
    stats = policy.normalization()
    assert stats["robot_obs_mean"].shape == (15,) and np.all(np.isfinite(stats["robot_obs_std"]))
