"""Training throughput of the tiny config, and how long each step waits on data.

    python scripts/bench_train.py [--steps 12] [--batch-size 8] [--workers 2] [--root DIR] [--keep]

Data: ``--root`` names an existing CALVIN-layout dataset (``roboflamingo generate`` output); without
it a synthetic one is written at CALVIN's image sizes (200x200 static, 84x84 gripper, rendered-like
content that compresses like real frames). The training split is packed with the data pipeline's
packer, then the same run is timed on the packed shards and on the npz files.

``data_wait_fraction`` = time the loop spends in ``next(batches)`` / step time, measured by the loop
itself (``metrics.jsonl``), over the steps after the first log window (start-up excluded).
``--lerobot`` also exports the training split as a LeRobotDataset v3, packs that (video decoded
once) and times a third run on it (``lerobot_*`` fields): training from LeRobot data must wait on
data no more than training from npz does.

``contended_slowdown`` = step time of the same packed run while one competing busy process (a
Python spin loop, started before the run) shares the machine / the uncontended step time, both
measured here with the thread count the loop chooses itself (``train.threads=0``). Target <= 2.5 on 2
cores: with one of two cores taken, ~2x is the floor, and the 20-30x collapse of spinning OpenMP
threads is what it guards against. On a machine other jobs already load, both runs see that load too.

The last line printed is one JSON object; the targets are ``data_wait_fraction <= 0.05`` when packed
and ``contended_slowdown <= 2.5``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.05
TARGET_CONTENDED = 2.5


def write_dataset(root: Path, episodes: int, frames: int) -> None:
    from roboflamingo.data.synthetic import TASKS, write_split

    for split, n_eps, first in (("training", episodes, 0), ("validation", 1, 100_000)):
        eps = [(first + k * frames, first + (k + 1) * frames - 1) for k in range(n_eps)]
        anns = []
        for k, (s, e) in enumerate(eps):
            # CALVIN-like 64-frame annotation windows, overlapping by half.
            for j, start in enumerate(range(s, e - 63, 32)):
                task = TASKS[(k + j) % len(TASKS)]
                anns.append((start, start + 63, task, f"please {task.replace('_', ' ')}"))
        write_split(root / split, eps, anns, (200, 200), (84, 84), content="scene")


def timed_run(
    root: Path, run_dir: Path, args: argparse.Namespace, packed: bool, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    from roboflamingo import cli

    log_every = max(1, args.steps // 6)  # the first window (start-up) is dropped
    overrides = [
        "model=tiny", "head=lstm", "train=tiny", f"data.root={root}", f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}", f"data.use_packed={'always' if packed else 'never'}",
        f"train.steps={args.steps}", f"train.log_every={log_every}", "train.val_every=0",
        f"train.checkpoint_every={args.steps}", "train.progress=false", f"run_dir={run_dir}",
        f"train.threads={args.threads}", *extra,
    ]
    if cli.main(["train", *overrides]) != 0:
        raise SystemExit("bench_train: the training run failed")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "train/step_ms" in r][1:]  # the first window holds start-up
    steps = total_s = data_s = samples = 0.0
    prev = log_every
    for r in windows:
        n = r["step"] - prev
        prev = r["step"]
        step_s = r["train/step_ms"] * n / 1000.0
        steps += n
        total_s += step_s
        data_s += r["train/data_wait_fraction"] * step_s
        samples += r["train/samples_per_s"] * step_s
    return {"samples_per_s": samples / total_s, "step_ms": 1000.0 * total_s / steps,
            "data_wait_fraction": data_s / total_s, "timed_steps": int(steps)}


def lerobot_run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Export the training split to LeRobotDataset v3, pack it, and time training on the shards."""
    from roboflamingo.data.config import DataConfig, LeRobotConfig
    from roboflamingo.data.export_lerobot import Job
    from roboflamingo.data.export_lerobot import export_split as export
    from roboflamingo.data.pack import pack_split

    root, packed_root = work / "lerobot", work / "lerobot_packed"
    export(Job(data=DataConfig(root=str(args.root)), split="training", out=str(root / "training"), progress=False))
    pack_split(root / "training", packed_root / "training", progress=False, lerobot=LeRobotConfig())
    extra = ("data=lerobot", f"data.packed_root={packed_root}")
    r = timed_run(root, work / "run_lerobot", args, packed=True, extra=extra)
    return {"lerobot_samples_per_s": r["samples_per_s"], "lerobot_step_ms": r["step_ms"],
            "lerobot_data_wait_fraction": r["data_wait_fraction"],
            "lerobot_meets_target": r["data_wait_fraction"] <= TARGET}


def contended_run(root: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """``timed_run`` (packed) while one busy process competes for the cores."""
    # Started through a shell that exits at once, so the hog is not our child: the loop counts its own
    # children (DataLoader workers) as its own load, and an outside competitor is what we measure.
    out = subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    hog = int(out.stdout.strip())
    try:
        time.sleep(1.0)  # let the scheduler see it before the loop picks its threads
        return timed_run(root, run_dir, args, packed=True)
    finally:
        os.kill(hog, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=2, help="synthetic training episodes")
    parser.add_argument("--frames", type=int, default=160, help="frames per synthetic episode")
    parser.add_argument("--root", type=Path, help="an existing CALVIN-layout dataset instead of a synthetic one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--lerobot", action="store_true", help="also train from a LeRobot export, packed")
    parser.add_argument("--threads", type=int, default=0,
                        help="train.threads; 0 (default) lets the loop choose, as a run does")
    args = parser.parse_args()

    import torch

    from roboflamingo.data.pack import pack_split
    from roboflamingo.data.packed import packed_dir_for
    from roboflamingo.threads import available_cores

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        t0 = time.perf_counter()
        source = "generated"
        if args.root is None:
            args.root, source = work / "data", "synthetic"
            write_dataset(args.root, args.episodes, args.frames)
        packed_dir = packed_dir_for(args.root, "training")
        pack_split(args.root / "training", packed_dir, progress=False)
        prepare_s = time.perf_counter() - t0
        print(f"bench_train: {source} data at {args.root}, packed in {prepare_s:.1f}s", file=sys.stderr)

        npz = timed_run(args.root, work / "run_npz", args, packed=False)
        packed = timed_run(args.root, work / "run_packed", args, packed=True)
        contended = contended_run(args.root, work / "run_contended", args)
        slowdown = contended["step_ms"] / packed["step_ms"]
        result = {
            **packed,
            "format": "packed",
            "npz_samples_per_s": npz["samples_per_s"],
            "npz_step_ms": npz["step_ms"],
            "npz_data_wait_fraction": npz["data_wait_fraction"],
            "batch_size": args.batch_size,
            "workers": args.workers,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "data": source,
            "target_data_wait_fraction": TARGET,
            "meets_target": packed["data_wait_fraction"] <= TARGET,
            "contended_step_ms": contended["step_ms"],
            "contended_slowdown": slowdown,
            "target_contended_slowdown": TARGET_CONTENDED,
            "meets_contended_target": slowdown <= TARGET_CONTENDED,
            "cores": available_cores(),
            "threads": args.threads or "auto",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        }
        if args.lerobot:
            result.update(lerobot_run(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
