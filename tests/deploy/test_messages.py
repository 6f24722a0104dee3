"""ROS message building and parsing, ROS 1 vs ROS 2 conventions, and the deploy config groups."""

import numpy as np
import pybullet
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roboflamingo.config import ConfigError, load
from roboflamingo.deploy import messages as m
from roboflamingo.deploy.config import BridgeConfig, TopicConfig, TopicsConfig
from roboflamingo.deploy.ros_node import Job as RosJob
from roboflamingo.types import wrap_angle


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-3.1, 3.1), min_size=3, max_size=3))
def test_rotations_match_pybullet(euler):
    q = m.quat_from_euler(euler)
    np.testing.assert_allclose(q, pybullet.getQuaternionFromEuler(euler), atol=1e-9)
    ours = m.euler_from_quat(q)
    # the round trip is the same rotation (q and -q are one rotation)
    back = m.quat_from_euler(ours)
    assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9
    if abs(euler[1]) < 1.5:  # away from gimbal lock the angles themselves agree, up to 2*pi
        np.testing.assert_allclose(wrap_angle(ours - pybullet.getEulerFromQuaternion(q)), 0, atol=1e-6)


@pytest.mark.parametrize("version, keys", [(1, {"secs", "nsecs"}), (2, {"sec", "nanosec"})])
def test_stamps_follow_the_ros_version_and_parse_either_way(version, keys):
    h = m.header(1700000000.25, "base", version)
    assert set(h["stamp"]) == keys and ("seq" in h) == (version == 1)
    assert m.stamp_from_msg(h["stamp"]) == pytest.approx(1700000000.25)
    assert m.stamp_from_msg({"secs": 0, "nsecs": 0}) is None  # unset stamp


def test_type_names_per_version():
    assert m.type_name("sensor_msgs/Image", 2) == "sensor_msgs/msg/Image"
    assert m.type_name("sensor_msgs/msg/Image", 1) == "sensor_msgs/Image"
    assert m.base_type("sensor_msgs/msg/CompressedImage") == "CompressedImage"


def test_raw_images_round_trip_exactly_and_jpeg_closely():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    raw = m.encode_image(img, 1.0, "cam", 2, compressed=False)
    assert raw["encoding"] == "rgb8" and isinstance(raw["data"], str)
    np.testing.assert_array_equal(m.decode_image(raw), img)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 1, 3))
    jpeg = m.encode_image(smooth, 1.0, "cam", 1, compressed=True)
    assert jpeg["format"] == "jpeg"
    assert np.abs(m.decode_image(jpeg).astype(int) - smooth).mean() < 3
    assert m.decode_image(jpeg, size=16).shape == (16, 16, 3)


def test_bgr_and_padded_rows_decode():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), np.uint8)
    padded[:, :9] = img[..., ::-1].reshape(2, 9)
    msg = {"encoding": "bgr8", "height": 2, "width": 3, "step": 12, "data": list(padded.tobytes())}
    np.testing.assert_array_equal(m.decode_image(msg), img)


@pytest.mark.parametrize(
    "msg, match",
    [
        ({"format": "jpeg", "data": "!!notbase64"}, "base64"),
        ({"format": "jpeg", "data": "aGVsbG8="}, "could not be decoded"),
        ({"encoding": "yuv422", "height": 1, "width": 1, "data": ""}, "encoding must be one of"),
        ({"encoding": "rgb8", "height": 2, "width": 2, "data": "AAAA"}, "expected 12"),
        ({"encoding": "rgb8", "height": 2, "width": 2, "data": 5}, "base64 string"),
    ],
)
def test_bad_images_raise_message_errors(msg, match):
    with pytest.raises(m.MessageError, match=match):
        m.decode_image(msg)


def test_pose_and_joint_state_round_trip():
    msg = m.encode_pose_stamped([0.1, -0.2, 0.5], [3.0, 0.2, -1.0], 5.0, "base", 1)
    pos, euler = m.decode_pose_stamped(msg)
    np.testing.assert_allclose(pos, [0.1, -0.2, 0.5])
    np.testing.assert_allclose(euler, [3.0, 0.2, -1.0], atol=1e-9)
    names = [f"j{i}" for i in range(7)] + ["f1", "f2"]
    js = m.encode_joint_state(names[::-1], list(range(9))[::-1], 5.0, "base", 2)
    arm, width = m.decode_joint_state(js, names[:7], ["f1", "f2"])
    np.testing.assert_array_equal(arm, range(7))
    assert width == 15.0
    with pytest.raises(m.MessageError, match="lacks arm joints"):
        m.decode_joint_state(js, ["nope"] * 7, [])
    with pytest.raises(m.MessageError, match="orientation.y must be a finite number"):
        m.decode_pose_stamped({"pose": {"position": {"x": 0, "y": 0, "z": 0}, "orientation": {"x": 0}}})


