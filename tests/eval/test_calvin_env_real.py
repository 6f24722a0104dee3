"""The adapter against the real ``calvin_env`` (installed by ``make test`` from ../shared/vendor).

A split config listing the tactile camera builds without tacto; resets put the world where CALVIN's
initial states say; CALVIN's own oracle judges scripted state changes through the adapter; and a
checkpoint policy evaluates 2 chains end to end with EGL (the renderer that used to segfault once the
policy loaded triton) and with the TinyRenderer, each in a child process so a crash is a failure
with an exit code rather than the end of the test run.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from calvin_split import require_calvin_env, write_split

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "calvin" / "initial_states.json").read_text())
STATE = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed",
         "red_block": "table", "blue_block": "slider_left", "pink_block": "table", "grasped": 0}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    require_calvin_env()
    from roboflamingo.eval.calvin_adapter import CalvinEnv

    split = write_split(tmp_path_factory.mktemp("task_D_D") / "validation", use_egl=False)
    env = CalvinEnv(str(split))
    yield env
    env.close()


@pytest.mark.slow
def test_a_split_listing_the_tactile_camera_builds_without_tacto(env):
    from omegaconf import OmegaConf

    listed = OmegaConf.load(Path(env.dataset_dir) / ".hydra" / "merged_config.yaml").cameras
    assert set(listed) == {"static", "gripper", "tactile"}
    assert [c.name for c in env.env.cameras] == ["static", "gripper"]
    assert "tacto" not in sys.modules
    obs = env.reset_to(STATE, 0)
    assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_gripper"].shape == (84, 84, 3)
    assert obs["rgb_static"].std() > 5  # a rendered scene, not a blank image
    obs = env.step(np.array([0, 0, -1, 0, 0, 0, 1.0]))
    assert obs["robot_obs"].shape == (15,) and np.isfinite(obs["robot_obs"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 57, 191])
def test_reset_puts_the_world_in_calvins_initial_state(env, k):
    golden = GOLDEN[k]
    obs = env.reset_to(golden["state"], 0)
    # calvin_env's reset steps the physics once: blocks settle by a fraction of a millimetre and tilt
    # by a few mrad
    np.testing.assert_allclose(obs["scene_obs"], golden["scene_obs"], atol=5e-3)
    np.testing.assert_allclose(obs["robot_obs"][7:14], golden["robot_obs"][7:14], atol=1e-3)


def _changed(scene_obs, index, value):
    out = np.array(scene_obs, dtype=np.float64)
    out[index] = value
    return out


@pytest.mark.slow
def test_calvins_oracle_judges_scripted_state_changes_through_the_adapter(env):
    from roboflamingo.eval.calvin_adapter import calvin_initial_state_to_obs

    robot_obs, scene_obs = calvin_initial_state_to_obs(STATE)
    red_x, red_yaw = scene_obs[6], scene_obs[11]
    changes = {
        "open_drawer": _changed(scene_obs, 1, 0.2),
        "move_slider_left": _changed(scene_obs, 0, 0.2),
        "turn_on_lightbulb": _changed(_changed(scene_obs, 3, 0.088), 4, 1),
        "turn_on_led": _changed(scene_obs, 5, 1),
        "rotate_red_block_left": _changed(scene_obs, 11, red_yaw + np.pi / 2),
        "rotate_red_block_right": _changed(scene_obs, 11, red_yaw - np.pi / 2),
        "push_red_block_right": _changed(scene_obs, 6, red_x + 0.12),
    }
    for task, end_scene in changes.items():
        env.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        start_info = env.env.get_info()
        env.env.reset(robot_obs=robot_obs, scene_obs=end_scene)
        env._info = None  # the adapter caches step()'s info; this change came through reset
        done = {t for t in env.task_names if env.successful(start_info, t)}
        assert done == {task}, (task, done)
    env.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    start_info = env.env.get_info()
    env._info = None
    assert not any(env.successful(start_info, t) for t in env.task_names)  # nothing changed


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    require_calvin_env()
    from eval_fakes import save_tiny_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    save_tiny_checkpoint(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("use_egl", [True, False], ids=["egl", "tiny_renderer"])
def test_a_checkpoint_policy_evaluates_two_chains_in_real_calvin_env(checkpoint, tmp_path, use_egl):
    split = write_split(tmp_path / "task_D_D" / "validation", use_egl=use_egl)
    run_dir = tmp_path / "eval"
    args = ["eval", f"checkpoint={checkpoint}", f"eval.calvin_dataset={split}", "eval.num_chains=2",
            "eval.ep_len=3", "policy.device=cpu", "eval.progress=false", f"run_dir={run_dir}"]
    # the evaluation builds the env (EGL: Mesa's LLVM) before it loads the policy (triton's LLVM)
    proc = subprocess.run([sys.executable, "-m", "roboflamingo.cli", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["num_chains"] == 2 and results["policy"]["kind"] == "checkpoint"
    records = [json.loads(line) for line in (run_dir / "records" / "rank-0.jsonl").read_text().splitlines()]
    from roboflamingo.sim.chains import calvin_sequences

    expected = {tuple(c.tasks) for c in calvin_sequences(2)}  # CALVIN's get_sequences(2)
    assert {tuple(r["tasks"]) for r in records} == expected


@pytest.mark.slow
def test_batched_evaluation_runs_real_calvin_env_in_its_simulator_processes(checkpoint, tmp_path):
    """eval.batch_size: each simulator process builds its own calvin_env from the picklable spec; one
    policy steps both; the records are those of the unbatched layout."""
    split = write_split(tmp_path / "task_D_D" / "validation", use_egl=False)
    outcomes = {}
    for layout, extra in (("plain", []), ("batched", ["eval.batch_size=2"])):
        run_dir = tmp_path / layout
        args = ["eval", f"checkpoint={checkpoint}", f"eval.calvin_dataset={split}", "eval.num_chains=2",
                "eval.ep_len=4", "policy.device=cpu", "eval.progress=false", f"run_dir={run_dir}", *extra]
        proc = subprocess.run([sys.executable, "-m", "roboflamingo.cli", *args], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{layout}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        results = json.loads((run_dir / "results.json").read_text())
        records = [json.loads(line) for line in (run_dir / "records" / "rank-0.jsonl").read_text().splitlines()]
        outcomes[layout] = {r["index"]: (tuple(r["tasks"]), r["completed"], tuple(r["steps"])) for r in records}
        if layout == "batched":
            assert results["speed"]["simulators"] == 2 and results["speed"]["policy_forwards"] > 0
    assert outcomes["batched"] == outcomes["plain"] and len(outcomes["plain"]) == 2


@pytest.mark.slow
def test_named_observation_fields_are_calvin_envs_own(env):
    """types' robot_obs / scene_obs slices pick out the fields calvin_env's own info reports."""
    import pybullet

    from roboflamingo.robots import calvin as T

    env.reset_to(STATE, 0)
    env.step(np.array([0.5, -0.5, -1, 0.2, 0, 0.3, -1.0]))  # move and close: no field is at its default
    obs, info = env.env.get_obs(), env.env.get_info()
    robot_obs, scene_obs = obs["robot_obs"], obs["scene_obs"]
    robot = info["robot_info"]
    np.testing.assert_array_equal(robot_obs[T.TCP_POS], robot["tcp_pos"])
    np.testing.assert_array_equal(robot_obs[T.TCP_ORN], robot["tcp_orn"])  # euler: calvin_env's euler_obs
    assert robot_obs[T.GRIPPER_WIDTH] == robot["gripper_opening_width"]
    np.testing.assert_array_equal(robot_obs[T.ARM_JOINT_STATES], robot["arm_joint_states"])
    assert robot_obs[T.GRIPPER_ACTION] == robot["gripper_action"] == -1
    scene = info["scene_info"]
    assert scene_obs[T.SLIDING_DOOR] == scene["doors"]["base__slide"]["current_state"]
    assert scene_obs[T.DRAWER] == scene["doors"]["base__drawer"]["current_state"]
    assert scene_obs[T.BUTTON] == scene["buttons"]["base__button"]["joint_state"]
    assert scene_obs[T.SWITCH] == scene["switches"]["base__switch"]["joint_state"]
    assert scene_obs[T.LIGHTBULB] == scene["lights"]["lightbulb"]["logical_state"]
    assert scene_obs[T.GREEN_LIGHT] == scene["lights"]["led"]["logical_state"]
    assert list(scene["movable_objects"]) == [f"block_{c}" for c in T.BLOCK_COLORS]
    for k, color in enumerate(T.BLOCK_COLORS):
        block = scene["movable_objects"][f"block_{color}"]
        pose = np.concatenate([block["current_pos"], pybullet.getEulerFromQuaternion(block["current_orn"])])
        np.testing.assert_allclose(scene_obs[T.block_pose(k)], pose, atol=1e-12)
        np.testing.assert_array_equal(scene_obs[T.block_pos(k)], block["current_pos"])
        assert scene_obs[T.block_yaw(k)] == scene_obs[T.block_pose(k)][5]


def test_named_robot_fields_follow_calvin_envs_observation_labels():
    require_calvin_env()
    from types import SimpleNamespace

    from calvin_env.robot.robot import Robot

    from roboflamingo.robots import calvin as T

    labels = Robot.get_observation_labels(SimpleNamespace(euler_obs=True, arm_joint_ids=list(range(7))))
    assert len(labels) == T.ROBOT_OBS_DIM
    assert labels[T.TCP_POS] == ["tcp_pos_x", "tcp_pos_y", "tcp_pos_z"]
    assert labels[T.TCP_ORN] == ["tcp_orn_x", "tcp_orn_y", "tcp_orn_z"]
    assert labels[T.GRIPPER_WIDTH] == "gripper_opening_width"
    assert labels[T.ARM_JOINT_STATES] == [f"robot_joint_{i}" for i in range(7)]
    assert labels[T.GRIPPER_ACTION] == "gripper_action"


def test_integrate_action_is_calvin_envs_target_pose_update():
    """calvin_env's Robot.relative_to_absolute (use_target_pose) vs ours, inside the workspace box."""
    require_calvin_env()
    from types import SimpleNamespace

    from calvin_env.robot.robot import Robot

    from roboflamingo.robots import calvin as T

    rng = np.random.default_rng(0)
    for _ in range(50):
        pos, orn = rng.uniform(-0.3, 0.3, 3), rng.uniform(-3.0, 3.0, 3)
        action = np.concatenate([rng.uniform(-1, 1, 6), [1.0]])
        robot = SimpleNamespace(max_rel_pos=T.MAX_REL_POS, max_rel_orn=T.MAX_REL_ORN, magic_scaling_factor_pos=1,
                                magic_scaling_factor_orn=1, use_target_pose=True, target_pos=pos.copy(),
                                target_orn=orn.copy())
        their_pos, their_orn, gripper = Robot.relative_to_absolute(robot, action)
        ours_pos, ours_orn = T.integrate_action(pos, orn, action, np.full(3, -1.0), np.full(3, 1.0))
        np.testing.assert_allclose(ours_pos, their_pos, rtol=0, atol=1e-15)
        # calvin_env leaves the accumulated euler angles unwrapped; pybullet reads them modulo 2 pi
        np.testing.assert_allclose(ours_orn, T.wrap_angle(their_orn), rtol=0, atol=1e-12)
        assert gripper == action[T.GRIPPER_INDEX]
