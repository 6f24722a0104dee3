"""The task table against Meta-World's own registry and LeRobot's own config file (golden copy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roboflamingo.metaworld.tasks import GROUP_SIZES, TaskError, resolve_tasks, task_table

LEROBOT_CONFIG = Path(__file__).parent / "fixtures" / "lerobot_metaworld_config.json"


def test_training_sentences_and_groups_are_lerobots():
    lerobot = json.loads(LEROBOT_CONFIG.read_text())
    table = task_table()
    assert dict(table.train) == lerobot["TASK_DESCRIPTIONS"]
    assert {g: list(v) for g, v in table.groups.items()} == lerobot["DIFFICULTY_TO_TASKS"]
    assert {g: len(v) for g, v in table.groups.items()} == GROUP_SIZES
    assert sorted(table.tasks) == sorted(lerobot["TASK_NAME_TO_ID"])


def test_tasks_mt10_and_experts_are_metaworlds():
    import metaworld
    from metaworld.policies import ENV_POLICY_MAP

    table = task_table()
    assert set(table.tasks) == set(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
    assert list(table.mt10) == list(metaworld.env_dict.MT10_V3)
    lerobot = json.loads(LEROBOT_CONFIG.read_text())["TASK_POLICY_MAPPING"]
    assert {t: ENV_POLICY_MAP[t].__name__ for t in table.tasks} == lerobot


def test_evaluation_sentences_are_unseen_and_unique():
    table = task_table()
    train = {s.lower() for s in table.train.values()}
    assert not [t for t, s in table.eval.items() if s.lower() in train]
    assert len({s.lower() for s in table.eval.values()}) == 50


def test_paraphrases_are_further_training_sentences_never_evaluation_ones():
    table = task_table()
    unseen = {s.lower() for s in table.eval.values()}
    owners: dict[str, str] = {}
    for task in table.tasks:
        sentences = table.training_sentences(task)
        assert sentences[0] == table.train[task] and len(sentences) >= 3
        for sentence in sentences[1:]:
            assert sentence.lower() not in unseen
            assert owners.setdefault(sentence.lower(), task) == task
            assert table.task_for_instruction(sentence) == task


def test_a_paraphrase_that_is_an_evaluation_sentence_is_refused():
    import yaml

    from roboflamingo.metaworld import tasks as tasks_module

    raw = yaml.safe_load((Path(tasks_module.__file__).parent / "tasks.yaml").read_text())
    raw["paraphrases"]["reach-v3"].append(raw["eval"]["reach-v3"])
    with pytest.raises(TaskError, match=r"paraphrases.reach-v3.*evaluation sentence of reach-v3"):
        tasks_module._paraphrases(raw["paraphrases"], tuple(raw["train"]), raw["train"], raw["eval"])
    raw["paraphrases"]["reach-v3"][-1] = raw["train"]["push-v3"]
    with pytest.raises(TaskError, match=r"already a training sentence of push-v3"):
        tasks_module._paraphrases(raw["paraphrases"], tuple(raw["train"]), raw["train"], raw["eval"])


def test_selections_expand_in_order_without_repeats():
    table = task_table()
    assert resolve_tasks([]) == list(table.tasks) == resolve_tasks(["all"])
    assert resolve_tasks(["easy"]) == list(table.groups["easy"])
    assert len(resolve_tasks(["very_hard", "hard", "medium"])) == 22
    assert resolve_tasks(["drawer-open", "mt10"])[:2] == ["drawer-open-v3", "reach-v3"]
    assert len(resolve_tasks(["drawer-open", "mt10"])) == 10  # drawer-open-v3 is in MT10: listed once


def test_unknown_task_names_the_source_and_the_closest():
    with pytest.raises(TaskError, match=r"eval.tasks: 'drawer-opn' .*did you mean drawer-open-v3"):
        resolve_tasks(["drawer-opn"], source="eval.tasks")


def test_instructions_map_back_to_tasks():
    table = task_table()
    for task, sentence in table.eval.items():
        assert table.task_for_instruction(sentence) == task
        assert table.task_for_instruction(f"  {sentence.upper()} ") == task
    assert table.task_for_instruction("Open a drawer") == "drawer-open-v3"
    assert table.task_for_instruction("reach-v3") == "reach-v3"
    with pytest.raises(ValueError, match="several tasks"):
        table.task_for_instruction("Push the puck to a goal")  # LeRobot's push-v3 and push-back-v3
    with pytest.raises(ValueError, match="not a sentence"):
        table.task_for_instruction("dance")


def test_the_docs_table_lists_both_sentences_of_every_task():
    page = (Path(__file__).resolve().parents[2] / "docs" / "metaworld.md").read_text()
    table = task_table()
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| ") and "-v3 |" in line}
    assert sorted(rows) == sorted(table.tasks)
    for task, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:5] == [table.group_of(task), "yes" if task in table.mt10 else "", table.train[task],
                              table.eval[task]], task
