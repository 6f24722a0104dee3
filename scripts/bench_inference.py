"""Per-step inference cost of the policy vs. one bare backbone forward, and batched steps.

For each config (tiny, mid) this measures, interleaved in one loop so machine noise hits both alike:

- ``backbone_ms``: one backbone forward of one frame (both cameras through the ViT and resampler,
  the LM with cross-attention, pooling) on already-preprocessed tensors and tokens;
- ``step_ms``: one ``policy.step(obs, instruction)`` on a raw CALVIN observation (200x200 static,
  84x84 gripper, uint8), with the history already past the window (the steady state of an episode).

``overhead_ratio = step_ms / backbone_ms`` is what the incremental history costs on top of the
backbone (preprocessing, the head's step, the action conversion); re-running the window through
the backbone would make it ~``window``.

``--batches 1 8 32``: ``step_batch`` over B episodes (each its own history, past the window) at each
``--precisions`` (the frozen towers' ``eval.precision``): ``batch[precision][B]`` holds the median
``step_ms`` per call, ``ms_per_episode`` and, on CUDA, ``peak_mem_gb`` (peak allocated during the
steps, weights included) with ``weights_gb``. A config that names weight or tokenizer files
(``of3b_mpt1b``: nothing can be downloaded) is built with random weights and CLIP's built-in
tokenizer; the LM keeps its own embedding rows (``lm.vocab_size``), so weights and memory are the
real model's (``bench_common.random_weights_job``). The last line printed is one JSON object; the top-level
``step_ms``/``backbone_ms``/``overhead_ratio`` are the mid config's (else the last config's).

    python scripts/bench_inference.py [--configs tiny mid] [--head lstm] [--device cpu|cuda] [--reps 20]
                                      [--threads N] [--batches 1 8 32] [--precisions fp32 bf16]
    python scripts/bench_inference.py --configs of3b_mpt1b --batches 1 8 32 --precisions fp32 bf16  # a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from bench_common import observation, random_weights_job

from roboflamingo.eval.config import PRECISIONS
from roboflamingo.models.normalization import identity_stats
from roboflamingo.models.policy import RoboFlamingoPolicy
from roboflamingo.transforms import preprocess_images

INSTRUCTION = "push the blue block to the left"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_batches(policy, window: int, device: torch.device, batches: list[int], precisions: list[str],
                  reps: int) -> dict:
    """``step_batch`` latency per call and per episode (and peak CUDA memory) for each precision and B."""
    rng = np.random.default_rng(1)
    out: dict = {}
    for precision in precisions:
        policy.set_precision(precision)
        out[precision] = {}
        for b in batches:
            frames = [[observation(rng) for _ in range(b)] for _ in range(4)]
            instructions = [INSTRUCTION] * b
            histories: list = [None] * b
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            for t in range(window + 2):  # warm-up, and fill every history past the window
                _, histories = policy.step_batch(frames[t % 4], instructions, histories)
            times = []
            for t in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                _, histories = policy.step_batch(frames[t % 4], instructions, histories)  # numpy: synced
                times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1e3
            row = {"step_ms": round(ms, 3), "ms_per_episode": round(ms / b, 3)}
            if device.type == "cuda":
                row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            out[precision][b] = row
            print(f"  {precision} B={b}: {row}", flush=True)
    return out


def bench(model: str, head: str, device: torch.device, reps: int, batches: list[int] | None = None,
          precisions: tuple[str, ...] = ("fp32",)) -> dict:
    job, random_lm = random_weights_job(model, head)
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(job.model, job.head, identity_stats(), device=device)
    rng = np.random.default_rng(0)
    size = job.model.vision.image_size
    static = preprocess_images(torch.from_numpy(observation(rng)["rgb_static"]).to(device)[None], size)
    gripper = preprocess_images(torch.from_numpy(observation(rng)["rgb_gripper"]).to(device)[None], size)
    ids, mask = policy.tokenize([INSTRUCTION])
    observations = [observation(rng) for _ in range(8)]

    def backbone_once() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            policy.backbone([static, gripper], ids, mask)
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
    out = {"step_ms": round(step_ms, 3), "backbone_ms": round(backbone_ms, 3),
           "overhead_ratio": round(step_ms / backbone_ms, 4), "window": job.model.window,
           "image_size": size, "params": policy.num_parameters(), "random_weights_builtin_tokenizer": random_lm}
    if device.type == "cuda":
        out["weights_gb"] = round(sum(t.numel() * t.element_size() for t in policy.state_dict().values()) / 2**30, 3)
    if batches:
        out["batch"] = bench_batches(policy, job.model.window, device, batches, list(precisions), reps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--head", default="lstm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--batches", type=int, nargs="*", default=[], help="step_batch sizes to time (e.g. 1 8 32)")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(PRECISIONS),
                        help="frozen towers' precision for the --batches part")
    args = parser.parse_args()
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be >= 1, got {args.batches}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
               else "cpu", "threads": torch.get_num_threads(), "head": args.head}
    for name in args.configs:
        results[name] = bench(name, args.head, device, args.reps, args.batches, tuple(args.precisions))
        print(f"{name}: {results[name]}", flush=True)
    main_cfg = "mid" if "mid" in results else args.configs[-1]
    results.update({k: results[main_cfg][k] for k in ("step_ms", "backbone_ms", "overhead_ratio")})
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
