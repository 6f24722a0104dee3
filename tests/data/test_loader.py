"""Sampler shares across ranks, epochs and DataLoader workers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from roboflamingo.data.dataset import CalvinDataset, WindowSampler, make_dataloader
from roboflamingo.data.pack import pack_split


@pytest.mark.parametrize("num_samples,world_size", [(50, 2), (51, 2), (50, 3), (7, 4)])
def test_ranks_get_disjoint_shares_covering_the_split(num_samples, world_size):
    shares = [list(WindowSampler(num_samples, r, world_size, seed=3, epoch=2)) for r in range(world_size)]
    indices = [[i for i, _ in share] for share in shares]
    assert all(epoch == 2 for share in shares for _, epoch in share)
    flat = [i for share in indices for i in share]
    assert len(flat) == len(set(flat)) and set(flat) == set(range(num_samples))
    assert max(map(len, indices)) - min(map(len, indices)) <= 1
    assert [len(WindowSampler(num_samples, r, world_size)) for r in range(world_size)] == list(map(len, indices))
    # drop_last: still disjoint, equal lengths, at most world_size - 1 samples left out.
    even = [[i for i, _ in WindowSampler(num_samples, r, world_size, seed=3, drop_last=True)] for r in range(world_size)]
    flat = [i for share in even for i in share]
    assert len(flat) == len(set(flat)) and len(set(map(len, even))) == 1
    assert num_samples - len(flat) < world_size


def test_sampler_order_depends_on_seed_and_epoch_only():
    a = WindowSampler(100, 1, 2, seed=5)
    b = WindowSampler(100, 1, 2, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in b]
    b.set_epoch(1)
    assert list(a) == list(b)
    assert [i for i, _ in WindowSampler(100, 0, 1, seed=6)] != [i for i, _ in WindowSampler(100, 0, 1, seed=5)]
    assert [i for i, _ in WindowSampler(10, 0, 1, shuffle=False)] == list(range(10))
    with pytest.raises(ValueError, match="rank must be in"):
        WindowSampler(10, 2, 2)


def test_two_rank_loaders_see_disjoint_samples_covering_the_split(cfg):
    cfg = dataclasses.replace(cfg, batch_size=3, drop_last=False)
    seen = []
    for rank in range(2):
        loader = make_dataloader(cfg, rank=rank, world_size=2, seed=1, epoch=4)
        ds = loader.dataset
        keys = list(loader.sampler)
        batches = list(loader)
        assert sum(len(b["instruction"]) for b in batches) == len(keys)
        # Each batch row is exactly the dataset sample the sampler named.
        first = ds[keys[0]]
        assert torch.equal(batches[0]["rgb_static"][0], first["rgb_static"])
        assert torch.equal(batches[0]["actions"][0], first["actions"])
        seen += [i for i, _ in keys]
    assert len(seen) == len(set(seen)) and set(seen) == set(range(len(ds)))


def test_multi_worker_loading_matches_single_process(cfg, root):
    pack_split(root / "training", root / "training" / "packed", shard_frames=16, progress=False)
    single = make_dataloader(dataclasses.replace(cfg, num_workers=0), seed=2, epoch=1)
    multi = make_dataloader(dataclasses.replace(cfg, num_workers=2), seed=2, epoch=1)
    assert multi.dataset.use_packed and multi.dataset.packed._maps == {}  # nothing mapped before workers
    for _ in range(2):  # two epochs through persistent workers
        a_batches, b_batches = list(single), list(multi)
        assert len(a_batches) == len(b_batches) == len(single.dataset) // cfg.batch_size
        for a, b in zip(a_batches, b_batches):
            for key in ("rgb_static", "rgb_gripper", "robot_obs", "actions", "action_mask"):
                assert torch.equal(a[key], b[key]), key
            assert a["instruction"] == b["instruction"]
        single.sampler.set_epoch(single.sampler.epoch + 1)
        multi.sampler.set_epoch(multi.sampler.epoch + 1)


def test_validation_loader_is_ordered_and_unaugmented(cfg):
    loader = make_dataloader(cfg, cfg.val_split)
    ds = CalvinDataset(cfg, cfg.val_split)
    assert not ds.augment
    batch = next(iter(loader))
    np.testing.assert_array_equal(batch["rgb_static"][1].numpy(), ds[1]["rgb_static"].numpy())
    assert sum(len(b["instruction"]) for b in loader) == len(ds)
