import json
import shutil

import pytest

from roboflamingo import cli

# Every stage at toy sizes: the random tiny LM (no MiniLM extra needed), 2 training steps, 100-step
# subtasks. What is checked is the pipeline, not the policy's skill.
TOY = ["model=tiny", "model.lm.cross_attn_every_n_layers=1", "generate.episodes_per_task=1", "generate.val_episodes_per_task=1", "generate.chains_per_scene=1", "generate.val_chains_per_scene=1", "eval.num_chains=2", "eval.episodes_per_task=1", "eval.ep_len=20", "tasks=[move_slider_left,move_slider_right,open_drawer,close_drawer,turn_on_led]",
       "workers=1", "eval.num_videos=1", "eval.failure_videos=1", "progress=false", "env.static_size=32", "env.gripper_size=32",
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
    # The open-loop replay of the held-out demonstrations, per task, for the one seed.
    open_loop = results["seeds"][0]["open_loop"]
    assert set(open_loop["per_task"]) <= set(results["tasks"]) and open_loop["per_task"]
    assert "## Open-loop action error" in "\n".join(md)
    # Each failed task's first failure, linked from the report with a frame strip (the toy policy of 2
    # steps fails nearly everything).
    failed = {t for t, c in results["single_task"]["per_task"].items() if c["success"] < c["total"]}
    assert failed and set(results["failure_videos"]["0"]) >= failed
    for task, video in results["failure_videos"]["0"].items():
        assert (run_dir / video).is_file() and (run_dir / "report" / "failures" / f"{task}_seed0.png").is_file()
    assert "## Failure clips" in "\n".join(md)
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
    capsys.readouterr()

    # Two seeds: the first seed's stages are the one-seed run's and are reused; the second is trained
    # and evaluated on the same data and episodes, and the report gives both and their spread.
    assert cli.main(["demo", f"run_dir={run_dir}", "seeds=2", *TOY]) == 0
    out = capsys.readouterr().out
    assert "finished 2 steps, skipped" in out and "seed 1, 2 steps" in out
    two = read_json(run_dir / "report" / "results.json")
    assert [s["seed"] for s in two["seeds"]] == [0, 1]
    assert two["seeds"][0] == results["seeds"][0]
    second = read_json(run_dir / "seed_1" / "eval" / "policy_chains" / "results.json")
    assert two["seeds"][1]["avg_len"] == second["avg_len"]
    assert two["avg_len"] == pytest.approx((results["avg_len"] + second["avg_len"]) / 2)
    assert two["spread"]["avg_len"]["std"] == pytest.approx(abs(results["avg_len"] - second["avg_len"]) / 2 ** 0.5)
    assert (run_dir / "seed_1" / "train" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
    md = (run_dir / "report" / "results.md").read_text()
    assert "| tiny policy, seed 1 |" in md and "| mean ± std (2 seeds) |" in md
    capsys.readouterr()

    # With two workers the seeds train at once, each in its own process, to the same weights as one
    # after the other (on the same data: copied, so only training differs).
    par = tmp_path / "parallel"
    shutil.copytree(run_dir / "data", par / "data")
    toy2 = [o for o in TOY if not o.startswith("workers=")] + ["workers=2"]
    assert cli.main(["demo", f"run_dir={par}", "seeds=2", *toy2]) == 0
    assert "seeds [0, 1], 2 at a time" in capsys.readouterr().out
    weights = "train/checkpoints/last/pretrained_model/model.safetensors"
    for sub in ("", "seed_1/"):
        assert (par / sub / weights).read_bytes() == (run_dir / sub / weights).read_bytes()

    # One seed with two workers: the expert is evaluated in a process of its own while the seed trains
    # on the other core, to the same figures as after it.
    solo = tmp_path / "solo"
    shutil.copytree(run_dir / "data", solo / "data")
    assert cli.main(["demo", f"run_dir={solo}", *toy2]) == 0
    assert "expert policy beside the training, on 1 worker(s)" in capsys.readouterr().out
    beside = read_json(solo / "report" / "results.json")
    assert {k: v for k, v in beside.items() if k not in drop} == {k: v for k, v in results.items() if k not in drop}


def test_demo_rejects_a_bad_recipe_before_any_work(tmp_path):
    assert cli.main(["demo", f"run_dir={tmp_path / 'demo'}", "generate.handover=2"]) != 0
    assert not (tmp_path / "demo" / "data").exists()


def _res(avg_len, rates, single, per_task):
    first_later = {"open_drawer": {"first": {"success": 4, "total": 4, "rate": 1.0},
                                   "later": {"success": 2, "total": 6, "rate": 1 / 3}}}
    return {"chains": {"avg_len": avg_len, "success_rates": rates, "num_chains": 10,
                       "per_task": {"open_drawer": {"success": 6, "total": 10, "rate": 0.6}},
                       "per_task_first_later": first_later},
            "single_task": {"task_average": single, "success_rate": single, "num_episodes": 4,
                            "per_task": {t: {"success": k, "total": 2, "rate": k / 2} for t, k in per_task.items()}}}


def test_the_report_gives_each_seed_and_the_mean_and_sample_spread(tmp_path):
    from roboflamingo.demo import Job, write_report

    job = Job(tasks=["open_drawer", "close_drawer"])
    expert = _res(4.0, [1, 1, 1, 0.5, 0.5], 1.0, {"open_drawer": 2, "close_drawer": 2})
    seeds = [(0, _res(1.0, [0.6, 0.4, 0, 0, 0], 0.75, {"open_drawer": 2, "close_drawer": 1})),
             (1, _res(2.0, [0.8, 0.6, 0.4, 0.2, 0], 0.25, {"open_drawer": 1, "close_drawer": 0}))]
    dirs = {"policy_chains": tmp_path / "none"}
    res = write_report(job, tmp_path / "report", seeds, expert, dirs, {})
    assert res["avg_len"] == 1.5 and res["success_rates"] == pytest.approx([0.7, 0.5, 0.2, 0.1, 0.0])
    assert res["spread"]["avg_len"] == pytest.approx({"mean": 1.5, "std": 0.5 ** 0.5, "min": 1.0, "max": 2.0})
    assert res["spread"]["single_task_per_task"]["close_drawer"]["min"] == 0.0
    assert res["per_task"]["open_drawer"] == {"success": 12, "total": 20, "rate": 0.6}  # counts pooled
    assert res["single_task"]["per_task"]["open_drawer"] == {"success": 3, "total": 4, "rate": 0.75}
    assert [s["single_task_per_task"]["open_drawer"] for s in res["seeds"]] == [1.0, 0.5]
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| custom policy, seed 1 | 80% | 60% | 40% | 20% | 0% | 2.00 | 25% |" in md
    assert "| mean ± std (2 seeds) | 70% ± 14% |" in md and "**1.50 ± 0.71**" in md
    assert "| close_drawer | 1/2 | 0/2 | 2/2 |" in md
    # the chains split by where a task came: first subtask / later (after a handover), per seed
    assert "| open_drawer | 4/4 / 2/6 | 4/4 / 2/6 |" in md and "| close_drawer | - / - | - / - |" in md
    # One seed: its own figures, the table as before, no spread to report.
    one = write_report(job, tmp_path / "one", seeds[:1], expert, dirs, {})
    assert one["avg_len"] == 1.0 and one["spread"]["avg_len"]["std"] is None
    assert "| custom policy | 60% | 40% | 0% | 0% | 0% | 1.00 | 75% |" in (tmp_path / "one" / "results.md").read_text()
