"""Closed-loop rollouts during training (``train.rollout_every``): logged beside the loss, and
training itself unchanged by them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from roboflamingo import cli
from roboflamingo.config import save_yaml
from roboflamingo.sim.config import EnvConfig


@pytest.fixture
def tabletop_data(dataset, tmp_path):
    """The synthetic dataset with the env_config.yaml a generated split carries (its camera sizes)."""
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    save_yaml(EnvConfig(static_size=32, gripper_size=16), root / "validation" / "env_config.yaml")
    return root


def _args(train_args, run_dir, data, *extra):
    return [*train_args(run_dir, "train.steps=2", "train.checkpoint_every=2", "train.log_every=1"),
            f"data.root={data}", *extra]


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rollouts_are_logged_beside_the_loss_and_leave_training_unchanged(train_args, tabletop_data, tmp_path,
                                                                          final_weights):
    rolled, plain = tmp_path / "rolled", tmp_path / "plain"
    assert cli.main(["train", *_args(train_args, rolled, tabletop_data, "train.rollout_every=1",
                                     "train.rollout_episodes=1", "train.rollout_ep_len=3")]) == 0
    records = _metrics(rolled)
    rollouts = [r for r in records if "rollout/success" in r]
    assert [r["step"] for r in rollouts] == [1, 2]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
    for r in rollouts:
        # The training split annotates open_drawer and lift_red_block_table: one episode each.
        assert {"rollout/open_drawer", "rollout/lift_red_block_table", "rollout/seconds"} <= set(r)
        assert r["rollout/success"] == pytest.approx((r["rollout/open_drawer"] + r["rollout/lift_red_block_table"]) / 2)
        assert all(r[f"rollout/{t}"] in (0.0, 1.0) for t in ("open_drawer", "lift_red_block_table"))
    assert cli.main(["train", *_args(train_args, plain, tabletop_data)]) == 0
    assert not any("rollout/success" in r for r in _metrics(plain))
    # RNG states are restored after each rollout: the weights are those of the run without them.
    a, b = final_weights(rolled), final_weights(plain)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rollouts_need_a_split_generated_on_the_tabletop(train_args, dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *_args(train_args, run_dir, dataset, "train.rollout_every=1")]) == 2
    err = capsys.readouterr().err
    assert "train.rollout_every" in err and "env_config.yaml" in err and "roboflamingo generate" in err
    assert not (run_dir / "checkpoints").exists()


class _ExpertModule(torch.nn.Module):
    """The scripted expert where a rollout expects the policy being trained (an nn.Module)."""

    def __init__(self, scene):
        super().__init__()
        from roboflamingo.sim.expert import ScriptedExpert

        self.expert = ScriptedExpert(scene)

    def reset(self):
        self.expert.reset()

    def step(self, obs, instruction):
        return self.expert.step(obs, instruction)


def test_a_task_no_initial_state_allows_is_rolled_out_after_the_experts_setup(tabletop_data):
    """place_in_drawer needs a block in the hand: the scripted expert lifts one first (unscored)."""
    import numpy as np

    from roboflamingo.data.config import DataConfig
    from roboflamingo.data.layout import LANG_ANN
    from roboflamingo.sim.scene import load_scene
    from roboflamingo.train.rollouts import TrainingRollouts

    path = tabletop_data / "training" / LANG_ANN
    ann = np.load(path, allow_pickle=True).item()
    ann["language"]["task"] = ["place_in_drawer" if t == "lift_red_block_table" else t for t in ann["language"]["task"]]
    np.save(path, np.array(ann, dtype=object), allow_pickle=True)
    rollouts = TrainingRollouts(DataConfig(root=str(tabletop_data)), episodes=1, ep_len=360, seed=0)
    try:
        metrics = rollouts(_ExpertModule(load_scene(rollouts.env_config.scene)))
    finally:
        rollouts.close()
    assert metrics["rollout/place_in_drawer"] == 1.0 and metrics["rollout/open_drawer"] == 1.0
