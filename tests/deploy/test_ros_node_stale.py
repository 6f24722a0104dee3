"""Nothing stale or invalid moves the arm: odd header stamps, frozen cameras, drops and e-stops (issue 31).

The node runs on the fake clock and in-memory bridge of ``test_ros_node``; the property test drives it
with random observation streams and checks every command it publishes against what the test itself
knows about the frames it delivered.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roboflamingo.deploy.messages import (
    encode_image,
    encode_joint_state,
    encode_pose_stamped,
    header_stamp,
    stamp_from_msg,
)
from roboflamingo.deploy.ros_node import COMMAND, ControlConfig, ControlNode, Job
from roboflamingo.deploy.safety import CommandGate, Hold, HoldReason, SafetyConfig

from .rosbridge_mock import START_POSE
from .test_ros_node import CFG, Clock, ConstantPolicy, FakeBridge, T

MAX_AGE = 0.5
STAMPED = (T.rgb_static.name, T.rgb_gripper.name, T.joint_state.name, T.tcp_pose.name)


def messages(stamp: float) -> dict[str, dict]:
    """One frame on every stamped topic, all with header stamp ``stamp`` (finite)."""
    img = np.full((12, 12, 3), 100, np.uint8)
    return {
        T.rgb_static.name: encode_image(img, stamp, "c", 1, compressed=True),
        T.rgb_gripper.name: encode_image(img, stamp, "c", 1, compressed=False),
        T.joint_state.name: encode_joint_state(
            [*CFG.arm_joints, *CFG.finger_joints], [0.0] * 7 + [0.03, 0.03], stamp, "b", 1
        ),
        T.tcp_pose.name: encode_pose_stamped(START_POSE[:3], START_POSE[3:], stamp, "b", 1),
    }


def with_stamp(msg: dict, secs, nsecs=0) -> dict:
    out = dict(msg)
    out["header"] = {**msg["header"], "stamp": {"secs": secs, "nsecs": nsecs}}
    return out


def node_on(clock, wait_for_new_obs=True):
    job = Job(
        deploy=CFG,
        control=ControlConfig(static_size=8, gripper_size=8, wait_for_new_obs=wait_for_new_obs, instruction="go"),
        safety=SafetyConfig(max_obs_age_s=MAX_AGE),
    )
    bridge = FakeBridge()
    node = ControlNode(job, ConstantPolicy(), bridge=bridge, clock=clock)
    node.start()
    return node, bridge


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 10**400, True, "1"])
def test_a_frame_stamped_with_no_finite_time_counts_as_stale_and_never_unlocks_a_frozen_camera(bad):
    """Item 1: one NaN-stamped frame used to turn the stale-frame hold off for good."""
    for wait in (True, False):
        clock = Clock()
        node, bridge = node_on(clock, wait_for_new_obs=wait)
        for topic, msg in messages(clock.t).items():
            bridge.subs[topic](msg)
        assert node.cycle() == COMMAND
        sent = len(bridge.published)
        bridge.subs[T.rgb_static.name](with_stamp(messages(clock.t)[T.rgb_static.name], bad))
        # the camera now freezes: the other topics keep streaming fresh frames for 10 s
        results = []
        for _ in range(150):
            clock.t += 1 / 15
            for topic, msg in messages(clock.t).items():
                if topic != T.rgb_static.name:
                    bridge.subs[topic](msg)
            results.append(node.cycle())
        assert len(bridge.published) == sent, f"commands were published after a {bad!r} stamp"
        assert set(results) == {"stale:rgb_static"}
        # the first frame with a real, fresh stamp resumes
        bridge.subs[T.rgb_static.name](messages(clock.t)[T.rgb_static.name])
        assert node.cycle() == COMMAND


def test_stamps_that_are_present_but_not_a_finite_time_decode_as_nan():
    assert stamp_from_msg({"secs": 12, "nsecs": 5}) == pytest.approx(12 + 5e-9)
    assert stamp_from_msg({"secs": 0, "nsecs": 0}) is None  # unset: the receive time stands in
    assert stamp_from_msg(None) is None and header_stamp({}) is None
    for stamp in ({"secs": float("nan")}, {"secs": 1, "nsecs": float("inf")}, {"sec": 10**400},
                  {"secs": True, "nsecs": 0}, {"secs": "5"}, {"secs": 5, "nsecs": None}):
        assert math.isnan(stamp_from_msg(stamp)), stamp
    gate = CommandGate(MAX_AGE)
    assert gate.check(100.0, {"cam": math.nan}) == Hold(HoldReason.STALE, "cam")
    assert gate.check(100.0, {"cam": math.inf}) == Hold(HoldReason.STALE, "cam")


# -- the property: random streams ---------------------------------------------------------------
# A frame's stamp relative to the clock at delivery: fresh, slightly old, stale, future, or invalid.
STAMPS = st.one_of(
    st.floats(-0.3, 0.0).map(lambda d: ("offset", d)),
    st.floats(-5.0, -MAX_AGE - 1e-3).map(lambda d: ("offset", d)),
    st.floats(MAX_AGE + 1e-3, 1e6).map(lambda d: ("offset", d)),
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -1.0, 0.0]).map(lambda v: ("raw", v)),
    st.just(("none", None)),  # no header stamp at all: the node uses the receive time
)
EVENTS = st.one_of(
    st.tuples(st.just("frame"), st.sets(st.sampled_from(STAMPED), min_size=1), STAMPS),
    st.tuples(st.just("advance"), st.floats(0.0, 1.5)),
    st.tuples(st.just("cycle")),
    st.tuples(st.just("drop"), st.booleans()),  # the bridge goes down (True) or comes back
    st.tuples(st.just("estop"), st.sampled_from([{"data": True}, {"data": False}, {"data": 1}, {}])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(EVENTS, min_size=1, max_size=60), wait_for_new_obs=st.booleans())
def test_the_node_never_commands_from_a_stale_or_invalid_frame(events, wait_for_new_obs):
    clock = Clock()
    node, bridge = node_on(clock, wait_for_new_obs)
    # What the test knows about the newest frame of each topic: the time its stamp stands for
    # (None: nothing delivered; NaN: no valid time), computed without the node's own decoding.
    known: dict[str, float | None] = {topic: None for topic in STAMPED}
    estopped = False
    last_used = -math.inf  # the oldest frame stamp of the previous command
    for event in events:
        kind = event[0]
        if kind == "frame":
            _, topics, (how, value) = event
            fresh = messages(clock.t)
            for topic in topics:
                msg = fresh[topic]
                if how == "offset":
                    t = clock.t + value
                    secs = math.floor(t)
                    msg = with_stamp(msg, secs, min(int(round((t - secs) * 1e9)), 999_999_999))
                    known[topic] = t
                elif how == "raw":
                    msg = with_stamp(msg, value)
                    known[topic] = math.nan if value == 0.0 else float(value) if abs(value) < 1e300 else math.nan
                    if value == 0.0:  # an unset stamp: the receive time stands in
                        known[topic] = clock.t
                else:
                    msg = {k: v for k, v in msg.items() if k != "header"}
                    known[topic] = clock.t
                bridge.subs[topic](msg)
        elif kind == "advance":
            clock.t += event[1]
        elif kind == "drop":
            bridge.connected = not event[1]
        elif kind == "estop":
            msg = event[1]
            bridge.subs[T.estop.name](msg)
            estopped = estopped or msg.get("data") is not False
        else:
            before = len(bridge.published)
            result = node.cycle()
            published = len(bridge.published) - before
            assert published in (0, 2)
            if published:
                assert result == COMMAND
                assert not estopped and bridge.connected
                stamps = [known[t] for t in STAMPED]
                assert all(s is not None and math.isfinite(s) for s in stamps), stamps
                assert all(abs(clock.t - s) <= MAX_AGE for s in stamps), (clock.t, stamps)
                if wait_for_new_obs:
                    assert min(stamps) > last_used
                last_used = min(stamps)
                pose_stamp = bridge.published[-1][1]["header"]["stamp"]
                assert pose_stamp["secs"] + pose_stamp["nsecs"] * 1e-9 == pytest.approx(clock.t, abs=1e-6)
            else:
                assert result != COMMAND
            if estopped:
                assert result == "estop"
    assert node.commands == sum(1 for topic, _ in bridge.published if topic == T.target_pose.name)
