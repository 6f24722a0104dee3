"""Running many chains: in-process and in spawned workers, resuming, videos, the report, worker errors."""

import json

import av
import pytest
from eval_fakes import Chains, CounterEnvFactory, DiesAfterOneChainFactory, PushPolicyFactory

from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.report import write_report
from roboflamingo.eval.runner import evaluate_chains, evaluate_items
from roboflamingo.eval.store import RECORDS_DIR, ResultStore

LENGTHS = [5, 0, 2, 5, 3, 1, 4, 5]
IDENTITY = {"policy": "push", "env": "counter"}


def cfg(**kw):
    return EvalConfig(**{"ep_len": 6, "progress": False, **kw})


def run(tmp_path, config, items=None, policy=None):
    items = items if items is not None else Chains(LENGTHS).items()
    return evaluate_items(items, policy or PushPolicyFactory(), CounterEnvFactory(), config, tmp_path, IDENTITY)


def test_inline_and_two_workers_agree_with_the_known_outcomes(tmp_path):
    inline = run(tmp_path / "a", cfg(workers=1))
    spawned = run(tmp_path / "b", cfg(workers=2, start_method="spawn"))
    forkserver = run(tmp_path / "c", cfg(workers=2, start_method="forkserver"))
    for s in (inline, spawned, forkserver):
        assert s["num_chains"] == 8
        assert s["avg_len"] == pytest.approx(sum(LENGTHS) / 8)
        assert s["success_rates"] == pytest.approx([7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8])
        assert s["speed"]["chains_this_run"] == 8 and s["speed"]["env_steps_per_s"] > 0
    assert inline["per_task"] == spawned["per_task"] == forkserver["per_task"]


def test_rerun_skips_finished_chains_and_counts_none_twice(tmp_path):
    full = run(tmp_path, cfg())
    path = tmp_path / RECORDS_DIR / "rank-0.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    # as if killed after three chains, in the middle of writing the fourth record
    path.write_text("".join(lines[:3]) + lines[3][:20])
    resumed = run(tmp_path, cfg())
    assert resumed["speed"]["chains_this_run"] == 5
    assert {k: resumed[k] for k in ("avg_len", "success_rates", "per_task", "num_chains")} == {
        k: full[k] for k in ("avg_len", "success_rates", "per_task", "num_chains")
    }
    again = run(tmp_path, cfg())
    assert again["speed"]["chains_this_run"] == 0 and again["num_chains"] == 8
    indices = [json.loads(raw)["index"] for raw in path.read_text().splitlines()]
    assert sorted(indices) == list(range(8))


def test_a_different_evaluation_in_the_same_dir_is_refused_unless_overwrite(tmp_path):
    run(tmp_path, cfg())
    with pytest.raises(ValueError, match="different evaluation"):
        run(tmp_path, cfg(ep_len=7))
    s = run(tmp_path, cfg(ep_len=7, overwrite=True))
    assert s["num_chains"] == 8 and s["speed"]["chains_this_run"] == 8


def test_items_that_differ_in_their_setup_are_different_evaluations(tmp_path):
    from dataclasses import replace

    from roboflamingo.eval.protocol import EvalItem

    plain = [EvalItem(0, {"start": 0}, ["task_0"], ["do it"])]
    run(tmp_path, cfg(), items=plain)
    with pytest.raises(ValueError, match="different evaluation"):
        run(tmp_path, cfg(), items=[replace(plain[0], setup=["lift"])])


def test_worker_error_surfaces_with_its_traceback_and_finished_chains_stay_recorded(tmp_path):
    with pytest.raises(RuntimeError, match="policy exploded on start 500"):
        run(tmp_path, cfg(workers=2), policy=PushPolicyFactory(fail_on_chain=500))
    # chain 5 (start 500) failed; whatever finished before is on disk for the rerun
    indices = {json.loads(raw)["index"] for raw in (tmp_path / RECORDS_DIR / "rank-0.jsonl").read_text().splitlines()}
    assert 5 not in indices


@pytest.mark.slow
def test_a_worker_that_dies_silently_is_reported_with_its_exit_code(tmp_path):
    with pytest.raises(RuntimeError, match=r"exit code"):
        run(tmp_path, cfg(workers=2), policy=PushPolicyFactory(fail_on_chain=300, hard_exit=True))
    assert ResultStore(tmp_path, "unused").files()  # chains finished before the crash were kept


@pytest.mark.slow
def test_a_chain_a_worker_reported_is_recorded_even_if_the_worker_dies_right_after(tmp_path):
    # Each worker reports one chain and dies at once, before a queue's feeder thread could flush it.
    with pytest.raises(RuntimeError, match=r"exit code"):
        run(tmp_path, cfg(workers=2), policy=DiesAfterOneChainFactory())
    records = (tmp_path / RECORDS_DIR / "rank-0.jsonl").read_text().splitlines()
    assert len(records) == 2


