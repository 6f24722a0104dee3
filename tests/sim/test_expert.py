import numpy as np
import pytest

from roboflamingo.robots import calvin as T
from roboflamingo.sim.config import EnvConfig
from roboflamingo.sim.env import TabletopEnv
from roboflamingo.sim.expert import ScriptedExpert
from roboflamingo.sim.instructions import load_instructions
from roboflamingo.sim.rollout import reset_to_episode, run_subtask, sample_episode
from roboflamingo.sim.tasks import TaskOracle

ORACLE = TaskOracle.default()


@pytest.fixture(scope="module")
def env():
    e = TabletopEnv(EnvConfig(scene="D", render=False))
    yield e
    e.close()


def test_reset_makes_the_expert_replay_the_same_actions(env):
    expert = ScriptedExpert("D", task="move_slider_left")

    def actions():
        obs, _ = env.reset(seed=0)
        expert.reset()  # forgets the target it integrated during the previous run
        out = []
        for _ in range(10):
            out.append(expert.step(obs, ""))
            obs, *_ = env.step(out[-1])
        return np.stack(out)

    first = actions()
    assert np.abs(first[:, :6]).max() > 0  # it moves
    np.testing.assert_array_equal(actions(), first)


@pytest.mark.parametrize("task", ["open_drawer", "turn_on_led", "lift_blue_block_table", "place_in_slider"])
def test_expert_completes_tasks_from_eval_instructions(env, task):
    rng = np.random.default_rng(1)
    expert = ScriptedExpert("D")
    sentence = load_instructions("eval")
    episode = sample_episode(task, rng, ORACLE)
    obs, _ = reset_to_episode(env, episode, rng)
    for sub in episode.tasks:  # the expert maps each sentence to its task
        ok, obs, steps = run_subtask(env, expert, ORACLE, sub, sentence[sub][0], obs, 360)
        assert ok, f"{sub} failed"
        assert steps < 120


def test_expert_actions_are_calvin_relative_actions(env):
    obs, _ = env.reset(seed=0)
    expert = ScriptedExpert("D", task="move_slider_left")
    for _ in range(20):
        a = expert.step(obs, "")
        assert a.shape == (7,) and np.all(np.abs(a[:6]) <= 1) and a[6] in (-1.0, 1.0)
        obs, *_ = env.step(a)
    # the expert's own target integration matches the simulator's accumulated target
    np.testing.assert_allclose(expert.target_pos, env.target_pos, atol=1e-9)


