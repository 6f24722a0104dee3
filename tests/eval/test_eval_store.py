"""The append-only record files: resume skips finished chains, never counts one twice, survives a torn line."""

import json

import pytest

from roboflamingo.eval.metrics import ChainResult
from roboflamingo.eval.store import ResultStore, fingerprint


def result(i, completed=2):
    return ChainResult(i, ["a", "b", "c", "d", "e"], completed, steps=[1] * min(completed + 1, 5))


def test_append_then_load_round_trips(tmp_path):
    with ResultStore(tmp_path, "fp") as store:
        store.append(result(0))
        store.append(result(3, 5))
    loaded = ResultStore(tmp_path, "fp").load()
    assert sorted(loaded) == [0, 3]
    assert loaded[3] == result(3, 5)


def test_duplicates_across_ranks_count_once_first_wins(tmp_path):
    with ResultStore(tmp_path, "fp", rank=0) as s0, ResultStore(tmp_path, "fp", rank=1) as s1:
        s0.append(result(1, 1))
        s1.append(result(1, 4))
        s1.append(result(2, 0))
    loaded = ResultStore(tmp_path, "fp", rank=5).load()
    assert sorted(loaded) == [1, 2]
    assert loaded[1].completed == 1  # rank-0's file sorts first


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    with ResultStore(tmp_path, "fp") as store:
        store.append(result(0))
    path = tmp_path / "records" / "rank-0.jsonl"
    line = json.dumps({"fingerprint": "fp", **result(1).to_record()})
    with open(path, "a") as f:
        f.write(line[: len(line) // 2])  # a crash mid-write
    assert sorted(ResultStore(tmp_path, "fp").load()) == [0]
    with ResultStore(tmp_path, "fp") as store:
        store.append(result(1))
    assert sorted(ResultStore(tmp_path, "fp").load()) == [0, 1]
    assert all(json.loads(raw) for raw in path.read_text().splitlines())


def test_a_complete_json_line_without_newline_is_not_trusted(tmp_path):
    path = tmp_path / "records" / "rank-0.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"fingerprint": "fp", **result(7).to_record()}))
    assert ResultStore(tmp_path, "fp").load() == {}


def test_corrupt_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "records" / "rank-0.jsonl"
    path.parent.mkdir()
    good = json.dumps({"fingerprint": "fp", **result(0).to_record()})
    path.write_text(f"{good}\n{{oops\n{good}\n")
    with pytest.raises(ValueError, match="rank-0.jsonl:2"):
        ResultStore(tmp_path, "fp").load()


def test_records_of_another_evaluation_are_refused_or_cleared(tmp_path):
    with ResultStore(tmp_path, "old") as store:
        store.append(result(0))
    new = ResultStore(tmp_path, "new")
    assert new.foreign_fingerprints() == {"old"}
    with pytest.raises(ValueError, match="different evaluation"):
        new.load()
    new.clear()
    assert new.load() == {} and new.foreign_fingerprints() == set()


def test_fingerprint_is_stable_and_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
