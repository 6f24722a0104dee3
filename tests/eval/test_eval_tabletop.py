"""The evaluator on the real tabletop with the real scripted expert: it scores high, a random policy
scores about 0, and an evaluation killed mid-way and rerun ends with the same totals.

Cameras are off (the expert reads only state) so a chain takes a couple of seconds; videos then come
from ``env.render()`` at a small size.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from roboflamingo import cli
from roboflamingo.eval.runner import CRASH_AFTER_ENV
from roboflamingo.process import CRASH_EXIT_CODE

FAST = ["env.render=false", "env.static_size=64", "env.gripper_size=32", "eval.progress=false"]
EXPERT_20 = ["eval", "policy=expert", "eval.num_chains=20", *FAST]
TOTALS = ("num_chains", "avg_len", "success_rates", "per_task")


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("expert")
    assert cli.main([*EXPERT_20, f"run_dir={run_dir}", "eval.num_videos=1", "eval.video_stride=10"]) == 0
    return run_dir, json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_the_last_line_printed_is_the_headline_of_results_json(expert_run, capsys):
    run_dir, results = expert_run
    assert cli.main([*EXPERT_20, f"run_dir={run_dir}"]) == 0  # resumes: nothing left to run
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {k: results[k] for k in ("avg_len", "success_rates", "num_chains")}


@pytest.mark.slow
def test_expert_completes_at_least_four_tasks_per_chain_on_average(expert_run):
    run_dir, results = expert_run
    assert results["num_chains"] == 20
    assert results["avg_len"] >= 4.0, results["success_rates"]
    rates = results["success_rates"]
    assert len(rates) == 5 and all(a >= b for a, b in zip(rates, rates[1:]))
    assert results["avg_len"] == pytest.approx(sum(rates))  # mean length = sum of P(length >= i)
    assert sum(c["total"] for c in results["per_task"].values()) >= 20 * 4
    assert results["speed"]["chains_this_run"] == 20 and results["speed"]["chains_per_min"] > 0
    assert "| Avg. Len |" in (run_dir / "results.md").read_text()
    assert (run_dir / "results.png").stat().st_size > 1000
    (video,) = (run_dir / "videos").glob("*.mp4")
    assert re.fullmatch(r"chain0000_[0-5]of5_(success|fail-\w+)\.mp4", video.name)


def resume_with_two_workers(run_dir, reference, done_before):
    """Rerun with two workers (the records do not depend on how the first run was parallelised): the
    totals are those of the uninterrupted run and every chain is recorded exactly once."""
    records = run_dir / "records" / "rank-0.jsonl"
    assert cli.main([*EXPERT_20, f"run_dir={run_dir}", "eval.workers=2"]) == 0
    resumed = json.loads((run_dir / "results.json").read_text())
    assert {k: resumed[k] for k in TOTALS} == {k: reference[k] for k in TOTALS}
    assert resumed["speed"]["chains_this_run"] == 20 - done_before
    indices = [json.loads(line)["index"] for line in records.read_text().splitlines()]
    assert sorted(indices) == list(range(20))  # every chain exactly once


@pytest.mark.slow
def test_an_evaluation_that_dies_after_three_chains_resumes_to_the_same_totals(expert_run, tmp_path):
    _, reference = expert_run
    proc = subprocess.run([sys.executable, "-m", "roboflamingo.cli", *EXPERT_20, f"run_dir={tmp_path}"],
                          env={**os.environ, CRASH_AFTER_ENV: "3"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-2000:]
    records = tmp_path / "records" / "rank-0.jsonl"
    assert records.read_bytes().count(b"\n") == 3
    resume_with_two_workers(tmp_path, reference, 3)


@pytest.mark.slow
def test_killed_evaluation_resumes_to_the_same_totals(expert_run, tmp_path):
    """The one real SIGKILL, wherever it lands after the third record."""
    _, reference = expert_run
    records = tmp_path / "records" / "rank-0.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "roboflamingo.cli", *EXPERT_20, f"run_dir={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (records.exists() and records.read_bytes().count(b"\n") >= 3):
            assert proc.poll() is None, "the evaluation ended before it could be killed"
            assert time.monotonic() < deadline, "no chain finished in time"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = records.read_bytes().count(b"\n")
    assert 3 <= done_before < 20
    resume_with_two_workers(tmp_path, reference, done_before)


@pytest.mark.slow
def test_random_policy_scores_about_zero(tmp_path):
    args = ["eval", "policy=random", "eval.num_chains=4", *FAST, f"run_dir={tmp_path}"]
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_chains"] == 4
    assert results["avg_len"] <= 0.25 and results["success_rates"][1] == 0.0
    # nothing after the first failure is attempted
    assert sum(c["total"] for c in results["per_task"].values()) == 4 + round(4 * results["success_rates"][0])


def test_single_task_mode_reports_success_per_task(tmp_path):
    args = ["eval", "policy=expert", "eval.mode=single_task", "eval.tasks=[turn_on_led,move_slider_left]",
            "eval.episodes_per_task=2", *FAST, f"run_dir={tmp_path}"]
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "single_task" and results["num_episodes"] == 4
    assert {t: c["total"] for t, c in results["per_task"].items()} == {"move_slider_left": 2, "turn_on_led": 2}
    assert results["success_rate"] >= 0.5


def test_single_task_episodes_of_tasks_no_initial_state_allows_run_after_the_experts_setup(tmp_path):
    """place_in_drawer needs a block in the hand, unstack_block a stack: the scripted expert performs
    the setup, then the evaluated policy (here the expert too) does the task."""
    args = ["eval", "policy=expert", "eval.mode=single_task", "eval.tasks=[place_in_drawer,unstack_block]",
            "eval.episodes_per_task=1", "eval.ep_len=360", *FAST, f"run_dir={tmp_path}"]
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {t: (c["success"], c["total"]) for t, c in results["per_task"].items()} == {
        "place_in_drawer": (1, 1), "unstack_block": (1, 1)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "needs checkpoint=<dir>"),
        (["policy=expert", "checkpoint=/nonexistent"], "only read with policy=checkpoint"),
        (["checkpoint=/nonexistent"], "/nonexistent does not exist"),
        (["policy=expert", "eval.calvin_dataset=/data/calvin/validation"], "calvin_env"),
    ],
)
def test_bad_selection_exits_2_with_a_clear_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "calvin_env", None)
    assert cli.main(["eval", *args, f"run_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_directory_is_evaluated_through_reset_and_step(tmp_path):
    from eval_fakes import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "ckpt")
    args = ["eval", f"checkpoint={tmp_path / 'ckpt'}", "eval.num_chains=2", "eval.ep_len=3", "policy.device=cpu",
            *FAST, f"run_dir={tmp_path / 'eval'}"]
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["num_chains"] == 2 and results["policy"]["kind"] == "checkpoint"
    assert "model.safetensors" in results["policy"]["files"]
    assert results["speed"]["policy_ms_per_step"] > 0
