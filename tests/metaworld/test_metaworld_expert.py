"""Meta-World's scripted policies behind our Policy protocol, and expert-check env=metaworld."""

from __future__ import annotations

import json

import numpy as np
import pytest

from roboflamingo import cli
from roboflamingo.metaworld.env import FULL_OBS, MetaWorldEnv, sawyer_robot
from roboflamingo.metaworld.expert import MetaWorldExpert
from roboflamingo.metaworld.expert_check import check_task, group_means
from roboflamingo.metaworld.tasks import task_table
from roboflamingo.policies import RandomPolicy
from roboflamingo.subtask import check_action


def test_expert_reads_the_task_from_the_evaluation_sentence():
    env = MetaWorldEnv("reach-v3", render="off", size=8)
    expert = MetaWorldExpert()
    try:
        obs, _ = env.reset(seed=2)
        sentence = task_table().eval["reach-v3"]
        for _ in range(200):
            action = check_action(expert.step(obs, sentence), expert)  # the runner's check: 4-d for the Sawyer
            assert action.dtype == np.float32 and np.all(np.abs(action) <= 1)
            obs, _, success, _, _ = env.step(action)
            if success:
                break
        assert success
    finally:
        env.close()
    with pytest.raises(ValueError, match="several tasks"):
        expert.step(obs, "Push the puck to a goal")
    with pytest.raises(ValueError, match="reads observation\\['metaworld_obs'\\]"):
        expert.step({"state": obs["state"]}, sentence)


def test_noise_is_seeded_and_random_policy_stays_in_bounds():
    obs = {FULL_OBS: np.zeros(39)}
    a = [MetaWorldExpert("reach", noise=0.5, seed=3).step(obs, "") for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], MetaWorldExpert("reach", seed=3).step(obs, ""))
    random = RandomPolicy(0, robot=sawyer_robot())
    acts = np.stack([random.step({}, "") for _ in range(200)])
    assert acts.shape == (200, 4) and acts.min() >= -1 and acts.max() <= 1 and acts.std() > 0.3


def test_check_task_counts_successes_and_steps():
    from roboflamingo.metaworld.config import MetaWorldConfig

    r = check_task(("drawer-close-v3", 2, 0, 0, MetaWorldConfig(render="off")))
    assert r["task"] == "drawer-close-v3" and r["episodes"] == 2 and r["successes"] == 2
    assert 10 < r["mean_steps"] <= r["max_steps"] < 500
    # a step limit below what the task needs: no success counted
    r = check_task(("drawer-close-v3", 1, 0, 5, MetaWorldConfig(render="off")))
    assert r["successes"] == 0 and r["max_steps"] == 0
    assert group_means({"reach-v3": 1.0, "drawer-open-v3": 0.5, "push-v3": 0.25}) == {"easy": 0.75, "hard": 0.25}


@pytest.mark.slow
def test_expert_check_command_prints_the_table_and_json(capsys):
    assert cli.main(["expert-check", "env=metaworld", "tasks=[reach,push]", "episodes_per_task=2", "workers=1",
                     "progress=false"]) == 0
    out = capsys.readouterr().out
    assert "reach-v3  easy" in out and "push-v3   hard" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["per_task"] == {"reach-v3": 1.0, "push-v3": 1.0}
    assert summary["per_group"] == {"easy": 1.0, "hard": 1.0}
    assert summary["episodes_per_task"] == 2 and summary["env"] == "metaworld"


def test_batched_slots_check_actions_against_the_policys_robot():
    from roboflamingo.batching import SlotBatcher, as_slot_policy

    class SevenDims(RandomPolicy):
        def step(self, obs, instruction):
            return np.zeros(7, np.float32)

    batcher = SlotBatcher(as_slot_policy(RandomPolicy(0, robot=sawyer_robot()), lambda slot: RandomPolicy(slot, robot=sawyer_robot())))
    slot = batcher.open()
    future = batcher.submit(slot, {}, "")
    batcher.tick()
    assert future.result().shape == (4,)
    batcher = SlotBatcher(as_slot_policy(SevenDims(0, sawyer_robot()), lambda slot: SevenDims(slot, sawyer_robot())))
    future = batcher.submit(batcher.open(), {}, "")
    batcher.tick()
    with pytest.raises(ValueError, match=r"returned shape \(7,\), expected \(4,\)"):
        future.result()
