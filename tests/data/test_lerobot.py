"""LeRobotDataset v3 in and out: round trip, training windows via pack, bad input, atomic export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from roboflamingo.data.config import DataConfig, LeRobotConfig
from roboflamingo.data.dataset import CalvinDataset
from roboflamingo.data.export_lerobot import Job, export_split
from roboflamingo.data.layout import DatasetError, frame_path, load_split_index, read_frame
from roboflamingo.data.lerobot import INFO_PATH, LeRobotSplit
from roboflamingo.data.pack import pack_split
from roboflamingo.data.synthetic import write_split
from roboflamingo.eval.report import eval_info

# Two recordings; three annotated segments (the first recording holds two tasks back to back).
EPISODES = [(0, 47), (48, 83)]
ANNOTATIONS = [
    (0, 19, "open_drawer", "open the drawer"),
    (20, 47, "lift_red_block_table", "lift the red block"),
    (52, 83, "open_drawer", "pull the handle to open the drawer"),
]
STATIC, GRIPPER = (96, 96), (48, 48)
FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A rendered-like tabletop split (smooth scene images) and its LeRobot export."""
    root = tmp_path_factory.mktemp("lerobot")
    write_split(root / "src" / "training", EPISODES, ANNOTATIONS, STATIC, GRIPPER, content="scene")
    out = root / "out" / "training"
    export_split(Job(data=DataConfig(root=str(root / "src")), out=str(out), progress=False))
    return root / "src" / "training", out


def test_round_trip_is_exact_except_images(exported):
    src, out = exported
    index = load_split_index(src)
    ds = LeRobotSplit(out)
    info = json.loads((out / INFO_PATH).read_text())
    assert info["fps"] == 30 and info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == len(ANNOTATIONS)
    # Each annotated segment is one episode; the read-back segments are those episodes, in order.
    lengths = index.segments[:, 1] - index.segments[:, 0] + 1
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    assert ds.index.episodes.tolist() == np.stack([starts, starts + lengths - 1], 1).tolist()
    assert ds.index.segments.tolist() == ds.index.episodes.tolist()
    assert ds.index.instructions == index.instructions
    src_frames = [read_frame(frame_path(src, f)) for s, e in index.segments for f in range(s, e + 1)]
    got = list(ds.frames(0, len(src_frames)))
    for key in ("robot_obs", "rel_actions"):
        want = np.stack([f[key] for f in src_frames]).astype(np.float32)
        assert np.array_equal(np.stack([f[key] for f in got]), want)
    for cam in ("rgb_static", "rgb_gripper"):
        value = psnr(np.stack([f[cam] for f in src_frames]), np.stack([f[cam] for f in got]))
        print(f"{cam}: PSNR {value:.2f} dB")
        assert value >= 40.0, f"{cam}: PSNR {value:.2f} dB below 40 dB at the default quality"
    # Reading from the middle of an episode (what a pack shard boundary does) gives the same frames.
    mid = list(ds.frames(25, 10))
    assert all(np.array_equal(a["rgb_static"], b["rgb_static"]) for a, b in zip(mid, got[25:35]))


@pytest.mark.slow
def test_many_small_files_read_back_the_same(exported, tmp_path):
    """Past LeRobot's size caps episodes go to new data/video files; reading must not care."""
    src, out = exported
    small = tmp_path / "small"
    export_split(Job(data=DataConfig(root=str(src.parent)), out=str(small), data_file_mb=0.001,
                     video_file_mb=0.01, progress=False))
    videos = sorted((small / "videos" / "observation.images.rgb_static").rglob("*.mp4"))
    assert len(sorted((small / "data").rglob("*.parquet"))) == len(ANNOTATIONS) and len(videos) > 1
    a, b = LeRobotSplit(out), LeRobotSplit(small)
    assert np.array_equal(a.robot_obs, b.robot_obs) and np.array_equal(a.rel_actions, b.rel_actions)
    assert a.index.segments.tolist() == b.index.segments.tolist()
    # A new file restarts the encoder, so pixels differ slightly; frame order and count may not.
    pairs = list(zip(a.frames(0, len(a.robot_obs)), b.frames(0, len(b.robot_obs)), strict=True))
    for cam in ("rgb_static", "rgb_gripper"):
        assert psnr(np.stack([x[cam] for x, _ in pairs]), np.stack([y[cam] for _, y in pairs])) >= 40.0


