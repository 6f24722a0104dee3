"""``train.ema_decay``: an exponential moving average of the trainable weights is what validation,
rollouts and checkpoints see; the raw weights are trained on, and resuming continues exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from roboflamingo import cli
from roboflamingo.models.policy import RoboFlamingoPolicy
from roboflamingo.train.checkpoint import load_trainer_state
from roboflamingo.train.config import TrainConfig
from roboflamingo.train.ema import WeightAverage

RECIPE = ["train.steps=6", "train.checkpoint_every=1", "train.keep_checkpoints=0", "train.log_every=1",
          "train.lr=1e-3", "seed=3", "train.ema_decay=0.5"]


def _trainable(checkpoint: Path) -> dict[str, torch.Tensor]:
    policy = RoboFlamingoPolicy.from_pretrained(checkpoint)
    return {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}


def test_the_average_follows_the_weights_with_its_warm_up_and_swaps_back_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[1].bias.requires_grad_(False)
    ema = WeightAverage(net, 0.9)
    expected = [p.detach().clone() for p in net.parameters() if p.requires_grad]
    for step in range(1, 30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(step)
        rate = min(0.9, (1 + step) / (10 + step))
        expected = [rate * e + (1 - rate) * p.detach() for e, p in zip(expected, ema.params)]
    assert ema.rate(1) == pytest.approx(2 / 11) and ema.rate(1000) == 0.9
    raw = {n: p.detach().clone() for n, p in net.named_parameters()}
    with ema.applied():
        for p, e in zip(ema.params, expected):
            torch.testing.assert_close(p.detach(), e)
        torch.testing.assert_close(net[1].bias.detach(), raw["1.bias"])  # frozen: not averaged
    for n, p in net.named_parameters():
        assert torch.equal(p.detach(), raw[n]), n
    ema.install()
    for p, e in zip(ema.params, expected):
        torch.testing.assert_close(p.detach(), e)


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match="train.ema_decay"):
        TrainConfig(ema_decay=1.0)


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory, train_args) -> Path:
    """Six steps with a checkpoint after each."""
    run_dir = tmp_path_factory.mktemp("ema") / "run"
    assert cli.main(["train", *train_args(run_dir, *RECIPE)]) == 0
    return run_dir


def test_every_checkpoint_holds_the_average_of_the_raw_weights_it_also_holds(averaged_run):
    """Checkpoint k's policy is rate(k) * checkpoint k-1's policy + (1 - rate(k)) * the raw weights of
    step k, which its training state carries."""
    ckpts = averaged_run / "checkpoints"
    previous = _trainable(ckpts / "step_0000001")
    for step in range(2, 7):
        averaged = _trainable(ckpts / f"step_{step:07d}")
        raw = load_trainer_state(ckpts / f"step_{step:07d}")["raw_weights"]
        assert averaged.keys() == raw.keys()
        rate = min(0.5, (1 + step) / (10 + step))
        for name, value in averaged.items():
            torch.testing.assert_close(value, rate * previous[name] + (1 - rate) * raw[name], rtol=1e-5, atol=1e-7)
        assert any(not torch.equal(averaged[n], raw[n]) for n in raw)
        previous = averaged


def test_a_resumed_run_trains_on_the_raw_weights_and_continues_the_average(tmp_path, train_args):
    """Resumed with a vanishing learning rate, so that training leaves the weights it starts from as
    they are: step 4's raw weights are step 3's raw ones (not its average), and step 4's average
    continues step 3's."""
    run_dir = tmp_path / "run"
    assert cli.main(["train", *train_args(run_dir, *RECIPE, "train.steps=3")]) == 0
    assert cli.main(["train", f"resume={run_dir}", "train.steps=4", "train.lr=1e-30"]) == 0
    ckpts = run_dir / "checkpoints"
    raw3, raw4 = (load_trainer_state(ckpts / f"step_{s:07d}")["raw_weights"] for s in (3, 4))
    avg3, avg4 = (_trainable(ckpts / f"step_{s:07d}") for s in (3, 4))
    assert all(torch.equal(raw4[k], raw3[k]) for k in raw3)
    assert any(not torch.equal(avg3[k], raw3[k]) for k in raw3)
    rate = min(0.5, 5 / 14)
    for name in raw3:
        torch.testing.assert_close(avg4[name], rate * avg3[name] + (1 - rate) * raw3[name], rtol=1e-5, atol=1e-7)
