"""The resumable unit runner and split writer both generators record through."""

from __future__ import annotations

import numpy as np
import pytest

from roboflamingo.data.layout import load_split_index
from roboflamingo.recording import (
    done_dir,
    link_frames,
    move_into_place,
    new_split_dir,
    prepare_work,
    read_meta,
    record_unit,
    run_units,
    worker_env,
    write_index,
    write_unit,
)
from roboflamingo.robots import load_robot


def _frames(n: int, start: float = 0.0) -> list[dict]:
    robot = load_robot("calvin")
    return [{"rgb_static": np.full((4, 4, 3), i, np.uint8), "rgb_gripper": np.zeros((2, 2, 3), np.uint8),
             "robot_obs": np.full(robot.state.dim, start + i), "rel_actions": np.zeros(robot.action.dim)}
            for i in range(n)]


def test_work_belongs_to_one_job_and_loses_dead_workers_leftovers(tmp_path):
    work = prepare_work(tmp_path, {"seed": 0}, ["training"])
    stale = work / "training" / "unit_000001.tmp123"
    stale.mkdir()
    (done_dir(work, "training", "unit_000000")).mkdir()
    assert prepare_work(tmp_path, {"seed": 0}, ["training"]) == work
    assert not stale.exists() and done_dir(work, "training", "unit_000000").is_dir()
    with pytest.raises(ValueError, match=r"interrupted run of a different job .*job.json"):
        prepare_work(tmp_path, {"seed": 1}, ["training"])


def test_a_unit_is_done_only_once_it_is_complete(tmp_path):
    work = prepare_work(tmp_path, {}, ["training"])

    def fails(out):
        write_unit(out, _frames(2), {"frames": 2})
        raise RuntimeError("simulator died")

    with pytest.raises(RuntimeError):
        record_unit(work, "training", "u", fails)
    assert not done_dir(work, "training", "u").exists()
    meta = record_unit(work, "training", "u", lambda out: write_unit(out, _frames(3), {"frames": 3}))
    src, read = read_meta(work, "training", "u")
    assert meta == read == {"frames": 3} and len(list(src.glob("episode_*.npz"))) == 3


def test_units_run_inline_and_release_what_they_held_even_on_failure(tmp_path):
    seen, closed = [], []
    run_units(seen.append, [1, 2], total=3, workers=1, progress=False, desc="t", unit="u",
              on_close=lambda: closed.append(True))
    assert seen == [1, 2] and closed == [True]

    def boom(_):
        raise KeyError("x")

    with pytest.raises(KeyError):
        run_units(boom, [1], total=1, workers=1, progress=False, desc="t", unit="u", on_close=lambda: closed.append(True))
    assert closed == [True, True]


def test_an_assembled_split_reads_back_and_replaces_the_old_one_whole(tmp_path):
    work = prepare_work(tmp_path, {}, ["training"])
    for name, n, start in (("a", 3, 0.0), ("b", 2, 10.0)):
        record_unit(work, "training", name, lambda out, n=n, start=start: write_unit(out, _frames(n, start), {"frames": n}))
    old = tmp_path / "training"
    old.mkdir()
    (old / "stale.txt").write_text("from an earlier run")
    tmp = new_split_dir(tmp_path, "training")
    offset = 0
    for name in ("a", "b"):
        src, meta = read_meta(work, "training", name)
        link_frames(src, tmp, meta["frames"], offset)
        offset += meta["frames"]
    ids = write_index(tmp, [[0, 2], [3, 4]], ["open the drawer", "close it"], ["open_drawer", "close_drawer"],
                      [(0, 2), (3, 4)])
    move_into_place(tmp, old)
    assert ids.tolist() == [[0, 2], [3, 4]] and not (old / "stale.txt").exists() and not tmp.exists()
    index = load_split_index(old)
    assert index.episodes.tolist() == [[0, 2], [3, 4]] and index.tasks == ["open_drawer", "close_drawer"]
    assert index.instructions == ["open the drawer", "close it"]
    assert np.load(old / "episode_0000003.npz")["robot_obs"][0] == 10.0
    assert (np.load(old / "ep_lens.npy") == [3, 2]).all()


def test_a_worker_keeps_its_simulator_only_for_the_same_settings():
    class Sim:
        def __init__(self, cfg):
            self.cfg, self.closed = cfg, False

        def close(self):
            self.closed = True

    cache: dict = {}
    first = worker_env(cache, "A", {"size": 16}, Sim)
    assert worker_env(cache, "A", {"size": 16}, Sim) is first
    other = worker_env(cache, "A", {"size": 32}, Sim)
    assert other is not first and first.closed and other.cfg == {"size": 32}
    assert worker_env(cache, "B", {"size": 16}, Sim) is not other and not other.closed