def test_float_messages():
    assert m.encode_float(-1.0, "std_msgs/Float32") == {"data": -1.0}
    assert m.encode_float(1.0, "std_msgs/msg/Float64MultiArray")["data"] == [1.0]
    np.testing.assert_array_equal(m.decode_float_array({"data": [1, 2]}, 2), [1, 2])
    with pytest.raises(m.MessageError, match="expected 3 values"):
        m.decode_float_array({"data": [1, 2]}, 3)


@pytest.mark.parametrize("group, version, sep", [("ros1", 1, "/"), ("ros2", 2, "/msg/"), ("sim", 1, "/")])
def test_deploy_groups_compose_with_matching_conventions(group, version, sep):
    job = load("ros", RosJob, [f"deploy={group}"])
    assert job.deploy.ros_version == version
    for name in TopicsConfig.__dataclass_fields__:
        topic = getattr(job.deploy.topics, name)
        assert sep in topic.type, (name, topic.type)
    assert bool(job.deploy.topics.scene_obs.name) == (group == "sim")


def test_bridge_config_errors_name_the_field():
    with pytest.raises(ValueError, match="deploy.topics.estop.type must be one of"):
        BridgeConfig(topics=TopicsConfig(estop=TopicConfig("/estop", "std_msgs/String")))
    with pytest.raises(ValueError, match="is a ROS 2 name but deploy.ros_version=1"):
        BridgeConfig(topics=TopicsConfig(tcp_pose=TopicConfig("/p", "geometry_msgs/msg/PoseStamped")))
    with pytest.raises(ConfigError, match="ros_version must be 1 or 2"):
        load("ros", RosJob, ["deploy.ros_version=3"])


@pytest.mark.parametrize("version, duration", [(1, {"secs": 0, "nsecs": 50_000_000}), (2, {"sec": 0, "nanosec": 50_000_000})])
def test_joint_commands_as_joint_state_or_joint_trajectory(version, duration):
    names, q = ["shoulder_pan", "gripper"], [12.5, 40.0]
    js = m.encode_joint_command(names, q, 100.25, "base_link", version, m.type_name("sensor_msgs/JointState", version), 0.05)
    assert js["name"] == names and js["position"] == q and js["velocity"] == [] and js["effort"] == []
    assert m.header_stamp(js) == pytest.approx(100.25)
    jt = m.encode_joint_command(names, q, 100.25, "base_link", version, "trajectory_msgs/JointTrajectory", 0.05)
    assert jt["joint_names"] == names and jt["header"]["frame_id"] == "base_link"
    (point,) = jt["points"]
    assert point["positions"] == q and point["time_from_start"] == duration
    for msg in (js, jt):
        got_names, got = m.decode_joint_command(msg)
        assert got_names == names and got.tolist() == q
    with pytest.raises(ValueError, match="a JointState or a JointTrajectory, not 'std_msgs/Float32'"):
        m.encode_joint_command(names, q, 0.0, "b", version, "std_msgs/Float32", 0.05)


def test_joint_values_are_read_by_name_from_any_field():
    js = m.encode_joint_state(["b", "a", "c"], [2.0, 1.0, 3.0], 1.0, "x", 2)
    js["velocity"], js["effort"] = [0.2, 0.1, 0.3], []
    assert m.decode_joint_values(js, ["a", "c"]).tolist() == [1.0, 3.0]
    assert m.decode_joint_values(js, ["a"], "velocity").tolist() == [0.1]
    with pytest.raises(m.MessageError, match="JointState.effort has 0 values for 3 names"):
        m.decode_joint_values(js, ["a"], "effort")
    with pytest.raises(m.MessageError, match=r"JointState lacks joints \['d'\]"):
        m.decode_joint_values(js, ["a", "d"])
    js["position"][1] = float("nan")
    with pytest.raises(m.MessageError, match="JointState.position must hold finite numbers"):
        m.decode_joint_values(js, ["a"])
    with pytest.raises(m.MessageError, match="JointTrajectory.points must be a non-empty list"):
        m.decode_joint_command({"joint_names": ["a"], "points": []})


def test_camera_and_joint_command_topics_are_checked_like_the_others():
    with pytest.raises(ValueError, match="deploy.topics.joint_command.type must be one of"):
        BridgeConfig(topics=TopicsConfig(joint_command=TopicConfig("/j", "std_msgs/Float64")))
    with pytest.raises(ValueError, match="deploy.cameras.front.type must be one of"):
        BridgeConfig(cameras={"front": TopicConfig("/f", "sensor_msgs/JointState")})
    with pytest.raises(ValueError, match="deploy.cameras.front.name must name the camera's image topic"):
        BridgeConfig(cameras={"front": TopicConfig()})
    assert BridgeConfig(cameras={"front": TopicConfig("/f")}).cameras["front"].type == "sensor_msgs/CompressedImage"
    with pytest.raises(ConfigError, match="state_sources has an empty entry"):
        load("ros", RosJob, ["deploy.state_sources=[a,' ']"])
