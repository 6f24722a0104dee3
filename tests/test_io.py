"""Atomic writes: a failure inside the block leaves the previous file or directory untouched."""

import numpy as np
import pytest

from roboflamingo.io import atomic_dir, atomic_path, atomic_save_npz, atomic_write_json, atomic_write_text


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_text_and_npz_round_trip(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    atomic_save_npz(tmp_path / "x.npz", x=np.arange(3))
    assert np.load(tmp_path / "x.npz")["x"].tolist() == [0, 1, 2]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "weights").write_text("v2-partial")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    with atomic_dir(target) as d:
        (d / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
