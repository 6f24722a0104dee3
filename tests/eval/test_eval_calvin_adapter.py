"""The calvin_env adapter without calvin_env: conversions, CALVIN's initial states, the install hint,
and the wiring against stand-in ``calvin_env`` modules."""

import sys
import types

import numpy as np
import pytest

from roboflamingo.eval import calvin_adapter as ca
from roboflamingo.eval.protocol import EvalItem, rollout_chain


def calvin_obs(step=0):
    return {
        "rgb_obs": {
            "rgb_static": np.full((200, 200, 3), step, np.uint8),
            "rgb_gripper": np.full((84, 84, 3), 2, np.uint8),
            "rgb_tactile": np.zeros((160, 120, 6), np.uint8),
        },
        "depth_obs": {"depth_static": np.zeros((200, 200), np.float32)},
        "robot_obs": np.arange(15, dtype=np.float64),
        "scene_obs": np.arange(24, dtype=np.float64) + step,
    }


def test_observation_becomes_flat_calvin_keys():
    obs = ca.convert_obs(calvin_obs())
    assert set(obs) == {"rgb_static", "rgb_gripper", "robot_obs", "scene_obs"}
    assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_static"].dtype == np.uint8
    assert obs["rgb_gripper"].shape == (84, 84, 3)
    np.testing.assert_array_equal(obs["robot_obs"], np.arange(15))
    assert obs["scene_obs"].shape == (24,)


def test_observation_without_gripper_camera_says_what_is_missing():
    bad = calvin_obs()
    del bad["rgb_obs"]["rgb_gripper"]
    with pytest.raises(ValueError, match="rgb_gripper"):
        ca.convert_obs(bad)


def test_action_is_a_fresh_relative_7_vector_with_a_binary_gripper():
    ours = np.array([0.5, -2.0, 0.1, 0.0, 1.5, -0.3, 0.2], dtype=np.float32)
    out = ca.convert_action(ours)
    np.testing.assert_allclose(out, [0.5, -1.0, 0.1, 0.0, 1.0, -0.3, 1.0], rtol=1e-6)
    assert out.dtype == np.float64 and out.shape == (7,)
    out[0] = 99  # calvin_env's pinned relative_to_absolute edits its argument in place
    assert ours[0] == np.float32(0.5)
    assert ca.convert_action(np.array([0, 0, 0, 0, 0, 0, -0.01]))[6] == -1.0
    assert ca.convert_action(np.zeros(7))[6] == 1.0
    with pytest.raises(ValueError, match="7 values"):
        ca.convert_action(np.zeros(8))


STATE = {
    "led": 1, "lightbulb": 1, "slider": "left", "drawer": "open",
    "red_block": "slider_left", "blue_block": "table", "pink_block": "table", "grasped": 0,
}


def test_calvin_initial_state_layout():
    robot, scene = ca.calvin_initial_state_to_obs(STATE)
    np.testing.assert_allclose(robot, ca.NEUTRAL_ROBOT_OBS)
    assert scene[0] == 0.28 and scene[1] == 0.22 and scene[3] == 0.088 and scene[4] == 1 and scene[5] == 1
    np.testing.assert_allclose(scene[6:9], ca.BLOCK_SLIDER_LEFT)
    table = {tuple(scene[12:15]), tuple(scene[18:21])}
    assert table == {tuple(t) for t in ca.BLOCK_TABLE}  # the two table blocks take the two slots
    for yaw in scene[[11, 17, 23]]:
        assert np.pi / 2 - np.pi / 8 <= yaw <= np.pi / 2 + np.pi / 8
    # deterministic, independent of the dict's key order and of the global RNG
    np.random.seed(123)
    shuffled = dict(reversed(list(STATE.items())))
    _, again = ca.calvin_initial_state_to_obs(shuffled)
    np.testing.assert_array_equal(scene, again)
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)


def test_calvin_initial_state_needs_every_symbolic_key():
    with pytest.raises(ValueError, match="grasped"):
        ca.calvin_initial_state_to_obs({k: v for k, v in STATE.items() if k != "grasped"})


