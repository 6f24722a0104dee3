"""Per-step inference cost of the policy vs. one bare backbone forward.

For each config (tiny, mid) this measures, interleaved in one loop so machine noise hits both alike:

- ``backbone_ms``: one backbone forward of one frame (both cameras through the ViT and resampler,
  the LM with cross-attention, pooling) on already-preprocessed tensors and tokens;
- ``step_ms``: one ``policy.step(obs, instruction)`` on a raw CALVIN observation (200x200 static,
  84x84 gripper, uint8), with the history already past the window (the steady state of an episode).

``overhead_ratio = step_ms / backbone_ms`` is what the incremental history costs on top of the
backbone (preprocessing, the head's step, the action conversion); re-running the window through
the backbone would make it ~``window``. The last line printed is one JSON object; the top-level
``step_ms``/``backbone_ms``/``overhead_ratio`` are the mid config's.

    python scripts/bench_inference.py [--configs tiny mid] [--head lstm] [--device cpu|cuda] [--reps 20]
                                      [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from roboflamingo.config import load
from roboflamingo.models.inspect import Job
from roboflamingo.models.normalization import identity_stats
from roboflamingo.models.policy import build_policy
from roboflamingo.transforms import preprocess_images

INSTRUCTION = "push the blue block to the left"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(model: str, head: str, device: torch.device, reps: int) -> dict:
    job = load("inspect", Job, [f"model={model}", f"head={head}"])
    torch.manual_seed(0)
    policy = build_policy(job.model, job.head, identity_stats(), device=device)
    rng = np.random.default_rng(0)

    def obs() -> dict[str, np.ndarray]:
        return {"rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
                "robot_obs": rng.normal(size=15)}

    size = job.model.vision.image_size
    static = preprocess_images(torch.from_numpy(obs()["rgb_static"]).to(device)[None], size)
    gripper = preprocess_images(torch.from_numpy(obs()["rgb_gripper"]).to(device)[None], size)
    ids, mask = policy.tokenize([INSTRUCTION])
    observations = [obs() for _ in range(8)]

    def backbone_once() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            policy.backbone(static, gripper, ids, mask)
        _sync(device)
        return time.perf_counter() - t0

    def step_once(i: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        policy.step(observations[i % len(observations)], INSTRUCTION)  # returns numpy: already synced
        return time.perf_counter() - t0

    policy.reset()
    for i in range(job.model.window + 2):  # warm-up, and fill the history past the window
        step_once(i)
        backbone_once()
    steps, backbones = [], []
    for i in range(reps):
        steps.append(step_once(i))
        backbones.append(backbone_once())
    step_ms = statistics.median(steps) * 1e3
    backbone_ms = statistics.median(backbones) * 1e3
    return {"step_ms": round(step_ms, 3), "backbone_ms": round(backbone_ms, 3),
            "overhead_ratio": round(step_ms / backbone_ms, 4), "window": job.model.window,
            "image_size": size, "params": policy.num_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--head", default="lstm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
               else "cpu", "threads": torch.get_num_threads(), "head": args.head}
    for name in args.configs:
        results[name] = bench(name, args.head, device, args.reps)
        print(f"{name}: {results[name]}", flush=True)
    main_cfg = "mid" if "mid" in results else args.configs[-1]
    results.update({k: results[main_cfg][k] for k in ("step_ms", "backbone_ms", "overhead_ratio")})
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
