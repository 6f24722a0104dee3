"""Action chunks at inference (``head.chunking``): open-loop execution of k actions, ACT's temporal
ensembling (against LeRobot's own ensembler), binary grippers, and step() == step_batch()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import (
    assert_step_batch_equals_steps,
    frame_obs,
    make_batch,
    make_stats,
    micro_config,
    micro_head,
    open_gates,
)

from roboflamingo.config import ConfigError, load
from roboflamingo.models.chunking import ChunkExecutor
from roboflamingo.models.config import ChunkingConfig, ChunkingOverride
from roboflamingo.models.policy import RoboFlamingoPolicy

ACT_GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "act" / "temporal_ensemble.json"


def _run(executor: ChunkExecutor, chunks: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Feed chunks[t] on the steps that re-plan; returns the actions and the steps that re-planned."""
    state, actions, planned = executor.start(), [], []
    for t in range(len(chunks)):
        if state.needs_chunk:
            planned.append(t)
        action, state = state.step(chunks[t] if state.needs_chunk else None)
        actions.append(action)
    return np.stack(actions), planned


def test_open_loop_executes_k_actions_of_each_chunk_then_replans():
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, (11, 4, 3))
    actions, planned = _run(ChunkExecutor(ChunkingConfig(execute_steps=3), horizon=4), chunks)
    assert planned == [0, 3, 6, 9]
    expected = np.stack([chunks[t - t % 3][t % 3] for t in range(11)])
    np.testing.assert_array_equal(actions, expected.astype(np.float32))
    # k = A runs every action of every chunk.
    actions, planned = _run(ChunkExecutor(ChunkingConfig(execute_steps=4), horizon=4), chunks)
    assert planned == [0, 4, 8]
    np.testing.assert_array_equal(actions[4:8], chunks[4].astype(np.float32))


@pytest.mark.parametrize("case", range(4))
def test_temporal_ensembling_equals_lerobots_act_ensembler(case):
    """Golden output of LeRobot's ACTTemporalEnsembler (scripts/make_act_fixtures.py) on the same chunks."""
    golden = json.loads(ACT_GOLDEN.read_text())
    chunks = np.asarray(golden["chunks"])
    coeff, expected = golden["cases"][case]["coeff"], np.asarray(golden["cases"][case]["actions"])
    executor = ChunkExecutor(ChunkingConfig(ensemble=True, ensemble_decay=coeff), horizon=golden["chunk_size"])
    actions, planned = _run(executor, chunks)
    assert planned == list(range(len(chunks)))
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
    if case == 0:
        # By hand, step 6 with A = 5: the chunks of steps 2..6, oldest first, weights exp(-0.01 i).
        w = np.exp(-coeff * np.arange(5))
        by_hand = sum(w[i] * chunks[2 + i][4 - i] for i in range(5)) / w.sum()
        np.testing.assert_allclose(actions[6], by_hand, rtol=1e-6)


def test_ensembling_every_k_steps_weights_the_chunks_that_cover_the_step():
    rng = np.random.default_rng(1)
    chunks = rng.uniform(-1, 1, (9, 6, 2))
    actions, planned = _run(ChunkExecutor(ChunkingConfig(execute_steps=2, ensemble=True, ensemble_decay=0.0),
                                          horizon=6), chunks)
    assert planned == [0, 2, 4, 6, 8]
    # Step 5 is covered by the chunks made at 0, 2 and 4 (uniform weights with m = 0).
    np.testing.assert_allclose(actions[5], (chunks[0][5] + chunks[2][3] + chunks[4][1]) / 3, rtol=1e-6)
    # Step 7: the chunk made at 0 no longer covers it.
    np.testing.assert_allclose(actions[7], (chunks[2][5] + chunks[4][3] + chunks[6][1]) / 3, rtol=1e-6)


