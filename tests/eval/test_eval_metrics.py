"""CALVIN's metrics on synthetic chain results, checked against numbers worked out by hand."""

import pytest

from roboflamingo.eval.metrics import ChainResult, running_postfix, summarize_chains, summarize_episodes


def chains():
    return [
        ChainResult(0, ["a", "b", "c", "d", "e"], completed=5, steps=[10, 20, 30, 40, 50]),
        ChainResult(1, ["b", "a", "c", "d", "e"], completed=0, steps=[360]),
        ChainResult(2, ["a", "c", "b", "e", "d"], completed=2, steps=[5, 6, 360]),
    ]


def test_long_horizon_metrics_match_hand_computed_values():
    s = summarize_chains(chains())
    assert s["num_chains"] == 3
    assert s["avg_len"] == pytest.approx(7 / 3)
    assert s["success_rates"] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
    # Only attempted subtasks count: chain 1 never tried a, c, d, e; chain 2 never tried e, d.
    assert s["per_task"] == {
        "a": {"success": 2, "total": 2, "rate": 1.0},
        "b": {"success": 1, "total": 3, "rate": pytest.approx(1 / 3)},
        "c": {"success": 2, "total": 2, "rate": 1.0},
        "d": {"success": 1, "total": 1, "rate": 1.0},
        "e": {"success": 1, "total": 1, "rate": 1.0},
    }
    # b failed as chain 1's first subtask, succeeded as chain 0's second and failed as chain 2's third
    split = s["per_task_first_later"]
    assert split["b"] == {"first": {"success": 0, "total": 1, "rate": 0.0},
                          "later": {"success": 1, "total": 2, "rate": 0.5}}
    assert split["a"]["first"]["total"] == 2 and split["a"]["later"] == {"success": 0, "total": 0, "rate": None}
    assert all(c["first"]["total"] + c["later"]["total"] == s["per_task"][t]["total"] for t, c in split.items())


def test_the_chain_report_splits_each_task_into_first_and_later_subtasks():
    from roboflamingo.eval.report import markdown

    text = markdown(summarize_chains(chains()))
    assert "| as first subtask | as a later one |" in text
    assert "| b | 1 | 3 | 33.3% | 0/1 | 1/2 |" in text and "| a | 2 | 2 | 100.0% | 2/2 | - |" in text


def test_success_rates_are_cumulative_over_chain_length():
    lengths = [5, 0, 2, 5, 3, 1, 4, 5]
    results = [ChainResult(i, [f"t{k}" for k in range(5)], n) for i, n in enumerate(lengths)]
    s = summarize_chains(results)
    assert s["avg_len"] == pytest.approx(25 / 8)
    assert s["success_rates"] == pytest.approx([7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8])
    assert s["per_task"]["t0"] == {"success": 7, "total": 8, "rate": 7 / 8}
    assert s["per_task"]["t4"] == {"success": 3, "total": 4, "rate": 3 / 4}
    assert running_postfix(results) == "1/5: 88% | 2/5: 75% | 3/5: 62% | 4/5: 50% | 5/5: 38% | len 3.12"


def test_single_task_summary_pools_and_averages():
    results = [
        ChainResult(0, ["open_drawer"], 1),
        ChainResult(1, ["open_drawer"], 1),
        ChainResult(2, ["open_drawer"], 0),
        ChainResult(3, ["close_drawer"], 0),
    ]
    s = summarize_episodes(results)
    assert s["num_episodes"] == 4
    assert s["success_rate"] == pytest.approx(2 / 4)
    assert s["task_average"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["per_task"]["open_drawer"] == {"success": 2, "total": 3, "rate": pytest.approx(2 / 3)}


def test_record_round_trip_and_outcome_labels():
    r = chains()[2]
    back = ChainResult.from_record({**r.to_record(), "fingerprint": "x"})
    assert back == r
    assert r.outcome == "fail-b" and chains()[0].outcome == "success"
    assert r.env_steps == 371
    with pytest.raises(ValueError, match="completed=6"):
        ChainResult(9, ["a"] * 5, completed=6)


def test_empty_results_do_not_divide_by_zero():
    s = summarize_chains([])
    assert s["avg_len"] == 0.0 and s["success_rates"] == [0.0] * 5 and s["per_task"] == {}
