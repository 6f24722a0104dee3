"""Every kind of bad input gives a DatasetError naming the file and the field."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roboflamingo.data.dataset import CalvinDataset
from roboflamingo.data.layout import (
    LANG_ANN,
    DatasetError,
    frame_path,
    load_split_index,
    read_frame,
    validate_split,
)
from roboflamingo.data.pack import pack_split
from roboflamingo.data.packed import MANIFEST, PACKED_FIELDS, PackedSplit, load_manifest, read_npy_header
from roboflamingo.data.stats import compute_normalization
from roboflamingo.data.synthetic import make_frame, write_split
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


# -- issue 18: single-value corruption of frames and packed shards is refused, never trained on ------
odd_floats = st.one_of(
    st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e39, 1e300]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@pytest.fixture(scope="module")
def packed_split(tmp_path_factory):
    split = tmp_path_factory.mktemp("packed_src") / "training"
    write_split(split, [(0, 39)], [(0, 19, "open_drawer", "open the drawer"), (15, 39, "close_drawer", "close it")],
                (24, 20), (12, 12), content="noise")
    pack_split(split, split / "packed", shard_frames=16, progress=False)
    index = load_split_index(split)
    PackedSplit(split / "packed", index)  # leaves verified.json behind, so copies test the record too
    return split, index


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(PACKED_FIELDS), shard=st.integers(0, 10), row=st.integers(0, 15),
       entry=st.integers(0, 10_000), value=odd_floats, byte=st.integers(0, 255))
def test_any_single_value_changed_in_a_packed_shard_is_refused_naming_the_file(
    packed_split, field, shard, row, entry, value, byte
):
    split, index = packed_split
    with tempfile.TemporaryDirectory() as tmp:
        packed = Path(tmp) / "packed"
        shutil.copytree(split / "packed", packed)
        shards = sorted(packed.glob("shard_*"))
        path = shards[shard % len(shards)] / f"{field}.npy"
        shape, dtype, offset = read_npy_header(path)
        per_row = int(np.prod(shape[1:]))
        pos = (row % shape[0]) * per_row + entry % per_row
        arr = np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=(int(np.prod(shape)),))
        with np.errstate(over="ignore"):
            new = np.array(value if dtype.kind == "f" else byte).astype(dtype)
        if new.tobytes() == arr[pos].tobytes():
            return  # not a change
        arr[pos] = new
        arr.flush()
        del arr
        with pytest.raises(DatasetError, match=rf"{path.parent.name}/{field}\.npy: sha256 does not match"):
            PackedSplit(packed, index)


def test_nan_in_a_packed_shard_with_a_matching_checksum_is_refused_naming_field_and_row(packed_split, tmp_path):
    """A packer that wrote the NaN itself (checksums match): the finiteness check on open catches it."""
    from roboflamingo.io import sha256_file

    split, index = packed_split
    packed = tmp_path / "packed"
    shutil.copytree(split / "packed", packed)
    path = packed / "shard_00000" / "rel_actions.npy"
    arr = np.load(path)
    arr[3, 2] = np.nan
    np.save(path, arr)
    manifest = json.loads((packed / MANIFEST).read_text())
    manifest["shards"][0]["files"]["rel_actions.npy"] = sha256_file(path)
    (packed / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"rel_actions\.npy: field 'rel_actions' row 3 entry 2 is nan"):
        PackedSplit(packed, index)
    with pytest.raises(DatasetError, match="rel_actions"):
        compute_normalization(split, packed_dir=packed)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["robot_obs", "rel_actions"]), entry=st.integers(0, 14), value=odd_floats,
       frame=st.integers(0, 39))
def test_any_non_finite_or_float32_overflowing_frame_value_is_refused_naming_file_and_field(key, entry, value, frame):
    from roboflamingo.data.layout import MAX_ABS_VALUE

    values = make_frame(frame, (24, 20), (12, 12), "noise", 0)
    vec = values[key].astype(np.float64)  # float64 frames: 1e39 is finite there and inf as float32
    vec[entry % len(vec)] = value
    values[key] = vec
    # issue 31: finite but absurd magnitudes are refused too
    finite32 = np.isfinite(vec).all() and np.abs(vec).max() <= MAX_ABS_VALUE
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"episode_{frame:07d}.npz"
        np.savez_compressed(path, **values)
        if finite32:
            assert np.isfinite(read_frame(path)[key].astype(np.float32)).all()
            return
        with pytest.raises(DatasetError, match=rf"episode_{frame:07d}\.npz: field '{key}'"):
            read_frame(path)


def test_a_float32_overflow_in_a_frame_stops_packing_with_the_file_named(root, edit_frame):
    obs = np.zeros(15)
    obs[4] = 1e39
    edit_frame(root / "training", 7, robot_obs=obs)
    with pytest.raises(DatasetError, match=r"episode_0000007\.npz: field 'robot_obs' has values beyond float32"):
        pack_split(root / "training", root / "training" / "packed", progress=False)


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "must be a JSON object, got a list"),
    ('{"format": "roboflamingo-packed", "version": 1, "num_frames": 1, "shard_frames": 1, "fields": {}, '
     '"shards": [1], "frame_ids_sha256": "", "source": {}}', r"field 'shards\[0\]'"),
    ('{"format": "roboflamingo-packed", "version": 1, "num_frames": "x", "shard_frames": 1, "fields": {}, '
     '"shards": [], "frame_ids_sha256": "", "source": {}}', "field 'num_frames' must be a int"),
])
def test_a_malformed_packed_manifest_is_a_named_error(tmp_path, text, match):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(DatasetError, match=match):
        load_manifest(tmp_path)


# -- issue 31 item 4: absurd finite values are refused with the file and frame named ----------------
def test_an_absurd_finite_action_in_a_frame_file_is_refused_naming_the_file(root, edit_frame):
    act = np.zeros(7, np.float32)
    act[2] = 1e30  # finite in float32: it passed every earlier check and trained with a mean of 1e30
    edit_frame(root / "training", 12, rel_actions=act)
    with pytest.raises(DatasetError, match=r"episode_0000012\.npz: field 'rel_actions' row 0 entry 2 is 1e\+30, "
                                           r"beyond the sane magnitude 100000"):
        read_frame(frame_path(root / "training", 12))
    with pytest.raises(DatasetError, match=r"episode_0000012\.npz: field 'rel_actions'"):
        pack_split(root / "training", root / "training" / "packed", progress=False)
    with pytest.raises(DatasetError, match=r"episode_0000012\.npz: field 'rel_actions'"):
        compute_normalization(root / "training")


def _repack_with(packed, field, row, entry, value):
    """Change one value of shard 0 and rewrite its checksum: a packer that wrote the value itself."""
    from roboflamingo.io import sha256_file

    path = packed / "shard_00000" / f"{field}.npy"
    arr = np.load(path)
    arr[row, entry] = value
    np.save(path, arr)
    manifest = json.loads((packed / MANIFEST).read_text())
    manifest["shards"][0]["files"][f"{field}.npy"] = sha256_file(path)
    (packed / MANIFEST).write_text(json.dumps(manifest))
    return path


def test_an_absurd_value_in_a_packed_shard_is_refused_naming_file_row_and_frame(packed_split, tmp_path):
    split, index = packed_split
    packed = tmp_path / "packed"
    shutil.copytree(split / "packed", packed)
    _repack_with(packed, "robot_obs", 5, 3, -3e29)
    frame = int(index.frame_ids()[5])
    with pytest.raises(DatasetError, match=rf"shard_00000/robot_obs\.npy: field 'robot_obs' row 5 entry 3 is -3e\+29, "
                                           rf"beyond the sane magnitude 100000 \(layout.MAX_ABS_VALUE\), in frame {frame}"):
        PackedSplit(packed, index)


def test_a_value_absurd_beside_its_column_is_refused_from_packed_shards_and_from_statistics(packed_split, tmp_path):
    """500 is a fine number, but not as a CALVIN action whose other rows lie in [-1, 1]."""
    split, index = packed_split
    packed = tmp_path / "packed"
    shutil.copytree(split / "packed", packed)
    _repack_with(packed, "rel_actions", 20 - 16, 1, 500.0)  # shard_frames=16: row 4 of shard 0
    frame = int(index.frame_ids()[4])
    with pytest.raises(DatasetError, match=rf"rel_actions\.npy: field 'rel_actions' row 4 entry 1 is 500, more than "
                                           rf"100 x its column's typical magnitude .*in frame {frame}"):
        PackedSplit(packed, index)
    # the npz path: each frame alone is within the magnitude cap, the sampled frames together are not
    npz = tmp_path / "training"
    shutil.copytree(split, npz, ignore=shutil.ignore_patterns("packed"))
    values = dict(np.load(frame_path(npz, frame)))
    values["rel_actions"] = values["rel_actions"].copy()
    values["rel_actions"][1] = 500.0
    np.savez_compressed(frame_path(npz, frame), **values)
    read_frame(frame_path(npz, frame))
    with pytest.raises(DatasetError, match=rf"field 'rel_actions' row \d+ entry 1 is 500, more than 100 x .*in frame {frame}"):
        compute_normalization(npz, packed_dir=tmp_path / "none")


def test_ordinary_data_in_other_units_passes_the_sanity_check():
    """Degrees, encoder ticks, a joint that rarely moves, a column that is mostly zero: no false alarm."""
    from roboflamingo.data.layout import check_values

    rng = np.random.default_rng(0)
    n = 2000
    degrees = rng.uniform(-180, 180, n)
    ticks = rng.integers(0, 4096, n).astype(np.float64)
    rarely = np.where(np.arange(n) < n - 5, 2048.0, 3500.0)  # a servo that moves 5 frames of 2000
    mostly_zero = np.where(np.arange(n) % 500 == 0, 50.0, 0.0)  # 50 < 100 x the floor of 1
    gripper = np.where(rng.random(n) < 0.9, 1.0, -1.0)
    check_values("x", "robot_obs", np.stack([degrees, ticks, rarely, mostly_zero, gripper], axis=1))
