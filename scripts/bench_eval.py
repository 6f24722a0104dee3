"""Evaluation throughput: chains per minute with 1 and with 2 worker processes, and their ratio.

    python scripts/bench_eval.py [--chains-per-worker 1] [--chain 0] [--renderer auto]

Both settings do identical work so that the ratio measures parallel efficiency, not which chains
each run happened to draw: one chain of the sequence generator, rolled out by the scripted expert on
the tabletop with the default cameras and renderer, repeated ``--chains-per-worker`` times per
worker. They run in the order 1, 2, 2, 1 workers and each rate pools its two runs, so a load that
drifts linearly during the benchmark biases neither side. Start-up (spawning workers, building
simulators) is excluded from the rates; it is reported apart.
Prints one final JSON line: ``chains_per_min_1_worker``, ``chains_per_min_2_workers``, ``scaling``
(their ratio, wall clock). On a machine shared with other jobs the wall-clock ratio also measures how
much CPU the others left, so the line adds the load average, ``machine_scaling``: the same ratio for a
pure-Python busy loop in 1 and 2 processes, measured before and after (what this machine allowed at
the time), and ``scaling_cpu_time``: the ratio the measured CPU seconds per chain allow on two
otherwise idle cores (2 x cpu_1 / cpu_2; 2.0 when the workers do not slow each other down).
"""

from __future__ import annotations

import os

# One render/BLAS thread per process for both runs: Mesa's software EGL (llvmpipe) would otherwise
# rasterize on every core in the single-worker run, and the ratio would compare 2 workers against a
# baseline that already used the whole machine. Set before pybullet or numpy load their libraries.
for _name in ("LP_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from roboflamingo.eval.config import EvalConfig  # noqa: E402
from roboflamingo.eval.envs import EnvSpec  # noqa: E402
from roboflamingo.eval.items import chain_items, evaluation_sentences  # noqa: E402
from roboflamingo.eval.policies import PolicySpec  # noqa: E402
from roboflamingo.eval.protocol import EvalItem  # noqa: E402
from roboflamingo.eval.runner import evaluate_items  # noqa: E402
from roboflamingo.sim.config import EnvConfig  # noqa: E402


def measure(workers: int, base: EvalItem, args: argparse.Namespace) -> dict:
    items = [EvalItem(i, base.initial_state, base.tasks, base.instructions) for i in range(workers * args.chains_per_worker)]
    cfg = EvalConfig(workers=workers, ep_len=args.ep_len, progress=False, start_method=args.start_method)
    env = EnvSpec("tabletop", EnvConfig(scene=args.scene, renderer=args.renderer))
    policy = PolicySpec("expert", scene=args.scene)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        summary = evaluate_items(items, policy, env, cfg, tmp, {"bench": workers})
    speed = summary["speed"]
    print(
        f"{workers} worker(s): {speed['chains_per_min']:.2f} chains/min, {speed['env_steps_per_s']:.1f} steps/s, "
        f"start-up {speed['startup_s']:.1f} s, simulator {speed['env_ms_per_step']:.1f} ms/step, "
        f"{speed['cpu_s_per_chain']:.1f} CPU s/chain, avg len {summary['avg_len']:.2f}",
        flush=True,
    )
    return summary


def _spin(n: int) -> float:
    start = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - start


def machine_scaling(n: int = 10_000_000) -> float:
    """Throughput ratio of a CPU-bound loop in 2 processes vs 1: the ceiling the machine offers now."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as workers:
        workers.map(_spin, [1000, 1000])  # start both processes before timing
        one = _spin(n)
        start = time.perf_counter()
        workers.map(_spin, [n, n])
        two = time.perf_counter() - start
    return 2 * one / two


def pool(speeds: list[dict]) -> dict:
    """Rates over several runs: total chains (and CPU, steps) over total busy time."""
    chains = sum(s["chains_this_run"] for s in speeds)
    busy = sum(60.0 * s["chains_this_run"] / s["chains_per_min"] for s in speeds)
    steps = sum(s["env_steps_per_s"] * 60.0 * s["chains_this_run"] / s["chains_per_min"] for s in speeds)
    return {
        "chains_per_min": 60.0 * chains / busy,
        "env_steps_per_s": steps / busy,
        "cpu_s_per_chain": sum(s["cpu_s_per_chain"] * s["chains_this_run"] for s in speeds) / chains,
        "env_ms_per_step": sum(s["env_ms_per_step"] for s in speeds) / len(speeds),
        "startup_s": max(s["startup_s"] for s in speeds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains-per-worker", type=int, default=1)
    parser.add_argument("--chain", type=int, default=0, help="which generator chain (seed 0) to repeat")
    parser.add_argument("--ep-len", type=int, default=360)
    parser.add_argument("--scene", default="D")
    parser.add_argument("--renderer", default="auto", choices=["auto", "egl", "tiny"])
    parser.add_argument("--start-method", default="spawn", choices=["spawn", "forkserver"])
    args = parser.parse_args()

    base = chain_items(args.chain + 1, 0, evaluation_sentences())[args.chain]
    print(f"chain {args.chain}: {base.tasks}", flush=True)
    load_before = os.getloadavg()[0]
    reference = [machine_scaling()]
    runs = {1: [], 2: []}
    for workers in (1, 2, 2, 1):
        runs[workers].append(measure(workers, base, args)["speed"])
    reference.append(machine_scaling())
    one, two = pool(runs[1]), pool(runs[2])
    r1, r2 = one["chains_per_min"], two["chains_per_min"]
    steps = one["env_steps_per_s"] / max(r1, 1e-9) * 60.0
    print(
        json.dumps(
            {
                "chains_per_min_1_worker": round(r1, 3),
                "chains_per_min_2_workers": round(r2, 3),
                "scaling": round(r2 / r1, 3) if r1 else 0.0,
                "machine_scaling": round(sum(reference) / len(reference), 3),
                "scaling_cpu_time": round(2 * one["cpu_s_per_chain"] / two["cpu_s_per_chain"], 3),
                "cpu_s_per_chain_1_worker": round(one["cpu_s_per_chain"], 2),
                "cpu_s_per_chain_2_workers": round(two["cpu_s_per_chain"], 2),
                "env_steps_per_chain": round(steps, 1),
                "env_ms_per_step_1_worker": round(one["env_ms_per_step"], 2),
                "startup_s_1_worker": round(one["startup_s"], 2),
                "startup_s_2_workers": round(two["startup_s"], 2),
                "load_avg_before": round(load_before, 2),
                "load_avg_after": round(os.getloadavg()[0], 2),
                "renderer": args.renderer,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
