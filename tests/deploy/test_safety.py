"""Safety properties: every command stays in the workspace box and within the per-step caps."""

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from roboflamingo.deploy.safety import (
    CommandGate,
    Hold,
    HoldReason,
    LatencyLog,
    SafetyConfig,
    SafetyError,
    SafetyFilter,
    rotation_angle,
)
from roboflamingo.robots.calvin import MAX_REL_ORN, MAX_REL_POS
from roboflamingo.types import wrap_angle

EPS = 1e-9
unit = st.floats(-1.0, 1.0)
wild = st.one_of(unit, st.floats(-1e6, 1e6), st.sampled_from([-1e300, 1e300, 0.0]))
actions = st.integers(1, 40).flatmap(lambda n: hnp.arrays(np.float64, (n, 7), elements=wild))


@st.composite
def configs(draw):
    low = np.array([draw(st.floats(-1.0, 0.5)) for _ in range(3)])
    size = np.array([draw(st.floats(0.01, 1.0)) for _ in range(3)])
    return SafetyConfig(
        workspace_min=low.tolist(),
        workspace_max=(low + size).tolist(),
        max_step_m=draw(st.floats(1e-4, 0.1)),
        max_step_rad=draw(st.floats(1e-4, 0.2)),
        action_scale=draw(st.floats(0.01, 1.0)),
    )


@st.composite
def start_poses(draw, cfg):
    low, high = np.array(cfg.workspace_min), np.array(cfg.workspace_max)
    frac = np.array([draw(st.floats(0.0, 1.0)) for _ in range(3)])
    euler = [draw(st.floats(-np.pi, np.pi)) for _ in range(3)]
    return np.concatenate([low + frac * (high - low), euler])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_commands_never_leave_the_box_or_exceed_the_step_caps(data):
    cfg = data.draw(configs())
    start = data.draw(start_poses(cfg))
    f = SafetyFilter(cfg)
    f.reset(start)
    prev = f.target.copy()
    low, high = np.array(cfg.workspace_min), np.array(cfg.workspace_max)
    for a in data.draw(actions):
        assert np.all(np.isfinite(f.target))
        cmd = f.apply(a)
        assert np.all(cmd.position >= low - EPS) and np.all(cmd.position <= high + EPS)
        assert np.linalg.norm(cmd.position - prev[:3]) <= cfg.max_step_m + EPS
        turn = np.abs(wrap_angle(cmd.euler - prev[3:]))
        assert np.all(turn <= cfg.max_step_rad + EPS)
        # the composed rotation, not only each euler increment (per-axis caps allowed ~2.2x)
        assert rotation_angle(prev[3:], cmd.euler) <= cfg.max_step_rad + 1e-7
        # the CALVIN step scaled for first runs bounds it too
        assert np.all(np.abs(cmd.position - prev[:3]) <= MAX_REL_POS * cfg.action_scale + EPS)
        assert np.all(turn <= MAX_REL_ORN * cfg.action_scale + EPS)
        assert cmd.gripper in (-1.0, 1.0)
        prev = cmd.pose


def test_in_limits_actions_follow_calvins_accumulation_exactly():
    f = SafetyFilter(SafetyConfig())
    start = np.array([0.1, -0.2, 0.6, 0.3, -0.2, 1.0])
    f.reset(start)
    rng = np.random.default_rng(0)
    expected = start.copy()
    for _ in range(20):
        a = rng.uniform(-1, 1, 7)
        a[:3] *= 0.5  # keep the Euclidean step under the 0.035 m cap
        expected[:3] += a[:3] * MAX_REL_POS
        expected[3:] = wrap_angle(expected[3:] + a[3:6] * MAX_REL_ORN)
        cmd = f.apply(a)
        np.testing.assert_allclose(cmd.pose, expected, atol=1e-12)
        assert cmd.gripper == (1.0 if a[6] >= 0 else -1.0)


def test_action_scale_shrinks_every_step():
    f = SafetyFilter(SafetyConfig(action_scale=0.25))
    f.reset([0, -0.3, 0.6, 0, 0, 0])
    cmd = f.apply(np.array([1, -1, 0.5, 1, 0, -1, 1.0]))
    np.testing.assert_allclose(cmd.position, [0.005, -0.305, 0.6025])
    np.testing.assert_allclose(cmd.euler, [0.0125, 0, -0.0125])


def test_the_target_slides_along_the_box_wall():
    f = SafetyFilter(SafetyConfig(workspace_min=[-0.1, -0.1, 0.5], workspace_max=[0.1, 0.1, 0.7]))
    f.reset([0.09, 0, 0.6, 0, 0, 0])
    for _ in range(10):
        cmd = f.apply(np.array([1, 0.5, 0, 0, 0, 0, 1]))
    assert cmd.position[0] == pytest.approx(0.1) and cmd.position[1] == pytest.approx(0.1)


