"""Windows, sample contents, the batch schema, augmentation and normalization statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from roboflamingo.data.config import AugmentConfig, DataConfig
from roboflamingo.data.dataset import CalvinDataset, collate, compute_normalization
from roboflamingo.data.layout import frame_path, load_split_index, read_frame
from roboflamingo.data.synthetic import make_frame, write_statistics
from roboflamingo.models.normalization import Normalizer, identity_stats
from roboflamingo.robots.calvin import CALVIN


def test_windows_respect_segment_bounds(cfg, layout):
    ds = CalvinDataset(cfg, augment=False)
    T, A = cfg.window, cfg.act_steps
    expected = sum(max(0, e - s + 1 - T + 1) for s, e, _, _ in layout["annotations"])
    assert len(ds) == expected
    seen = set()
    for i in range(len(ds)):
        seg = int(ds.windows[i, 0])
        s, e, _, sentence = layout["annotations"][seg]
        obs, act, mask = ds.window_frames(i)
        assert s <= obs[0] and obs[-1] <= e and np.all(np.diff(obs) == 1)
        assert act.max() <= e
        wanted = obs[:, None] + np.arange(A)[None, :]
        np.testing.assert_array_equal(mask, wanted <= e)
        np.testing.assert_array_equal(act[mask], wanted[mask])
        assert np.all(act[~mask] == e)  # clamped to the segment end
        seen.add((seg, int(obs[0])))
    # Every legal start of every long-enough segment is a window; the 4-frame segment has none.
    assert seen == {(k, f) for k, (s, e, _, _) in enumerate(layout["annotations"]) for f in range(s, e - T + 2)}


def test_sample_content_matches_the_frame_files(cfg, layout):
    ds = CalvinDataset(cfg, augment=False)
    for i in (0, len(ds) - 1, len(ds) // 2):
        sample = ds[i]
        obs, act, mask = ds.window_frames(i)
        frames = {int(f): make_frame(int(f), layout["static"], layout["gripper"]) for f in np.unique(act)}
        for t, f in enumerate(obs):
            ref = frames[int(f)]
            np.testing.assert_array_equal(sample["rgb_static"][t].numpy(), ref["rgb_static"].transpose(2, 0, 1))
            np.testing.assert_array_equal(sample["rgb_gripper"][t].numpy(), ref["rgb_gripper"].transpose(2, 0, 1))
            np.testing.assert_allclose(sample["robot_obs"][t].numpy(), ref["robot_obs"].astype(np.float32))
            for k in range(cfg.act_steps):
                np.testing.assert_allclose(
                    sample["actions"][t, k].numpy(), frames[int(act[t, k])]["rel_actions"].astype(np.float32)
                )
        assert sample["instruction"] == layout["annotations"][int(ds.windows[i, 0])][3]


def test_sample_and_batch_follow_the_schema(cfg, layout):
    ds = CalvinDataset(cfg)
    T, A = cfg.window, cfg.act_steps
    (hs, ws), (hg, wg) = layout["static"], layout["gripper"]
    s = ds[3]
    assert s["rgb_static"].shape == (T, 3, hs, ws) and s["rgb_static"].dtype == torch.uint8
    assert s["rgb_gripper"].shape == (T, 3, hg, wg) and s["rgb_gripper"].dtype == torch.uint8
    assert s["robot_obs"].shape == (T, 15) and s["robot_obs"].dtype == torch.float32
    assert s["actions"].shape == (T, A, 7) and s["actions"].dtype == torch.float32
    assert s["action_mask"].shape == (T, A) and s["action_mask"].dtype == torch.bool
    batch = collate([ds[i] for i in range(3)])
    assert batch["rgb_static"].shape == (3, T, 3, hs, ws)
    assert batch["actions"].shape == (3, T, A, 7) and batch["action_mask"].shape == (3, T, A)
    assert isinstance(batch["instruction"], list) and len(batch["instruction"]) == 3
    assert all(isinstance(x, str) for x in batch["instruction"])


def test_image_size_preprocesses_in_the_dataset(cfg):
    ds = CalvinDataset(dataclasses.replace(cfg, image_size=32), augment=False)
    s = ds[0]
    for cam in ("rgb_static", "rgb_gripper"):
        assert s[cam].shape == (cfg.window, 3, 32, 32) and s[cam].dtype == torch.float32
    assert s["rgb_static"].abs().max() < 3.0  # CLIP-normalized, not 0..255


def test_the_dataset_resizes_as_the_policy_does(cfg):
    """A converted checkpoint steps with PIL bicubic; its fine-tuning data must get the same pixels."""
    from roboflamingo.transforms import preprocess_images

    raw = CalvinDataset(cfg, augment=False)[0]
    for resize in ("bilinear", "pil_bicubic"):
        s = CalvinDataset(dataclasses.replace(cfg, image_size=32), augment=False, resize=resize)[0]
        want = preprocess_images(raw["rgb_static"], 32, cfg.image_mean, cfg.image_std, resize=resize)
        assert torch.equal(s["rgb_static"], want)
    bicubic = CalvinDataset(dataclasses.replace(cfg, image_size=32), augment=False, resize="pil_bicubic")[0]
    bilinear = CalvinDataset(dataclasses.replace(cfg, image_size=32), augment=False)[0]
    assert not torch.equal(bicubic["rgb_static"], bilinear["rgb_static"])


def _find_shift(raw: np.ndarray, out: np.ndarray, pad: int) -> set[tuple[int, int]]:
    """Every crop offset of the replicate-padded raw frame that reproduces the output frame."""
    h, w = raw.shape[-2:]
    padded = np.pad(raw, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return {
        (y, x)
        for y in range(2 * pad + 1)
        for x in range(2 * pad + 1)
        if np.array_equal(padded[:, y : y + h, x : x + w], out)
    }


def test_shift_is_the_same_for_every_frame_of_a_window(cfg, layout):
    raw = CalvinDataset(cfg, augment=False)
    aug = CalvinDataset(cfg, augment=True, seed=5)
    pads = {"rgb_static": round(10 * layout["static"][0] / 200), "rgb_gripper": round(4 * layout["gripper"][0] / 84)}
    assert pads["rgb_static"] >= 1 and pads["rgb_gripper"] >= 1
    shifts_seen = set()
    for i in range(0, len(raw), 3):
        r, a = raw[i], aug[i]
        for cam, pad in pads.items():
            per_frame = [_find_shift(r[cam][t].numpy(), a[cam][t].numpy(), pad) for t in range(cfg.window)]
            common = set.intersection(*per_frame)
            assert common, f"window {i} {cam}: frames were shifted differently: {per_frame}"
            # Noise images pin the shift down uniquely.
            assert len(common) == 1
            shifts_seen |= common
    assert len(shifts_seen) > 3  # the shift is random across windows


def test_augmentation_is_deterministic_per_seed_epoch_index(cfg):
    cfg = dataclasses.replace(cfg, augment=AugmentConfig(color_jitter=True))
    ds = CalvinDataset(cfg, augment=True, seed=1)
    again = CalvinDataset(cfg, augment=True, seed=1)
    other_seed = CalvinDataset(cfg, augment=True, seed=2)
    assert torch.equal(ds[(4, 0)]["rgb_static"], again[(4, 0)]["rgb_static"])
    assert torch.equal(ds[4]["rgb_static"], ds[(4, 0)]["rgb_static"])
    differs_epoch = [not torch.equal(ds[(i, 0)]["rgb_static"], ds[(i, 1)]["rgb_static"]) for i in range(6)]
    differs_seed = [not torch.equal(ds[i]["rgb_static"], other_seed[i]["rgb_static"]) for i in range(6)]
    assert any(differs_epoch) and any(differs_seed)
    raw = CalvinDataset(cfg, augment=False)
    assert not torch.equal(raw[4]["rgb_static"], ds[4]["rgb_static"])


def test_colour_jitter_is_consistent_across_the_window(cfg):
    no_shift = AugmentConfig(shift=False, color_jitter=True, brightness=0.5, contrast=0.0, saturation=0.0)
    ds = CalvinDataset(dataclasses.replace(cfg, augment=no_shift), augment=True)
    raw = CalvinDataset(cfg, augment=False)
    r, a = raw[2]["rgb_static"].numpy(), ds[2]["rgb_static"].numpy()
    # Brightness only: every frame is scaled by the same factor (up to clipping at 255).
    factors = [a[t].astype(np.float64).mean() / r[t].astype(np.float64).mean() for t in range(cfg.window)]
    assert max(factors) - min(factors) < 0.03 and abs(factors[0] - 1.0) > 0.01


def test_paraphrase_draws_sentences_of_the_same_task(cfg, layout, tmp_path):
    extra = tmp_path / "para.yaml"
    extra.write_text("open_drawer: [grab the drawer handle and pull]\n")
    ds = CalvinDataset(dataclasses.replace(cfg, paraphrase=True, paraphrase_file=str(extra)), seed=0)
    by_task: dict[str, set[str]] = {}
    for _, _, task, sentence in layout["annotations"]:
        by_task.setdefault(task, set()).add(sentence)
    by_task["open_drawer"].add("grab the drawer handle and pull")
    drawn = set()
    for i in range(len(ds)):
        for epoch in range(2):
            task = layout["annotations"][int(ds.windows[i, 0])][2]
            sentence = ds[(i, epoch)]["instruction"]
            assert sentence in by_task[task]
            drawn.add(sentence)
    assert by_task["open_drawer"] <= drawn
    # Validation keeps the segment's own annotation.
    val = CalvinDataset(dataclasses.replace(cfg, paraphrase=True), "validation")
    assert val[0]["instruction"] == layout["annotations"][int(val.windows[0, 0])][3]


def test_paraphrase_file_may_name_a_file_a_package_ships(cfg, layout):
    from roboflamingo.sim.instructions import load_instructions

    shipped = "package:roboflamingo/envs/instructions/train.yaml"
    ds = CalvinDataset(dataclasses.replace(cfg, paraphrase=True, paraphrase_file=shipped), seed=0)
    task = layout["annotations"][int(ds.windows[0, 0])][2]
    drawn = {ds[(0, epoch)]["instruction"] for epoch in range(40)}
    assert set(load_instructions("train")[task]) <= drawn | {layout["annotations"][int(ds.windows[0, 0])][3]}
    with pytest.raises(FileNotFoundError, match="data.paraphrase_file 'package:no_such_pkg/x.yaml'.*not installed"):
        CalvinDataset(dataclasses.replace(cfg, paraphrase=True, paraphrase_file="package:no_such_pkg/x.yaml"))


def test_normalization_identity_for_calvin_scaled_actions(root):
    stats = compute_normalization(root / "training")
    assert set(stats) == {"action_mean", "action_std", "robot_obs_mean", "robot_obs_std"}
    assert all(v.dtype == np.float32 for v in stats.values())
    np.testing.assert_array_equal(stats["action_mean"], np.zeros(7, np.float32))
    np.testing.assert_array_equal(stats["action_std"], np.ones(7, np.float32))
    assert stats["robot_obs_mean"].shape == (15,) and np.all(stats["robot_obs_std"] > 0.1)
    forced = compute_normalization(root / "training", force_action_stats=True)
    assert np.all(forced["action_std"][:6] > 0.3) and np.all(forced["action_std"][:6] < 0.8)
    assert forced["action_std"][6] == 1.0 and forced["action_mean"][6] == 0.0


def test_normalization_measures_unscaled_actions_and_reads_statistics_yaml(tmp_path, make_split, edit_frame):
    split = make_split(tmp_path / "training")
    big = np.array([3.0, -2.0, 0.5, 0.0, 0.0, 0.0, 1.0])
    edit_frame(split, 10, rel_actions=big)
    stats = compute_normalization(split)
    assert np.any(stats["action_std"][:6] != 1.0)
    write_statistics(split, mean=np.arange(15), std=np.full(15, 2.0))
    stats = compute_normalization(split)
    linear = [i for i in range(15) if i not in CALVIN.state.angles]
    np.testing.assert_array_equal(stats["robot_obs_mean"][linear], np.arange(15, dtype=np.float32)[linear])
    np.testing.assert_array_equal(stats["robot_obs_std"][linear], np.full(15, 2.0, np.float32)[linear])
    # The TCP's euler angles are measured on the frames whatever the yaml says (a linear mean of a
    # roll at +-pi means nothing).
    assert CALVIN.state.angles == (3, 4, 5)
    assert not np.allclose(stats["robot_obs_mean"][3:6], [3, 4, 5])


def test_angle_entries_are_normalized_around_their_circular_mean_so_a_roll_at_pi_is_continuous(
        tmp_path, make_split, edit_frame):
    split = make_split(tmp_path / "training")
    ids = load_split_index(split).frame_ids()
    rng = np.random.default_rng(0)
    rolls = np.pi - np.abs(rng.normal(0, 0.01, len(ids))) * rng.choice([-1, 1], len(ids))
    rolls = (rolls + np.pi) % (2 * np.pi) - np.pi  # as pybullet reports them: both signs near +-pi
    assert (rolls > 0).any() and (rolls < 0).any()
    for i, roll in zip(ids, rolls):
        obs = read_frame(frame_path(split, int(i)), ("robot_obs",))["robot_obs"].copy()
        obs[3] = roll
        edit_frame(split, int(i), robot_obs=obs)
    stats = compute_normalization(split)
    assert abs(abs(stats["robot_obs_mean"][3]) - np.pi) < 0.02 and stats["robot_obs_std"][3] < 0.05
    normalizer = Normalizer(CALVIN)
    normalizer.set(stats)
    state = torch.zeros(2, 15)
    state[:, 3] = torch.tensor([np.pi - 0.001, -np.pi + 0.001])
    roll = normalizer.normalize_state(state)[:, 3]
    # 2 mrad apart in angle: close after normalization, not 2 pi / std apart.
    assert abs(float(roll[0] - roll[1])) < 0.002 / float(stats["robot_obs_std"][3]) + 1e-3
    # With statistics that centre nothing (a converted original policy's), every angle pybullet reports
    # reaches the network bit for bit as before.
    identity = Normalizer(CALVIN)
    identity.set(identity_stats(CALVIN))
    raw = torch.rand(64, 15, dtype=torch.float32) * 2 * np.pi - np.pi
    raw[0, 3:6] = torch.tensor([np.pi, -np.pi, 0.0])
    assert torch.equal(identity.normalize_state(raw), raw)
    linear = Normalizer(dataclasses.replace(CALVIN, state=dataclasses.replace(CALVIN.state, angles=())))
    linear.set(stats)
    assert abs(float(linear.normalize_state(state)[:, 3].diff())) > 100


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="data.window must be > 0"):
        DataConfig(window=0)
    with pytest.raises(ValueError, match="data.use_packed must be one of"):
        DataConfig(use_packed="sometimes")
    with pytest.raises(ValueError, match="data.augment.brightness"):
        AugmentConfig(brightness=1.5)


def test_group_yamls_compose_into_dataconfig():
    from roboflamingo.config import load
    from roboflamingo.data.pack import Job

    for group in ("tabletop", "calvin"):
        job = load("pack", Job, [f"data={group}"])
        assert isinstance(job.data, DataConfig) and job.data.window == 12
