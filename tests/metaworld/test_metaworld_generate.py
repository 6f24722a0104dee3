"""generate env=metaworld: the layout, the Sawyer's robot.json, LeRobot's sentences, replayable
episodes from recorded seeds, resume, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from roboflamingo import cli
from roboflamingo.config import ConfigError
from roboflamingo.metaworld.config import MetaWorldConfig
from roboflamingo.metaworld.env import FULL_OBS, MetaWorldEnv, sawyer_robot
from roboflamingo.metaworld.generate import SEED_FLOOR, Job, Unit, annotation, run
from roboflamingo.metaworld.tasks import task_table
from roboflamingo.robot import RobotDescription

SIZE = 16


def _job(root, **kw) -> Job:
    return Job(**{"root": str(root), "tasks": ["reach"], "episodes_per_task": 2, "val_episodes_per_task": 1,
                  "workers": 1, "progress": False, "env": MetaWorldConfig(size=SIZE), **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mw") / "data"
    assert run(_job(root)) == 0
    return root


def test_splits_carry_the_sawyers_description_and_lerobots_sentences(dataset):
    from roboflamingo.data.layout import load_split_index
    from roboflamingo.robots import read_dataset_robot

    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["tasks"] == ["reach-v3"]
    for split, n in (("training", 2), ("validation", 1)):
        robot = read_dataset_robot(dataset / split)
        assert robot == RobotDescription.from_dict(sawyer_robot(MetaWorldConfig(size=SIZE)).to_dict())
        assert (robot.cameras[0].name, robot.cameras[0].height) == ("corner2", SIZE)
        index = load_split_index(dataset / split)
        assert len(index.episodes) == n and index.segments.tolist() == index.episodes.tolist()
        # each demonstration's instruction drawn, per unit, from LeRobot's description and our paraphrases
        assert index.instructions == [annotation(_job(dataset), Unit(split, "reach-v3", i)) for i in range(n)]
        assert set(index.instructions) <= set(task_table().training_sentences("reach-v3"))
        assert index.tasks == ["reach-v3"] * n
        assert manifest["splits"][split]["per_task"]["reach-v3"]["episodes"] == n
        assert "render: fast" in (dataset / split / "env_config.yaml").read_text()


def test_annotations_are_drawn_per_unit_or_lerobots_alone(tmp_path):
    job = _job(tmp_path, tasks=["mt10"])
    drawn = [annotation(job, Unit("training", "drawer-open-v3", i)) for i in range(40)]
    assert set(drawn) == set(task_table().training_sentences("drawer-open-v3"))  # every wording is used
    assert drawn == [annotation(job, Unit("training", "drawer-open-v3", i)) for i in range(40)]
    assert drawn != [annotation(_job(tmp_path, tasks=["mt10"], seed=1), Unit("training", "drawer-open-v3", i))
                     for i in range(40)]
    lerobot = _job(tmp_path, paraphrases=False)
    assert {annotation(lerobot, Unit("training", "drawer-open-v3", i)) for i in range(10)} == {"Open a drawer"}


def test_frames_hold_what_the_description_names(dataset):
    robot = sawyer_robot(MetaWorldConfig(size=SIZE))
    with np.load(dataset / "training" / "episode_0000000.npz") as z:
        frame = {k: z[k] for k in z.files}
    assert set(frame) == {"corner2", "state", "action", FULL_OBS}
    robot.check_observation(frame)
    robot.check_action(frame["action"])
    assert frame["corner2"].shape == (SIZE, SIZE, 3) and frame["corner2"].any()
    np.testing.assert_array_equal(frame["state"], frame[FULL_OBS][:4])


def test_a_recorded_episode_replays_from_its_seed_to_success(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    episodes = manifest["splits"]["training"]["episode_list"]
    assert len({e["seed"] for e in episodes}) == len(episodes) and min(e["seed"] for e in episodes) >= SEED_FLOOR
    first, last = episodes[1]["frames"]
    frames = [np.load(dataset / "training" / f"episode_{i:07d}.npz") for i in range(first, last + 1)]
    env = MetaWorldEnv("reach-v3", size=SIZE)
    try:
        obs, _ = env.reset(seed=episodes[1]["seed"])
        for k, f in enumerate(frames):
            np.testing.assert_array_equal(obs[FULL_OBS], f[FULL_OBS])
            np.testing.assert_array_equal(obs["corner2"], f["corner2"])
            obs, _, success, _, _ = env.step(f["action"])
            assert success == (k == len(frames) - 1)  # recorded up to the success step, not beyond
    finally:
        env.close()


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    import roboflamingo.metaworld.generate as gen

    whole = tmp_path / "whole"
    assert run(_job(whole, episodes_per_task=3, val_episodes_per_task=0)) == 0
    real, calls = gen._work, []

    def dies_after_two(args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args)
        return real(args)

    monkeypatch.setattr(gen, "_work", dies_after_two)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(_job(resumed, episodes_per_task=3, val_episodes_per_task=0))
    assert not (resumed / "training").exists() and len(list((resumed / ".work" / "training").glob("*.done"))) == 2
    with pytest.raises(ValueError, match="interrupted run of a different job"):
        run(_job(resumed, episodes_per_task=4, val_episodes_per_task=0))
    monkeypatch.setattr(gen, "_work", real)
    assert run(_job(resumed, episodes_per_task=3, val_episodes_per_task=0)) == 0
    assert not (resumed / ".work").exists()
    files = sorted(p.name for p in (whole / "training").glob("episode_*.npz"))
    assert files == sorted(p.name for p in (resumed / "training").glob("episode_*.npz"))
    for name in files:
        with np.load(whole / "training" / name) as a, np.load(resumed / "training" / name) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_bad_jobs_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="env.render=off records no images"):
        _job(tmp_path, env=MetaWorldConfig(render="off"))
    with pytest.raises(ValueError, match="generate.tasks: 'fly' is neither"):
        _job(tmp_path, tasks=["fly"])
    with pytest.raises(ValueError, match="max_attempts must be > 0"):
        _job(tmp_path, max_attempts=0)
    assert cli.main(["generate", "env=metaworld", "episodes_per_task=-1"]) == 2
    assert "episodes_per_task must be > 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown key 'scenes'"):
        cli.load("generate_metaworld", Job, ["scenes=[A]"])
