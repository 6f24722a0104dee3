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
