"""Where a policy comes from: the robot a source is for is known before any model is built."""

import dataclasses

import pytest

from roboflamingo.models.checkpoint import read_robot
from roboflamingo.policies import PolicySourceConfig, source_robot
from roboflamingo.robots import load_robot


def test_a_checkpoint_names_its_robot_and_a_bad_description_is_named(tmp_path):
    import json
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent / "models"))
    from model_helpers import micro_config, micro_head

    from roboflamingo.models.policy import RoboFlamingoPolicy

    so101 = load_robot("so101")
    stats = {"action_mean": np.zeros(6, np.float32), "action_std": np.ones(6, np.float32),
             "robot_obs_mean": np.zeros(6, np.float32), "robot_obs_std": np.ones(6, np.float32)}
    RoboFlamingoPolicy.from_config(micro_config(), micro_head(), stats, robot=so101).save_pretrained(tmp_path / "p")
    assert read_robot(tmp_path / "p") == so101
    assert source_robot(PolicySourceConfig(checkpoint=str(tmp_path / "p"))) == so101
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    del config["robot"]["cameras"]
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: 'robot': robot description is missing field 'cameras'"):
        read_robot(tmp_path / "p")
    del config["robot"]  # a policy saved before descriptions existed is CALVIN's, as it was trained:
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))  # every state entry normalized linearly
    calvin = load_robot("calvin")
    assert read_robot(tmp_path / "p") == dataclasses.replace(calvin, state=dataclasses.replace(calvin.state, angles=()))
    assert calvin.state.angles == (3, 4, 5)


@pytest.mark.parametrize("kind, robot", [("expert", "calvin"), ("random", "calvin"), ("remote", None)])
def test_the_other_sources_robot(kind, robot):
    assert source_robot(PolicySourceConfig(kind)) == (load_robot(robot) if robot else None)