def test_starting_outside_the_box_or_bad_input_refuses():
    f = SafetyFilter(SafetyConfig())
    with pytest.raises(SafetyError, match="before reset"):
        f.apply(np.zeros(7))
    with pytest.raises(SafetyError, match="outside the workspace box"):
        f.reset([5.0, 0, 0.6, 0, 0, 0])
    f.reset([0, -0.3, 0.6, 0, 0, 0])
    with pytest.raises(SafetyError, match="finite"):
        f.apply(np.array([np.nan, 0, 0, 0, 0, 0, 1]))
    with pytest.raises(SafetyError, match="7 finite"):
        f.apply(np.zeros(6))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workspace_min": [0, 0]}, "workspace_min must be 3"),
        (
            {"workspace_min": [0, 0, 1], "workspace_max": [1, 1, 0.5]},
            "workspace_min.z must be < workspace_max.z",
        ),
        ({"max_step_m": 0}, "max_step_m must be > 0"),
        ({"action_scale": 1.5}, "action_scale must be <= 1"),
        ({"max_obs_age_s": -1}, "max_obs_age_s"),
    ],
)
def test_bad_safety_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SafetyConfig(**kwargs)


@settings(max_examples=200, deadline=None)
@given(
    ages=st.lists(st.one_of(st.none(), st.floats(0.0, 2.0)), min_size=1, max_size=4),
    limit=st.floats(0.01, 1.0),
)
def test_gate_holds_exactly_when_an_observation_is_missing_or_stale(ages, limit):
    gate = CommandGate(max_obs_age_s=limit)
    now = 1000.0
    stamps = {f"t{i}": (None if a is None else now - a) for i, a in enumerate(ages)}
    reason = gate.check(now, stamps)
    should_hold = any(s is None or now - s > limit for s in stamps.values())
    assert (reason is not None) == should_hold
    if reason:
        first = next(k for k, s in stamps.items() if s is None or now - s > limit)
        assert reason == Hold(HoldReason.NO_OBSERVATION if stamps[first] is None else HoldReason.STALE, first)
        assert str(reason) == f"{reason.reason.value}:{first}"  # the node's cycle result


@settings(max_examples=200, deadline=None)
@given(ahead=st.floats(0.0, 1e6), limit=st.floats(0.01, 1.0))
def test_future_dated_observations_hold_like_stale_ones(ahead, limit):
    gate = CommandGate(max_obs_age_s=limit)
    stamp = 1000.0 + ahead
    reason = gate.check(1000.0, {"cam": stamp})
    assert (reason == Hold(HoldReason.FUTURE, "cam")) == (1000.0 - stamp < -limit)
    assert reason in (None, Hold(HoldReason.FUTURE, "cam"))


def test_a_full_rotation_on_three_axes_is_capped_as_one_rotation():
    # 0.05 rad on each axis composes to ~0.087 rad; per-axis caps of 0.05 used to let all of it through
    f = SafetyFilter(SafetyConfig(max_step_rad=0.05))
    f.reset([0, -0.3, 0.6, 0.0, 0.0, 0.0])
    cmd = f.apply(np.array([0, 0, 0, 1, 1, 1, 1.0]))
    assert rotation_angle(np.zeros(3), cmd.euler) == pytest.approx(0.05, abs=1e-6)
    # near gimbal lock (pitch ~ pi/2) the composed angle of per-axis steps is larger still
    f.reset([0, -0.3, 0.6, 0.0, np.pi / 2 - 0.01, 0.0])
    start = f.target[3:].copy()
    cmd = f.apply(np.array([0, 0, 0, 1, 1, -1, 1.0]))
    assert rotation_angle(start, cmd.euler) <= 0.05 + 1e-7


NUMERIC_FIELDS = ("max_step_m", "max_step_rad", "action_scale", "max_obs_age_s", "max_duration_s")
odd = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e308, -1.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.fixed_dictionaries({}, optional={k: odd for k in NUMERIC_FIELDS}),
    box=st.lists(st.one_of(odd, st.floats(-1, 1)), min_size=6, max_size=6),
    use_box=st.booleans(),
    action=hnp.arrays(np.float64, 7, elements=st.floats(-1, 1)),
)
def test_any_config_is_refused_or_yields_finite_bounded_commands(values, box, use_box, action):
    kwargs = dict(values)
    if use_box:
        kwargs.update(workspace_min=box[:3], workspace_max=box[3:])
    try:
        cfg = SafetyConfig(**kwargs)
    except ValueError as e:
        assert any(name in str(e) for name in [*NUMERIC_FIELDS, "workspace_min", "workspace_max"])
        return
    for name in NUMERIC_FIELDS:
        assert np.isfinite(getattr(cfg, name)), name
    assert 0 < cfg.action_scale <= 1 and cfg.max_obs_age_s > 0
    low, high = np.array(cfg.workspace_min), np.array(cfg.workspace_max)
    f = SafetyFilter(cfg)
    f.reset(np.concatenate([(low + high) / 2, [0.1, 0.2, 0.3]]))
    prev = f.target.copy()
    for _ in range(3):
        cmd = f.apply(action)
        assert np.all(np.isfinite(cmd.pose))
        assert np.all(cmd.position >= low - EPS) and np.all(cmd.position <= high + EPS)
        assert np.linalg.norm(cmd.position - prev[:3]) <= cfg.max_step_m + EPS
        prev = cmd.pose
    gate = CommandGate(cfg.max_obs_age_s, cfg.max_duration_s)
    assert gate.check(0.0, {"cam": -2 * cfg.max_obs_age_s}) == Hold(HoldReason.STALE, "cam")


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_are_refused_for_every_numeric_field(field, value):
    with pytest.raises(ValueError, match=f"safety.{field} must be a finite number"):
        SafetyConfig(**{field: value})


