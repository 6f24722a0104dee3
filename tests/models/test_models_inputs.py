"""Bad input is refused with an error that names what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import frame_obs, make_batch, make_stats, micro_config, micro_head

from roboflamingo.models.config import HeadConfig, ModelConfig, VisionConfig
from roboflamingo.models.policy import RoboFlamingoPolicy


@pytest.fixture(scope="module")
def policy():
    return RoboFlamingoPolicy.from_config(micro_config(use_state=True), micro_head(), make_stats())


@pytest.fixture
def obs():
    return frame_obs(make_batch(), 0, 0)


def test_wrong_image_shape(policy, obs):
    obs["rgb_static"] = np.zeros((40, 40, 4), np.uint8)
    with pytest.raises(ValueError, match=r"rgb_static'\] must be an \(H, W, 3\) image, got shape \(40, 40, 4\)"):
        policy.step(obs, "open the drawer")


def test_wrong_image_dtype(policy, obs):
    obs["rgb_gripper"] = obs["rgb_gripper"].astype(np.float32)
    with pytest.raises(ValueError, match=r"rgb_gripper'\] must be uint8, got float32"):
        policy.step(obs, "open the drawer")


def test_missing_observation_key(policy, obs):
    del obs["robot_obs"]
    with pytest.raises(ValueError, match="missing key 'robot_obs'"):
        policy.step(obs, "open the drawer")


def test_wrong_state_shape(policy, obs):
    obs["robot_obs"] = np.zeros(7)
    with pytest.raises(ValueError, match=r"robot_obs'\] must have shape \(15,\)"):
        policy.step(obs, "open the drawer")


def test_instruction_must_be_text(policy, obs):
    with pytest.raises(TypeError, match="instruction must be a str"):
        policy.step(obs, ["open the drawer"])


def test_step_in_training_mode_is_refused(obs):
    p = RoboFlamingoPolicy.from_config(micro_config(), micro_head(), make_stats())
    p.train()
    with pytest.raises(RuntimeError, match=r"policy.eval\(\)"):
        p.step(obs, "open the drawer")


def test_bad_batches(policy):
    batch = make_batch()
    with pytest.raises(KeyError, match="batch is missing 'instruction'"):
        policy({k: v for k, v in batch.items() if k != "instruction"})
    with pytest.raises(ValueError, match=r"rgb_static must have shape \(B, T, 3, H, W\)"):
        policy(dict(batch, rgb_static=batch["rgb_static"][0]))
    with pytest.raises(ValueError, match=r"actions'\] must have shape \(2, 4, 2, 7\) \(model.act_steps=2\)"):
        policy(dict(batch, actions=batch["actions"][:, :, :1]))
    with pytest.raises(ValueError, match=r"action_mask'\] must have shape \(2, 4, 2\)"):
        policy(dict(batch, action_mask=batch["action_mask"][..., 0]))
    with pytest.raises(ValueError, match=r"images must be uint8 \(raw\) or float"):
        policy(dict(batch, rgb_static=batch["rgb_static"].to(torch.int32)))
    with pytest.raises(ValueError, match="preprocessed float images must be 32x32"):
        policy(dict(batch, rgb_static=batch["rgb_static"].float()))


def test_bad_normalization_stats(policy):
    stats = make_stats()
    del stats["robot_obs_std"]
    with pytest.raises(ValueError, match=r"missing \['robot_obs_std'\]"):
        policy.set_normalization(stats)
    stats = make_stats()
    stats["action_mean"] = np.zeros(6)
    with pytest.raises(ValueError, match=r"stats\['action_mean'\] must have shape \(7,\), got \(6,\)"):
        policy.set_normalization(stats)


def test_config_values_are_validated():
    with pytest.raises(ValueError, match="model.fusion must be one of"):
        ModelConfig(fusion="sideways")
    with pytest.raises(ValueError, match="model.vision.width must be > 0, got -1"):
        VisionConfig(width=-1)
    with pytest.raises(ValueError, match="head.type must be one of"):
        HeadConfig(type="diffusion")
    with pytest.raises(ValueError, match="not an open_clip model config"):
        RoboFlamingoPolicy.from_config(micro_config(vision=VisionConfig(name="ViT-Nope-1", image_size=224)), micro_head())
    with pytest.raises(ValueError, match=r"model.vision.image_size \(64\) must equal ViT-B-16's own \(224\)"):
        RoboFlamingoPolicy.from_config(micro_config(vision=VisionConfig(name="ViT-B-16", image_size=64)), micro_head(), device="meta")
