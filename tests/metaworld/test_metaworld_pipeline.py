"""One Meta-World task end to end: generate -> pack -> a short train -> eval, and the LeRobot export."""

from __future__ import annotations

import json

import pytest

from roboflamingo import cli


@pytest.mark.slow
def test_one_task_generate_pack_train_eval_and_export(tmp_path, capsys):
    from roboflamingo.metaworld.config import MetaWorldConfig
    from roboflamingo.metaworld.env import sawyer_robot
    from roboflamingo.models.checkpoint import read_robot

    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    assert cli.main(["generate", "env=metaworld", f"root={data}", "tasks=[reach]", "episodes_per_task=3",
                     "val_episodes_per_task=1", "workers=1", "progress=false", "env.size=32"]) == 0
    assert cli.main(["pack", f"data.root={data}", "progress=false"]) == 0
    assert cli.main(["train", f"data.root={data}", "train=tiny", "train.steps=3", "data.batch_size=2",
                     "data.num_workers=0", f"run_dir={run}"]) == 0
    ckpt = run / "checkpoints" / "last"
    read_robot(ckpt).require_compatible(sawyer_robot(MetaWorldConfig(size=32)), "the checkpoint", "the Sawyer")
    assert cli.main(["eval", "env=metaworld", f"checkpoint={ckpt}", "eval.tasks=[reach]", "eval.episodes_per_task=2",
                     "eval.ep_len=15", "env.size=32", f"run_dir={out}", "eval.progress=false"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["per_task"]["reach-v3"]["total"] == 2 and summary["per_group"]["easy"]["tasks"] == 1
    assert summary["policy"]["kind"] == "checkpoint"
    # a policy trained on the 4-d state, evaluated where the state is the full observation: refused
    # up front, naming the setting that decides it
    assert cli.main(["eval", "env=metaworld", f"checkpoint={ckpt}", "eval.tasks=[reach]", "env.size=32",
                     "env.state=full", f"run_dir={tmp_path / 'full'}", "eval.progress=false"]) == 2
    assert "env=metaworld env.state=full is for robot" in capsys.readouterr().err

    # LeRobot's naming for Meta-World (lerobot/metaworld_mt50: observation.image, 80 fps, robot_type metaworld)
    export = tmp_path / "lerobot"
    assert cli.main(["export-lerobot", str(export), f"data.root={data}", "features.camera_features={corner2: "
                     "observation.image}", "robot_type=metaworld", "progress=false"]) == 0
    info = json.loads((export / "meta" / "info.json").read_text())
    assert (info["fps"], info["robot_type"], info["total_episodes"]) == (80, "metaworld", 3)
    assert {"observation.image", "observation.state", "action"} <= set(info["features"])
    assert info["features"]["observation.image"]["shape"] == [32, 32, 3]
