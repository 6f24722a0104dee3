"""Reading speed of training windows: CALVIN's one-npz-per-frame layout vs packed shards.

Builds a CALVIN-layout training split (default 5,120 frames at CALVIN's 200x200 static / 84x84
gripper resolution, compressed like CALVIN) in a temporary directory, packs it, then reads the same
windows (same sampler, same seed, same count) through both paths in this process (num_workers=0,
so the figures are per core). Also reads every frame of the packed split once and reports how much
the resident set grew, to show memory stays flat. ``lerobot_pack_frames_per_s``: the split exported
as a LeRobotDataset v3 (H.264 videos), then packed from it: frames decoded and packed per second.
The last line is JSON.

    .venv/bin/python scripts/bench_data.py [--frames 5120] [--samples 150] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from roboflamingo.data.config import DataConfig, LeRobotConfig
from roboflamingo.data.dataset import CalvinDataset, WindowSampler
from roboflamingo.data.export_lerobot import Job, export_split
from roboflamingo.data.pack import pack_split
from roboflamingo.data.synthetic import TASKS, write_split


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) so a phase's own peak can be read."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_since_reset_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(split_dir: Path, frames: int, episode_len: int = 1024) -> None:
    episodes = [(s, min(s + episode_len, frames) - 1) for s in range(0, frames, episode_len)]
    # CALVIN-like annotations: 64-frame segments, overlapping, starting every 32 frames.
    annotations = []
    for s, e in episodes:
        for j, start in enumerate(range(s, e - 63 + 1, 32)):
            task = TASKS[j % len(TASKS)]
            annotations.append((start, start + 63, task, f"{task.replace('_', ' ')}"))
    write_split(split_dir, episodes, annotations, (200, 200), (84, 84), content="scene", threads=4)


def read_rate(ds: CalvinDataset, keys: list[tuple[int, int]]) -> float:
    """Frames per second: T observed frames per window."""
    ds[keys[0]]  # open files / maps outside the timed region
    t0 = time.perf_counter()
    for key in keys:
        ds[key]
    return len(keys) * ds.cfg.window / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5120)
    parser.add_argument("--samples", type=int, default=150, help="windows read through each path")
    parser.add_argument("--keep", type=str, default=None, help="build in this directory and keep it")
    args = parser.parse_args()
    if args.frames < 5000:
        parser.error("--frames must be at least 5000")

    imports_rss = rss_mb()  # torch alone maps several hundred MB; the figures below include it
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        t0 = time.perf_counter()
        if not (root / "training" / "ep_start_end_ids.npy").exists():
            build(root / "training", args.frames)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        manifest = pack_split(root / "training", root / "training" / "packed", shard_frames=1024, progress=False)
        pack_s = time.perf_counter() - t0

        # The same split as a LeRobot dataset (one episode per annotated segment), packed from there.
        export_split(Job(data=DataConfig(root=str(root)), out=str(root / "lerobot" / "training"), progress=False))
        t0 = time.perf_counter()
        lr_manifest = pack_split(root / "lerobot" / "training", root / "lerobot_packed" / "training",
                                 shard_frames=1024, progress=False, lerobot=LeRobotConfig())
        lerobot_pack_s = time.perf_counter() - t0

        build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reset_peak_rss()
        results = {}
        for augment in (False, True):
            cfg = DataConfig(root=str(root), window=12, act_steps=1, num_workers=0)
            npz = CalvinDataset(dataclasses.replace(cfg, use_packed="never"), augment=augment)
            packed = CalvinDataset(dataclasses.replace(cfg, use_packed="always"), augment=augment)
            keys = list(WindowSampler(len(npz), seed=0, shuffle=True))[: args.samples]
            tag = "aug_" if augment else ""
            results[f"{tag}npz_frames_per_s"] = read_rate(npz, keys)
            results[f"{tag}packed_frames_per_s"] = read_rate(packed, keys)

        # One pass over every packed frame (windows tiling the split): RSS must not grow with it.
        flat = CalvinDataset(DataConfig(root=str(root), window=12, use_packed="always", window_stride=12), augment=False)
        before = rss_mb()
        t0 = time.perf_counter()
        for i in range(len(flat)):
            flat[i]
        sweep_s = time.perf_counter() - t0
        growth = rss_mb() - before
        read_peak = peak_rss_since_reset_mb()

        figures = {
            "frames": int(manifest["num_frames"]),
            "samples": args.samples,
            "window": 12,
            "npz_frames_per_s": round(results["npz_frames_per_s"], 1),
            "packed_frames_per_s": round(results["packed_frames_per_s"], 1),
            "speedup": round(results["packed_frames_per_s"] / results["npz_frames_per_s"], 2),
            "aug_npz_frames_per_s": round(results["aug_npz_frames_per_s"], 1),
            "aug_packed_frames_per_s": round(results["aug_packed_frames_per_s"], 1),
            "aug_speedup": round(results["aug_packed_frames_per_s"] / results["aug_npz_frames_per_s"], 2),
            "full_sweep_frames": int(len(flat) * 12),
            "full_sweep_s": round(sweep_s, 2),
            "full_sweep_rss_growth_mb": round(growth, 1),
            "packed_gb": round(sum(p.stat().st_size for p in (root / "training" / "packed").rglob("*.npy")) / 1e9, 3),
            "npz_gb": round(sum(p.stat().st_size for p in (root / "training").glob("episode_*.npz")) / 1e9, 3),
            "build_s": round(build_s, 1),
            "pack_s": round(pack_s, 1),
            "pack_frames_per_s": round(manifest["num_frames"] / pack_s, 1),
            "lerobot_frames": int(lr_manifest["num_frames"]),
            "lerobot_pack_frames_per_s": round(lr_manifest["num_frames"] / lerobot_pack_s, 1),
            "rss_after_imports_mb": round(imports_rss, 1),
            "build_and_pack_peak_rss_mb": round(build_peak, 1),
            # Peak while reading (both paths, the full packed sweep): what a training worker holds.
            "peak_rss_mb": round(read_peak, 1),
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
