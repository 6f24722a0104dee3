"""rclpy_bridge's conversions and link, run by ``test_rclpy_bridge.py`` under the ROS 2 venv's pytest
(this venv cannot import rclpy; the file name keeps the project venv's pytest from collecting it).

Each message the deployment sends is built by ``messages.py`` in rosbridge's JSON form, turned into
the real rclpy message and back: the round trip keeps every value, with ``uint8[]`` as bytes.
"""

import base64
import threading

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from roboflamingo.deploy.config import BridgeConfig, TopicConfig
from roboflamingo.deploy.messages import (
    MessageError,
    decode_image,
    decode_joint_state,
    decode_joint_trajectory,
    decode_pose_stamped,
    encode_float,
    encode_float_array,
    encode_image,
    encode_joint_state,
    encode_joint_trajectory,
    encode_pose_stamped,
    header_stamp,
)
from roboflamingo.deploy.rclpy_bridge import RclpyBridge, from_dict, message_class, to_dict, type_string

T = 1_700_000_000.25
IMAGE = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
JOINTS = [f"j{i}" for i in range(7)]


def roundtrip(cls, msg):
    ros = from_dict(cls, msg)
    assert isinstance(ros, cls)
    return ros, to_dict(ros)


def test_raw_and_compressed_images_keep_their_pixels_and_stamps():
    ros, back = roundtrip(Image, encode_image(IMAGE, T, "static_camera", 2, compressed=False))
    assert (ros.height, ros.width, ros.encoding, ros.step) == (6, 4, "rgb8", 12)
    assert ros.header.frame_id == "static_camera" and (ros.header.stamp.sec, ros.header.stamp.nanosec) == (1_700_000_000, 250_000_000)
    assert isinstance(back["data"], bytes) and back["data"] == IMAGE.tobytes()
    np.testing.assert_array_equal(decode_image(back), IMAGE)
    assert header_stamp(back) == pytest.approx(T)
    jpeg = encode_image(IMAGE, T, "c", 2, compressed=True)
    _, back = roundtrip(CompressedImage, jpeg)
    assert back["format"] == "jpeg" and back["data"] == base64.b64decode(jpeg["data"])
    assert decode_image(back).shape == (6, 4, 3)


def test_poses_joints_floats_and_trajectories_keep_their_values():
    _, back = roundtrip(PoseStamped, encode_pose_stamped([0.1, -0.2, 0.5], [3.0, 0.1, -1.2], T, "panda_link0", 2))
    position, euler = decode_pose_stamped(back)
    np.testing.assert_allclose(position, [0.1, -0.2, 0.5])
    np.testing.assert_allclose(euler, [3.0, 0.1, -1.2], atol=1e-9)
    _, back = roundtrip(JointState, encode_joint_state([*JOINTS, "f1", "f2"], [0.5] * 7 + [0.01, 0.02], T, "b", 2))
    arm, width = decode_joint_state(back, JOINTS, ["f1", "f2"])
    np.testing.assert_allclose(arm, 0.5)
    assert width == pytest.approx(0.03)
    assert roundtrip(Float32, encode_float(-1.0, "std_msgs/msg/Float32"))[1] == {"data": -1.0}
    assert roundtrip(Float64MultiArray, encode_float_array(range(24)))[1]["data"] == list(map(float, range(24)))
    assert roundtrip(String, {"data": "open the drawer"})[1] == {"data": "open the drawer"}
    assert roundtrip(Bool, {"data": True})[1] == {"data": True}
    ros, back = roundtrip(JointTrajectory, encode_joint_trajectory(JOINTS, np.linspace(-1, 1, 7), T, "b", 2, 0.5))
    assert ros.points[0].time_from_start.nanosec == 500_000_000
    np.testing.assert_allclose(decode_joint_trajectory(back, JOINTS), np.linspace(-1, 1, 7))


@pytest.mark.parametrize(
    ("cls", "msg", "error"),
    [
        (String, {"data": 3}, "String.data must be a string"),
        (Float32, {"data": "1.0"}, "Float32.data must be a number"),
        (Float32, {"data": True}, "Float32.data must be a number"),
        (PoseStamped, {"header": {"seq": 1}}, "PoseStamped.header has no field 'seq'"),  # a ROS 1 header
        (Image, {"data": "not base64!"}, "Image.data is not valid base64"),
        (JointState, {"position": 1.0}, "JointState.position must be a list"),
        (PoseStamped, {"pose": [1, 2]}, "PoseStamped.pose must be an object"),
    ],
)
def test_a_malformed_message_names_the_field(cls, msg, error):
    with pytest.raises(MessageError, match=error.replace(".", r"\.").replace("(", r"\(")):
        from_dict(cls, msg)


def test_type_names_resolve_in_either_spelling_and_unknown_ones_say_so():
    assert message_class("sensor_msgs/msg/Image") is Image and message_class("sensor_msgs/Image") is Image
    assert type_string(Image) == "sensor_msgs/msg/Image"
    with pytest.raises(ValueError, match="not installed"):
        message_class("no_such_msgs/msg/Thing")
    with pytest.raises(ValueError, match="not a ROS 2 message type"):
        message_class("sensor_msgs/srv/Image")


def test_two_links_in_one_process_exchange_messages_and_a_closed_link_refuses_to_publish():
    cfg = BridgeConfig(ros_version=2, link="rclpy")
    topic = TopicConfig("/rclpy_bridge_case", "std_msgs/msg/String")
    a, b = RclpyBridge(cfg, "case_a").connect(), RclpyBridge(cfg, "case_b").connect()
    try:
        got, arrived = [], threading.Event()
        b.subscribe(topic, lambda m: (got.append(m), arrived.set()), queue_length=0)
        a.advertise(topic)
        for _ in range(300):  # discovery: resend until the subscriber is matched
            assert a.publish(topic, {"data": "hello"})
            if arrived.wait(0.1):
                break
        assert got[0] == {"data": "hello"}
    finally:
        a.close()
        b.close()
    assert not a.connected and a.publish(topic, {"data": "late"}) is False
