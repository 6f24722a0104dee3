"""LeRobot's own ``LeRobotDataset`` loads a Meta-World dataset we recorded and exported.

The Meta-World step of the LeRobot interop checks (``scripts/lerobot_interop.py`` drives the others;
LeRobot runs in its own venv, ``scripts/setup_lerobot_venv.sh``)::

    python scripts/lerobot_interop_metaworld.py [--lerobot-python /work/venvs/lerobot/bin/python]
        [--tasks reach,drawer-close,push] [--episodes 2] [--size 64]

1. ``roboflamingo generate env=metaworld`` records the scripted experts (our layout, the Sawyer's
   ``robot.json``);
2. ``roboflamingo export-lerobot`` writes it with LeRobot's naming for Meta-World (as
   ``lerobot/metaworld_mt50``: ``observation.image``, ``observation.state``, ``action``, 80 fps,
   ``robot_type`` metaworld; the task string LeRobot's task description);
3. in the LeRobot venv, ``LeRobotDataset`` loads the export; every frame's task, episode index,
   frame index, state and action must equal our recorded frame's, each episode's length ours, the
   set of tasks the recorded tasks' descriptions, and its decoded images (first, middle and last
   frame of every episode) what our reader decodes from the same files (PSNR >= 45 dB) and our
   recorded images within the video codec's loss (>= 30 dB; the figure is printed).

It needs the data layer that reads and exports any robot's split (issue 26's data half); without it
it stops at step 2 saying so. The last line printed is JSON; exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_FEATURE = "observation.image"  # LeRobot's Meta-World naming (one camera)


# ---- run inside the LeRobot venv (imports only LeRobot's package and numpy) ------------------------
def lerobot_load(root: str) -> dict:
    import numpy as np
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/roboflamingo_metaworld", root=root)
    out = {"num_frames": ds.num_frames, "num_episodes": ds.num_episodes, "fps": ds.fps,
           "robot_type": ds.meta.robot_type, "camera_keys": ds.meta.camera_keys,
           "tasks": sorted(ds.meta.tasks.index), "frames": [], "images": {}}
    lengths: dict[int, int] = {}
    for i in range(ds.num_frames):
        item = ds[i]
        e = int(item["episode_index"])
        lengths[e] = lengths.get(e, 0) + 1
        out["frames"].append({"task": item["task"], "episode_index": e, "frame_index": int(item["frame_index"]),
                              "state": item["observation.state"].numpy().tolist(),
                              "action": item["action"].numpy().tolist()})
    starts = np.cumsum([0] + [lengths[e] for e in sorted(lengths)])
    for e in sorted(lengths):
        for i in {int(starts[e]), int(starts[e] + lengths[e] // 2), int(starts[e + 1] - 1)}:
            # LeRobot returns float images (C, H, W) in [0, 1].
            out["images"][str(i)] = (ds[i][IMAGE_FEATURE].numpy() * 255).round().astype(np.uint8).tolist()
    out["episode_lengths"] = [lengths[e] for e in sorted(lengths)]
    return out


# ---- run with our environment ----------------------------------------------------------------------
def _in_lerobot(python: str, root: Path) -> dict:
    proc = subprocess.run([python, __file__, "--run-load", str(root)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"LeRobot failed to load {root}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(args, tmp: Path) -> dict:
    import numpy as np

    from roboflamingo import cli
    from roboflamingo.data import layout
    from roboflamingo.metaworld.tasks import resolve_tasks, task_table
    from roboflamingo.robots import load_robot

    data, export = tmp / "data", tmp / "export"
    tasks = resolve_tasks(args.tasks.split(","))
    if cli.main(["generate", "env=metaworld", f"root={data}", f"tasks=[{','.join(tasks)}]",
                 f"episodes_per_task={args.episodes}", "val_episodes_per_task=0", "workers=1", "progress=false",
                 f"env.size={args.size}"]) != 0:
        raise SystemExit("generate env=metaworld failed")
    if not hasattr(layout, "frame_keys"):
        raise SystemExit("export-lerobot reads CALVIN's frame keys only here: this check needs the data layer "
                         "for any robot (issue 26's data half)")
    if cli.main(["export-lerobot", str(export), f"data.root={data}",
                 f"features.camera_features={{corner2: {IMAGE_FEATURE}}}", "robot_type=metaworld",
                 "progress=false"]) != 0:
        raise SystemExit("export-lerobot failed")
    theirs = _in_lerobot(args.lerobot_python, export)

    split = data / "training"
    index = layout.load_split_index(split)
    ours = []
    for (start, end), sentence in zip(index.segments.tolist(), index.instructions):
        for k, f in enumerate(range(start, end + 1)):
            with np.load(layout.frame_path(split, f)) as z:
                ours.append({"task": sentence, "frame_index": k, "state": z["state"], "action": z["action"],
                             "image": z["corner2"]})
    episode_of = np.repeat(np.arange(len(index.segments)), index.segments[:, 1] - index.segments[:, 0] + 1)
    rows = theirs["frames"]
    # Our reader on the export (the mapping back to our camera name as for LeRobot's own MT50 set).
    from roboflamingo.data.config import LeRobotConfig
    from roboflamingo.data.lerobot import LeRobotSplit

    read_back = LeRobotSplit(export, LeRobotConfig(camera_features={"corner2": IMAGE_FEATURE}, fps=80))
    decoded = list(read_back.frames(0, len(ours)))
    same_as_ours, codec = [], []
    for i, image in theirs["images"].items():
        a = np.asarray(image, dtype=np.float64).transpose(1, 2, 0)
        same_as_ours.append(psnr(a, decoded[int(i)]["corner2"]))
        codec.append(psnr(a, ours[int(i)]["image"]))
    table = task_table()
    checks = {
        "num_frames": theirs["num_frames"] == len(ours),
        "num_episodes": theirs["num_episodes"] == len(index.segments) == len(tasks) * args.episodes,
        "episode_lengths": theirs["episode_lengths"] == (index.segments[:, 1] - index.segments[:, 0] + 1).tolist(),
        "fps": theirs["fps"] == 80,
        "robot_type": theirs["robot_type"] == "metaworld",
        "camera_keys": theirs["camera_keys"] == [IMAGE_FEATURE],
        "tasks": theirs["tasks"] == sorted({table.train[t] for t in tasks}),
        "task_per_frame": all(r["task"] == o["task"] for r, o in zip(rows, ours)),
        "episode_index": all(r["episode_index"] == int(e) for r, e in zip(rows, episode_of)),
        "frame_index": all(r["frame_index"] == o["frame_index"] for r, o in zip(rows, ours)),
        "state": all(np.array_equal(np.float32(r["state"]), o["state"].astype(np.float32)) for r, o in zip(rows, ours)),
        "action": all(np.array_equal(np.float32(r["action"]), o["action"].astype(np.float32)) for r, o in zip(rows, ours)),
        "images_as_our_reader_decodes": bool(same_as_ours) and min(same_as_ours) >= 45,
        "images_near_recorded": bool(codec) and min(codec) >= 30,
        "robot_read_back": read_back.robot.shapes() == load_robot(data / "training" / "robot.json").shapes(),
    }
    return {"ok": all(checks.values()), "checks": checks, "tasks": tasks, "num_frames": theirs["num_frames"],
            "num_episodes": theirs["num_episodes"], "fps": theirs["fps"], "camera_keys": theirs["camera_keys"],
            "decode_psnr_vs_our_reader_db_min": _db(min(same_as_ours)),
            "codec_psnr_vs_recorded_db": {"min": _db(min(codec)), "mean": _db(float(np.mean(codec)))},
            "images_compared": len(codec)}


def psnr(a, b) -> float:
    import numpy as np

    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def _db(value: float) -> str | float:
    return "identical" if value == float("inf") else round(value, 2)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--run-load":
        print(json.dumps(lerobot_load(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lerobot-python", default="/work/venvs/lerobot/bin/python")
    parser.add_argument("--tasks", default="reach,drawer-close,push")
    parser.add_argument("--episodes", type=int, default=2, help="demonstrations per task")
    parser.add_argument("--size", type=int, default=64, help="the camera's size in pixels")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        result = {"lerobot_loads_our_metaworld_export": check(args, Path(tmp))}
    print(json.dumps(result))
    return 0 if result["lerobot_loads_our_metaworld_export"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
