import json

import numpy as np
import pytest
import yaml

from roboflamingo.robots import calvin as T
from roboflamingo.sim import generate
from roboflamingo.sim.config import EnvConfig

KEYS = {T.RGB_STATIC: ((16, 16, 3), np.uint8), T.RGB_GRIPPER: ((12, 12, 3), np.uint8),
        T.ROBOT_OBS: ((15,), np.float64), T.SCENE_OBS: ((24,), np.float64),
        T.ACTIONS: ((7,), np.float64), T.REL_ACTIONS: ((7,), np.float64)}


def tiny_job(root, **kw):
    base = dict(root=str(root), mode="single", tasks=["turn_on_led", "turn_off_led"], train_scenes=["A"],
                val_scenes=["D"], episodes_per_task=1, val_episodes_per_task=1,
                env=EnvConfig(static_size=16, gripper_size=12, renderer="tiny"), workers=1, progress=False)
    base.update(kw)
    return generate.Job(**base)


def load_split(split_dir):
    ids = np.load(split_dir / "ep_start_end_ids.npy")
    lang = np.load(split_dir / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
    frames = sorted(split_dir.glob("episode_*.npz"))
    return ids, lang, frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen") / "data"
    assert generate.run(tiny_job(root)) == 0
    return root


def test_dataset_loads_back_in_calvin_layout(dataset):
    for split in ("training", "validation"):
        d = dataset / split
        ids, lang, frames = load_split(d)
        assert ids.ndim == 2 and ids.shape[1] == 2 and ids[0, 0] == 0
        assert len(frames) == ids[-1, 1] + 1 == int(np.load(d / "ep_lens.npy").sum())
        assert frames[0].name == "episode_0000000.npz"
        with np.load(frames[len(frames) // 2]) as f:
            assert set(f.files) == set(KEYS)
            for k, (shape, dtype) in KEYS.items():
                assert f[k].shape == shape and f[k].dtype == dtype, k
            assert f[T.REL_ACTIONS][6] in (-1.0, 1.0) and np.all(np.abs(f[T.REL_ACTIONS]) <= 1)
        assert sorted(lang["language"]["task"]) == ["turn_off_led", "turn_on_led"]
        assert lang["language"]["emb"].shape == (2, 1, 384)
        for start, end in lang["info"]["indx"]:
            assert 0 <= start < end < len(frames) and end - start < 120
        stats = yaml.safe_load((d / "statistics.yaml").read_text())
        assert len(stats["robot_obs"][0]["mean"]) == 15 and len(stats["scene_obs"][0]["std"]) == 24
        assert len(stats["act_min_bound"]) == 7
        scene_info = np.load(d / "scene_info.npy", allow_pickle=True).item()
        assert list(scene_info) == ["calvin_scene_A" if split == "training" else "calvin_scene_D"]
        assert yaml.safe_load((d / "env_config.yaml").read_text())["static_size"] == 16
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["tasks"] == ["turn_on_led", "turn_off_led"]
    assert not (dataset / ".work").exists()


def test_relative_actions_reproduce_the_recording(dataset):
    """Replaying the stored rel_actions from the first frame's state reproduces the next states."""
    from roboflamingo.sim.env import TabletopEnv

    d = dataset / "training"
    ids, _, frames = load_split(d)
    start, end = ids[0]
    data = [np.load(frames[i]) for i in range(start, min(end, start + 12) + 1)]
    env = TabletopEnv(scene="A", render=False)
    obs, _ = env.reset(options={"robot_obs": data[0][T.ROBOT_OBS], "scene_obs": data[0][T.SCENE_OBS]})
    for f, nxt in zip(data[:-1], data[1:]):
        obs, *_ = env.step(f[T.REL_ACTIONS])
        np.testing.assert_allclose(obs[T.ROBOT_OBS], nxt[T.ROBOT_OBS], atol=1e-6)
        np.testing.assert_allclose(f[T.ACTIONS][:3], nxt[T.ROBOT_OBS][:3])
    env.close()


@pytest.mark.slow
def test_resumes_after_interruption_with_same_result(dataset, tmp_path, monkeypatch):
    root = tmp_path / "data"
    real = generate.run_unit
    calls = []

    def flaky(job, unit, tasks, out_dir):
        calls.append(unit)
        if len(calls) == 3:
            out_dir.mkdir(parents=True)
            (out_dir / "episode_0000000.npz").write_bytes(b"half")
            raise KeyboardInterrupt  # as if the process were stopped mid-unit
        return real(job, unit, tasks, out_dir)

    monkeypatch.setattr(generate, "run_unit", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate.run(tiny_job(root))
    assert not (root / "training").exists() and not (root / "validation").exists()
    assert len(list((root / ".work").glob("*/*.done"))) == 2
    monkeypatch.setattr(generate, "run_unit", real)
    with pytest.raises(ValueError, match="different job"):
        generate.run(tiny_job(root, seed=5))
    assert generate.run(tiny_job(root)) == 0
    for split in ("training", "validation"):
        ids_a, lang_a, frames_a = load_split(dataset / split)
        ids_b, lang_b, frames_b = load_split(root / split)
        np.testing.assert_array_equal(ids_a, ids_b)
        assert lang_a["language"]["ann"] == lang_b["language"]["ann"]
        for fa, fb in zip(frames_a[::7], frames_b[::7]):
            with np.load(fa) as a, np.load(fb) as b:
                for k in KEYS:
                    np.testing.assert_array_equal(a[k], b[k])


def test_job_validation():
    with pytest.raises(ValueError, match="mode"):
        generate.Job(mode="mixed")
    with pytest.raises(ValueError, match="episodes_per_task"):
        generate.Job(mode="single", episodes_per_task=0)
    with pytest.raises(ValueError, match="chains_per_scene"):
        generate.Job(mode="chains", chains_per_scene=0)
    generate.Job(mode="both", chains_per_scene=0)  # `both` may leave out either kind


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'fly_away'"):
        generate.run(tiny_job(tmp_path / "x", tasks=["fly_away"]))


@pytest.mark.slow
def test_both_modes_mix_single_units_and_chains_over_a_task_subset(tmp_path):
    subset = ["move_slider_left", "move_slider_right", "open_drawer", "close_drawer", "turn_on_led", "turn_off_led"]
    job = tiny_job(tmp_path / "data", mode="both", tasks=subset, train_scenes=["D"], episodes_per_task=1,
                   val_episodes_per_task=0, chains_per_scene=2, val_chains_per_scene=1)
    units = generate.plan_units(job, subset)
    assert sum(u.split == "training" for u in units) == len(subset) + 2
    assert sum(u.split == "validation" for u in units) == 1
    assert generate.run(job) == 0
    assert set(np.load(tmp_path / "data" / "training" / "lang_annotations" / "auto_lang_ann.npy",
                       allow_pickle=True).item()["language"]["task"]) == set(subset)
    for split in ("training", "validation"):
        ids, lang, frames = load_split(tmp_path / "data" / split)
        assert set(lang["language"]["task"]) <= set(subset)
        # a chain's later subtasks start where the previous one ended, away from the neutral pose
        # that every recording starts from (frame 0)
        neutral = np.load(frames[0])[T.ROBOT_OBS][:3]
        starts = [s for s, _ in lang["info"]["indx"]]
        assert max(np.linalg.norm(np.load(frames[s])[T.ROBOT_OBS][:3] - neutral) for s in starts) > 0.05


def test_a_handover_no_single_task_leads_to_starts_after_the_shortest_prefix():
    """unstack_block needs a stack, which no task builds from an initial state: the handover performs
    a lift and the stacking, both unrecorded (this raised before, stopping generation of all 34 tasks)."""
    from roboflamingo.sim.chains import initial_states, next_states
    from roboflamingo.sim.rollout import sample_handover
    from roboflamingo.sim.tasks import TaskOracle

    oracle = TaskOracle.default()
    rng = np.random.default_rng(0)
    for _ in range(5):
        episode = sample_handover("unstack_block", rng, oracle, oracle.tasks)
        assert episode.initial_state in initial_states(oracle)
        assert len(episode.tasks) == 3 and episode.unrecorded == 2 and episode.tasks[-1] == "unstack_block"
        assert oracle.specs[episode.tasks[-2]].category != oracle.specs["unstack_block"].category
        state = episode.initial_state
        for task in episode.tasks:  # each task valid where the one before it ended
            (state,) = next_states(state, task, oracle)
    # the task before it is one of the given tasks, as in every handover
    episode = sample_handover("unstack_block", rng, oracle, ["unstack_block", "open_drawer"])
    assert episode.tasks[-2] == "open_drawer" and episode.unrecorded == len(episode.tasks) - 1


@pytest.mark.slow
def test_handover_units_start_where_an_unrecorded_task_of_another_category_ended(tmp_path):
    from roboflamingo.sim.rollout import sample_handover
    from roboflamingo.sim.tasks import TaskOracle

    oracle = TaskOracle.default()
    tasks = ["open_drawer", "close_drawer", "turn_on_led", "turn_off_led"]
    rng = np.random.default_rng(0)
    for task in tasks:
        episode = sample_handover(task, rng, oracle, tasks)
        assert episode.tasks[-1] == task and episode.unrecorded == 1
        assert oracle.specs[episode.tasks[0]].category != oracle.specs[task].category
    with pytest.raises(RuntimeError, match="another category"):
        sample_handover("turn_on_led", rng, oracle, ["turn_on_led", "turn_off_led"])

    with pytest.raises(ValueError, match="'turn_on_led' has none"):  # the LED tasks share one category
        tiny_job(tmp_path / "data", tasks=tasks[2:], handover=0.5)
    from roboflamingo.sim.chains import neutral_robot_obs
    from roboflamingo.sim.scene import load_scene

    neutral = neutral_robot_obs(load_scene("D"))[:3]
    for home in (False, True):
        root = tmp_path / f"home_{home}"
        job = tiny_job(root, tasks=["open_drawer", "turn_on_led"], train_scenes=["D"], val_episodes_per_task=0,
                       val_scenes=[], handover=1.0, handover_home=home)
        assert generate.run(job) == 0
        ids, lang, frames = load_split(root / "training")
        # one recording per unit, holding only the handed-over task: nothing of the task before it
        assert len(ids) == 2 and sorted(lang["language"]["task"]) == ["open_drawer", "turn_on_led"]
        assert [tuple(i) for i in lang["info"]["indx"]] == [tuple(i) for i in ids]
        for start, end in ids:
            dist = [np.linalg.norm(np.load(frames[i])[T.ROBOT_OBS][:3] - neutral) for i in range(start, end + 1)]
            assert dist[0] > 0.05
            # homing: the recording passes through the neutral pose on its way to the task (within
            # the few centimetres that position control leaves; without homing it stays >= 10 cm off)
            assert (min(dist) < 0.04) == home
    with pytest.raises(ValueError, match="handover"):
        tiny_job(tmp_path / "x", handover=1.5)
    with pytest.raises(ValueError, match="handover_home"):
        tiny_job(tmp_path / "x", handover_home=True)


def test_each_split_carries_calvins_robot_description(dataset):
    from roboflamingo.data.config import DataConfig
    from roboflamingo.data.dataset import CalvinDataset
    from roboflamingo.robots import read_dataset_robot

    for split in ("training", "validation"):
        assert (dataset / split / "robot.json").is_file()
        assert read_dataset_robot(dataset / split) == T.CALVIN
    ds = CalvinDataset(DataConfig(root=str(dataset), window=2, num_workers=0))
    assert ds.robot == T.CALVIN
