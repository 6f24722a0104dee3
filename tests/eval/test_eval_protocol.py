"""CALVIN's rollout rules on a counter world whose outcomes are known in advance."""

import numpy as np
import pytest
from eval_fakes import Chains, CounterEnv, CounterOracle, PushPolicy, counter_state

from roboflamingo.eval.protocol import EvalItem, GymOracleEnv, rollout_chain, side_by_side


def make_env(need=3):
    raw = CounterEnv()
    return raw, GymOracleEnv(raw, CounterOracle(need), counter_state)


def test_one_env_reset_per_chain_policy_reset_per_subtask_and_eval_sentences():
    raw, env = make_env(need=3)
    policy = PushPolicy()
    item = Chains([5]).items()[0]
    result = rollout_chain(env, policy, item, ep_len=10)
    assert result.completed == 5 and result.steps == [3, 3, 3, 3, 3]
    assert raw.resets == 1  # the scene carries over between subtasks
    assert raw.log[0] == ("reset", 0, 0)  # seeded with the chain index
    resets = [k for k, c in enumerate(policy.calls) if c == ("reset",)]
    assert resets == [0, 4, 8, 12, 16]
    # every subtask is asked with its own sentence, and success is measured from *its* start
    instructions = [c[1] for c in policy.calls if c[0] == "step"]
    assert instructions == [s for s in item.instructions for _ in range(3)]


def test_stops_at_first_failure_after_ep_len_steps():
    raw, env = make_env()
    policy = PushPolicy()
    item = Chains([2]).items()[0]
    result = rollout_chain(env, policy, item, ep_len=7)
    assert result.completed == 2
    assert result.steps == [3, 3, 7]  # the failed subtask ran its whole budget, nothing after it
    assert result.attempted == [("task_0", True), ("task_1", True), ("hard_2", False)]
    assert sum(c[0] == "step" for c in policy.calls) == 13


def test_ep_len_shorter_than_needed_fails_the_first_task():
    _, env = make_env(need=5)
    result = rollout_chain(env, PushPolicy(), Chains([5]).items()[0], ep_len=4)
    assert result.completed == 0 and result.steps == [4]


def test_the_recorder_sees_the_reset_and_every_step():
    _, env = make_env()
    seen = []
    rollout_chain(env, PushPolicy(), Chains([1]).items()[0], ep_len=5, on_obs=seen.append)
    assert len(seen) == 1 + 3 + 5
    assert [int(o["scene_obs"][0]) for o in seen] == list(range(9))
    assert env.frame(seen[0]).shape == (8, 16, 3)  # static and the upscaled wrist view side by side


def test_a_bad_action_names_the_policy():
    class Broken(PushPolicy):
        def step(self, obs, instruction):
            return np.zeros(6)

    _, env = make_env()
    with pytest.raises(ValueError, match="Broken.step returned shape"):
        rollout_chain(env, Broken(), Chains([5]).items()[0], ep_len=5)


def test_item_needs_one_instruction_per_task():
    with pytest.raises(ValueError, match="2 tasks but 1 instructions"):
        EvalItem(0, {}, ["a", "b"], ["x"])


def test_side_by_side_scales_the_wrist_view():
    obs = {"rgb_static": np.zeros((10, 10, 3), np.uint8), "rgb_gripper": np.full((5, 5, 3), 7, np.uint8)}
    frame = side_by_side(obs)
    assert frame.shape == (10, 20, 3) and frame[:, 10:].min() == 7


def test_a_setup_is_performed_by_the_envs_expert_before_the_policys_task():
    raw = CounterEnv()
    expert = PushPolicy()
    env = GymOracleEnv(raw, CounterOracle(3), counter_state, expert=lambda: expert)
    policy = PushPolicy()
    item = EvalItem(0, {"start": 0}, ["task_0"], ["do it"], setup=["lift", "stack"])
    result = rollout_chain(env, policy, item, ep_len=5)
    assert [c for c in expert.calls if c[0] == "step"] == [("step", "lift")] * 3 + [("step", "stack")] * 3
    # the policy's task is scored from where the setup left the scene, and only it is scored
    assert result.completed == 1 and result.steps == [3] and result.tasks == ["task_0"]
    assert raw.progress == 9 and raw.resets == 1


def test_a_failed_setup_or_an_env_without_an_expert_is_refused_by_name():
    item = EvalItem(4, {"start": 0}, ["task_0"], ["do it"], setup=["hard_lift"])
    env = GymOracleEnv(CounterEnv(), CounterOracle(3), counter_state, expert=PushPolicy)
    with pytest.raises(RuntimeError, match=r"item 4: the scripted expert failed 'hard_lift'"):
        rollout_chain(env, PushPolicy(), item, ep_len=5)
    _, bare = make_env()
    with pytest.raises(ValueError, match="item 4: starts after"):
        rollout_chain(bare, PushPolicy(), item, ep_len=5)

    class NoSetup:  # an EvalEnv without perform_setup (as calvin_env's adapter)
        def reset_to(self, initial_state, seed):
            return {}

    with pytest.raises(ValueError, match=r"starts after \['hard_lift'\], performed by a scripted expert, and NoSetup"):
        rollout_chain(NoSetup(), PushPolicy(), item, ep_len=5)
