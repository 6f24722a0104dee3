import json

from roboflamingo import cli

# Every stage at toy sizes: the random tiny LM (no MiniLM extra needed), 2 training steps, 100-step
# subtasks. What is checked is the pipeline, not the policy's skill.
TOY = ["model=tiny", "model.lm.cross_attn_every_n_layers=1", "generate.episodes_per_task=1", "generate.val_episodes_per_task=1", "generate.chains_per_scene=1", "generate.val_chains_per_scene=1", "eval.num_chains=2", "eval.episodes_per_task=1", "eval.ep_len=20", "tasks=[move_slider_left,move_slider_right,open_drawer,close_drawer,turn_on_led]",
       "workers=1", "eval.num_videos=1", "progress=false", "env.static_size=32", "env.gripper_size=32",
       "train.steps=2", "train.val_every=2", "train.checkpoint_every=2", "train.progress=false",
       "data.batch_size=4", "data.num_workers=0"]


def test_demo_runs_every_stage_then_skips_them_with_the_same_report(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    assert cli.main(["demo", f"run_dir={run_dir}", *TOY]) == 0
    results = json.loads((run_dir / "report" / "results.json").read_text())
    assert results["num_chains"] == 2 and len(results["success_rates"]) == 5
    assert 0.0 <= results["avg_len"] <= 5.0
    assert set(results["per_task"]) <= set(results["tasks"])
    assert results["single_task"]["num_episodes"] == len(results["tasks"])
    assert results["expert"]["num_chains"] == 2
    assert (run_dir / "report" / "results.md").is_file()
    assert (run_dir / "train" / "checkpoints" / "last" / "model.safetensors").is_file()
    assert list((run_dir / "eval" / "policy_chains" / "videos").glob("*.mp4"))
    capsys.readouterr()

    assert cli.main(["demo", f"run_dir={run_dir}", *TOY]) == 0
    out = capsys.readouterr().out
    assert "is complete, skipped" in out and "packed shards are complete, skipped" in out
    assert "finished 2 steps, skipped" in out
    again = json.loads((run_dir / "report" / "results.json").read_text())
    drop = ("stage_seconds",)
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in results.items() if k not in drop}


def test_demo_rejects_a_bad_recipe_before_any_work(tmp_path):
    assert cli.main(["demo", f"run_dir={tmp_path / 'demo'}", "generate.handover=2"]) != 0
    assert not (tmp_path / "demo" / "data").exists()