def test_stats_and_tasks_as_lerobot_expects(exported):
    _, out = exported
    stats = json.loads((out / "meta" / "stats.json").read_text())
    state = stats["observation.state"]
    assert len(state["mean"]) == 15 and {"min", "max", "std", "count", "q01", "q99"} <= set(state)
    assert np.asarray(stats["observation.images.rgb_static"]["mean"]).shape == (3, 1, 1)
    import pyarrow.parquet as pq

    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.column("task").to_pylist() == [a[3] for a in ANNOTATIONS]


@pytest.mark.slow
def test_packed_lerobot_split_gives_the_npz_windows(exported, tmp_path):
    """Same windows, act_steps targets and instructions as reading the original npz split."""
    src, out = exported
    pack_split(out, tmp_path / "packed" / "training", shard_frames=32, progress=False, lerobot=LeRobotConfig())
    common = dict(window=6, act_steps=3, num_workers=0, batch_size=2)
    npz = CalvinDataset(DataConfig(root=str(src.parent), **common), augment=False)
    lr = CalvinDataset(DataConfig(root=str(out.parent), format="lerobot", packed_root=str(tmp_path / "packed"),
                                  **common), augment=False)
    assert lr.use_packed and len(lr) == len(npz)
    for i in range(len(npz)):
        a, b = npz[i], lr[i]
        assert a["instruction"] == b["instruction"]
        for key in ("robot_obs", "actions", "action_mask"):
            assert np.array_equal(a[key].numpy(), b[key].numpy()), key
        assert psnr(a["rgb_static"].numpy(), b["rgb_static"].numpy()) >= 40.0


def test_repack_reuses_shards_and_a_changed_dataset_is_refused(exported, tmp_path):
    _, out = exported
    ds_dir = _copy_with_info(out, tmp_path / "lr" / "training", lambda i: None)
    packed = tmp_path / "packed" / "training"
    first = pack_split(ds_dir, packed, shard_frames=32, progress=False, lerobot=LeRobotConfig())
    again = pack_split(ds_dir, packed, shard_frames=32, progress=False, lerobot=LeRobotConfig())
    assert first["reused_frames"] == 0 and again["reused_frames"] == again["num_frames"] == first["num_frames"]
    cfg = DataConfig(root=str(ds_dir.parent), format="lerobot", packed_root=str(packed.parent), window=6, num_workers=0)
    assert len(CalvinDataset(cfg)) > 0
    info = json.loads((ds_dir / INFO_PATH).read_text())
    (ds_dir / INFO_PATH).write_text(json.dumps({**info, "robot_type": "another"}))
    with pytest.raises(DatasetError, match="changed after packing"):
        CalvinDataset(cfg)


def test_lerobot_split_must_be_packed_first(exported):
    _, out = exported
    with pytest.raises(DatasetError, match="roboflamingo pack"):
        CalvinDataset(DataConfig(root=str(out.parent), format="lerobot", num_workers=0))


def _copy_with_info(out: Path, dst: Path, edit) -> Path:
    shutil.copytree(out, dst)
    info = json.loads((dst / INFO_PATH).read_text())
    edit(info)
    (dst / INFO_PATH).write_text(json.dumps(info))
    return dst


@pytest.mark.parametrize(
    ("edit", "mapping", "match"),
    [
        (lambda i: i.update(fps=10), {}, r"'fps' is 10 but data.lerobot.fps is 30"),
        (lambda i: i["features"]["observation.state"].update(shape=[8]), {}, r"'observation.state' has shape \[8\], expected \[15\]"),
        (lambda i: i["features"]["action"].update(shape=[6]), {}, r"'action' has shape \[6\], expected \[7\] \(action dimension\)"),
        (lambda i: i["features"].pop("observation.images.rgb_gripper"), {}, r"'observation.images.rgb_gripper' \(data.lerobot.rgb_gripper\) is missing"),
        (lambda i: i["features"]["observation.images.rgb_static"].update(shape=[96, 96, 1]), {}, r"'observation.images.rgb_static' must have 3 channels"),
        (lambda i: i.update(codebase_version="v2.1"), {}, r"codebase_version' must be v3.x"),
        (lambda i: None, {"rel_actions": "action.absolute"}, r"'action.absolute' \(data.lerobot.rel_actions\) is missing"),
    ],
)
def test_bad_input_refused_on_open_with_the_feature_named(exported, tmp_path, edit, mapping, match):
    _, out = exported
    bad = _copy_with_info(out, tmp_path / "bad", edit)
    with pytest.raises(DatasetError, match=match):
        LeRobotSplit(bad, LeRobotConfig(**mapping))