def test_videos_for_the_first_k_chains_are_named_by_outcome(tmp_path):
    s = run(tmp_path, cfg(num_videos=2, video_fps=10, video_stride=2))
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == ["chain0000_5of5_success.mp4", "chain0001_0of5_fail-hard_0.mp4"]
    with av.open(str(tmp_path / "videos" / videos[1])) as container:
        frames = list(container.decode(video=0))
    # the reset and the 6 steps of the failed first subtask, every second one kept
    assert len(frames) == 4
    assert frames[0].width == 16 and frames[0].height == 8
    assert s["num_chains"] == 8


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_videos_keep_the_first_k_failures_of_each_task_by_chain_index(tmp_path, workers):
    items = Chains([0, 5, 0, 2, 0, 5]).items()  # hard_0 fails in chains 0, 2 and 4; hard_2 in chain 3
    s = run(tmp_path, cfg(failure_videos=2, num_videos=1, workers=workers), items=items)
    assert s["failure_videos"] == {
        "hard_0": ["videos/failures/chain0000_0of5_fail-hard_0.mp4", "videos/failures/chain0002_0of5_fail-hard_0.mp4"],
        "hard_2": ["videos/failures/chain0003_2of5_fail-hard_2.mp4"],
    }
    # Nothing else is left behind: no successes, no third hard_0 failure, no partial files.
    assert sorted(p.name for p in (tmp_path / "videos" / "failures").iterdir()) == [
        "chain0000_0of5_fail-hard_0.mp4", "chain0002_0of5_fail-hard_0.mp4", "chain0003_2of5_fail-hard_2.mp4"]
    # The first chain's showcase video is kept as num_videos says, beside its failure copy.
    assert sorted(p.name for p in (tmp_path / "videos").glob("*.mp4")) == ["chain0000_0of5_fail-hard_0.mp4"]
    # The clip is the whole chain up to its failure: the reset, two subtasks done, the failed one.
    steps = ResultStore(tmp_path, s["fingerprint"]).load()[3].steps
    assert len(steps) == 3 and steps[-1] == 6
    with av.open(str(tmp_path / s["failure_videos"]["hard_2"][0])) as container:
        assert len(list(container.decode(video=0))) == 1 + sum(steps)


def test_report_files(tmp_path):
    s = evaluate_chains(PushPolicyFactory(), CounterEnvFactory(), cfg(), items=Chains(LENGTHS).items())
    paths = write_report(tmp_path, s, "push on counter")
    data = json.loads(paths["json"].read_text())
    assert data["avg_len"] == pytest.approx(3.125) and len(data["success_rates"]) == 5
    assert data["per_task"]["task_0"] == {"success": 7, "total": 7, "rate": 1.0}
    md = paths["md"].read_text()
    assert "| 87.5% | 75.0% | 62.5% | 50.0% | 37.5% | 3.12 |" in md
    assert "| hard_0 | 0 | 1 | 0.0% |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ranks_split_the_chains_and_rank_0_merges(tmp_path):
    """Two processes with torchrun's environment variables: each evaluates its share, rank 0 reports."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(__file__)
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, os.path.join(here, "eval_dist_worker.py"), str(tmp_path), str(tmp_path / f"out{rank}.json")]
        procs.append(subprocess.Popen(cmd, env=env))
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    merged = json.loads((tmp_path / "out0.json").read_text())
    assert json.loads((tmp_path / "out1.json").read_text()) is None
    assert merged["num_chains"] == 8 and merged["avg_len"] == pytest.approx(sum(LENGTHS) / 8)
    assert merged["speed"]["world_size"] == 2
    per_rank = {
        rank: sorted(json.loads(line)["index"] for line in (tmp_path / RECORDS_DIR / f"rank-{rank}.jsonl").open())
        for rank in range(2)
    }
    assert per_rank == {0: [0, 2, 4, 6], 1: [1, 3, 5, 7]}


def test_plain_function_factories_resume_under_the_same_identity(tmp_path):
    from functools import partial

    from eval_fakes import PushPolicy

    from roboflamingo.eval.runner import describe

    def make_policy(worker):
        return PushPolicy()

    items = Chains(LENGTHS).items()
    first = evaluate_chains(make_policy, partial(CounterEnvFactory.__call__, CounterEnvFactory()), cfg(),
                            items=items, run_dir=tmp_path)
    again = evaluate_chains(make_policy, partial(CounterEnvFactory.__call__, CounterEnvFactory()), cfg(),
                            items=items, run_dir=tmp_path)
    assert first["speed"]["chains_this_run"] == 8 and again["speed"]["chains_this_run"] == 0
    assert describe(make_policy) == {"factory": f"{__name__}.{make_policy.__qualname__}"}
