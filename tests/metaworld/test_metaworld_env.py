"""MetaWorldEnv: LeRobot's images and positions (golden data from LeRobot's own env), seeding,
the render presets, and refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.metaworld.config import MetaWorldConfig
from roboflamingo.metaworld.env import FULL_OBS, MetaWorldEnv, expert_policy, sawyer_robot

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "lerobot_metaworld_frames.json").read_text())
SMALL = {"size": 32}


def _thumbnail(image: np.ndarray, block: int) -> np.ndarray:
    h, w, c = image.shape
    return np.round(image.reshape(h // block, block, w // block, block, c).astype(np.float64).mean(axis=(1, 3)))


@pytest.fixture
def env():
    e = MetaWorldEnv("drawer-open-v3", **SMALL)
    yield e
    e.close()


@pytest.mark.slow
@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['task']}-seed{c['seed']}")
def test_lerobot_preset_draws_lerobots_images_and_positions(case):
    """LeRobot's MetaworldEnv (scripts/metaworld_lerobot_golden.py) against ours at 480 px, render=lerobot:
    the same positions from the same seed, the same hand after the same actions, the same image."""
    env = MetaWorldEnv(case["task"], render="lerobot", size=case["shape"][0])
    try:
        obs, _ = env.reset(seed=case["seed"])
        np.testing.assert_allclose(env._env._last_rand_vec, case["rand_vec"], rtol=0, atol=1e-12)
        first = obs
        for a in case["actions"]:
            obs, *_ = env.step(np.asarray(a, dtype=np.float32))
    finally:
        env.close()
    block = case["shape"][0] // case["thumbnail_shape"][0]
    for k, o in enumerate((first, obs)):
        np.testing.assert_allclose(o["state"], case["agent_pos"][k], rtol=0, atol=1e-9)
        want = np.frombuffer(base64.b64decode(case["thumbnail_b64"][k]), np.uint8).reshape(case["thumbnail_shape"])
        got = _thumbnail(o["corner2"], block)
        # the same renderer draws the same pixels; a different OpenGL stack may differ by rounding only
        assert np.abs(got - want).max() <= 2, f"frame {k}: {np.abs(got - want).max()} levels off LeRobot's"


def test_observation_follows_the_sawyer_description(env):
    obs, info = env.reset(seed=0)
    robot = env.robot
    assert robot.name == "metaworld_sawyer" and robot.camera_names == ("corner2",)
    assert (robot.cameras[0].height, robot.cameras[0].width) == (32, 32)
    robot.check_observation(obs)
    assert set(obs) == {"corner2", "state", FULL_OBS}
    np.testing.assert_array_equal(obs["state"], obs[FULL_OBS][:4])
    assert env.observation_space.contains(obs)
    assert info == {"task": "drawer-open-v3", "seed": 0, "success": False, "is_success": False}
    # The description's bounds are Meta-World's own observation space.
    space = env._env.sawyer_observation_space
    np.testing.assert_allclose(robot.state.low, space.low[:4])
    np.testing.assert_allclose(robot.state.high, space.high[:4])
    assert sawyer_robot(MetaWorldConfig(size=64)).cameras[0].height == 64


def test_full_state_is_meta_worlds_whole_observation_with_its_goal():
    env = MetaWorldEnv("reach-v3", state="full", **SMALL)
    try:
        obs, _ = env.reset(seed=3)
        goal = env._env._target_pos.copy()
    finally:
        env.close()
    state = env.robot.state
    assert state.key == FULL_OBS and state.dim == 39 and len(set(state.names)) == 39
    assert state.names[:4] == sawyer_robot().state.names and state.names[-3:] == ("goal.x", "goal.y", "goal.z")
    env.robot.check_observation(obs)
    # MT1's tasks leave the goal observable: the last three entries are where reach must go.
    np.testing.assert_allclose(obs[state.key][-3:], goal)
    # bounded where Meta-World bounds the hand, both now and one step back; free for objects and goal
    assert state.low[18:22] == state.low[:4] == sawyer_robot().state.low and np.isinf(state.low[4:18]).all()
    from roboflamingo.robot import RobotDescription

    saved = RobotDescription.from_dict(json.loads(json.dumps(env.robot.to_dict())))
    assert saved == env.robot
    with pytest.raises(ValueError, match="env.state must be one of"):
        MetaWorldConfig(state="joints")


def test_seeding_reproduces_episodes_and_leaves_the_global_rng_alone(env):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    other = MetaWorldEnv("drawer-open-v3", **SMALL)
    try:
        a, _ = env.reset(seed=5)
        b, _ = other.reset(seed=5)
        for k in (FULL_OBS, "corner2"):
            np.testing.assert_array_equal(a[k], b[k])
        c, _ = env.reset(seed=6)
        assert not np.array_equal(a[FULL_OBS], c[FULL_OBS])  # another seed, another drawer position
        d, _ = env.reset(seed=5)  # the same seed again in a used env: the same episode
        np.testing.assert_array_equal(a[FULL_OBS], d[FULL_OBS])
    finally:
        other.close()
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_expert_succeeds_and_success_terminates(env):
    obs, _ = env.reset(seed=1)
    expert = expert_policy("drawer-open-v3")
    steps = 0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(expert.get_action(obs[FULL_OBS]))
        steps += 1
    assert terminated and not truncated and info["success"] and info["is_success"]
    assert steps < 200


def test_episode_truncates_at_max_path_length_and_refuses_to_continue():
    env = MetaWorldEnv("reach-v3", render="off", size=8)
    try:
        env.reset(seed=0)
        assert env.max_path_length == 500
        truncated = False
        for t in range(env.max_path_length):
            _, _, _, truncated, _ = env.step(np.zeros(4))
            assert truncated == (t == env.max_path_length - 1)
        with pytest.raises(RuntimeError, match="max_path_length"):
            env.step(np.zeros(4))
        env.reset(seed=0)
        env.step(np.zeros(4))  # a reset starts a new episode
    finally:
        env.close()


def test_bad_actions_are_refused_before_anything_moves(env):
    obs, _ = env.reset(seed=0)
    qpos = env._env.data.qpos.copy()
    for bad in ([0.0, np.nan, 0.0, 0.0], [0.0, 0.0, 0.0], [[0.0] * 4]):
        with pytest.raises(ValueError, match="drawer-open-v3 action must be 4 finite numbers"):
            env.step(np.asarray(bad))
    np.testing.assert_array_equal(env._env.data.qpos, qpos)
    # out of range is clipped as Meta-World clips it: 100 moves as far as 1
    a, _ = env.reset(seed=0)
    big, *_ = env.step(np.array([100.0, 0.0, 0.0, 0.0]))
    env.reset(seed=0)
    one, *_ = env.step(np.array([1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(big[FULL_OBS], one[FULL_OBS])


def test_render_presets_set_mujocos_offscreen_options():
    import mujoco

    flags = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX)
    # Both open in one process and drawn in turn: each must draw in its own GL context.
    envs = {preset: MetaWorldEnv("drawer-open-v3", render=preset, size=32) for preset in ("fast", "lerobot")}
    try:
        seen = {}
        for _ in range(2):
            for preset, env in envs.items():
                obs, _ = env.reset(seed=0)
                viewer = env._env.mujoco_renderer._get_viewer("rgb_array")
                seen[preset] = ([int(viewer.scn.flags[f]) for f in flags], int(env._env.model.vis.quality.offsamples),
                                obs["corner2"])
        alone = MetaWorldEnv("drawer-open-v3", render="fast", size=32)
        try:
            np.testing.assert_array_equal(alone.reset(seed=0)[0]["corner2"], seen["fast"][2])
        finally:
            alone.close()
    finally:
        for env in envs.values():
            env.close()
    assert seen["fast"][:2] == ([0, 0, 1], 0)  # shadows and reflections off, skybox kept, no multisampling
    assert seen["lerobot"][:2] == ([1, 1, 1], 4)  # Meta-World's own settings, untouched
    diff = np.abs(seen["fast"][2].astype(float) - seen["lerobot"][2]).mean()
    assert 0 < diff < 20  # the same scene, drawn without shadows and anti-aliasing


def test_render_off_gives_blank_images_but_render_draws():
    env = MetaWorldEnv("reach-v3", render="off", size=16)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["corner2"].shape == (16, 16, 3) and not obs["corner2"].any()
        assert env.render().any()
    finally:
        env.close()


def test_tasks_switch_on_reset_and_unknown_names_fail(env):
    obs, info = env.reset(seed=0, options={"task": "reach"})
    assert env.task == info["task"] == "reach-v3"
    with pytest.raises(ValueError, match="neither a Meta-World task"):
        env.reset(options={"task": "fly-v3"})
    with pytest.raises(ValueError, match="unknown options"):
        env.reset(options={"scene": "D"})
    with pytest.raises(ValueError, match="'nope' is not a camera of reach-v3"):
        MetaWorldEnv("reach-v3", camera="nope", size=8)
    with pytest.raises(RuntimeError, match="has no task"):
        MetaWorldEnv(size=8).reset()


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="env.render must be one of"):
        MetaWorldConfig(render="pretty")
    with pytest.raises(ValueError, match="env.size must be > 0"):
        MetaWorldConfig(size=0)
