"""Missing or unusable inputs stop `roboflamingo train` with the command that makes them, and leave
the run directory as it was: no config.yaml, no metrics, nothing a later `resume=true` would trust."""

from __future__ import annotations

import shutil

import pytest

from roboflamingo import cli

STEPS = ["train.steps=1", "train.log_every=1", "train.checkpoint_every=1"]


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


@pytest.fixture
def run_dir(tmp_path):
    """A run directory that exists already, holding a user's note: it must come out untouched."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def test_a_missing_dataset_names_generate_and_writes_nothing(tmp_path, run_dir, train_args, capsys):
    missing = tmp_path / "no_data"
    assert cli.main(["train", *train_args(run_dir, *STEPS, "train.val_every=0"), f"data.root={missing}"]) == 2
    err = capsys.readouterr().err
    assert f"{missing}/training: no dataset split here (data.root={missing}, data.train_split=training)" in err
    assert f"`roboflamingo generate root={missing}`" in err
    assert _tree(run_dir) == ["notes.txt"]
    fresh = tmp_path / "fresh_run"
    assert cli.main(["train", *train_args(fresh, *STEPS), f"data.root={missing}"]) == 2
    assert not fresh.exists()


def test_a_missing_validation_split_says_how_to_train_without_it(tmp_path, dataset, run_dir, train_args, capsys):
    root = tmp_path / "data"
    shutil.copytree(dataset / "training", root / "training")
    assert cli.main(["train", *train_args(run_dir, *STEPS, "train.val_every=1"), f"data.root={root}"]) == 2
    err = capsys.readouterr().err
    assert "data.val_split=validation" in err and "set train.val_every=0 to train without validation" in err
    assert _tree(run_dir) == ["notes.txt"]


@pytest.mark.parametrize("extra, message", [
    (["data.use_packed=always"], "data.use_packed=always but {root}/training is not packed; run "
                                 "`roboflamingo pack data.root={root} splits=[training]` first"),
    (["data.format=lerobot"], "the LeRobot split is not packed yet (data.root={root}, data.train_split=training); "
                              "training reads packed shards only: run `roboflamingo pack data=lerobot "
                              "data.root={root} splits=[training]` first"),
])
def test_unpacked_or_wrong_format_data_names_the_command(dataset, run_dir, train_args, capsys, extra, message):
    assert cli.main(["train", *train_args(run_dir, *STEPS, "train.val_every=0", *extra)]) == 2
    assert message.format(root=dataset) in capsys.readouterr().err
    assert _tree(run_dir) == ["notes.txt"]


def test_data_the_policy_cannot_use_is_refused_before_anything_is_written(dataset, run_dir, train_args, capsys):
    # The split is there, but no segment is long enough for the window: found only when it is opened.
    args = train_args(run_dir, *STEPS, "train.val_every=0", "model.window=64", "data.window=64")
    assert cli.main(["train", *args]) == 2
    assert "no annotated segment is at least data.window=64 frames long" in capsys.readouterr().err
    assert _tree(run_dir) == ["notes.txt"]


def test_a_good_run_writes_its_config_metrics_and_checkpoint(tmp_path, train_args):
    run = tmp_path / "good"
    assert cli.main(["train", *train_args(run, *STEPS, "train.val_every=0")]) == 0
    assert {"config.yaml", "metrics.jsonl", "checkpoints"} <= set(p.name for p in run.iterdir())
