"""Batched evaluation (eval.batch_size=B): one policy, B simulator processes, one forward per control
step. The records must not depend on B, a crash must never lose or double a chain, failures surface."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from eval_fakes import Chains, CounterEnvFactory, PushPolicyFactory

from roboflamingo.batching import BatchedModel, PerSlotPolicies, SlotBatcher
from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.runner import CRASH_AFTER_ENV, evaluate_items
from roboflamingo.eval.store import RECORDS_DIR, ResultStore
from roboflamingo.process import CRASH_EXIT_CODE

LENGTHS = [5, 0, 2, 5, 3, 1, 4, 5]
IDENTITY = {"policy": "push", "env": "counter"}
OUTCOME = ("index", "tasks", "completed", "steps", "video")


def cfg(**kw):
    return EvalConfig(**{"ep_len": 6, "progress": False, **kw})


def run(tmp_path, config, policy=None, env=None, items=None):
    items = items if items is not None else Chains(LENGTHS).items()
    return evaluate_items(items, policy or PushPolicyFactory(), env or CounterEnvFactory(), config, tmp_path, IDENTITY)


def outcomes(run_dir):
    """Every record's outcome by chain index (timings differ between runs, outcomes must not)."""
    done = ResultStore(run_dir, "unused").files()
    records = [json.loads(line) for path in done for line in path.read_text().splitlines()]
    return {r["index"]: {k: r.get(k) for k in OUTCOME} for r in records}


@pytest.mark.slow
def test_b4_gives_exactly_the_records_of_b1_and_of_the_unbatched_layout(tmp_path):
    one = run(tmp_path / "b1", cfg(batch_size=1))
    four = run(tmp_path / "b4", cfg(batch_size=4, num_videos=2))
    plain = run(tmp_path / "plain", cfg(num_videos=2))
    grouped = run(tmp_path / "g2", cfg(batch_size=2, batch_groups=2, num_videos=2))
    assert outcomes(tmp_path / "b1").keys() == set(range(8))
    assert outcomes(tmp_path / "g2") == outcomes(tmp_path / "plain")
    assert grouped["speed"]["simulators"] == 4 and grouped["speed"]["batch_groups"] == 2
    strip = {i: {**o, "video": None} for i, o in outcomes(tmp_path / "b4").items()}
    assert {i: {**o, "video": None} for i, o in outcomes(tmp_path / "b1").items()} == strip
    assert outcomes(tmp_path / "b4") == outcomes(tmp_path / "plain")  # videos too
    for s in (one, four):
        assert s["avg_len"] == pytest.approx(sum(LENGTHS) / 8) and s["per_task"] == plain["per_task"]
    steps = sum(sum(r["steps"]) for r in outcomes(tmp_path / "b4").values())
    # every control step of every chain went through a forward, and B=4 needed fewer of them
    assert one["speed"]["policy_forwards"] == steps
    assert steps / 4 <= four["speed"]["policy_forwards"] < steps
    assert four["speed"]["batch_size"] == 4 and 0 <= four["speed"]["policy_share"] <= 1
    assert sorted(p.name for p in (tmp_path / "b4" / "videos").iterdir()) == [
        "chain0000_5of5_success.mp4", "chain0001_0of5_fail-hard_0.mp4"]


@pytest.mark.slow
def test_a_checkpoint_policy_gives_the_same_records_for_any_batch_size(tmp_path):
    """The real model, batched across simulators, decides like B=1 (the counter moves when
    action[0] > 0, so every one of its actions shows in the records)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models"))
    from model_helpers import make_stats, micro_config, micro_head, open_gates

    from roboflamingo.eval.policies import PolicySpec
    from roboflamingo.models.policy import RoboFlamingoPolicy
    from roboflamingo.policies import PolicySourceConfig

    torch.manual_seed(3)
    policy = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), make_stats())
    open_gates(policy, 2.0)  # let the image (the counter) drive the actions
    policy.save_pretrained(tmp_path / "ckpt")
    spec = PolicySpec(PolicySourceConfig(checkpoint=str(tmp_path / "ckpt"), device="cpu"), torch_threads=1)
    env = CounterEnvFactory(need=2)
    run(tmp_path / "b1", cfg(batch_size=1), policy=spec, env=env)
    run(tmp_path / "b3", cfg(batch_size=3), policy=spec, env=env)
    run(tmp_path / "plain", cfg(), policy=spec, env=env)
    b1 = outcomes(tmp_path / "b1")
    assert b1 == outcomes(tmp_path / "b3") == outcomes(tmp_path / "plain")
    assert len({(r["completed"], tuple(r["steps"])) for r in b1.values()}) > 1  # the policy made choices


CRASHING_RUN = textwrap.dedent("""
    import sys
    from eval_fakes import Chains, CounterEnvFactory, PushPolicyFactory
    from roboflamingo.eval.config import EvalConfig
    from roboflamingo.eval.runner import evaluate_items
    lengths = [5, 0, 2, 5, 3, 1, 4, 5, 2, 3]
    cfg = EvalConfig(ep_len=6, progress=False, batch_size=int(sys.argv[2]))
    evaluate_items(Chains(lengths).items(), PushPolicyFactory(), CounterEnvFactory(), cfg, sys.argv[1], {"t": 1})
