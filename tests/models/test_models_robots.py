"""One policy class for any robot: cameras, state and action come from its description."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import micro_config, micro_head

from roboflamingo.models.policy import RoboFlamingoPolicy
from roboflamingo.robot import ActionSpec, Camera, RobotDescription, RobotMismatch, StateSpec
from roboflamingo.robots import load_robot


def _robot(cameras: int, grippers: tuple[int, ...] = (3,), dim: int = 4, state: int = 5) -> RobotDescription:
    return RobotDescription(
        name=f"test_{cameras}cam",
        cameras=tuple(Camera(f"cam{i}", 24 + 8 * i, 32) for i in range(cameras)),
        state=StateSpec(names=tuple(f"s{i}" for i in range(state)), key="state"),
        action=ActionSpec(names=tuple(f"a{i}" for i in range(dim)), grippers=grippers,
                          low=(-1.0,) * dim, high=(1.0,) * dim),
    )


def _stats(robot: RobotDescription, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, s = robot.action.dim, robot.state.dim
    return {"action_mean": rng.normal(0, 0.1, a).astype(np.float32),
            "action_std": rng.uniform(0.2, 0.5, a).astype(np.float32),
            "robot_obs_mean": rng.normal(0, 0.5, s).astype(np.float32),
            "robot_obs_std": rng.uniform(0.5, 2.0, s).astype(np.float32)}


def _batch(robot: RobotDescription, b: int = 2, t: int = 4, a: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {cam.name: torch.randint(0, 256, (b, t, 3, cam.height, cam.width), dtype=torch.uint8, generator=g)
             for cam in robot.cameras}
    actions = torch.rand(b, t, a, robot.action.dim, generator=g) * 2 - 1
    for i in robot.action.grippers:
        actions[..., i] = torch.where(actions[..., i] > 0, robot.action.open, robot.action.close)
    batch.update({robot.state.key: torch.randn(b, t, robot.state.dim, generator=g), "actions": actions,
                  "action_mask": torch.ones(b, t, a, dtype=torch.bool),
                  "instruction": ["pick up the cube", "open the drawer"][:b]})
    return batch


def _obs(robot: RobotDescription, batch: dict, i: int, t: int) -> dict[str, np.ndarray]:
    obs = {cam: batch[cam][i, t].permute(1, 2, 0).numpy() for cam in robot.camera_names}
    obs[robot.state.key] = batch[robot.state.key][i, t].numpy()
    return obs


@pytest.mark.parametrize("cameras", [1, 3])
def test_a_robot_with_one_or_three_cameras_trains_and_steps(cameras):
    robot = _robot(cameras)
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(micro_config(use_state=True), micro_head(), _stats(robot), robot=robot)
    # post fusion: one set of resampler latents per camera.
    x = torch.zeros(1, 3, 32, 32)
    assert policy.backbone.encode_images(*[x] * cameras)[0].shape[1] == cameras * policy.model_config.resampler.num_latents
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(robot)
    first = None
    for _ in range(60):
        loss, logs = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = logs["loss"] if first is None else first
    assert {"pose_loss", "gripper_loss", "gripper_acc"} <= set(logs)
    assert logs["loss"] < 0.7 * first  # it learns from its own batch
    policy.eval()
    policy.reset()
    actions = [policy.step(_obs(robot, batch, 0, t), batch["instruction"][0]) for t in range(4)]
    for a in actions:
        assert a.shape == (robot.action.dim,) and a.dtype == np.float32
        assert a[3] in (robot.action.close, robot.action.open)
        assert np.all(np.abs(a) <= 1.0)
    # step_batch gives the same actions as step, episode by episode.
    hist = [None]
    for t in range(4):
        got, hist = policy.step_batch([_obs(robot, batch, 0, t)], [batch["instruction"][0]], hist)
        np.testing.assert_array_equal(got[0], actions[t])


def test_joint_space_robot_without_binary_gripper_returns_positions_in_its_bounds(tmp_path):
    robot = load_robot("so101")
    stats = {"action_mean": np.full(6, 10.0, np.float32), "action_std": np.full(6, 30.0, np.float32),
             "robot_obs_mean": np.zeros(6, np.float32), "robot_obs_std": np.full(6, 50.0, np.float32)}
    policy = RoboFlamingoPolicy.from_config(micro_config(use_state=True), micro_head(), stats, robot=robot)
    assert policy.action_head.gripper is None  # no binary gripper: no classifier weights at all
    batch = _batch(robot, b=1)
    batch["actions"] = batch["actions"] * 100
    policy.train()
    loss, logs = policy(batch)
    assert set(logs) == {"loss", "pose_loss", "attn_gate"} and torch.isfinite(loss)
    policy.eval()
    action = policy.step(_obs(robot, batch, 0, 0), "pick up the cube")
    assert action.shape == (6,)
    assert np.all(action >= np.array(robot.action.low)) and np.all(action <= np.array(robot.action.high))
    # The checkpoint carries the description; a reload gives the same robot and the same action.
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = RoboFlamingoPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.robot == robot
    np.testing.assert_array_equal(loaded.step(_obs(robot, batch, 0, 0), "pick up the cube"), action)


def test_a_policy_refuses_another_robots_observation_naming_both():
    so101 = load_robot("so101")
    policy = RoboFlamingoPolicy.from_config(micro_config(use_state=True), micro_head(), _stats(so101), robot=so101)
    calvin_obs = {"rgb_static": np.zeros((200, 200, 3), np.uint8), "rgb_gripper": np.zeros((84, 84, 3), np.uint8),
                  "robot_obs": np.zeros(15, np.float32)}
    with pytest.raises(ValueError, match=r"missing key 'front'.*robot 'so101'"):
        policy.step(calvin_obs, "open the drawer")
    calvin_shaped = {"front": calvin_obs["rgb_static"], "wrist": calvin_obs["rgb_gripper"], "state": np.zeros(15)}
    with pytest.raises(ValueError, match=r"'state'\] must have shape \(6,\) for robot 'so101'"):
        policy.step(calvin_shaped, "open the drawer")
    with pytest.raises(RobotMismatch, match=r"robot 'so101'.*robot 'calvin'"):
        so101.require_compatible(load_robot("calvin"), "the checkpoint", "the client")


def test_state_use_picks_the_entries_the_policy_reads():
    robot = _robot(1, state=5)
    picky = RobotDescription(robot.name, robot.cameras, StateSpec(robot.state.names, "state", use=(4, 0)), robot.action)
    policy = RoboFlamingoPolicy.from_config(micro_config(use_state=True), micro_head(), _stats(picky), robot=picky)
    assert policy.action_head.state_encoder[0].in_features == 2
    state = torch.arange(5.0)[None]
    expected = ((state - policy.normalizer.robot_obs_mean) / policy.normalizer.robot_obs_std)[:, [4, 0]]
    torch.testing.assert_close(policy.normalizer.normalize_state(state), expected)
