"""Two processes under torchrun (gloo on CPU), with gradient accumulation, train like one process with
the same global batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from roboflamingo import cli

STEPS = 6
# Dropout off: ranks draw different dropout masks by design, which would blur the comparison.
RECIPE = [f"train.steps={STEPS}", "train.log_every=1", "train.checkpoint_every=3", "train.val_every=3",
          "train.warmup_steps=2", "train.lr=1e-3", "head.dropout=0.0"]

# Runs one rank: trains through the same code path as the CLI, then reports a fingerprint of every
# tensor of its replica so the test can check that the ranks agree bit for bit.
RANK_SCRIPT = """
import hashlib, json, sys
from roboflamingo.config import load
from roboflamingo.train import distributed, loop

out, overrides = sys.argv[1], sys.argv[2:]
job = load("train", loop.Job, overrides)
info = distributed.setup(job.train)
policy = loop.train(job, info)
digests = {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
           for k, v in policy.state_dict().items()}
every_rank = distributed.gather_objects(digests, info)
if info.is_main:
    json.dump(every_rank, open(out, "w"))
distributed.cleanup(info)
"""


def _curve(run_dir: Path, key: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if key in r}


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, train_args, free_port, run_subprocess, final_weights):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    digests = tmp_path / "digests.json"
    # 2 processes x 2 accumulated micro-batches x 1 window = 1 process x 4 windows: the ranks take
    # alternate positions of the same (seed, epoch) order, so each global batch holds the same
    # windows (and the gradient all-reduce is skipped on the first micro-step). Validation: 2 x 4
    # batches of 1 window = 2 batches of 4.
    ddp_args = train_args(ddp_dir, *RECIPE, "data.batch_size=1", "train.grad_accum=2", "train.val_batches=4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port), str(script), str(digests), *ddp_args]
    proc = run_subprocess(cmd)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = json.loads(digests.read_text())
    assert len(ranks) == 2
    assert ranks[0] == ranks[1], "the two replicas hold different weights"

    assert cli.main(["train", *train_args(single_dir, *RECIPE, "data.batch_size=4", "train.val_batches=2")]) == 0
    ddp_loss, single_loss = _curve(ddp_dir, "train/loss"), _curve(single_dir, "train/loss")
    assert sorted(ddp_loss) == list(range(1, STEPS + 1))
    for step in ddp_loss:
        assert abs(ddp_loss[step] - single_loss[step]) <= 1e-4 * abs(single_loss[step]), (step, ddp_loss, single_loss)
    ddp_val, single_val = _curve(ddp_dir, "val/loss"), _curve(single_dir, "val/loss")
    assert ddp_val.keys() == single_val.keys() == {3, 6}
    for step in ddp_val:
        assert abs(ddp_val[step] - single_val[step]) <= 1e-4 * abs(single_val[step]), (step, ddp_val, single_val)

    a, b = final_weights(ddp_dir), final_weights(single_dir)
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-4 * max(1.0, b[k].abs().max()), k
