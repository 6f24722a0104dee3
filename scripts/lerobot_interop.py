"""Interop with LeRobot's reference implementation of LeRobotDataset v3, run outside our package.

LeRobot's packages pin ``huggingface-hub<0.36`` (and ``av<16``), which our environment (transformers
5) cannot take, so LeRobot runs in its own venv and this script drives it in a subprocess::

    bash scripts/setup_lerobot_venv.sh /work/venvs/lerobot   # lerobot-dataset 0.4.4 + torchcodec

    python scripts/lerobot_interop.py [--lerobot-python /work/venvs/lerobot/bin/python] [--fixture DIR]

1. exports a small generated tabletop-like split with ``roboflamingo export-lerobot``;
2. LeRobot's ``LeRobotDataset`` loads that export (in the LeRobot venv): frame count, episodes, fps,
   features, the task string and state/action of every frame against our parquet values, and a
   decoded video frame against our reader's (PSNR);
3. LeRobot's own writer (``LeRobotDataset.create`` / ``add_frame`` / ``save_episode``, its default AV1
   codec) records a small dataset into ``--fixture`` (default ``tests/data/fixtures/lerobot_v3_tiny``)
   with ``expected.json`` describing what it recorded;
4. our reader loads that dataset and checks it against ``expected.json``;
5. LeRobot's writer records an SO-101-like dataset (``so101_follower``'s features: 6 absolute joint
   positions ``<motor>.pos`` as state and action, gripper a position, cameras ``front`` and ``wrist``
   at 480x640, 30 fps) into ``--so101-fixture`` (default ``tests/data/fixtures/lerobot_v3_so101``),
   and our reader derives its robot description, which must have the shapes of ``so101``.

``--steps`` picks some of export (1-2), tiny (3-4), so101 (5); default all. It ends with one JSON
line. ``tests/data/test_lerobot.py`` and ``tests/data/test_robots.py`` re-read the committed fixtures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURE = REPO / "tests" / "data" / "fixtures" / "lerobot_v3_tiny"
SO101_FIXTURE = REPO / "tests" / "data" / "fixtures" / "lerobot_v3_so101"
# The fixture: 3 episodes, the middle one with two tasks (ours splits it into two segments).
FIXTURE_EPISODES = [("push the button", 12), ("open the drawer|close the drawer", 16), ("push the button", 10)]
STATIC_SIZE, GRIPPER_SIZE = (48, 64), (32, 32)
MAPPING = {"rgb_static": "observation.images.top", "rgb_gripper": "observation.images.wrist",
           "robot_obs": "observation.state", "rel_actions": "action", "fps": 30}


# The SO-101 fixture: episodes (task, length); LeRobot's so101_follower motor names (``<motor>.pos``).
SO101_EPISODES = [("pick up the cube", 14), ("put the cube in the bowl", 12), ("pick up the cube", 10)]
SO101_SIZE = (480, 640)
SO101_NAMES = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos",
               "gripper.pos"]


def so101_joints(e, k):
    """Joint positions of episode ``e`` at frame(s) ``k``: arm joints in [-100, 100], gripper in [0, 100]
    (LeRobot's normalised motor units). The action at frame k is the position at frame k + 1."""
    import numpy as np

    k = np.asarray(k, dtype=np.float64)[..., None]
    e = np.asarray(e, dtype=np.float64)[..., None]
    j = np.arange(6)
    arm = 60.0 * np.sin(0.2 * k + 0.7 * j + 1.3 * e)
    grip = 50.0 + 40.0 * np.sin(0.25 * k + e)
    return np.where(j == 5, grip, arm)


def so101_image(camera, joints):
    """A 480x640 frame whose content follows the joints: a bright box moving with shoulder_pan (front)
    or wrist_flex (wrist) over a fixed gradient, its width following the gripper opening."""
    import numpy as np

    h, w = SO101_SIZE
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (x * 200 // w).astype(np.uint8)
    img[..., 1] = (y * 200 // h).astype(np.uint8)
    img[..., 2] = 60 if camera == "front" else 140
    cx = int(w / 2 + (joints[0] if camera == "front" else joints[3]) * 2.5)
    cy = int(h / 2 + joints[1] * 1.5)
    half = 20 + int(joints[5] * 0.6)
    img[max(cy - 40, 0):cy + 40, max(cx - half, 0):cx + half] = (250, 230, 40)
    return img


# ---- run inside the LeRobot venv (imports only LeRobot's package and numpy) ------------------------
def lerobot_load(root: str) -> dict:
    import numpy as np
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/roboflamingo_export", root=root)
    out = {"num_frames": ds.num_frames, "num_episodes": ds.num_episodes, "fps": ds.fps,
           "features": sorted(ds.features), "camera_keys": ds.meta.camera_keys, "frames": []}
    first_camera = ds.meta.camera_keys[0]
    for i in range(ds.num_frames):
        item = ds[i]
        row = {"task": item["task"], "episode_index": int(item["episode_index"]),
               "state": item["observation.state"].numpy().tolist(), "action": item["action"].numpy().tolist()}
        if i in (0, ds.num_frames // 2, ds.num_frames - 1):
            # LeRobot returns float images (C, H, W) in [0, 1].
            row["image"] = (item[first_camera].numpy() * 255).round().astype(np.uint8).tolist()
        out["frames"].append(row)
    return out


def lerobot_write(root: str) -> dict:
    import numpy as np
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    features = {
        MAPPING["rgb_static"]: {"dtype": "video", "shape": (*STATIC_SIZE, 3), "names": ["height", "width", "channels"]},
        MAPPING["rgb_gripper"]: {"dtype": "video", "shape": (*GRIPPER_SIZE, 3), "names": ["height", "width", "channels"]},
        MAPPING["robot_obs"]: {"dtype": "float32", "shape": (15,), "names": None},
        MAPPING["rel_actions"]: {"dtype": "float32", "shape": (7,), "names": None},
    }
    ds = LeRobotDataset.create("local/roboflamingo_fixture", fps=30, features=features, root=root,
                               robot_type="franka", use_videos=True)

    def image(size, k):
        h, w = size
        ramp = (np.arange(w)[None, :] * 255 // max(w - 1, 1))
        return np.broadcast_to(((ramp + k * 8) % 256)[:, :, None], (h, w, 3)).astype(np.uint8).copy()

    for e, (tasks, length) in enumerate(FIXTURE_EPISODES):
        names = tasks.split("|")
        for k in range(length):
            ds.add_frame({
                MAPPING["rgb_static"]: image(STATIC_SIZE, k),
                MAPPING["rgb_gripper"]: image(GRIPPER_SIZE, k),
                MAPPING["robot_obs"]: (e * 10.0 + k * 0.1 + np.arange(15) * 0.001).astype(np.float32),
                MAPPING["rel_actions"]: np.tanh(e + k * 0.05 + np.arange(7) * 0.3).astype(np.float32),
                "task": names[min(k * len(names) // length, len(names) - 1)],
            })
        ds.save_episode()
    ds.finalize()
    return {"episodes": len(FIXTURE_EPISODES)}


def lerobot_write_so101(root: str) -> dict:
    import numpy as np
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    video = {"dtype": "video", "shape": (*SO101_SIZE, 3), "names": ["height", "width", "channels"]}
    features = {
        "observation.images.front": video, "observation.images.wrist": dict(video),
        "observation.state": {"dtype": "float32", "shape": (6,), "names": SO101_NAMES},
        "action": {"dtype": "float32", "shape": (6,), "names": SO101_NAMES},
    }
    ds = LeRobotDataset.create("local/so101_fixture", fps=30, features=features, root=root,
                               robot_type="so101_follower", use_videos=True)
    for e, (task, length) in enumerate(SO101_EPISODES):
        for k in range(length):
            joints = so101_joints(e, k)
            ds.add_frame({
                "observation.images.front": so101_image("front", joints),
                "observation.images.wrist": so101_image("wrist", joints),
                "observation.state": joints.astype(np.float32),
                "action": so101_joints(e, k + 1).astype(np.float32),
                "task": task,
            })
        ds.save_episode()
    ds.finalize()
    return {"episodes": len(SO101_EPISODES)}


# ---- run with our environment ----------------------------------------------------------------------
def _in_lerobot(python: str, fn: str, root: Path) -> dict:
    proc = subprocess.run([python, __file__, f"--run-{fn}", str(root)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"LeRobot ({fn}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _expected() -> dict:
    episodes, segments, instructions, start = [], [], [], 0
    for tasks, length in FIXTURE_EPISODES:
        names = tasks.split("|")
        bounds = [min(k * len(names) // length, len(names) - 1) for k in range(length)]
        for j, name in enumerate(names):
            ks = [k for k in range(length) if bounds[k] == j]
            instructions.append(name)
            segments.append([start + ks[0], start + ks[-1]])
        episodes.append([start, start + length - 1])
        start += length
    return {"mapping": MAPPING, "total_frames": start, "static_size": list(STATIC_SIZE),
            "gripper_size": list(GRIPPER_SIZE), "episodes": episodes, "segments": segments,
            "instructions": instructions,
            "written_by": "LeRobot lerobot-dataset 0.4.4 LeRobotDataset.create/add_frame/save_episode "
                          "(scripts/lerobot_interop.py)"}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1].startswith("--run-"):
        fn = {"--run-load": lerobot_load, "--run-write": lerobot_write, "--run-write-so101": lerobot_write_so101}[sys.argv[1]]
        print(json.dumps(fn(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lerobot-python", default="/work/venvs/lerobot/bin/python")
    parser.add_argument("--fixture", default=str(DEFAULT_FIXTURE))
    parser.add_argument("--so101-fixture", default=str(SO101_FIXTURE))
    parser.add_argument("--steps", default="export,tiny,so101", help="comma-separated: export, tiny, so101")
    args = parser.parse_args()
    steps = set(args.steps.split(","))
    if steps - {"export", "tiny", "so101"}:
        parser.error(f"--steps: unknown {sorted(steps - {'export', 'tiny', 'so101'})}")
    sys.path.insert(0, str(REPO))
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "export" in steps:
            result["lerobot_loads_our_export"] = check_export(args, tmp / "calvin", None)
            result["lerobot_loads_our_3_camera_export"] = check_export(args, tmp / "three", THREE_CAMERA_ROBOT)
        if "tiny" in steps:
            result["we_load_lerobots_dataset"] = write_tiny(args, tmp)
        if "so101" in steps:
            result["we_load_lerobots_so101_dataset"] = write_so101(args, tmp)
    print(json.dumps(result))
    return 0 if all(v["ok"] for v in result.values()) else 1


# A robot of our own with three cameras (one not square), for the export check.
THREE_CAMERA_ROBOT = {
    "name": "three_cam", "cameras": [{"name": "left", "height": 40, "width": 56}, {"name": "right", "height": 40, "width": 56},
                                     {"name": "wrist", "height": 32, "width": 32}],
    "state": {"key": "state", "names": ["j0", "j1", "j2", "gripper"]},
    "action": {"key": "action", "names": ["d0", "d1", "d2", "gripper"], "grippers": [3], "mode": "relative",
               "space": "joint", "rate_hz": 30},
}


def check_export(args, tmp: Path, robot_spec: dict | None) -> dict:
    """Export a generated split (CALVIN's, or another robot's) and have LeRobot load it."""
    import numpy as np

    from roboflamingo.data.config import DataConfig
    from roboflamingo.data.export_lerobot import Job, export_split
    from roboflamingo.data.lerobot import LeRobotSplit
    from roboflamingo.data.synthetic import write_split
    from roboflamingo.robots import load_robot

    robot = load_robot(robot_spec) if robot_spec else None
    write_split(tmp / "src" / "training", [(0, 39), (40, 69)],
                [(0, 19, "open_drawer", "open the drawer"), (20, 39, "lift", "lift the red block"),
                 (45, 69, "open_drawer", "pull the handle")], (96, 96), (48, 48), content="scene", robot=robot)
    out = tmp / "export"
    # Tiny size caps, so the export spans several data and video files as a large one would.
    export_split(Job(data=DataConfig(root=str(tmp / "src")), out=str(out), data_file_mb=0.001,
                     video_file_mb=0.01, progress=False))
    ours = LeRobotSplit(out)
    first_camera = ours.robot.camera_names[0]
    theirs = _in_lerobot(args.lerobot_python, "load", out)
    ours_frames = list(ours.frames(0, len(ours.state)))
    checks = {
        "num_frames": theirs["num_frames"] == len(ours.state),
        "num_episodes": theirs["num_episodes"] == len(ours.index.episodes),
        "fps": theirs["fps"] == 30,
        "camera_keys": theirs["camera_keys"] == [f"observation.images.{c}" for c in ours.robot.camera_names],
        "state": all(np.allclose(r["state"], ours.state[i]) for i, r in enumerate(theirs["frames"])),
        "action": all(np.allclose(r["action"], ours.actions[i]) for i, r in enumerate(theirs["frames"])),
        "task": all(r["task"] == ours.tasks[ours.task_index[i]] for i, r in enumerate(theirs["frames"])),
        "episode_index": all(r["episode_index"] == ours.episode_index[i] for i, r in enumerate(theirs["frames"])),
        "description_round_trip": ours.robot == (robot or load_robot("calvin")),
    }
    psnrs = []
    for i, r in enumerate(theirs["frames"]):
        if "image" in r:
            a = np.asarray(r["image"], dtype=np.float64).transpose(1, 2, 0)
            mse = np.mean((a - ours_frames[i][first_camera].astype(np.float64)) ** 2)
            psnrs.append(float("inf") if mse == 0 else round(float(10 * np.log10(255**2 / mse)), 2))
    checks["video_same_as_ours"] = bool(psnrs) and all(p >= 45 for p in psnrs)
    psnrs = ["identical" if p == float("inf") else p for p in psnrs]
    files = {d: len(list((out / d).rglob("file-*.*"))) for d in ("data", "videos")}
    return {"ok": all(checks.values()), "checks": checks, "files": files, "robot": ours.robot.summary(),
            "num_frames": theirs["num_frames"], "num_episodes": theirs["num_episodes"],
            "features": theirs["features"], "decode_psnr_vs_ours_db": psnrs}


def _copy_fixture(written: Path, fixture: Path) -> dict:
    shutil.rmtree(fixture, ignore_errors=True)
    # LeRobot leaves its temporary frame images under images/ only while recording.
    shutil.copytree(written, fixture, ignore=shutil.ignore_patterns("images"))
    return {"fixture": str(fixture.relative_to(REPO)) if fixture.is_relative_to(REPO) else str(fixture),
            "fixture_bytes": sum(p.stat().st_size for p in fixture.rglob("*") if p.is_file())}


def write_tiny(args, tmp: Path) -> dict:
    from roboflamingo.data.config import LeRobotConfig
    from roboflamingo.data.lerobot import LeRobotSplit

    written = tmp / "fixture"
    _in_lerobot(args.lerobot_python, "write", written)
    expected = _expected()
    (written / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    ds = LeRobotSplit(written, LeRobotConfig(**MAPPING))
    got = {"episodes": ds.index.episodes.tolist(), "segments": ds.index.segments.tolist(),
           "instructions": ds.index.instructions,
           "frames_decoded": sum(1 for _ in ds.frames(0, len(ds.state)))}
    ok = all(got[k] == expected[k] for k in ("episodes", "segments", "instructions"))
    return {"ok": ok and got["frames_decoded"] == expected["total_frames"], **got,
            **_copy_fixture(written, Path(args.fixture))}


def write_so101(args, tmp: Path) -> dict:
    """LeRobot records the SO-101-like dataset; we derive its description and read every frame."""
    import numpy as np

    from roboflamingo.data.lerobot import LeRobotSplit
    from roboflamingo.robots import load_robot

    written = tmp / "so101"
    _in_lerobot(args.lerobot_python, "write-so101", written)
    episodes, start = [], 0
    for _, length in SO101_EPISODES:
        episodes.append([start, start + length - 1])
        start += length
    expected = {"total_frames": start, "fps": 30, "image_size": list(SO101_SIZE), "episodes": episodes,
                "segments": episodes, "instructions": [t for t, _ in SO101_EPISODES], "names": SO101_NAMES,
                "robot_shapes_of": "so101",
                "values": "state = so101_joints(e, k), action = so101_joints(e, k + 1), images so101_image "
                          "(scripts/lerobot_interop.py)",
                "written_by": "LeRobot lerobot-dataset 0.4.4 LeRobotDataset.create/add_frame/save_episode, "
                              "robot_type so101_follower, default codec (scripts/lerobot_interop.py --steps so101)"}
    (written / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    ds = LeRobotSplit(written)
    frames = list(ds.frames(0, len(ds.state)))
    ep = np.repeat(np.arange(len(episodes)), [e - s + 1 for s, e in episodes])
    k = np.concatenate([np.arange(e - s + 1) for s, e in episodes])
    psnr = []
    for i in (0, len(frames) // 2, len(frames) - 1):
        want = so101_image("front", so101_joints(ep[i], k[i])).astype(np.float64)
        mse = np.mean((want - frames[i]["front"]) ** 2)
        psnr.append(round(float(10 * np.log10(255**2 / max(mse, 1e-12))), 2))
    checks = {
        "index": ds.index.episodes.tolist() == episodes and ds.index.instructions == expected["instructions"],
        "state": bool(np.allclose(ds.state, so101_joints(ep, k), atol=1e-4)),
        "action": bool(np.allclose(ds.actions, so101_joints(ep, k + 1), atol=1e-4)),
        "so101_shapes": ds.robot.shapes() == load_robot("so101").shapes(),
        "images": all(f["front"].shape == (*SO101_SIZE, 3) and f["wrist"].shape == (*SO101_SIZE, 3) for f in frames),
        "decoded_psnr_vs_drawn_db_at_least_30": all(p >= 30 for p in psnr),
    }
    return {"ok": all(checks.values()), "checks": checks, "robot": ds.robot.summary(), "decoded_psnr_db": psnr,
            **_copy_fixture(written, Path(args.so101_fixture))}

if __name__ == "__main__":
    sys.exit(main())