def test_expert_check_command_prints_table_and_json(capsys):
    import json

    from roboflamingo import cli

    rc = cli.main(["expert-check", "episodes_per_task=2", "tasks=[turn_on_led,move_slider_left]", "workers=1",
                   "progress=false"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    summary = json.loads(lines[-1])
    assert set(summary["per_task"]) == {"turn_on_led", "move_slider_left"}
    assert summary["min_success"] == 1.0 and summary["mean_success"] == 1.0
    assert any(ln.startswith("turn_on_led") for ln in lines[:-1])


def test_homing_expert_returns_to_the_neutral_pose_then_does_the_task(env):
    from roboflamingo.sim.rollout import sample_handover

    rng = np.random.default_rng(3)
    episode = sample_handover("turn_on_led", rng, ORACLE, ["open_drawer", "turn_on_led"])
    obs, _ = reset_to_episode(env, episode, rng)
    ok, obs, _ = run_subtask(env, ScriptedExpert("D", task=episode.tasks[0]), ORACLE, episode.tasks[0],
                             episode.tasks[0], obs, 360)
    assert ok
    expert = ScriptedExpert("D", task="turn_on_led", home=True)
    dist = []
    ok, _, _ = run_subtask(env, expert, ORACLE, "turn_on_led", "turn_on_led", obs, 360,
                           on_step=lambda o, a, n: dist.append(np.linalg.norm(o[T.ROBOT_OBS][:3] - expert.neutral_pos)))
    assert ok
    assert dist[0] > 0.1 and min(dist) < 0.02


def test_the_task_table_plans_every_task_of_the_oracle():
    from roboflamingo.sim.expert import TASK_PLANS

    assert list(TASK_PLANS) != [] and set(TASK_PLANS) == set(ORACLE.tasks)
    held = {t for t, entry in TASK_PLANS.items() if entry.holding}
    # exactly the tasks whose every rule needs a grasped block start with one in the hand
    assert held == {t for t in ORACLE.tasks if all(r["condition"].get("grasped") == 1 for r in ORACLE.specs[t].rules)}


@pytest.mark.parametrize("task", ["open_drawer", "move_slider_right"])
def test_dart_noise_is_sent_the_expert_corrects_it_and_still_succeeds(env, task):
    from roboflamingo.sim.rollout import CorrectedNoise

    rng = np.random.default_rng(5)
    episode = sample_episode(task, rng, ORACLE)
    obs, _ = reset_to_episode(env, episode, rng)
    actor = CorrectedNoise(ScriptedExpert("D", task=task), 0.3, np.random.default_rng(0))
    sent, clean = [], []

    def on_step(o, a, n):
        sent.append(np.array(a))
        clean.append(actor.clean.copy())

    ok, _, _ = run_subtask(env, actor, ORACLE, task, task, obs, 360, on_step=on_step)
    assert ok
    sent, clean = np.stack(sent), np.stack(clean)
    # the robot was sent noisy position deltas; orientation and gripper are the expert's
    noisy = np.abs(sent[:, :3] - clean[:, :3]).max(axis=1) > 0
    assert 0.3 < noisy.mean() < 1 and np.abs(sent[noisy, :3] - clean[noisy, :3]).mean() > 0.1
    np.testing.assert_array_equal(sent[:, 3:], clean[:, 3:])
    # the expert integrated what was sent, so its target is the simulator's ...
    np.testing.assert_allclose(actor.expert.target_pos, env.target_pos, atol=1e-9)
    # ... and its labels undo the noise: over the episode the clean deltas and the noise cancel
    # step by step (each label steers back by what the last noise pushed off, capped by speed)
    steps = noisy[:-1] & noisy[1:]
    noise = (sent - clean)[:-1, :3][steps]
    correction = (clean[1:, :3] - clean[:-1, :3])[steps]
    assert np.corrcoef(noise.ravel(), correction.ravel())[0, 1] < -0.3


def test_a_dart_unit_records_the_experts_labels_not_the_noisy_actions(tmp_path, monkeypatch):
    from roboflamingo.sim import rollout
    from roboflamingo.sim.generate import Job, Unit, run_unit

    calls = []
    step = rollout.CorrectedNoise.step

    def spy(self, obs, instruction):
        sent = step(self, obs, instruction)
        calls.append((self.clean.copy(), sent.copy()))
        return sent

    monkeypatch.setattr(rollout.CorrectedNoise, "step", spy)
    job = Job(root=str(tmp_path), mode="single", tasks=["open_drawer"], episodes_per_task=1, val_episodes_per_task=0,
              dart=0.3, workers=1, progress=False, env=EnvConfig(render=False))
    meta = run_unit(job, Unit("training", "A", 0), ["open_drawer"], tmp_path / "u")
    n = meta["frames"]
    assert n > 10 and len(calls) == n
    rel = np.stack([np.load(tmp_path / "u" / f"episode_{i:07d}.npz")["rel_actions"] for i in range(n)])
    np.testing.assert_allclose(rel, np.stack([c for c, _ in calls]), atol=1e-6)
    assert np.abs(rel[:, :3] - np.stack([s for _, s in calls])[:, :3]).mean() > 0.03
    # the noise has its own stream: the unit starts where, and is annotated as, the plain one is
    calls.clear()
    plain = run_unit(Job(**{**job.__dict__, "dart": 0.0}), Unit("training", "A", 0), ["open_drawer"], tmp_path / "p")
    assert not calls and [s["ann"] for s in plain["segments"]] == [s["ann"] for s in meta["segments"]]
    np.testing.assert_array_equal(np.load(tmp_path / "p" / "episode_0000000.npz")["robot_obs"],
                                  np.load(tmp_path / "u" / "episode_0000000.npz")["robot_obs"])
