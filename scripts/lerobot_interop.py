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
4. our reader loads that dataset and checks it against ``expected.json``.

It ends with one JSON line. ``tests/data/test_lerobot.py`` re-reads the committed fixture.
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
# The fixture: 3 episodes, the middle one with two tasks (ours splits it into two segments).
FIXTURE_EPISODES = [("push the button", 12), ("open the drawer|close the drawer", 16), ("push the button", 10)]
STATIC_SIZE, GRIPPER_SIZE = (48, 64), (32, 32)
MAPPING = {"rgb_static": "observation.images.top", "rgb_gripper": "observation.images.wrist",
           "robot_obs": "observation.state", "rel_actions": "action", "fps": 30}


# ---- run inside the LeRobot venv (imports only LeRobot's package and numpy) ------------------------
def lerobot_load(root: str) -> dict:
    import numpy as np
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/roboflamingo_export", root=root)
    out = {"num_frames": ds.num_frames, "num_episodes": ds.num_episodes, "fps": ds.fps,
           "features": sorted(ds.features), "camera_keys": ds.meta.camera_keys, "frames": []}
    for i in range(ds.num_frames):
        item = ds[i]
        row = {"task": item["task"], "episode_index": int(item["episode_index"]),
               "state": item["observation.state"].numpy().tolist(), "action": item["action"].numpy().tolist()}
        if i in (0, ds.num_frames // 2, ds.num_frames - 1):
            # LeRobot returns float images (C, H, W) in [0, 1].
            row["rgb_static"] = (item["observation.images.rgb_static"].numpy() * 255).round().astype(np.uint8).tolist()
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
        fn = {"--run-load": lerobot_load, "--run-write": lerobot_write}[sys.argv[1]]
        print(json.dumps(fn(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lerobot-python", default="/work/venvs/lerobot/bin/python")
    parser.add_argument("--fixture", default=str(DEFAULT_FIXTURE))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import numpy as np

    from roboflamingo.data.config import DataConfig, LeRobotConfig
    from roboflamingo.data.export_lerobot import Job, export_split
    from roboflamingo.data.lerobot import LeRobotSplit
    from roboflamingo.data.synthetic import write_split

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_split(tmp / "src" / "training", [(0, 39), (40, 69)],
                    [(0, 19, "open_drawer", "open the drawer"), (20, 39, "lift", "lift the red block"),
                     (45, 69, "open_drawer", "pull the handle")], (96, 96), (48, 48), content="scene")
        out = tmp / "export"
        # Tiny size caps, so the export spans several data and video files as a large one would.
        export_split(Job(data=DataConfig(root=str(tmp / "src")), out=str(out), data_file_mb=0.001,
                         video_file_mb=0.01, progress=False))
        ours = LeRobotSplit(out)
        theirs = _in_lerobot(args.lerobot_python, "load", out)
        ours_frames = list(ours.frames(0, len(ours.robot_obs)))
        checks = {
            "num_frames": theirs["num_frames"] == len(ours.robot_obs),
            "num_episodes": theirs["num_episodes"] == len(ours.index.episodes),
            "fps": theirs["fps"] == 30,
            "state": all(np.allclose(r["state"], ours.robot_obs[i]) for i, r in enumerate(theirs["frames"])),
            "action": all(np.allclose(r["action"], ours.rel_actions[i]) for i, r in enumerate(theirs["frames"])),
            "task": all(r["task"] == ours.tasks[ours.task_index[i]] for i, r in enumerate(theirs["frames"])),
            "episode_index": all(r["episode_index"] == ours.episode_index[i] for i, r in enumerate(theirs["frames"])),
        }
        psnrs = []
        for i, r in enumerate(theirs["frames"]):
            if "rgb_static" in r:
                a = np.asarray(r["rgb_static"], dtype=np.float64).transpose(1, 2, 0)
                mse = np.mean((a - ours_frames[i]["rgb_static"].astype(np.float64)) ** 2)
                psnrs.append(float("inf") if mse == 0 else round(float(10 * np.log10(255**2 / mse)), 2))
        checks["video_same_as_ours"] = all(p >= 45 for p in psnrs)
        psnrs = ["identical" if p == float("inf") else p for p in psnrs]
        files = {d: len(list((out / d).rglob("file-*.*"))) for d in ("data", "videos")}
        result["lerobot_loads_our_export"] = {"ok": all(checks.values()), "checks": checks, "files": files,
                                              "num_frames": theirs["num_frames"], "num_episodes": theirs["num_episodes"],
                                              "features": theirs["features"], "decode_psnr_vs_ours_db": psnrs}

        written = tmp / "fixture"
        _in_lerobot(args.lerobot_python, "write", written)
        expected = _expected()
        (written / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        ds = LeRobotSplit(written, LeRobotConfig(**MAPPING))
        got = {"episodes": ds.index.episodes.tolist(), "segments": ds.index.segments.tolist(),
               "instructions": ds.index.instructions,
               "frames_decoded": sum(1 for _ in ds.frames(0, len(ds.robot_obs)))}
        ok = all(got[k] == expected[k] for k in ("episodes", "segments", "instructions"))
        result["we_load_lerobots_dataset"] = {"ok": ok and got["frames_decoded"] == expected["total_frames"], **got}
        fixture = Path(args.fixture)
        shutil.rmtree(fixture, ignore_errors=True)
        # LeRobot leaves its temporary frame images under images/ only while recording.
        shutil.copytree(written, fixture, ignore=shutil.ignore_patterns("images"))
        result["fixture"] = str(fixture.relative_to(REPO)) if fixture.is_relative_to(REPO) else str(fixture)
        result["fixture_bytes"] = sum(p.stat().st_size for p in fixture.rglob("*") if p.is_file())
    print(json.dumps(result))
    return 0 if result["lerobot_loads_our_export"]["ok"] and result["we_load_lerobots_dataset"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
