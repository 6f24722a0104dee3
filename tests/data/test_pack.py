"""``roboflamingo pack``: identical samples to the npz path, resumability, staleness, bad shards."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from roboflamingo import cli
from roboflamingo.data import pack as pack_module
from roboflamingo.data.config import AugmentConfig
from roboflamingo.data.dataset import CalvinDataset, compute_normalization
from roboflamingo.data.layout import LANG_ANN, DatasetError
from roboflamingo.data.pack import pack_split
from roboflamingo.data.packed import MANIFEST, verify_packed


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("image_size", [None, 16])
def test_packed_and_npz_paths_return_identical_samples(cfg, root, image_size):
    cfg = dataclasses.replace(
        cfg, image_size=image_size, paraphrase=True, augment=AugmentConfig(color_jitter=True)
    )
    npz = CalvinDataset(cfg, seed=7)
    assert not npz.use_packed
    # 7-frame shards: many windows straddle a shard boundary.
    pack_split(root / "training", root / "training" / "packed", shard_frames=7, progress=False)
    packed = CalvinDataset(cfg, seed=7)
    assert packed.use_packed and len(packed) == len(npz)
    for i in range(len(npz)):
        _assert_same(npz[(i, i % 3)], packed[(i, i % 3)])


def test_pack_cli_writes_manifest_and_dataset_uses_it(cfg, root, capsys):
    assert cli.main(["pack", f"data.root={root}", "shard_frames=8", "progress=false"]) == 0
    assert "packed training" in capsys.readouterr().out
    for split, frames in (("training", 21 + 18 + 4 + 20), ("validation", 21 + 18)):
        manifest = json.loads((root / split / "packed" / MANIFEST).read_text())
        assert manifest["num_frames"] == frames  # the union of the annotated segments
        assert len(manifest["shards"]) == -(-frames // 8)
        verify_packed(root / split / "packed")
    assert CalvinDataset(cfg).use_packed
    never = CalvinDataset(dataclasses.replace(cfg, use_packed="never"))
    assert not never.use_packed
    # Statistics read the packed arrays and agree with the npz files.
    stats = compute_normalization(root / "training")
    shutil.rmtree(root / "training" / "packed")
    np.testing.assert_allclose(compute_normalization(root / "training")["robot_obs_mean"], stats["robot_obs_mean"])


def test_pack_is_resumable(root):
    split, out = root / "training", root / "training" / "packed"
    first = pack_split(split, out, shard_frames=8, progress=False)
    assert first["reused_frames"] == 0
    mtimes = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("shard_*/rgb_static.npy")}
    shutil.rmtree(out / "shard_00002")
    with open(out / "shard_00005" / "robot_obs.npy", "r+b") as f:  # bit rot in a finished shard
        f.seek(-3, 2)
        f.write(b"xyz")
    second = pack_split(split, out, shard_frames=8, progress=False)
    assert second["reused_frames"] == first["num_frames"] - 8 - 8
    assert second["shards"] == first["shards"]
    rebuilt = {p.parent.name for p in out.glob("shard_*/rgb_static.npy") if p.stat().st_mtime_ns != mtimes[p.parent.name]}
    assert rebuilt == {"shard_00002", "shard_00005"}
    verify_packed(out)


def test_interrupted_pack_keeps_finished_shards_and_never_exposes_a_manifest(root, monkeypatch):
    split, out = root / "training", root / "training" / "packed"
    real = pack_module.read_frame
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pack_module, "read_frame", flaky)
    with pytest.raises(KeyboardInterrupt):
        pack_split(split, out, shard_frames=8, threads=1, progress=False)
    assert not (out / MANIFEST).exists()
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000", "shard_00001"]  # no temp leftovers
    monkeypatch.setattr(pack_module, "read_frame", real)
    done = pack_split(split, out, shard_frames=8, progress=False)
    assert done["reused_frames"] == 16
    verify_packed(out)


def test_use_packed_always_without_a_pack_fails(cfg):
    with pytest.raises(DatasetError, match=r"manifest\.json: data\.use_packed=always but the split is not packed"):
        CalvinDataset(dataclasses.replace(cfg, use_packed="always"))


def test_stale_pack_is_detected(cfg, root, layout):
    pack_split(root / "training", root / "training" / "packed", shard_frames=16, progress=False)
    ann = np.load(root / "training" / LANG_ANN, allow_pickle=True).item()
    ann["language"]["ann"][0] = "a different sentence"
    np.save(root / "training" / LANG_ANN, np.array(ann, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"field 'source\.lang_annotations/auto_lang_ann\.npy' does not match"):
        CalvinDataset(cfg)


def test_packed_split_reads_without_the_npz_files(cfg, root, tmp_path):
    packed_root = tmp_path / "fast_disk"
    reference = CalvinDataset(cfg, seed=3)
    expected = [reference[(i, 1)] for i in range(len(reference))]
    pack_split(root / "training", packed_root / "training", shard_frames=16, progress=False)
    shutil.rmtree(root / "training")
    ds = CalvinDataset(dataclasses.replace(cfg, packed_root=str(packed_root), use_packed="always"), seed=3)
    for i, want in enumerate(expected):
        _assert_same(want, ds[(i, 1)])


def test_truncated_shard_file_fails_on_open(cfg, root):
    out = root / "training" / "packed"
    pack_split(root / "training", out, shard_frames=16, progress=False)
    path = out / "shard_00001" / "rgb_gripper.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"shard_00001/rgb_gripper\.npy: file size does not match its header"):
        CalvinDataset(cfg)
    with pytest.raises(DatasetError, match=r"rgb_gripper\.npy: sha256 does not match"):
        verify_packed(out)


# -- issue 31: what opening a packed split re-hashes, `pack --verify`, and manifest paths ---------------
def _edit_keeping_size_and_mtime(path):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_an_edit_with_its_size_and_mtime_restored_is_rehashed_and_refused_on_open(cfg, root, monkeypatch):
    from roboflamingo.data import packed as packed_module
    from roboflamingo.io import sha256_file

    out = root / "training" / "packed"
    pack_split(root / "training", out, shard_frames=16, progress=False)
    # As if the last check were long past (file times are coarse: a fresh check is not trusted for 2 s).
    monkeypatch.setattr(packed_module, "_MTIME_SLACK_S", -1e12)
    hashed = []  # shard files hashed (the split's two small index files are hashed on every open)
    monkeypatch.setattr(packed_module, "sha256_file",
                        lambda p: (Path(p).parent.name.startswith("shard_") and hashed.append(p)) or sha256_file(p))
    CalvinDataset(cfg)
    assert len(hashed) == 4 * len(list(out.glob("shard_*")))  # the first open hashes every file
    hashed.clear()
    CalvinDataset(cfg)
    assert hashed == []  # unchanged files are trusted from verified.json
    path = out / "shard_00001" / "rel_actions.npy"
    _edit_keeping_size_and_mtime(path)
    with pytest.raises(DatasetError, match=r"shard_00001/rel_actions\.npy: sha256 does not match"):
        CalvinDataset(cfg)
    assert hashed == [path]


def test_pack_verify_rehashes_everything_and_names_a_bad_file(root, capsys, monkeypatch):
    from roboflamingo.data import packed as packed_module

    assert cli.main(["pack", f"data.root={root}", "splits=[training]", "shard_frames=16", "progress=false"]) == 0
    assert cli.main(["pack", f"data.root={root}", "splits=[training]", "--verify"]) == 0
    out = capsys.readouterr().out
    n = len(list((root / "training" / "packed").glob("shard_*/*.npy")))
    assert f"verified training: {n} files" in out and "MB/s" in out
    # a change no file metadata shows (bit rot, a raw write): only the full re-hash sees it
    monkeypatch.setattr(packed_module, "_file_state", lambda st: {})
    monkeypatch.setattr(packed_module, "_MTIME_SLACK_S", -1e12)
    packed_module.verify_files(root / "training" / "packed", packed_module.load_manifest(root / "training" / "packed"))
    _edit_keeping_size_and_mtime(root / "training" / "packed" / "shard_00000" / "robot_obs.npy")
    packed_module.verify_files(root / "training" / "packed", packed_module.load_manifest(root / "training" / "packed"))
    assert cli.main(["pack", f"data.root={root}", "splits=[training]", "--verify"]) == 1
    assert "shard_00000/robot_obs.npy: sha256 does not match" in capsys.readouterr().err


@pytest.mark.parametrize("name, files, match", [
    ("../../..", None, r"shards\[0\]\.name' must be shard_<number>, got '\.\./\.\./\.\.'"),
    ("/etc", None, r"shards\[0\]\.name' must be shard_<number>"),
    ("shard_00000/../../x", None, r"shards\[0\]\.name' must be shard_<number>"),
    ("shard_00000", {"../../../etc/passwd": "0"}, r"shards\[0\]\.files' names \['\.\./\.\./\.\./etc/passwd'\]"),
])
def test_a_manifest_cannot_point_outside_the_packed_directory(cfg, root, name, files, match):
    out = root / "training" / "packed"
    pack_split(root / "training", out, shard_frames=1024, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][0]["name"] = name
    if files is not None:
        manifest["shards"][0]["files"] = files
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=match):
        CalvinDataset(dataclasses.replace(cfg, use_packed="always"))
