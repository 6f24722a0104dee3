"""Observation validation names the key and what was expected."""

import numpy as np
import pytest

from roboflamingo.types import check_observation


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
