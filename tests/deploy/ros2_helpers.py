"""What the ROS 2 tests share: the skip-or-fail rule, a client for ``ros2_probe.py``, and a robot's
observation messages in ROS 2's JSON form."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.deploy.config import BridgeConfig
from roboflamingo.deploy.messages import encode_image, encode_joint_state, encode_pose_stamped
from roboflamingo.deploy.ros2_graph import REQUIRE_ENV, Graph, Process, ros2_python, rosbridge_script

PROBE = Path(__file__).with_name("ros2_probe.py")
START_POSE = np.array([0.05, -0.1, 0.55, np.pi, 0.0, np.pi / 2])


def require_ros2() -> Path:
    """The ROS 2 venv's python; skip without it, or fail where ``ROBOFLAMINGO_REQUIRE_ROS2=1`` (``make test``
    with the vendored rosbridge bundle)."""
    python = ros2_python()
    problem = None
    if python is None:
        problem = "no ROS 2 venv (.venv-ros2 or $ROBOFLAMINGO_ROS2_PYTHON; `make ros2` builds it)"
    elif not rosbridge_script(python).exists():
        problem = f"the ROS 2 venv at {python.parent.parent} has no rosbridge_server (`make ros2` rebuilds it)"
    if problem:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {problem}")
        pytest.skip(problem)
    return python


@pytest.fixture
def graph():
    require_ros2()
    with Graph() as g:
        yield g


class ProbeClient:
    """Requests to a running ``ros2_probe.py``; each call waits for its answer."""

    def __init__(self, graph: Graph, subscribe: list[tuple[str, str]]) -> None:
        self.process: Process = graph.run([str(PROBE), json.dumps({"subscribe": subscribe})], "probe")
        self.process.wait_for_line(r"^PROBE READY$", 60)
        self._ids = itertools.count()

    def request(self, op: str, timeout_s: float = 30.0, **fields) -> dict:
        req_id = next(self._ids)
        self.process.send(json.dumps({"id": req_id, "op": op, **fields}))
        m = self.process.wait_for_line(rf'^PROBE (\{{"id": {req_id}[,}}].*)$', timeout_s)
        answer = json.loads(m.group(1))
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def publish(self, topic: str, type_str: str, msg: dict, stamp_offset_s: float = 0.0) -> float:
        return self.request("publish", topic=topic, type=type_str, msg=msg, stamp_offset_s=stamp_offset_s)["published"]

    def received(self, topic: str) -> list[dict]:
        return self.request("dump", topic=topic)["messages"]


def robot_stream(cfg: BridgeConfig, pose=START_POSE, size: int = 32) -> list[dict]:
    """One observation as a robot driver publishes it (topics and types from ``cfg``), for the probe's
    ``stream`` op; stamps are filled in at each publish."""
    t = cfg.topics
    rng = np.random.default_rng(0)
    messages = []
    for key, frame in (("rgb_static", "static_camera"), ("rgb_gripper", "gripper_camera")):
        topic = getattr(t, key)
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        messages.append((topic, encode_image(image, 1.0, frame, 2, topic.type.endswith("CompressedImage"))))
    messages.append((t.tcp_pose, encode_pose_stamped(pose[:3], pose[3:], 1.0, cfg.frame_id, 2)))
    joints = [*cfg.arm_joints, *cfg.finger_joints]
    messages.append((t.joint_state, encode_joint_state(joints, [0.1] * 7 + [0.02, 0.02], 1.0, cfg.frame_id, 2)))
    return [{"topic": topic.name, "type": topic.type, "msg": msg} for topic, msg in messages]
