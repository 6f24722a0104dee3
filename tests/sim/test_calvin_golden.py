"""Our CALVIN reimplementations against golden output of CALVIN's own code.

``tests/fixtures/calvin/`` was written by ``scripts/make_calvin_fixtures.py``, which runs
``calvin_agent.evaluation`` (``get_sequences``, ``get_env_state_for_initial_condition``) and the real
``pyhash`` from a checkout of mees/calvin; see that script to regenerate it.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.eval.calvin_adapter import calvin_initial_state_to_obs
from roboflamingo.sim.chains import fnv1_32, initial_states, sample_chains

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "calvin"


def _load(name):
    return json.loads((FIXTURES / name).read_text())


def test_fnv1_32_equals_pyhash_on_its_outputs():
    golden = _load("pyhash.json")
    for text, value in golden["text"].items():
        assert fnv1_32(text) == value, text
    assert fnv1_32(b"test") == golden["bytes"]["test"]


def test_all_192_initial_states_equal_calvins():
    golden = _load("initial_states.json")
    assert len(golden) == 192
    ours = initial_states()
    assert sorted(map(str, ours)) == sorted(str(g["state"]) for g in golden)
    for g in golden:
        robot_obs, scene_obs = calvin_initial_state_to_obs(g["state"])
        np.testing.assert_array_equal(robot_obs, g["robot_obs"], err_msg=str(g["state"]))
        np.testing.assert_array_equal(scene_obs, g["scene_obs"], err_msg=str(g["state"]))


def test_the_tabletop_places_blocks_as_calvin_does_on_its_own_slots():
    from roboflamingo.eval.calvin_adapter import BLOCK_TABLE
    from roboflamingo.sim.chains import initial_state_to_obs
    from roboflamingo.sim.scene import load_scene

    scene = load_scene("D")
    ours_slots = [tuple(s) for s in scene.raw["slots"]["table"]]
    for g in _load("initial_states.json"):
        _, scene_obs = initial_state_to_obs(g["state"], scene)
        for k, name in enumerate(("red_block", "blue_block", "pink_block")):
            np.testing.assert_allclose(scene_obs[11 + 6 * k], g["scene_obs"][11 + 6 * k])  # CALVIN's yaw
            if g["state"][name] == "table":  # the same one of the two table slots
                theirs = [np.allclose(g["scene_obs"][6 + 6 * k: 9 + 6 * k], t) for t in BLOCK_TABLE].index(True)
                assert tuple(scene_obs[6 + 6 * k: 8 + 6 * k]) == ours_slots[theirs], (g["state"], name)


@pytest.mark.slow
def test_sequences_equal_get_sequences_1000_in_order(tmp_path, monkeypatch):
    states = [g["state"] for g in _load("initial_states.json")]
    golden = [(states[i], tasks) for i, tasks in _load("sequences.json")]
    # sample_chains(calvin=True) is what evaluation uses: calvin_sequences, cached for the next run
    monkeypatch.setenv("ROBOFLAMINGO_CACHE", str(tmp_path))
    first = sample_chains(1000, calvin=True)
    again = sample_chains(1000, calvin=True)
    assert [(c.initial_state, c.tasks) for c in first] == golden == [(c.initial_state, c.tasks) for c in again]
    assert list((tmp_path / "chains").glob("calvin_*.json"))


def test_calvin_sequences_refuse_a_task_subset_or_a_seed():
    with pytest.raises(ValueError, match="no task subset and no seed"):
        sample_chains(10, seed=1, calvin=True)
