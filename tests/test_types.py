"""Observation validation names the key and what was expected."""

import numpy as np
import pytest

from roboflamingo.robots import calvin as T
from roboflamingo.robots.calvin import check_observation


def _obs():
    return {
        "rgb_static": np.zeros((200, 200, 3), np.uint8),
        "rgb_gripper": np.zeros((84, 84, 3), np.uint8),
        "robot_obs": np.zeros(15, np.float32),
        "scene_obs": np.zeros(24, np.float32),
    }


def test_valid_observation_passes():
    check_observation(_obs())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rgb_static", np.zeros((200, 200), np.uint8), r"rgb_static.*\(H, W, 3\)"),
        ("rgb_gripper", np.zeros((84, 84, 3), np.float32), "rgb_gripper.*uint8"),
        ("robot_obs", np.zeros(7), r"robot_obs.*\(15,\)"),
        ("robot_obs", np.full(15, np.nan), "robot_obs.*NaN"),
    ],
)
def test_bad_values_are_named(key, value, message):
    obs = _obs()
    obs[key] = value
    with pytest.raises(ValueError, match=message):
        check_observation(obs)


def test_missing_key_is_named():
    obs = _obs()
    del obs["rgb_gripper"]
    with pytest.raises(ValueError, match="missing key 'rgb_gripper'"):
        check_observation(obs)


def _indices(field, dim):
    return list(range(dim))[field] if isinstance(field, slice) else [field]


def test_robot_obs_fields_cover_the_vector_once_in_calvins_order():
    fields = [T.TCP_POS, T.TCP_ORN, T.GRIPPER_WIDTH, T.ARM_JOINT_STATES, T.GRIPPER_ACTION]
    covered = [i for f in fields for i in _indices(f, T.ROBOT_OBS_DIM)]
    assert covered == list(range(T.ROBOT_OBS_DIM))
    assert _indices(T.TCP_POSE, T.ROBOT_OBS_DIM) == _indices(T.TCP_POS, 15) + _indices(T.TCP_ORN, 15)
    assert len(_indices(T.ARM_JOINT_STATES, 15)) == 7


def test_scene_obs_fields_cover_the_vector_once_in_calvins_order():
    furniture = [T.SLIDING_DOOR, T.DRAWER, T.BUTTON, T.SWITCH, T.LIGHTBULB, T.GREEN_LIGHT]
    blocks = [T.block_pose(k) for k in range(len(T.BLOCK_NAMES))]
    covered = furniture + [i for b in blocks for i in _indices(b, T.SCENE_OBS_DIM)]
    assert covered == list(range(T.SCENE_OBS_DIM))
    assert _indices(T.TABLE_JOINTS, 24) == [T.SLIDING_DOOR, T.DRAWER, T.BUTTON, T.SWITCH]
    assert _indices(T.DOORS, 24) == [T.SLIDING_DOOR, T.DRAWER]
    for k in range(len(T.BLOCK_NAMES)):
        pose = _indices(T.block_pose(k), 24)
        assert _indices(T.block_pos(k), 24) == pose[:3] and T.block_yaw(k) == pose[5]
    assert T.BLOCK_NAMES == ("red_block", "blue_block", "pink_block")


def test_action_fields_and_the_inverse_of_integration():
    fields = [T.ACTION_POS, T.ACTION_ORN, T.GRIPPER_INDEX]
    assert [i for f in fields for i in _indices(f, T.ACTION_DIM)] == list(range(T.ACTION_DIM))
    rng = np.random.default_rng(0)
    low, high = np.full(3, -1.0), np.full(3, 1.0)
    for _ in range(100):
        pos, euler = rng.uniform(-0.5, 0.5, 3), T.wrap_angle(rng.uniform(-4, 4, 3))
        action = np.concatenate([rng.uniform(-1, 1, 6), [rng.choice([-1.0, 1.0])]])
        new_pos, new_euler = T.integrate_action(pos, euler, action, low, high)
        np.testing.assert_allclose(new_pos, pos + action[:3] * T.MAX_REL_POS, atol=1e-15)
        assert np.all(new_euler >= -np.pi) and np.all(new_euler < np.pi)
        back = T.relative_action(np.concatenate([new_pos, new_euler]), np.concatenate([pos, euler]), action[6])
        np.testing.assert_allclose(back, action, atol=1e-9)  # across the +-pi seam too


def test_integration_clips_to_the_box_and_scales():
    pos, euler = np.array([0.99, 0.0, -0.99]), np.zeros(3)
    action = np.array([1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 1.0])
    new_pos, new_euler = T.integrate_action(pos, euler, action, np.full(3, -1.0), np.full(3, 1.0), scale=0.5)
    np.testing.assert_allclose(new_pos, [1.0, 0.01, -1.0])
    np.testing.assert_allclose(new_euler, [0.025, -0.025, 0.0])
    d_pos, d_orn = T.action_deltas(action)
    np.testing.assert_allclose(d_pos, [0.02, 0.02, -0.02])
    np.testing.assert_allclose(d_orn, [0.05, -0.05, 0.0])


@pytest.mark.parametrize(("angle", "wrapped"), [(0.0, 0.0), (np.pi, -np.pi), (-np.pi, -np.pi), (3 * np.pi / 2, -np.pi / 2),
                                                (-7.0, -7.0 + 2 * np.pi), (10 * np.pi + 0.5, 0.5)])
def test_wrap_angle(angle, wrapped):
    assert T.wrap_angle(angle) == pytest.approx(wrapped, abs=1e-12)