""")


def test_kill_and_resume_under_batching_never_loses_or_doubles_a_chain(tmp_path):
    """The main process dies right after its 3rd record while 4 chains are in flight (the fault hook,
    no timing involved); the rerun finishes exactly the chains without a record."""
    lengths = [5, 0, 2, 5, 3, 1, 4, 5, 2, 3]
    env = {**os.environ, CRASH_AFTER_ENV: "3",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CRASHING_RUN, str(tmp_path), "4"], env=env, timeout=120)
    assert proc.returncode == CRASH_EXIT_CODE
    before = [json.loads(line)["index"] for line in (tmp_path / RECORDS_DIR / "rank-0.jsonl").read_text().splitlines()]
    assert len(before) == 3 and len(set(before)) == 3
    # resume with another batch size: the records do not depend on it
    s = evaluate_items(Chains(lengths).items(), PushPolicyFactory(), CounterEnvFactory(), cfg(batch_size=3),
                       tmp_path, {"t": 1})
    assert s["speed"]["chains_this_run"] == 7 and s["num_chains"] == 10
    assert s["avg_len"] == pytest.approx(sum(lengths) / 10)
    after = [json.loads(line)["index"] for line in (tmp_path / RECORDS_DIR / "rank-0.jsonl").read_text().splitlines()]
    assert sorted(after) == list(range(10))  # every chain exactly once
    assert after[:3] == before


def test_a_policy_error_under_batching_surfaces_and_finished_chains_stay_recorded(tmp_path):
    with pytest.raises(RuntimeError, match="policy exploded on start 500"):
        run(tmp_path, cfg(batch_size=3), policy=PushPolicyFactory(fail_on_chain=500))
    assert 5 not in outcomes(tmp_path)


def test_a_simulator_that_dies_silently_is_reported_with_its_exit_code(tmp_path):
    with pytest.raises(RuntimeError, match=r"simulator\(s\) exited .* exit code"):
        run(tmp_path, cfg(batch_size=2), env=CounterEnvFactory(die_on_start=300))
    assert 3 not in outcomes(tmp_path)


class CountingModel:
    """A stateless model with step_batch: action[0] = frames seen in this episode; counts its calls."""

    def __init__(self):
        self.batches: list[int] = []

    def step_batch(self, observations, instructions, histories):
        self.batches.append(len(observations))
        if any(i == "explode" for i in instructions):
            raise ValueError("explode")
        new = [(h or 0) + 1 for h in histories]
        actions = np.zeros((len(new), 7), np.float32)
        actions[:, 0] = new
        actions[:, 6] = 1
        return actions, new


def test_the_batcher_steps_all_waiting_slots_in_one_call_and_keeps_their_histories_apart():
    model = CountingModel()
    batcher = SlotBatcher(BatchedModel(model))
    a, b = batcher.open(), batcher.open()
    for _ in range(3):
        fa, fb = batcher.submit(a, {}, "x"), batcher.submit(b, {}, "y")
        assert batcher.tick() == 2
    assert fa.result()[0] == 3 and fb.result()[0] == 3
    batcher.reset(b)
    fa, fb = batcher.submit(a, {}, "x"), batcher.submit(b, {}, "y")
    batcher.tick()
    assert (fa.result()[0], fb.result()[0]) == (4, 1)
    assert model.batches == [2, 2, 2, 2] and batcher.forwards == 4 and batcher.steps == 8
    with pytest.raises(RuntimeError, match="already has a frame waiting"):
        batcher.submit(a, {}, "x")
        batcher.submit(a, {}, "x")


def test_a_failing_request_fails_alone_and_leaves_the_others_history_untouched():
    batcher = SlotBatcher(BatchedModel(CountingModel()))
    a, b = batcher.open(), batcher.open()
    fa, fb = batcher.submit(a, {}, "x"), batcher.submit(b, {}, "explode")
    batcher.tick()
    assert fa.result()[0] == 1
    with pytest.raises(ValueError, match="explode"):
        fb.result()
    fb = batcher.submit(b, {}, "y")
    batcher.tick()
    assert fb.result()[0] == 1  # the failed frame did not count


def test_per_slot_policies_make_one_instance_per_slot_and_non_finite_actions_are_refused():
    class Nan:
        def reset(self):
            pass

        def step(self, obs, instruction):
            return np.full(7, np.nan, np.float32)

    made = []
    batcher = SlotBatcher(PerSlotPolicies(lambda slot: made.append(slot) or Nan()))
    slot = batcher.open()
    future = batcher.submit(slot, {}, "x")
    batcher.tick()
    with pytest.raises(ValueError, match="non-finite"):
        future.result()
    assert made == [slot]


def test_precision_and_batch_size_are_validated_and_precision_enters_the_identity(tmp_path):
    from roboflamingo.eval.policies import PolicySpec
    from roboflamingo.policies import PolicySourceConfig

    with pytest.raises(ValueError, match="eval.precision"):
        EvalConfig(precision="int4")
    with pytest.raises(ValueError, match="eval.batch_size"):
        EvalConfig(batch_size=-1)
    (tmp_path / "ckpt").mkdir()
    for name in ("config.json", "model.safetensors"):  # what the source check looks for; never loaded here
        (tmp_path / "ckpt" / name).write_text("{}")
    fp32 = PolicySpec(PolicySourceConfig(checkpoint=str(tmp_path / "ckpt")))
    bf16 = PolicySpec(PolicySourceConfig(checkpoint=str(tmp_path / "ckpt")), precision="bf16")
    assert "precision" not in fp32.identity() and bf16.identity()["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        PolicySpec(PolicySourceConfig("expert"), precision="fp8")