def test_estop_latches_and_wins_over_everything():
    gate = CommandGate(max_obs_age_s=1.0, max_duration_s=10.0)
    gate.start(0.0)
    assert gate.check(1.0, {"cam": 1.0}) is None
    gate.engage_estop()
    assert gate.check(1.0, {"cam": 1.0}) == Hold(HoldReason.ESTOP)
    assert gate.check(100.0, {"cam": None}) == Hold(HoldReason.ESTOP)


def test_time_limit():
    gate = CommandGate(max_obs_age_s=1.0, max_duration_s=5.0)
    gate.start(10.0)
    assert gate.check(14.9, {"cam": 14.9}) is None
    assert gate.check(15.0, {"cam": 15.0}) == Hold(HoldReason.TIME_LIMIT)


def test_latency_percentiles():
    log = LatencyLog()
    for v in range(1, 101):
        log.add("infer_ms", v)
    s = log.summary()["infer_ms"]
    assert s["count"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["max_ms"] == 100
    assert s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_hold_reasons_serialise_as_the_summary_keys():
    import json
    from collections import Counter

    holds = Counter([HoldReason.STALE, HoldReason.STALE, HoldReason.ESTOP])
    assert json.loads(json.dumps(dict(holds))) == {"stale": 2, "estop": 1}
    assert str(Hold(HoldReason.NO_OBSERVATION, "rgb_static")) == "no_observation:rgb_static"
    assert str(Hold(HoldReason.ESTOP)) == "estop"
    with pytest.raises(ValueError):
        HoldReason("estopp")  # a closed set: a misspelt reason is an error, not a new counter


# -- limits beyond physical sense (issue 31 item 8) -----------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_step_m": 1e6}, "max_step_m"),
        ({"max_step_rad": 100.0}, "max_step_rad"),
        ({"max_obs_age_s": 1e9}, "max_obs_age_s"),
        ({"workspace_min": [-1e9, -1e9, -1e9], "workspace_max": [1e9, 1e9, 1e9]}, "workspace"),
        ({"workspace_max": [0.6, 0.5, 2.5]}, "workspace"),
    ],
)
def test_limits_beyond_physical_sense_are_refused_unless_named_and_then_logged(kwargs, name, caplog):
    from roboflamingo.deploy.safety import BOUNDS

    with pytest.raises(ValueError, match=f"beyond its physical bound {BOUNDS[name]}.*add {name} to safety.beyond_bounds"):
        SafetyConfig(**kwargs)
    other = next(k for k in BOUNDS if k != name)
    with pytest.raises(ValueError, match="beyond its physical bound"):
        SafetyConfig(**kwargs, beyond_bounds=[other])  # naming another limit does not allow this one
    with caplog.at_level(logging.WARNING, logger="roboflamingo.safety"):
        SafetyConfig(**kwargs, beyond_bounds=[name])
    assert "SAFETY LIMIT BEYOND ITS BOUND" in caplog.text and str(BOUNDS[name]) in caplog.text


def test_limits_at_their_bounds_need_no_override_and_unknown_override_names_are_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="roboflamingo.safety"):
        SafetyConfig(max_step_m=0.1, max_step_rad=0.5, max_obs_age_s=2.0,
                     workspace_min=[-2.0, -2.0, -2.0], workspace_max=[2.0, 2.0, 2.0])
        SafetyConfig()
    assert caplog.text == ""
    with pytest.raises(ValueError, match=r"beyond_bounds names \['max_speed'\]"):
        SafetyConfig(beyond_bounds=["max_speed"])


def test_the_override_key_is_documented_in_help_and_works_from_the_command_line():
    from roboflamingo.cli import COMMANDS, command_help
    from roboflamingo.config import ConfigError, load
    from roboflamingo.deploy.ros_node import Job

    text = command_help("ros", COMMANDS["ros"])
    assert "safety.beyond_bounds: list[str] = []" in text and "physical bound" in text
    with pytest.raises(ConfigError, match="max_step_m"):
        load("ros", Job, ["safety.max_step_m=1e6"])
    job = load("ros", Job, ["safety.max_step_m=0.2", "safety.beyond_bounds=[max_step_m]"])
    assert job.safety.max_step_m == 0.2
