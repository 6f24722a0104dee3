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
