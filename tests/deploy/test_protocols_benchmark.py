"""vla-eval's own orchestrator scores ``roboflamingo serve`` on our tabletop as ``roboflamingo eval`` does.

Both sides run the same episodes (``TabletopBenchmark`` and ``roboflamingo eval`` share the work list,
the simulator and the oracle); here they are two independent runs whose per-episode outcomes
(subtasks completed, control steps) must agree.
"""

from __future__ import annotations

import json

import pytest

from roboflamingo import cli
from roboflamingo.deploy.server import Job, ServerThread, build_server
from roboflamingo.policies import PolicySourceConfig

vla_api = pytest.importorskip("vla_eval.api")

from roboflamingo.benchmarks.tabletop import TabletopBenchmark  # noqa: E402  (needs vla-eval)

from .test_protocols import tiny_checkpoint  # noqa: E402, F401  (a fixture: the tiny random policy)

IMPORT_STRING = "roboflamingo.benchmarks.tabletop:TabletopBenchmark"
ENV = {"static_size": 64, "gripper_size": 32}

CASES = {
    "expert chains": ("expert", {"mode": "chains", "num_chains": 3, "ep_len": 150}),
    "expert single-task": (
        "expert",
        {"mode": "single_task", "tasks": ["open_drawer", "push_red_block_left", "turn_off_led"], "episodes_per_task": 2, "ep_len": 120},
    ),
    "checkpoint single-task": (
        "checkpoint",
        {"mode": "single_task", "tasks": ["open_drawer", "turn_on_led"], "episodes_per_task": 1, "ep_len": 8},
    ),
}


def eval_overrides(params: dict) -> list[str]:
    out = []
    for key, value in params.items():
        out.append(f"eval.{key}=[{','.join(value)}]" if isinstance(value, list) else f"eval.{key}={value}")
    return out + [f"env.{k}={v}" for k, v in ENV.items()]


def test_the_benchmark_resolves_from_its_import_string():
    from vla_eval.registry import resolve_import_string

    assert resolve_import_string(IMPORT_STRING) is TabletopBenchmark


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_vla_eval_orchestrator_scores_roboflamingo_serve_as_roboflamingo_eval_does(case, tmp_path, request):
    kind, params = CASES[case]
    checkpoint = request.getfixturevalue("tiny_checkpoint") if kind == "checkpoint" else None
    who = [f"checkpoint={checkpoint}"] if checkpoint else ["policy=expert"]

    run_dir = tmp_path / "eval"
    argv = ["eval", *who, *eval_overrides(params), "eval.progress=false", f"run_dir={run_dir}"]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (run_dir / "records/rank-0.jsonl").read_text().splitlines()]
    ours = {r["index"]: (r["completed"], sum(r["steps"])) for r in records}

    job = Job(policy=PolicySourceConfig(checkpoint=checkpoint) if checkpoint else PolicySourceConfig("expert"), port=0)
    config = {
        "benchmarks": [{"benchmark": IMPORT_STRING, "episodes_per_task": 1, "params": {**params, "env": ENV}}],
        "output_dir": str(tmp_path / "vla-eval"),
    }
    with ServerThread(build_server(job)) as thread:
        # The model server's HELLO asks for scene_obs when the policy is the expert.
        results = vla_api.run(config, server_url=thread.url + "/vla-eval", docker=False, no_save=True)
    (result,) = results
    assert result["num_errors"] == 0 and not result.get("partial")
    names = {t["name"]: t["index"] for t in TabletopBenchmark(**params, env=ENV).get_tasks()}
    theirs = {}
    for task in result["tasks"]:
        (episode,) = task["episodes"]
        theirs[names[task["task"]]] = (episode["metrics"]["completed_subtasks"], episode["steps"])
    assert theirs == ours
    n_tasks = {r["index"]: len(r["tasks"]) for r in records}
    successes = sum(done == n_tasks[i] for i, (done, _) in ours.items())
    assert round(result["mean_success"] * len(ours)) == successes
    if kind == "expert":
        assert successes >= 1  # the comparison is over episodes that succeed, not only failures