def test_without_calvin_env_the_error_says_how_to_install(tmp_path, monkeypatch):
    for name in ("calvin_env", "calvin_env.envs", "calvin_env.envs.play_table_env"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed (even if it is)
    with pytest.raises(ca.CalvinNotInstalled, match="pip install -e calvin_env"):
        ca.CalvinEnv(str(tmp_path))


class FakeRawEnv:
    """Stands in for PlayTableSimEnv: scene_obs[0] counts steps with a positive x action."""

    def __init__(self):
        self.moves, self.actions, self.reset_args = 0, [], None

    def reset(self, robot_obs=None, scene_obs=None):
        self.reset_args = (robot_obs, scene_obs)
        self.moves = 0

    def get_obs(self):
        return calvin_obs(self.moves)

    def get_info(self):
        return {"scene_info": {"moves": self.moves}, "robot_info": {"uid": 1}}

    def step(self, action):
        assert isinstance(action, np.ndarray) and action.shape == (7,) and action[6] in (-1.0, 1.0)
        self.actions.append(action)
        self.moves += int(action[0] > 0)
        return self.get_obs(), 0, False, self.get_info()

    def close(self):
        pass


class FakeTasks:
    """Stands in for calvin_env.envs.tasks.Tasks, built by hydra from the task config."""

    def __init__(self, tasks):
        self.tasks = dict(tasks)

    def get_task_info_for_set(self, start_info, end_info, task_filter):
        moved = end_info["scene_info"]["moves"] - start_info["scene_info"]["moves"]
        return {t for t in task_filter if t in self.tasks and moved >= 2}


def test_adapter_wiring_with_stand_in_calvin_modules(tmp_path, monkeypatch):
    monkeypatch.setattr(ca, "TARGET_PREFIXES", ("calvin_env.", f"{__name__}."))  # the stand-in oracle
    raw = FakeRawEnv()
    package = types.ModuleType("calvin_env")
    package.__file__ = str(tmp_path / "calvin_env" / "__init__.py")
    envs = types.ModuleType("calvin_env.envs")
    play = types.ModuleType("calvin_env.envs.play_table_env")
    asked = {}

    def get_env(path, obs_space=None, show_gui=True):
        asked["obs_space"] = obs_space
        return raw

    play.get_env = get_env
    for name, mod in [("calvin_env", package), ("calvin_env.envs", envs), ("calvin_env.envs.play_table_env", play)]:
        monkeypatch.setitem(sys.modules, name, mod)
    dataset = tmp_path / "validation"
    (dataset / ".hydra").mkdir(parents=True)
    (dataset / ".hydra" / "merged_config.yaml").write_text("env: {}\n")
    tasks = tmp_path / "conf" / "tasks" / "new_playtable_tasks.yaml"
    tasks.parent.mkdir(parents=True)
    tasks.write_text(f"_target_: {__name__}.FakeTasks\ntasks:\n  open_drawer: [move_door_rel, base__drawer, 0.12]\n"
                     "  close_drawer: [move_door_rel, base__drawer, -0.12]\n")

    env = ca.CalvinEnv(str(dataset))  # finds conf/tasks beside the (stand-in) package
    assert env.task_names == ["open_drawer", "close_drawer"]
    assert asked["obs_space"] == {"rgb_obs": ["rgb_static", "rgb_gripper"], "depth_obs": []}  # no tactile

    class Push:
        def reset(self):
            pass

        def step(self, obs, instruction):
            assert obs["rgb_static"].shape == (200, 200, 3) and obs["robot_obs"].dtype == np.float32
            return np.array([1, 0, 0, 0, 0, 0, 0.3])

    item = EvalItem(0, STATE, ["open_drawer", "close_drawer", "unknown"], ["a", "b", "c"])
    result = rollout_chain(env, Push(), item, ep_len=5)
    assert result.completed == 2 and result.steps == [2, 2, 5]
    np.testing.assert_allclose(raw.reset_args[1], ca.calvin_initial_state_to_obs(STATE)[1])
    assert all(a[6] == 1.0 for a in raw.actions)
    assert env.frame(env.reset_to(STATE, 0)).shape == (200, 400, 3)


def test_missing_dataset_config_is_named(tmp_path, monkeypatch):
    play = types.ModuleType("calvin_env.envs.play_table_env")
    monkeypatch.setitem(sys.modules, "calvin_env.envs.play_table_env", play)
    with pytest.raises(FileNotFoundError, match="merged_config.yaml"):
        ca.CalvinEnv(str(tmp_path))


@pytest.mark.parametrize("which", ["tasks", "split"])
def test_a_calvin_config_naming_a_callable_outside_calvin_env_is_refused_before_it_runs(tmp_path, which):
    """A downloaded split's merged_config.yaml or a tasks file is data; hydra would call os.system."""
    pytest.importorskip("calvin_env")
    from calvin_split import write_split

    marker = tmp_path / "pwned"
    split = write_split(tmp_path / "split")
    evil = f"_target_: os.system\n_args_: ['touch {marker}']\n"
    tasks = ca.default_tasks_config()
    if which == "tasks":
        tasks = tmp_path / "tasks.yaml"
        tasks.write_text(evil + "tasks: {}\n")
        match = r"tasks\.yaml: '_target_' is 'os.system'"
    else:
        merged = split / ".hydra" / "merged_config.yaml"
        merged.write_text(merged.read_text().replace("_target_: calvin_env.robot.robot.Robot", "_target_: os.system", 1))
        match = r"merged_config\.yaml: '(robot|env\.robot_cfg)\._target_' is 'os.system'"
    with pytest.raises(ValueError, match=match):
        ca.CalvinEnv(str(split), str(tasks))
    assert not marker.exists()


def test_an_interpolated_target_that_does_not_resolve_is_refused(tmp_path):
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match=r"x\.yaml: 'a\._target_' is '\$\{hydra:runtime.cwd\}'"):
        ca.check_targets(OmegaConf.create({"a": {"_target_": "${hydra:runtime.cwd}"}}), "x.yaml")
    ca.check_targets(OmegaConf.create({"a": {"_target_": "calvin_env.envs.tasks.Tasks", "b": [{"c": 1}]}}), "x.yaml")
