"""The train config composes and validates; the schedule, optimizer groups and loggers behave."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from roboflamingo import cli
from roboflamingo.config import ConfigError, load
from roboflamingo.train import loggers
from roboflamingo.train.config import TrainConfig
from roboflamingo.train.job import Job
from roboflamingo.train.optim import build_optimizer, lr_factor


def test_train_yaml_composes_with_each_group():
    job = load("train", Job, [])
    assert (job.model.name, job.head.type, job.data.root) == ("tiny", "lstm", "data/tabletop")
    assert job.data.window == job.model.window  # the dataset follows the model's window
    tiny = load("train", Job, ["train=tiny", "model.window=4"])
    assert tiny.train.steps == 300 and tiny.data.window == 4


@pytest.mark.parametrize(
    "override, field",
    [("train.steps=0", "train.steps"), ("train.schedule=step", "train.schedule"),
     ("train.precision=fp16", "train.precision"), ("train.min_lr_ratio=2", "train.min_lr_ratio"),
     ("train.strategy=zero3", "train.strategy"), ("data.window=3", "data.window"),
     ("data.image_size=96", "data.image_size")],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load("train", Job, [override])


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_warmup_then_schedule(schedule):
    cfg = TrainConfig(steps=100, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10]))
    if schedule == "constant":
        assert set(factors[10:]) == {1.0}
    else:
        assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
        assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


class _Groups(nn.Module):
    def __init__(self):
        super().__init__()
        self.xattn = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)

    def optimizer_param_groups(self, weight_decay):
        return [{"params": [self.xattn.weight], "weight_decay": weight_decay},
                {"params": [self.xattn.bias], "weight_decay": 0.0}]


def test_optimizer_uses_the_policys_groups():
    opt = build_optimizer(_Groups(), TrainConfig(weight_decay=0.1, lr=1e-3))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert isinstance(opt, torch.optim.AdamW)
    bad = _Groups()
    bad.optimizer_param_groups = lambda wd: [{"params": [bad.frozen.weight]}]
    with pytest.raises(ValueError, match="frozen"):
        build_optimizer(bad, TrainConfig())


@pytest.mark.parametrize("option, package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_missing_logger_fails_early_with_install_hint(monkeypatch, option, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ConfigError, match=rf"train\.{option}=true needs the '{package}' package.*roboflamingo\[logging\]"):
        loggers.check_available(TrainConfig(**{option: True}))


def test_missing_logger_stops_the_command_before_training(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    code = cli.main(["train", "train.tensorboard=true", f"run_dir={tmp_path / 'run'}", "data.root=/nonexistent"])
    assert code == 2
    assert "pip install 'roboflamingo[logging]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_tensorboard_writes_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    sink = loggers.MetricLoggers(tmp_path, TrainConfig(tensorboard=True), {})
    sink.log(1, {"train/loss": 0.5})
    sink.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "train/loss": 0.5}


def test_metrics_after_the_resume_step_are_dropped(tmp_path):
    lines = [{"step": 1, "train/loss": 1.0}, {"step": 2, "val/loss": 2.0}, {"step": 3, "train/loss": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "tra')
    loggers.truncate_metrics(tmp_path, 2)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == lines[:2]
