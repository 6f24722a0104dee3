"""Every kind of bad input gives a DatasetError naming the file and the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from roboflamingo.data.dataset import CalvinDataset
from roboflamingo.data.layout import LANG_ANN, DatasetError, frame_path, validate_split
from roboflamingo.data.pack import pack_split
from roboflamingo.io import atomic_save_npy


def _ann(annotations):
    return {
        "language": {"ann": [a[3] for a in annotations], "task": [a[2] for a in annotations]},
        "info": {"indx": [(a[0], a[1]) for a in annotations]},
    }


def test_a_good_split_validates(root, layout):
    index = validate_split(root / "training")
    assert index.segments.tolist() == [[s, e] for s, e, _, _ in layout["annotations"]]
    assert index.instructions == [a[3] for a in layout["annotations"]]


def test_missing_split_directory(cfg):
    with pytest.raises(DatasetError, match=r"nosuchsplit: split directory does not exist"):
        CalvinDataset(cfg, "nosuchsplit")


def test_missing_index_file(cfg, root):
    (root / "training" / "ep_start_end_ids.npy").unlink()
    with pytest.raises(DatasetError, match=r"ep_start_end_ids\.npy: file is missing"):
        CalvinDataset(cfg)


def test_unreadable_index_files(cfg, root):
    (root / "training" / LANG_ANN).write_bytes(b"definitely not numpy")
    with pytest.raises(DatasetError, match=r"auto_lang_ann\.npy: unreadable"):
        CalvinDataset(cfg)


def test_episode_ids_with_the_wrong_shape(cfg, root):
    atomic_save_npy(root / "training" / "ep_start_end_ids.npy", np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(DatasetError, match=r"ep_start_end_ids\.npy: expected an \(N, 2\) array.*\(2, 3\)"):
        CalvinDataset(cfg)
    atomic_save_npy(root / "training" / "ep_start_end_ids.npy", np.array([[0.0, 39.0]]))
    with pytest.raises(DatasetError, match=r"ep_start_end_ids\.npy: expected integer frame ids, got dtype float64"):
        CalvinDataset(cfg)


def test_annotation_missing_field(cfg, root, layout):
    ann = _ann(layout["annotations"])
    del ann["info"]
    atomic_save_npy(root / "training" / LANG_ANN, np.array(ann, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"auto_lang_ann\.npy: missing field 'info'"):
        CalvinDataset(cfg)
    ann = _ann(layout["annotations"])
    ann["language"]["task"] = ann["language"]["task"][:-1]
    atomic_save_npy(root / "training" / LANG_ANN, np.array(ann, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"field 'language.task' has 4 entries but info.indx has 5"):
        CalvinDataset(cfg)


def test_annotation_outside_the_episodes(cfg, root, layout):
    # (35, 45) crosses from episode (0, 39) into (40, 69): not inside any single episode.
    bad = [*layout["annotations"], (35, 45, "open_drawer", "straddles two episodes")]
    atomic_save_npy(root / "training" / LANG_ANN, np.array(_ann(bad), dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"auto_lang_ann\.npy: info\.indx\[5\] = \[35, 45\] is not inside any episode"):
        CalvinDataset(cfg)
    bad = [*layout["annotations"], (60, 75, "open_drawer", "runs past the last frame")]
    atomic_save_npy(root / "training" / LANG_ANN, np.array(_ann(bad), dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"info\.indx\[5\] = \[60, 75\]"):
        CalvinDataset(cfg)


def test_missing_frame_file_fails_on_open(cfg, root):
    frame_path(root / "training", 25).unlink()
    with pytest.raises(DatasetError, match=r"episode_0000025\.npz: frame file is missing \(needed by .*info\.indx\[2\]"):
        CalvinDataset(cfg)


def test_no_window_fits(cfg):
    with pytest.raises(DatasetError, match=r"no annotated segment is at least data.window=40 frames long \(longest: 20\)"):
        CalvinDataset(dataclasses.replace(cfg, window=40))


# (frame id, field changes, message). Frame 0 is the probe frame, checked on open; the others
# are checked when a window that needs them is read.
BAD_FRAMES = [
    (0, {"rel_actions": None}, r"episode_0000000\.npz: missing field 'rel_actions'"),
    (30, {"rgb_static": None}, r"episode_0000030\.npz: missing field 'rgb_static'"),
    (30, {"robot_obs": np.zeros(14)}, r"episode_0000030\.npz: field 'robot_obs' must have shape \(15,\), got \(14,\)"),
    (30, {"rgb_gripper": np.zeros((12, 12, 3), np.float32)}, r"episode_0000030\.npz: field 'rgb_gripper' must be uint8"),
    (30, {"rgb_static": np.zeros((20, 20, 3), np.uint8)}, r"episode_0000030\.npz: field 'rgb_static' has shape \(20, 20, 3\), other frames have \(24, 20, 3\)"),
    (30, {"rgb_static": np.zeros((24, 20), np.uint8)}, r"field 'rgb_static' must be an \(H, W, 3\) image"),
    (30, {"rel_actions": np.arange(7)}, r"episode_0000030\.npz: field 'rel_actions' must be floating point, got int64"),
    (30, {"rel_actions": np.array([0, 0, np.nan, 0, 0, 0, 1.0])}, r"episode_0000030\.npz: field 'rel_actions' contains NaN or inf"),
    (30, {"robot_obs": np.full(15, np.inf)}, r"episode_0000030\.npz: field 'robot_obs' contains NaN or inf"),
]


@pytest.mark.parametrize("frame_id,changes,message", BAD_FRAMES)
def test_bad_frame_gives_a_clear_error(cfg, root, edit_frame, frame_id, changes, message):
    edit_frame(root / "training", frame_id, **changes)
    with pytest.raises(DatasetError, match=message):
        ds = CalvinDataset(cfg, augment=False)
        for i in range(len(ds)):
            ds[i]
    with pytest.raises(DatasetError, match=message):
        validate_split(root / "training")
    with pytest.raises(DatasetError, match=message):
        pack_split(root / "training", root / "packed_out", shard_frames=16, progress=False)


def test_corrupt_frame_file_is_unreadable(cfg, root):
    path = frame_path(root / "training", 30)
    path.write_bytes(path.read_bytes()[:100])
    ds = CalvinDataset(cfg)
    window = next(i for i in range(len(ds)) if 30 in ds.window_frames(i)[0])
    with pytest.raises(DatasetError, match=r"episode_0000030\.npz: unreadable"):
        ds[window]


def test_frame_only_needed_for_actions_is_checked_too(cfg, root, edit_frame):
    # Frame 39 ends segment (22, 39); with window 5 it is observed, so use the action-only case:
    # frame 20 is the last frame of segment (5, 20) and the future action of window starting at 14.
    edit_frame(root / "training", 20, rel_actions=np.full(7, np.nan))
    ds = CalvinDataset(cfg, augment=False)
    i = next(i for i in range(len(ds)) if ds.window_frames(i)[0][0] == 14)
    assert 20 not in ds.window_frames(i)[0] and 20 in ds.window_frames(i)[1]
    with pytest.raises(DatasetError, match=r"episode_0000020\.npz: field 'rel_actions' contains NaN"):
        ds[i]
