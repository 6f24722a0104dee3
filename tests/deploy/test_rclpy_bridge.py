"""The native link's conversions against real rclpy messages: ``rclpy_bridge_cases.py`` under the ROS 2
venv's interpreter (its pytest comes from the project venv), in a private ROS 2 domain."""

from pathlib import Path

import pytest

from roboflamingo.deploy.config import BridgeConfig

from .ros2_helpers import graph  # noqa: F401  (a fixture)

CASES = Path(__file__).with_name("rclpy_bridge_cases.py")


def test_link_rclpy_needs_ros_version_2():
    with pytest.raises(ValueError, match="deploy.link=rclpy .* deploy.ros_version=2"):
        BridgeConfig(link="rclpy")
    with pytest.raises(ValueError, match="deploy.link"):
        BridgeConfig(link="dds", ros_version=2)


def test_without_rclpy_the_native_link_says_how_to_get_it():
    pytest.importorskip("roslibpy")  # the project venv, where rclpy is absent by design
    try:
        import rclpy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("rclpy is importable here")
    from roboflamingo.deploy.rclpy_bridge import RclpyBridge

    with pytest.raises(ImportError, match="make ros2"):
        RclpyBridge(BridgeConfig(link="rclpy", ros_version=2), "x")


@pytest.mark.slow
def test_the_conversions_hold_for_real_rclpy_messages(graph):  # noqa: F811
    cases = graph.run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)], "rclpy cases")
    assert cases.wait(300) == 0, cases.output(100)
    assert "passed" in cases.output(5) and "failed" not in cases.output(5)
