"""Where a policy comes from: the robot a source is for is known before any model is built."""

import pytest

from roboflamingo.models.checkpoint import read_robot
from roboflamingo.policies import PolicySourceConfig, source_robot
from roboflamingo.robots import load_robot


def test_a_checkpoint_names_its_robot_in_robot_json_and_calvin_otherwise(tmp_path):
    so101 = load_robot("so101")
    new, old = tmp_path / "so101_ckpt", tmp_path / "calvin_ckpt"
    new.mkdir()
    old.mkdir()
    so101.save(new / "robot.json")
    assert read_robot(new) == so101
    assert source_robot(PolicySourceConfig(checkpoint=str(new))) == so101
    assert source_robot(PolicySourceConfig(checkpoint=str(old))) == load_robot("calvin")
    (new / "robot.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match=r"robot.json: robot description is missing field 'cameras'"):
        read_robot(new)


@pytest.mark.parametrize("kind, robot", [("expert", "calvin"), ("random", "calvin"), ("remote", None)])
def test_the_other_sources_robot(kind, robot):
    assert source_robot(PolicySourceConfig(kind)) == (load_robot(robot) if robot else None)
