"""Joint-space safety: every target stays in the joint limits and within the velocity cap per period."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from roboflamingo.deploy.safety import JointSafetyFilter, SafetyConfig, SafetyError, joint_limits
from roboflamingo.robots import load_robot

EPS = 1e-9
wild = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([-1e300, 1e300, 0.0]))


def joint_robot(low, high, mode="absolute", grippers=(), state_range=None):
    n = len(low)
    names = [f"j{i}" for i in range(n)]
    state = {"key": "state", "names": names}
    if state_range is not None:
        state.update(low=state_range[0], high=state_range[1])
    action = {"key": "action", "names": names, "mode": mode, "space": "joint", "grippers": list(grippers),
              "low": low, "high": high}
    return load_robot({"name": "probe", "cameras": [{"name": "cam", "height": 4, "width": 4}],
                       "state": state, "action": action})


@st.composite
def setups(draw):
    n = draw(st.integers(1, 6))
    low = np.array([draw(st.floats(-200, 100)) for _ in range(n)])
    high = low + np.array([draw(st.floats(0.01, 300)) for _ in range(n)])
    mode = draw(st.sampled_from(["absolute", "relative"]))
    grippers = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    if mode == "relative":  # the limits are the joints' state range; the action bounds a step
        robot = joint_robot([-1e3] * n, [1e3] * n, mode, grippers, (low.tolist(), high.tolist()))
    else:
        robot = joint_robot(low.tolist(), high.tolist(), mode, grippers)
    velocity = [draw(st.floats(1e-3, 1e3))] if draw(st.booleans()) else [draw(st.floats(1e-3, 1e3)) for _ in range(n)]
    cfg = SafetyConfig(max_joint_velocity=velocity, action_scale=draw(st.floats(0.01, 1.0)))
    period = draw(st.floats(1e-3, 1.0))
    start = low + np.array([draw(st.floats(0, 1)) for _ in range(n)]) * (high - low)
    actions = draw(st.integers(1, 30).flatmap(lambda k: hnp.arrays(np.float64, (k, n), elements=wild)))
    return robot, cfg, period, start, actions, low, high


@settings(max_examples=200, deadline=None)
@given(setups())
def test_targets_never_leave_the_joint_limits_or_outrun_the_velocity_cap(setup):
    robot, cfg, period, start, actions, low, high = setup
    f = JointSafetyFilter(robot, cfg, period)
    f.reset(start)
    cap = np.broadcast_to(np.asarray(cfg.max_joint_velocity) * period, (robot.action.dim,))
    cont = list(robot.action.continuous)
    prev = start
    for action in actions:
        cmd = f.apply(action)
        q = cmd.positions
        assert np.all(np.isfinite(q))
        assert np.all(q[cont] >= low[cont] - EPS) and np.all(q[cont] <= high[cont] + EPS)
        assert np.all(np.abs(q[cont] - prev[cont]) <= cap[cont] * (1 + 1e-9) + EPS)
        assert all(q[i] in (robot.action.close, robot.action.open) for i in robot.action.grippers)
        prev = q


def test_absolute_targets_inside_the_caps_are_reached_exactly_and_relative_ones_accumulate():
    f = JointSafetyFilter(joint_robot([-10, -10], [10, 10]), SafetyConfig(max_joint_velocity=[100]), 0.1)
    f.reset(np.array([1.0, 2.0]))
    np.testing.assert_allclose(f.apply([3.0, -4.0]).positions, [3.0, -4.0])
    g = JointSafetyFilter(joint_robot([-1, -1], [1, 1], "relative", state_range=([-10, -10], [10, 10])),
                          SafetyConfig(max_joint_velocity=[100]), 0.1)
    g.reset(np.array([1.0, 2.0]))
    g.apply([0.5, -0.5])
    np.testing.assert_allclose(g.apply([0.5, -0.5]).positions, [2.0, 1.0])


def test_binary_grippers_are_exactly_close_or_open_whichever_is_greater():
    robot = load_robot({"name": "g", "cameras": [{"name": "c", "height": 4, "width": 4}],
                        "state": {"key": "state", "names": ["j", "g"]},
                        "action": {"key": "action", "names": ["j", "g"], "grippers": [1], "close": 1, "open": -1,
                                   "mode": "absolute", "space": "joint", "low": [-1, -1], "high": [1, 1]}})
    f = JointSafetyFilter(robot, SafetyConfig(max_joint_velocity=[1]), 0.1)
    f.reset(np.array([0.0, np.nan]))  # a binary gripper needs no measured position
    assert f.apply([0.0, 0.3]).positions[1] == 1.0  # above the midpoint: close (close=+1 here)
    assert f.apply([0.0, -0.3]).positions[1] == -1.0


def test_starting_outside_the_limits_or_bad_input_refuses():
    f = JointSafetyFilter(joint_robot([-1, -1], [1, 1]), SafetyConfig(max_joint_velocity=[1]), 0.1)
    with pytest.raises(SafetyError, match="apply before reset"):
        f.apply([0.0, 0.0])
    with pytest.raises(SafetyError, match=r"j1=1.5 not in \[-1, 1\]; move the arm inside"):
        f.reset(np.array([0.0, 1.5]))
    with pytest.raises(SafetyError, match="measured joints must be 2 numbers"):
        f.reset(np.array([0.0, np.nan]))
    f.reset(np.array([0.0, 0.0]))
    for bad in ([np.nan, 0.0], [np.inf, 0.0], [0.0], [0.0, 0.0, 0.0]):
        with pytest.raises(SafetyError, match="action must be 2 finite numbers"):
            f.apply(bad)


def test_configured_limits_tighten_the_descriptions_and_both_missing_is_an_error():
    robot = joint_robot([-10, -10], [10, 10])
    low, high = joint_limits(robot, SafetyConfig(joint_min=[-20, -5], joint_max=[5, 20]))
    assert low.tolist() == [-10, -5] and high.tolist() == [5, 10]
    unbounded = joint_robot([None, -1], [None, 1])
    with pytest.raises(ValueError, match=r"joints \['j0'\] .* no finite limits"):
        joint_limits(unbounded, SafetyConfig())
    assert joint_limits(unbounded, SafetyConfig(joint_min=[-3, -3], joint_max=[3, 3]))[0].tolist() == [-3, -1]
    with pytest.raises(ValueError, match="leave no range"):
        joint_limits(robot, SafetyConfig(joint_min=[11, 0], joint_max=[12, 1]))


@pytest.mark.parametrize("kwargs, match", [
    ({"joint_min": [0.0, 1.0], "joint_max": [1.0]}, "one value per action dimension each"),
    ({"joint_min": [1.0], "joint_max": [1.0]}, r"safety.joint_min\[0\] must be < safety.joint_max\[0\]"),
    ({"joint_min": [float("nan")]}, "safety.joint_min must hold numbers"),
    ({"max_joint_velocity": [0.0]}, "safety.max_joint_velocity must hold positive finite numbers"),
    ({"max_joint_velocity": [float("inf")]}, "safety.max_joint_velocity must hold positive finite numbers"),
])
def test_bad_joint_safety_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SafetyConfig(**kwargs)
