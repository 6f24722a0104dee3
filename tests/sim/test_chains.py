import numpy as np
import pytest

from roboflamingo.sim.chains import (
    check_sequence,
    fnv1_32,
    initial_state_to_obs,
    initial_states,
    next_states,
    sample_chains,
)
from roboflamingo.sim.instructions import load_instructions, task_for_instruction
from roboflamingo.sim.scene import load_scene
from roboflamingo.sim.tasks import TaskOracle


def test_fnv1_32_is_pyhash_not_textbook_fnv1():
    # pyhash's own tests/test_fnv1.py: bytes b"test" -> 3698262380, text "test" -> 3910690890
    assert fnv1_32(b"test") == 3698262380
    assert fnv1_32("test") == 3910690890
    assert fnv1_32("") == 0  # seed 0, not the offset basis 0x811C9DC5


def test_192_initial_states():
    states = initial_states()
    assert len(states) == 192
    for s in states:
        blocks = [s[b] for b in ("red_block", "blue_block", "pink_block")]
        assert blocks.count("table") in (1, 2) and s["grasped"] == 0


def test_chains_are_valid_deterministic_and_seed_dependent():
    oracle = TaskOracle.default()
    a, b, c = sample_chains(40, seed=0), sample_chains(40, seed=0), sample_chains(40, seed=1)
    assert [(x.initial_state, x.tasks) for x in a] == [(x.initial_state, x.tasks) for x in b]
    assert [x.tasks for x in a] != [x.tasks for x in c]
    for chain in a:
        assert len(chain.tasks) == 5 and check_sequence(chain.initial_state, chain.tasks)
        cats = [oracle.specs[t].category for t in chain.tasks]
        assert len(set(cats)) == 5


def test_preconditions_follow_calvin():
    state = dict(initial_states()[0])
    state.update(red_block="slider_left", slider="left")
    assert next_states(state, "lift_red_block_slider") == []  # the door must be on the other side
    state["slider"] = "right"
    assert next_states(state, "lift_red_block_slider")[0]["grasped"] == 1
    assert not check_sequence(state, ["place_in_drawer"])  # nothing in the hand


def test_initial_state_to_obs():
    scene = load_scene("D")
    state = {"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "table",
             "blue_block": "slider_right", "pink_block": "table", "grasped": 0}
    robot_obs, scene_obs = initial_state_to_obs(state, scene)
    r2, s2 = initial_state_to_obs(state, scene)
    np.testing.assert_array_equal(scene_obs, s2)
    assert robot_obs.shape == (15,) and scene_obs.shape == (24,)
    assert scene_obs[0] == pytest.approx(0.28) and scene_obs[1] == pytest.approx(0.22)
    assert scene_obs[3] == pytest.approx(0.088) and scene_obs[4] == 1 and scene_obs[5] == 1
    np.testing.assert_allclose(scene_obs[12:14], scene.raw["slots"]["slider_right"])
    table = np.array(sorted(map(tuple, scene.raw["slots"]["table"])))
    np.testing.assert_allclose(sorted([tuple(scene_obs[6:8]), tuple(scene_obs[18:20])]), table)
    assert np.pi / 2 - np.pi / 8 <= scene_obs[11] <= np.pi / 2 + np.pi / 8


def test_instructions():
    train, evals = load_instructions("train"), load_instructions("eval")
    assert set(train) == set(evals) == set(TaskOracle.default().tasks)
    assert all(len(v) >= 3 for v in train.values()) and all(len(v) == 1 for v in evals.values())
    all_train = {s for v in train.values() for s in v}
    assert not all_train & {v[0] for v in evals.values()}
    assert task_for_instruction(evals["open_drawer"][0]) == "open_drawer"
    assert task_for_instruction(train["turn_on_led"][1]) == "turn_on_led"
    with pytest.raises(ValueError, match="not a sentence"):
        task_for_instruction("dance")


def test_initial_state_mapping_ignores_key_order():
    state = {"led": 0, "lightbulb": 1, "slider": "right", "drawer": "closed", "red_block": "table",
             "blue_block": "table", "pink_block": "slider_left", "grasped": 0}
    shuffled = dict(sorted(state.items()))
    np.testing.assert_array_equal(initial_state_to_obs(state, "D")[1], initial_state_to_obs(shuffled, "D")[1])
    fresh = sample_chains(12, seed=3)
    cached = sample_chains(12, seed=3)  # read back from the on-disk cache
    assert [list(c.initial_state) for c in fresh] == [list(c.initial_state) for c in cached]


def test_chains_over_a_task_subset_use_only_those_tasks_and_stay_valid():
    subset = ["move_slider_left", "move_slider_right", "open_drawer", "close_drawer",
              "turn_on_led", "turn_off_led", "turn_on_lightbulb", "turn_off_lightbulb"]
    oracle = TaskOracle.default()
    chains = sample_chains(30, seed=1, tasks=subset)
    assert len(chains) == 30
    for chain in chains:
        assert set(chain.tasks) <= set(subset) and len(set(chain.tasks)) == 5
        state = chain.initial_state
        for task in chain.tasks:  # every task applies in the state the previous ones leave
            (state,) = next_states(state, task, oracle)
        cats = [oracle.specs[t].category for t in chain.tasks]
        assert all(a != b for a, b in zip(cats, cats[1:]))  # 4 categories: no repeat in a row
    assert [c.tasks for c in sample_chains(30, seed=1, tasks=subset)] == [c.tasks for c in chains]


def test_task_subset_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown task names"):
        sample_chains(3, tasks=["open_drawer", "fly", "close_drawer", "turn_on_led", "turn_off_led"])
    with pytest.raises(ValueError, match="at least 5 distinct"):
        sample_chains(3, tasks=["open_drawer", "close_drawer"])