def test_binary_gripper_stays_exactly_close_or_open():
    # dim 1 is a gripper; chunks carry its probability of open.
    horizon = 3
    chunks = np.zeros((3, horizon, 2))
    chunks[..., 0] = 0.5
    chunks[0, :, 1] = [0.9, 0.9, 0.9]   # open, confidently
    chunks[1, :, 1] = [0.3, 0.3, 0.3]   # close, weakly
    chunks[2, :, 1] = [0.2, 0.2, 0.2]   # close
    prob = ChunkExecutor(ChunkingConfig(ensemble=True, ensemble_decay=0.0), horizon, grippers=(1,))
    actions, _ = _run(prob, chunks)
    # Step 1 averages 0.9 and 0.3 (0.6: open); step 2 averages 0.9, 0.3, 0.2 (0.467: close).
    assert actions[:, 1].tolist() == [1.0, 1.0, -1.0]
    newest = ChunkExecutor(ChunkingConfig(ensemble=True, ensemble_decay=0.0, ensemble_gripper="newest"), horizon,
                           grippers=(1,))
    actions, _ = _run(newest, chunks)
    assert actions[:, 1].tolist() == [1.0, -1.0, -1.0]
    np.testing.assert_allclose(actions[:, 0], 0.5)  # the continuous dim is still ensembled
    custom = ChunkExecutor(ChunkingConfig(execute_steps=3), horizon, grippers=(1,), close=0.0, open=0.08)
    actions, _ = _run(custom, chunks)
    assert actions[:, 1].tolist() == pytest.approx([0.08, 0.08, 0.08])
    tie = ChunkExecutor(ChunkingConfig(execute_steps=2), 2, grippers=(0,))
    assert tie.start().step(np.full((2, 1), 0.5))[0][0] == -1.0  # as argmax over (close, open) logits


def test_chunk_state_refuses_a_missing_extra_or_misshapen_chunk_and_never_moves_on_error():
    state = ChunkExecutor(ChunkingConfig(execute_steps=2), horizon=3).start()
    with pytest.raises(ValueError, match="re-plans.*needs the newly predicted chunk"):
        state.step(None)
    with pytest.raises(ValueError, match=r"shape \(3, action dim\)"):
        state.step(np.zeros((2, 7)))
    assert state.t == 0 and state.chunks == ()
    _, later = state.step(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="executes a stored action"):
        later.step(np.zeros((3, 7)))
    assert later.t == 1


def test_config_rules_name_the_key():
    with pytest.raises(ValueError, match=r"head.chunking.execute_steps \(5\) must be <= model.act_steps \(2\)"):
        RoboFlamingoPolicy.from_config(micro_config(act_steps=2), micro_head(chunking=ChunkingConfig(execute_steps=5)), make_stats())
    with pytest.raises(ValueError, match="head.chunking.ensemble_gripper must be one of"):
        ChunkingConfig(ensemble_gripper="mean")
    with pytest.raises(ValueError, match="ensemble_decay must be a finite number"):
        ChunkingConfig(ensemble_decay=float("nan"))
    with pytest.raises(ValueError, match="policy.chunking.execute_steps"):
        ChunkingOverride(execute_steps=0)
    base = ChunkingConfig(execute_steps=2)
    assert ChunkingOverride(ensemble=True).apply(base) == ChunkingConfig(execute_steps=2, ensemble=True)
    assert not ChunkingOverride().is_set and ChunkingOverride().apply(base) == base


def test_train_and_demo_refuse_a_chunk_longer_than_the_prediction_before_any_work():
    for command, act_steps in (("train", 1), ("demo", 10)):
        with pytest.raises(ConfigError, match=rf"execute_steps \(11\) must be <= model.act_steps \({act_steps}\)"):
            load(command, _job_schema(command), ["head.chunking.execute_steps=11"])


def _job_schema(command):
    if command == "train":
        from roboflamingo.train.job import Job
    else:
        from roboflamingo.demo import Job
    return Job


MODES = [ChunkingConfig(execute_steps=3), ChunkingConfig(ensemble=True),
         ChunkingConfig(execute_steps=2, ensemble=True, ensemble_decay=-0.2, ensemble_gripper="newest")]
HEADS = [("lstm", "sliding", 1), ("lstm", "sliding", 3), ("lstm", "running", 1), ("transformer", "sliding", 3),
         ("mlp", "sliding", 3)]


@pytest.mark.parametrize("kind,history,window", HEADS)
@pytest.mark.parametrize("mode", range(len(MODES)))
def test_step_batch_equals_separate_steps_under_chunking(kind, history, window, mode):
    """Episodes of different ages, one restarted mid-way, stepped together: every action equals that
    episode's own step() sequence, and the gripper is exactly +-1."""
    torch.manual_seed(3)
    policy = RoboFlamingoPolicy.from_config(micro_config(window=window, act_steps=4, use_state=True),
                          micro_head(kind, lstm_history=history, chunking=MODES[mode]), make_stats())
    open_gates(policy)
    b, t = 3, 9
    batch = make_batch(b=b, t=t, a=4, instructions=("stack the blocks", "open the drawer", "push the blue block left"))
    starts, restart = [0, 2, 1], (1, 6)
    for action in assert_step_batch_equals_steps(policy, batch, starts, restart):
        assert action[6] in (-1.0, 1.0) and np.all(np.abs(action[:6]) <= 1.0)


