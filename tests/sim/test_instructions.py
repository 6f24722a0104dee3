"""The sentence sets: evaluation sentences are CALVIN's own and never appear in training; the training
sentences are ours (``train.yaml``) and CALVIN's (``calvin_train.yaml``).

``tests/fixtures/calvin/new_playtable_validation.yaml`` and ``new_playtable.yaml`` are CALVIN's files,
copied byte for byte by ``scripts/make_calvin_fixtures.py`` from ``calvin_models/conf/annotations/``.
"""

from pathlib import Path

import yaml

from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.items import build_items, evaluation_sentences
from roboflamingo.sim.instructions import load_instructions
from roboflamingo.sim.scene import envs_dir

CALVIN_VALIDATION = Path(__file__).resolve().parents[1] / "fixtures" / "calvin" / "new_playtable_validation.yaml"
CALVIN_TRAINING = CALVIN_VALIDATION.with_name("new_playtable.yaml")
TRAINING_FILES = ("train.yaml", "calvin_train.yaml")


def _key(sentence: str) -> str:
    # What a tokenizer could not tell apart: case and spacing.
    return " ".join(sentence.lower().split())


def _calvin() -> dict[str, list[str]]:
    return yaml.safe_load(CALVIN_VALIDATION.read_text())


def test_no_evaluation_sentence_of_ours_or_calvins_is_a_training_sentence():
    """Read from the files themselves, so an edit to either YAML is checked, whatever the loader does."""
    ours = yaml.safe_load((envs_dir() / "instructions" / "eval.yaml").read_text())
    trained = {_key(s): task for name in TRAINING_FILES
               for task, sentences in yaml.safe_load((envs_dir() / "instructions" / name).read_text()).items()
               for s in sentences}
    evaluated = {(task, s) for task, s in ours.items()} | {(t, s) for t, ss in _calvin().items() for s in ss}
    leaked = sorted((task, s, trained[_key(s)]) for task, s in evaluated if _key(s) in trained)
    assert not leaked, f"evaluation sentences among the training annotations (task, sentence, trained for): {leaked}"


def test_calvin_training_sentences_are_calvins_verbatim_for_every_task():
    shipped = yaml.safe_load((envs_dir() / "instructions" / "calvin_train.yaml").read_text())
    calvin = yaml.safe_load(CALVIN_TRAINING.read_text())
    assert shipped == calvin  # same tasks, same sentences, same order
    assert set(shipped) == set(load_instructions("train")) and sum(map(len, shipped.values())) == 389


def test_evaluation_sentences_are_calvins_validation_sentences_verbatim():
    calvin = _calvin()
    assert len(calvin) == 34
    ours = load_instructions("eval")
    assert set(ours) == set(calvin)
    mismatched = {task: (ours[task][0], calvin[task][0]) for task in calvin if ours[task][0] != calvin[task][0]}
    assert not mismatched, f"task: (ours, CALVIN's): {mismatched}"


def test_calvin_env_evaluation_uses_calvins_sentences_unless_told_otherwise(tmp_path):
    calvin = {task: s[0] for task, s in _calvin().items()}
    assert evaluation_sentences() == calvin
    items = build_items(EvalConfig(mode="chains", num_chains=20, calvin_dataset=str(tmp_path)))
    assert all(it.instructions == [calvin[t] for t in it.tasks] for it in items)
    # The chains reach tasks whose sentences once differed from CALVIN's (rotate, push, lift from the drawer).
    assert any(t.startswith(("rotate_", "push_", "lift_")) for it in items for t in it.tasks)
    other = tmp_path / "mine.yaml"
    other.write_text(yaml.safe_dump({task: [f"please {s}"] for task, s in calvin.items()}))
    told = build_items(EvalConfig(mode="chains", num_chains=3, calvin_dataset=str(tmp_path),
                                  calvin_instructions=str(other)))
    assert all(it.instructions == [f"please {calvin[t]}" for t in it.tasks] for it in told)