def test_video_shorter_than_its_episodes_is_refused_when_decoded(exported, tmp_path):
    _, out = exported
    bad = _copy_with_info(out, tmp_path / "bad", lambda i: None)
    # Replace one camera's video with the first 10 frames only.
    import av

    video = next((bad / "videos" / "observation.images.rgb_gripper").rglob("*.mp4"))
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(10), c.decode(video=0))]
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv444p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    ds = LeRobotSplit(bad)
    with pytest.raises(DatasetError, match="rgb_gripper' ends before episode 0's frame 10"):
        list(ds.frames(0, 20))


def test_failed_export_leaves_nothing(tmp_path):
    src = write_split(tmp_path / "src" / "training", EPISODES, ANNOTATIONS, STATIC, GRIPPER, content="scene")
    frame_path(src, 60).write_bytes(b"not an npz file")  # found on open, unreadable mid-export
    out = tmp_path / "out" / "training"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("an earlier export")
    with pytest.raises(DatasetError, match="episode_0000060.npz: unreadable"):
        export_split(Job(data=DataConfig(root=str(tmp_path / "src")), out=str(out), progress=False))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["training"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_reads_the_dataset_written_by_lerobot():
    """``scripts/lerobot_interop.py`` wrote this with LeRobot's own ``LeRobotDataset`` writer."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    mapping = LeRobotConfig(**expected["mapping"])
    ds = LeRobotSplit(FIXTURE, mapping)
    assert ds.index.episodes.tolist() == expected["episodes"]
    # The episode recorded with two tasks is two segments.
    assert ds.index.segments.tolist() == expected["segments"] and len(expected["segments"]) == 4
    assert ds.index.instructions == expected["instructions"]
    n = expected["total_frames"]
    ep = np.repeat(np.arange(len(expected["episodes"])), [e - s + 1 for s, e in expected["episodes"]])
    k = np.concatenate([np.arange(e - s + 1) for s, e in expected["episodes"]])
    # The values the script recorded: a closed form of (episode, frame, dimension).
    state = ep[:, None] * 10.0 + k[:, None] * 0.1 + np.arange(15)[None, :] * 0.001
    action = np.tanh(ep[:, None] + k[:, None] * 0.05 + np.arange(7)[None, :] * 0.3)
    assert np.allclose(ds.robot_obs, state.astype(np.float32)) and np.allclose(ds.rel_actions, action.astype(np.float32))
    frames = list(ds.frames(0, n))
    for cam, size in (("rgb_static", expected["static_size"]), ("rgb_gripper", expected["gripper_size"])):
        h, w = size
        got = np.stack([f[cam] for f in frames])
        assert got.shape == (n, h, w, 3)
        # The script drew a horizontal ramp whose brightness follows the frame number.
        ramp = (np.arange(w)[None, :] * 255 // max(w - 1, 1))
        want = np.broadcast_to(((ramp[None, :, :, None] + k[:, None, None, None] * 8) % 256), (n, h, w, 3))
        assert psnr(want.astype(np.uint8), got) >= 30.0


def test_cli_export_lerobot(tmp_path, capsys):
    from roboflamingo import cli

    write_split(tmp_path / "src" / "training", EPISODES[:1], ANNOTATIONS[:2], (32, 32), (16, 16), content="scene")
    out = tmp_path / "exp"
    assert cli.main(["export-lerobot", str(out), f"data.root={tmp_path / 'src'}", "progress=false"]) == 0
    assert "exported training: 2 episodes, 48 frames" in capsys.readouterr().out
    assert LeRobotSplit(out).index.instructions == [a[3] for a in ANNOTATIONS[:2]]
    assert cli.main(["export-lerobot", f"data.root={tmp_path / 'src'}"]) == 2


def test_eval_info_has_lerobots_shape():
    summary = {"mode": "chains", "avg_len": 1.5, "num_chains": 4, "success_rates": [0.75, 0.5],
               "per_task": {"open_drawer": {"success": 3, "total": 4, "rate": 0.75},
                            "lift": {"success": 1, "total": 2, "rate": 0.5}},
               "speed": {"wall_s": 12.0}}
    info = eval_info(summary)
    assert info["overall"] == {"pc_success": pytest.approx(100 * 4 / 6), "n_episodes": 6, "avg_len": 1.5, "eval_s": 12.0}
    assert info["per_task"][0] == {"task_group": "calvin", "task_id": "open_drawer",
                                   "metrics": {"pc_success": 75.0, "n_episodes": 4}}
    assert info["per_group"]["calvin"]["pc_success"] == pytest.approx(100 * 4 / 6)