def _count_backbone_calls(policy) -> list[int]:
    calls: list[int] = []
    policy.backbone.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    return calls


def test_open_loop_skips_the_backbone_only_for_a_head_without_history():
    """window 1: the backbone runs only on re-planning steps and the actions are the stored chunk's.
    window 3: it runs on every frame, so the re-planning chunk is what forward() gives on the
    consecutive frames, as in training."""
    torch.manual_seed(4)
    batch = make_batch(b=1, t=7, a=3)
    obs = [frame_obs(batch, 0, f) for f in range(7)]
    instruction = batch["instruction"][0]
    for window, runs in ((1, 3), (3, 7)):
        policy = RoboFlamingoPolicy.from_config(micro_config(window=window, act_steps=3, use_state=True),
                              micro_head("lstm", chunking=ChunkingConfig(execute_steps=3)), make_stats())
        open_gates(policy)
        calls = _count_backbone_calls(policy)
        policy.reset()
        actions = np.stack([policy.step(o, instruction) for o in obs])
        assert len(calls) == runs, f"window {window}: {len(calls)} backbone forwards for 7 steps"
        with torch.no_grad():
            pose, grip = policy.predict({k: (v[:, :7] if k != "instruction" else v) for k, v in batch.items()})
        unnorm = policy.normalizer.unnormalize_continuous(pose[0]).clamp(-1, 1).numpy()  # (T, A, 6) per frame
        for f in range(7):
            planned = f - f % 3
            np.testing.assert_allclose(actions[f, :6], unnorm[planned, f - planned], atol=1e-5)
            opened = bool(grip[0, planned, f - planned].argmax() == 1)
            assert actions[f, 6] == (1.0 if opened else -1.0)


def test_default_executes_the_first_action_of_a_fresh_chunk_every_step():
    torch.manual_seed(5)
    policy = RoboFlamingoPolicy.from_config(micro_config(act_steps=3), micro_head(), make_stats())
    open_gates(policy)
    batch = make_batch(b=1, t=3, a=3)
    policy.reset()
    for f in range(3):
        action = policy.step(frame_obs(batch, 0, f), batch["instruction"][0])
        with torch.no_grad():
            pose, _ = policy.predict({k: (v[:, : f + 1] if k != "instruction" else v) for k, v in batch.items()})
        expected = policy.normalizer.unnormalize_continuous(pose[0, f, 0]).clamp(-1, 1).numpy()
        np.testing.assert_allclose(action[:6], expected, atol=1e-5)


def test_float16_actions_round_the_executed_pose_under_chunking():
    torch.manual_seed(6)
    policy = RoboFlamingoPolicy.from_config(micro_config(act_steps=2), micro_head(float16_actions=True,
                                                                chunking=ChunkingConfig(ensemble=True)), make_stats())
    batch = make_batch(b=1, t=2, a=2)
    policy.reset()
    for f in range(2):
        action = policy.step(frame_obs(batch, 0, f), batch["instruction"][0])
        np.testing.assert_array_equal(action[:6], action[:6].astype(np.float16).astype(np.float32))


def test_an_evaluation_overrides_the_checkpoints_chunking_and_fingerprints_it(tmp_path):
    from roboflamingo.eval.policies import PolicySpec
    from roboflamingo.eval.run import Job

    saved = RoboFlamingoPolicy.from_config(micro_config(act_steps=4), micro_head(chunking=ChunkingConfig(execute_steps=2)), make_stats())
    saved.save_pretrained(tmp_path / "ckpt")
    plain = PolicySpec(load("eval", Job, [f"policy.checkpoint={tmp_path / 'ckpt'}"]).policy)
    assert plain().head_config.chunking == ChunkingConfig(execute_steps=2)  # the checkpoint's own
    assert "chunking" not in plain.identity()
    job = load("eval", Job, [f"policy.checkpoint={tmp_path / 'ckpt'}", "policy.chunking.ensemble=true"])
    spec = PolicySpec(job.policy)
    assert spec().head_config.chunking == ChunkingConfig(execute_steps=2, ensemble=True)
    assert spec.identity()["chunking"] == {"ensemble": True}
    too_long = load("eval", Job, [f"policy.checkpoint={tmp_path / 'ckpt'}", "policy.chunking.execute_steps=5"])
    with pytest.raises(ValueError, match=r"policy.chunking.execute_steps \(5\) must be <= model.act_steps \(4\)"):
        PolicySpec(too_long.policy)()
    with pytest.raises(ConfigError, match="policy.chunking is only read with policy=checkpoint"):
        load("eval", Job, ["policy=expert", "policy.chunking.execute_steps=2"])
