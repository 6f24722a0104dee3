"""eval env=metaworld through the shared runner: seeded items, the expert's reference row, the
per-difficulty report, resume, the parallel and batched layouts, videos, and refusals."""

from __future__ import annotations

import json

import pytest

from roboflamingo import cli
from roboflamingo.config import load
from roboflamingo.metaworld.evaluate import Job, build_items, make_specs
from roboflamingo.metaworld.tasks import task_table
from roboflamingo.robot import RobotMismatch

TASKS = "eval.tasks=[reach,drawer-close]"


def _eval(run_dir, *overrides) -> dict:
    args = ["eval", "env=metaworld", "policy=expert", TASKS, "eval.episodes_per_task=2", "env.size=16",
            "eval.progress=false", f"run_dir={run_dir}", *overrides]
    assert cli.main(args) == 0
    return json.loads((run_dir / "results.json").read_text())


def test_items_seed_episode_k_of_every_task_alike_and_use_evaluation_sentences():
    items = build_items(["reach-v3", "push-v3"], 3, seed=10)
    assert [it.index for it in items] == list(range(6))
    assert [it.initial_state for it in items[:3]] == [{"task": "reach-v3", "seed": s} for s in (10, 11, 12)]
    assert [it.initial_state["seed"] for it in items[3:]] == [10, 11, 12]
    assert items[3].instructions == [task_table().eval["push-v3"]] and items[3].tasks == ["push-v3"]


def test_expert_scores_the_reference_row_with_a_difficulty_table(tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = _eval(run_dir, "eval.num_videos=1")
    # the last line printed is the headline a script reads
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {"success_rate": 1.0, "task_average": 1.0, "num_episodes": 4, "per_group": {"easy": 1.0}}
    assert summary["mode"] == "single_task" and summary["num_episodes"] == 4
    assert summary["success_rate"] == 1.0
    assert summary["per_group"] == {"easy": {"tasks": 2, "success": 4, "total": 4, "rate": 1.0}}
    assert summary["env"]["kind"] == "metaworld" and summary["env"]["env"]["size"] == 16
    assert summary["protocol"]["seeds"] == [0, 1] and summary["protocol"]["ep_len"] == 500
    info = json.loads((run_dir / "eval_info.json").read_text())
    assert info["per_group"] == {"easy": {"pc_success": 100.0, "n_episodes": 4}}
    assert {e["task_group"] for e in info["per_task"]} == {"easy"}
    assert "| easy | 2 | 4 | 100.0% |" in (run_dir / "results.md").read_text()
    videos = list((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["episode0000_reach-v3_success.mp4"]
    # the same command again resumes: nothing left to run, the same numbers
    again = _eval(run_dir, "eval.num_videos=1")
    assert again["speed"]["chains_this_run"] == 0 and again["per_task"] == summary["per_task"]


@pytest.mark.slow
def test_workers_and_batched_simulators_give_the_same_records(tmp_path):
    inline = _eval(tmp_path / "inline")
    workers = _eval(tmp_path / "workers", "eval.workers=2")
    batched = _eval(tmp_path / "batched", "eval.batch_size=2")

    def steps(run_dir):
        records = [json.loads(line) for f in (run_dir / "records").glob("*.jsonl") for line in f.read_text().splitlines()]
        return sorted((r["index"], r["steps"]) for r in records)

    assert steps(tmp_path / "inline") == steps(tmp_path / "workers") == steps(tmp_path / "batched")
    assert inline["per_task"] == workers["per_task"] == batched["per_task"]


def test_random_policy_is_the_floor(tmp_path):
    summary = _eval(tmp_path / "random", "policy=random", "eval.tasks=[drawer-close]", "eval.ep_len=50")
    assert summary["per_task"]["drawer-close-v3"]["total"] == 2
    assert summary["policy"] == {"kind": "random", "seed": 0, "robot": "metaworld_sawyer"}


def test_a_calvin_checkpoint_is_refused_naming_both_robots(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    from model_helpers import make_stats, micro_config, micro_head

    from roboflamingo.models.policy import RoboFlamingoPolicy

    ckpt = tmp_path / "ckpt"
    RoboFlamingoPolicy.from_config(micro_config(), micro_head(), make_stats()).save_pretrained(ckpt)  # CALVIN's
    job = load("eval_metaworld", Job, [f"policy.checkpoint={ckpt}"])
    with pytest.raises(RobotMismatch, match="robot 'calvin'.*robot 'metaworld_sawyer'"):
        make_specs(job)


@pytest.mark.parametrize("override, message", [
    ("eval.ep_len=501", "max_path_length = 500"),
    ("eval.mode=chains", "eval.mode \\(Meta-World\\) must be one of \\['single_task'\\]"),
    ("eval.calvin_dataset=/x", "eval.calvin_dataset is CALVIN's"),
    ("eval.tasks=[easy,nope]", "eval.tasks: 'nope' is neither"),
])
def test_bad_settings_are_refused(override, message):
    from roboflamingo.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load("eval_metaworld", Job, ["policy=expert", override])


def test_render_off_is_refused_for_a_checkpoint(tmp_path):
    import sys
    from pathlib import Path

    from roboflamingo.config import ConfigError

    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    from model_helpers import make_stats, micro_config, micro_head

    from roboflamingo.models.policy import RoboFlamingoPolicy

    RoboFlamingoPolicy.from_config(micro_config(), micro_head(), make_stats()).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="env.render=off draws no images"):
        load("eval_metaworld", Job, [f"policy.checkpoint={tmp_path / 'ckpt'}", "env.render=off"])
