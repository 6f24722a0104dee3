"""A missing split is reported with the command that makes it, before `pack` or `export-lerobot` start."""

from __future__ import annotations

import pytest

from roboflamingo import cli
from roboflamingo.data.config import DataConfig
from roboflamingo.data.inputs import check_source_split, check_split
from roboflamingo.data.layout import DatasetError
from roboflamingo.data.pack import pack_split


def test_check_split_names_the_command_for_each_missing_input(root, tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(DatasetError, match=rf"no dataset split here \(data.root={missing}, data.train_split=training\); "
                                           rf"make one with `roboflamingo generate root={missing}`"):
        check_split(DataConfig(root=str(missing)), "training", "data.train_split")
    check_split(DataConfig(root=str(root)), "training", "data.train_split")  # npz files suffice
    with pytest.raises(DatasetError, match=rf"run `roboflamingo pack data.root={root} splits=\[training\]` first"):
        check_split(DataConfig(root=str(root)), "training", "data.train_split", packed_needed=True)
    pack_split(root / "training", root / "training" / "packed", progress=False)
    check_split(DataConfig(root=str(root)), "training", "data.train_split", packed_needed=True)
    with pytest.raises(DatasetError, match=r"no LeRobotDataset v3 here.*`roboflamingo export-lerobot"):
        check_split(DataConfig(root=str(missing), format="lerobot"), "training", "data.train_split")
    with pytest.raises(DatasetError, match=r"pack data=lerobot"):
        check_split(DataConfig(root=str(root), format="lerobot"), "validation", "data.val_split", packed_needed=True)
    with pytest.raises(DatasetError, match=r"no dataset split here \(data.root=.*, split=valid\)"):
        check_source_split(DataConfig(root=str(root)), "valid")


def test_pack_checks_every_split_before_packing_any(root, capsys):
    assert cli.main(["pack", f"data.root={root}", "splits=[training,validaton]", "progress=false"]) == 1
    err = capsys.readouterr().err
    assert f"{root}/validaton: no dataset split here (data.root={root}, splits[1]=validaton)" in err
    assert "roboflamingo generate" in err
    assert not (root / "training" / "packed").exists()  # the good split was not packed first


def test_export_lerobot_names_generate_for_a_missing_split(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["export-lerobot", str(out), f"data.root={tmp_path / 'none'}"]) == 1
    assert "`roboflamingo generate root=" in capsys.readouterr().err
    assert not out.exists()
