"""The FSDP option (``train.strategy=fsdp``): sharded training, full checkpoints, exact resume.

The test drives the loop's FSDP path with a small stand-in policy that has the policy's interface
(``save_pretrained(directory, state_dict)`` taking the gathered weights), which keeps a
2-process CPU run fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roboflamingo.config import load
from roboflamingo.train import distributed, loop

DOUBLE = '''
from pathlib import Path
import torch
from torch import nn
from safetensors.torch import load_file, save_file

from roboflamingo.robots import load_robot


class Double(nn.Module):
    """forward(batch) -> (loss, logs), optimizer_param_groups, save/from_pretrained: the loop's view."""

    robot = load_robot("calvin")  # it reads CALVIN's rgb_static and robot_obs

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(18, 32), nn.Tanh(), nn.Linear(32, 32))
        self.frozen = nn.Linear(32, 32).requires_grad_(False)
        self.out = nn.Linear(32, 7)
        self.register_buffer("action_mean", torch.zeros(7))

    def forward(self, batch):
        image = batch["rgb_static"].float().mean(dim=(-1, -2)) / 255.0
        pred = self.out(torch.tanh(self.frozen(self.body(torch.cat([image, batch["robot_obs"]], -1)))))
        loss = ((pred + self.action_mean - batch["actions"][:, :, 0]) ** 2).mean()
        return loss, {"mse": loss.item()}

    def optimizer_param_groups(self, weight_decay):
        decay = [self.body[0].weight, self.body[2].weight]
        rest = [p for p in self.parameters() if p.requires_grad and all(p is not d for d in decay)]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

    def save_pretrained(self, directory, state_dict=None):
        tensors = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  str(Path(directory) / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu"):
        policy = cls()
        policy.load_state_dict(load_file(str(Path(directory) / "pretrained_model" / "model.safetensors")))
        return policy


def install(loop):
    loop._build_policy = lambda model, head, stats, robot: Double()
    loop._load_policy = lambda checkpoint, head: Double.from_pretrained(checkpoint)
'''

# One rank: an FSDP run of 4 steps; then its last checkpoint is set aside and removed, and the run
# resumed from step 2 must reproduce it.
RANK_SCRIPT = """
import shutil, sys
sys.path.insert(0, sys.argv[1])
import double
from roboflamingo.config import load
from roboflamingo.train import distributed, loop

double.install(loop)
out, overrides = sys.argv[2], sys.argv[3:]
job = load("train", loop.Job, overrides)
info = distributed.setup(job.train)
loop.train(job, info)
last = f"{job.run_dir}/checkpoints/step_0000004"
if info.is_main:
    shutil.copy(f"{last}/pretrained_model/model.safetensors", out)
    shutil.rmtree(last)
distributed.barrier(info)
job.resume = True
loop.train(job, info)
distributed.cleanup(info)
"""

RECIPE = ["train.steps=4", "train.checkpoint_every=2", "train.log_every=1", "train.val_every=0",
          "train.warmup_steps=1", "train.lr=1e-2", "train.fsdp_min_params=100"]


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in lines if "train/loss" in r]


@pytest.mark.slow
def test_fsdp_trains_like_one_process_and_resumes_exactly(tmp_path, train_args, free_port, run_subprocess,
                                                          final_weights, monkeypatch):
    (tmp_path / "double.py").write_text(DOUBLE)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    fsdp_dir, single_dir, uninterrupted = tmp_path / "fsdp", tmp_path / "single", tmp_path / "uninterrupted.st"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port), str(tmp_path / "rank.py"), str(tmp_path), str(uninterrupted),
           *train_args(fsdp_dir, *RECIPE, "train.strategy=fsdp", "data.batch_size=2")]
    proc = run_subprocess(cmd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stderr and "step_0000002 at step 2" in proc.stderr

    resumed = final_weights(fsdp_dir)
    first = load_file(str(uninterrupted))
    assert all(torch.equal(resumed[k], first[k]) for k in first), "FSDP resume did not reproduce the run"

    monkeypatch.syspath_prepend(str(tmp_path))
    import double

    monkeypatch.setattr(loop, "_build_policy", lambda model, head, stats, robot: double.Double())
    job = load("train", loop.Job, train_args(single_dir, *RECIPE, "data.batch_size=4"))
    loop.train(job, distributed.setup(job.train))
    single = final_weights(single_dir)
    for k in single:
        assert (single[k] - resumed[k]).abs().max() <= 1e-5, k
    assert _losses(fsdp_dir) == pytest.approx(_losses(single_dir), rel=1e-5)

