"""The work list: chains and single-task episodes restricted to a task set."""

import pytest

from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.items import build_items, evaluation_sentences

SUBSET = ["move_slider_left", "move_slider_right", "open_drawer", "close_drawer", "turn_on_led", "turn_off_led"]


def test_chains_use_only_the_given_tasks_with_their_evaluation_sentences():
    items = build_items(EvalConfig(mode="chains", num_chains=12, tasks=SUBSET))
    sentences = evaluation_sentences()
    assert [it.index for it in items] == list(range(12))
    for it in items:
        assert len(it.tasks) == 5 and set(it.tasks) <= set(SUBSET)
        assert it.instructions == [sentences[t] for t in it.tasks]


def test_chains_need_five_tasks():
    with pytest.raises(ValueError, match="at least 5 tasks"):
        EvalConfig(mode="chains", tasks=SUBSET[:3])


def test_single_task_episodes_of_tasks_no_initial_state_allows_start_after_the_shortest_setup():
    from roboflamingo.sim.chains import next_states, single_task_episodes
    from roboflamingo.sim.tasks import TaskOracle

    tasks = ["open_drawer", "place_in_drawer", "unstack_block", "lift_red_block_drawer", "turn_on_led"]
    items = build_items(EvalConfig(mode="single_task", tasks=tasks, episodes_per_task=3, chain_seed=7))
    assert [it.tasks[0] for it in items] == [t for t in tasks for _ in range(3)]
    oracle = TaskOracle.default()
    for it in items:
        state = it.initial_state
        for task in [*it.setup, *it.tasks]:  # each valid where the one before it left the scene
            (state,) = next_states(state, task, oracle)
    lengths = {t: {len(it.setup) for it in items if it.tasks[0] == t} for t in tasks}
    # a lift puts a block in the hand, a stack needs one more task, the drawer may need opening first
    assert lengths["open_drawer"] == lengths["turn_on_led"] == {0} and lengths["unstack_block"] == {2}
    assert lengths["place_in_drawer"] <= {1, 2} and lengths["lift_red_block_drawer"] <= {2, 3}
    # the same config, the same episodes; the tasks an initial state allows keep the states they had
    again = build_items(EvalConfig(mode="single_task", tasks=tasks, episodes_per_task=3, chain_seed=7))
    assert [(it.initial_state, it.setup) for it in again] == [(it.initial_state, it.setup) for it in items]
    direct = single_task_episodes(["open_drawer", "turn_on_led"], 3, 7)
    assert [(s, setup) for _, s, setup in direct[:3]] == [(it.initial_state, []) for it in items[:3]]
