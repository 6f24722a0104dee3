"""A lockstep robot on a ROS 2 graph for ``bench_serve.py`` (run under the ROS 2 venv's python).

It publishes one observation (JPEG ``CompressedImage`` per camera, ``JointState``, ``PoseStamped``;
ROS 2 types from ``configs/deploy/ros2.yaml``'s defaults), waits for the target pose it produces, and
times frame -> command; a frame that gets no command within ``--resend`` seconds is re-sent with a new
stamp, as a streaming camera would. The last line is JSON: ``loop_ms`` (one per measured frame) and
``resent``.

    python scripts/ros2_lockstep_robot.py --steps 200 --warmup 10
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import observation  # noqa: E402

from roboflamingo.config import load  # noqa: E402
from roboflamingo.deploy.messages import encode_image, encode_joint_state, encode_pose_stamped  # noqa: E402
from roboflamingo.deploy.rclpy_bridge import RclpyBridge  # noqa: E402
from roboflamingo.deploy.ros_node import Job  # noqa: E402
from roboflamingo.robots.calvin import RGB_GRIPPER, RGB_STATIC  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--resend", type=float, default=0.5, help="seconds before an unanswered frame is re-sent")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without a command before giving up")
    args = parser.parse_args()
    cfg = load("ros", Job, ["deploy=ros2", "deploy.link=rclpy"]).deploy
    t = cfg.topics
    obs = observation(np.random.default_rng(0))
    bridge = RclpyBridge(cfg, "bench_lockstep_robot").connect()
    got = threading.Event()
    bridge.subscribe(t.target_pose, lambda _m: got.set(), queue_length=0)
    for topic in (t.rgb_static, t.rgb_gripper, t.joint_state, t.tcp_pose):
        bridge.advertise(topic)

    def publish_frame() -> None:
        stamp = time.time()
        bridge.publish(t.rgb_static, encode_image(obs[RGB_STATIC], stamp, "static_camera", 2, compressed=True))
        bridge.publish(t.rgb_gripper, encode_image(obs[RGB_GRIPPER], stamp, "gripper_camera", 2, compressed=True))
        names = [*cfg.arm_joints, *cfg.finger_joints]
        bridge.publish(t.joint_state, encode_joint_state(names, [0.0] * 9, stamp, cfg.frame_id, 2))
        bridge.publish(t.tcp_pose, encode_pose_stamped([0.0, -0.3, 0.6], [np.pi, 0, 0], stamp, cfg.frame_id, 2))

    print("LOCKSTEP READY", flush=True)
    loop_ms, resent = [], 0
    try:
        for i in range(args.warmup + args.steps):
            got.clear()
            t0 = time.perf_counter()
            tries = 0
            while not got.is_set():
                if time.perf_counter() - t0 > args.timeout:
                    raise SystemExit(f"no command for frame {i} in {args.timeout} s")
                publish_frame()
                tries += 1
                got.wait(args.resend)
            ms = (time.perf_counter() - t0) * 1000
            if tries > 1:
                got.clear()  # an earlier copy may still bring a command: let it land before the next frame
                got.wait(args.resend)
            if i >= args.warmup:
                loop_ms.append(ms)
                resent += tries - 1
    finally:
        bridge.close()
    print(json.dumps({"loop_ms": loop_ms, "resent": resent}), flush=True)


if __name__ == "__main__":
    main()
