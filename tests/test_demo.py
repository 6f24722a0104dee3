import json

import pytest

from roboflamingo import cli

# Every stage at toy sizes: the random tiny LM (no MiniLM extra needed), 2 training steps, 100-step
# subtasks. What is checked is the pipeline, not the policy's skill.
TOY = ["model=tiny", "model.lm.cross_attn_every_n_layers=1", "generate.episodes_per_task=1", "generate.val_episodes_per_task=1", "generate.chains_per_scene=1", "generate.val_chains_per_scene=1", "eval.num_chains=2", "eval.episodes_per_task=1", "eval.ep_len=20", "tasks=[move_slider_left,move_slider_right,open_drawer,close_drawer,turn_on_led]",
       "workers=1", "eval.num_videos=1", "progress=false", "env.static_size=32", "env.gripper_size=32",
       "train.steps=2", "train.val_every=2", "train.checkpoint_every=2", "train.progress=false",
       "data.batch_size=4", "data.num_workers=0"]


def read_json(path):
    return json.loads(path.read_text())


CHAIN_FIGURES = ("num_chains", "avg_len", "success_rates", "per_task")
TASK_FIGURES = ("num_episodes", "per_task", "success_rate", "task_average")


@pytest.mark.slow
def test_demo_runs_every_stage_then_skips_them_with_the_same_report(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    assert cli.main(["demo", f"run_dir={run_dir}", *TOY]) == 0
    results = read_json(run_dir / "report" / "results.json")
    assert results["num_chains"] == 2 and len(results["success_rates"]) == 5
    rates = results["success_rates"]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and results["avg_len"] == pytest.approx(sum(rates))
    assert set(results["per_task"]) <= set(results["tasks"])
    # Every chain attempts its first subtask and one more per success, up to five.
    attempts = sum(c["total"] for c in results["per_task"].values())
    assert attempts == round(2 * (1 + sum(rates[:4])))
    assert sum(c["success"] for c in results["per_task"].values()) == round(2 * results["avg_len"])
    assert results["single_task"]["num_episodes"] == len(results["tasks"])
    # The report restates the evaluations' own files, figure for figure.
    ev = run_dir / "eval"
    policy_chains, policy_tasks = read_json(ev / "policy_chains" / "results.json"), read_json(ev / "policy_tasks" / "results.json")
    expert_chains, expert_tasks = read_json(ev / "expert_chains" / "results.json"), read_json(ev / "expert_tasks" / "results.json")
    assert {k: results[k] for k in CHAIN_FIGURES} == {k: policy_chains[k] for k in CHAIN_FIGURES}
    assert results["single_task"] == {k: policy_tasks[k] for k in TASK_FIGURES}
    expert = results["expert"]
    assert {k: expert[k] for k in ("num_chains", "avg_len", "success_rates")} == {
        k: expert_chains[k] for k in ("num_chains", "avg_len", "success_rates")}
    assert expert["single_task_per_task"] == expert_tasks["per_task"]
    assert expert["single_task_average"] == expert_tasks["task_average"]
    md = (run_dir / "report" / "results.md").read_text().splitlines()
    (row,) = [line for line in md if line.startswith("| tiny policy |")]
    assert row.endswith(f"| {results['avg_len']:.2f} | {results['single_task']['task_average']:.0%} |")
    assert (run_dir / "train" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
    assert list((ev / "policy_chains" / "videos").glob("*.mp4"))
    capsys.readouterr()

    assert cli.main(["demo", f"run_dir={run_dir}", *TOY]) == 0
    out = capsys.readouterr().out
    assert "is complete, skipped" in out and "packed shards are complete, skipped" in out
    assert "finished 2 steps, skipped" in out
    drop = ("stage_seconds",)
    again = read_json(run_dir / "report" / "results.json")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in results.items() if k not in drop}

    # A second run from nothing, in another directory, gives the same figures: the seed fixes them all.
    assert cli.main(["demo", f"run_dir={tmp_path / 'fresh'}", *TOY]) == 0
    fresh = read_json(tmp_path / "fresh" / "report" / "results.json")
    assert {k: v for k, v in fresh.items() if k not in drop} == {k: v for k, v in results.items() if k not in drop}


def test_demo_rejects_a_bad_recipe_before_any_work(tmp_path):
    assert cli.main(["demo", f"run_dir={tmp_path / 'demo'}", "generate.handover=2"]) != 0
    assert not (tmp_path / "demo" / "data").exists()
