"""Evaluation throughput: worker scaling, and one batched policy vs a policy per worker.

    python scripts/bench_eval.py [--chains 16] [--ep-len 120] [--batch 8] [--main-threads 1]
                                 [--no-scaling] [--chains-per-worker 1] [--renderer auto]
                                 [--precision fp32] [--model tiny] [--device cpu] [--repeat]

Two parts, in one run on the same cores:

1. Worker scaling (``--no-scaling`` skips it): one chain of the sequence generator, rolled out by the
   scripted expert on the tabletop with the default cameras and renderer, repeated
   ``--chains-per-worker`` times per worker, with 1 and with 2 workers. They run in the order
   1, 2, 2, 1 workers and each rate pools its two runs, so a load that drifts linearly during the
   benchmark biases neither side. Fields: ``chains_per_min_1_worker``, ``chains_per_min_2_workers``,
   ``scaling`` (their ratio, wall clock), ``machine_scaling`` (a pure-Python busy loop in 1 and 2
   processes, before and after: what the machine allowed at the time) and ``scaling_cpu_time``
   (2 x cpu_1 / cpu_2: the ratio the CPU seconds per chain allow on two otherwise idle cores).
2. Layouts, for the tiny checkpoint policy (configs/model/tiny.yaml, random weights, LSTM head;
   ``--model``/``--device`` pick another config and device, e.g. ``of3b_mpt1b`` on ``cuda``) and
   for the expert, on the same ``--chains`` generator chains: ``workers`` is today's layout (2 worker
   processes, each with its own simulator and its own policy at batch 1, one torch thread each);
   ``batched`` is one policy in the main process (``--main-threads`` torch threads) stepping
   ``--batch`` simulator processes in one forward per control step. Fields (tiny policy unless
   suffixed ``_expert``): ``chains_per_min_workers``, ``chains_per_min_batched``, ``batched_speedup``
   (their ratio), ``eval_steps_per_s_batched``, ``sim_only_steps_per_s`` (the same simulator
   processes in the same batched run: steps over the time the main process waited for all of them
   to answer, i.e. the rate had the policy taken no time), ``policy_share`` (the fraction of the
   batched run's wall time spent in policy forwards; ``sim_share`` is the simulators') and
   ``policy_share_workers`` (the fraction of a worker's time in its policy, today's layout). ``bf16_*``: the tiny
   policy's actions (and backbone features) with bf16 towers against fp32 on the same frames
   (``eval.precision``).
   ``pipelined``: the same ``--batch`` simulators in ``--groups`` groups (``eval.batch_groups``),
   each group's forward (one torch thread) overlapping the other groups' stepping:
   ``chains_per_min_pipelined``, ``pipelined_speedup``, ``eval_steps_per_s_pipelined``,
   ``pipelined_vs_sim_only``.
3. The ceiling any layout has on these cores, from the costs this run measured: ``sim_cpu_ms_per_step``
   (a simulator step: the cores over ``sim_only_steps_per_s``), ``policy_cpu_ms_per_step_b1`` (a batch-1
   policy step inside today's layout) and ``policy_cpu_ms_per_step_batched`` (the batched forward's
   time per episode, one torch thread). Had every core been busy all the time with nothing but those
   two costs, the run would have reached ``cores / (sim + policy)`` steps/s: ``ceiling_speedup`` is
   that rate over today's layout's measured rate, ``ceiling_vs_sim_only`` (= sim / (sim + policy))
   its ratio to the simulators alone. A measured figure above its ceiling would mean a measurement
   error; a target above the ceiling cannot be met by scheduling, only by a cheaper policy or
   simulator step. ``--precision`` runs every layout's policy at that precision (``eval.precision``).

Start-up (spawning workers, building simulators and policies) is excluded from every rate. The
last line printed is one JSON object with all fields.
"""

from __future__ import annotations

import os

# One render/BLAS thread per process for both runs: Mesa's software EGL (llvmpipe) would otherwise
# rasterize on every core in the single-worker run, and the ratio would compare 2 workers against a
# baseline that already used the whole machine. Set before pybullet or numpy load their libraries.
for _name in ("LP_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
# As the batched evaluator does when it loads torch itself: the batched policy's OpenMP threads sleep
# rather than spin while the simulators step on those cores (this script loads torch first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from bench_common import observation, save_random_checkpoint  # noqa: E402

from roboflamingo.eval.config import PRECISIONS, EvalConfig  # noqa: E402
from roboflamingo.eval.envs import EnvSpec  # noqa: E402
from roboflamingo.eval.items import chain_items, evaluation_sentences  # noqa: E402
from roboflamingo.eval.metrics import ChainResult  # noqa: E402
from roboflamingo.eval.policies import PolicySpec  # noqa: E402
from roboflamingo.eval.protocol import EvalItem  # noqa: E402
from roboflamingo.eval.runner import evaluate_items  # noqa: E402
from roboflamingo.policies import PolicyKind, PolicySourceConfig  # noqa: E402
from roboflamingo.sim.config import EnvConfig  # noqa: E402


def measure(workers: int, base: EvalItem, args: argparse.Namespace) -> dict:
    items = [EvalItem(i, base.initial_state, base.tasks, base.instructions) for i in range(workers * args.chains_per_worker)]
    cfg = EvalConfig(workers=workers, ep_len=args.ep_len, progress=False, start_method=args.start_method)
    env = EnvSpec("tabletop", EnvConfig(scene=args.scene, renderer=args.renderer))
    policy = PolicySpec(PolicySourceConfig("expert", scene=args.scene))
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


def run_layout(items: list[EvalItem], policy: PolicySpec, layout: str, args: argparse.Namespace) -> dict:
    if layout == "workers":
        cfg = EvalConfig(workers=2, ep_len=args.ep_len, progress=False, start_method=args.start_method)
        threads = 1  # 2 workers on 2 cores: today's default split
    elif layout == "batched":
        cfg = EvalConfig(batch_size=args.batch, ep_len=args.ep_len, progress=False, start_method=args.start_method)
        threads = args.main_threads
    else:  # pipelined: as many simulators, in groups whose forwards overlap the others' stepping
        cfg = EvalConfig(batch_size=args.batch // args.groups, batch_groups=args.groups, ep_len=args.ep_len,
                         progress=False, start_method=args.start_method)
        threads = 1  # the other core is stepping simulators meanwhile
    if policy.kind is PolicyKind.checkpoint:
        policy = replace(policy, torch_threads=threads, precision=args.precision)
    env = EnvSpec("tabletop", EnvConfig(scene=args.scene, renderer=args.renderer))
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        summary = evaluate_items(items, policy, env, cfg, tmp, {"bench": layout})
        results = [ChainResult.from_record(json.loads(line)) for line in
                   (Path(tmp) / "records" / "rank-0.jsonl").read_text().splitlines()]
    speed = summary["speed"]
    busy = speed["wall_s"] - speed["startup_s"]
    steps = sum(r.env_steps for r in results)
    out = {
        "chains_per_min": speed["chains_per_min"],
        "steps_per_s": speed["env_steps_per_s"],
        "env_ms_per_step": speed["env_ms_per_step"],
        "startup_s": speed["startup_s"],
        "avg_len": summary["avg_len"],
        "steps": steps,
    }
    if layout != "workers":
        out["policy_share"] = speed["policy_share"]
        out["forwards"] = speed["policy_forwards"]
        out["policy_s_per_step"] = speed["policy_forward_s"] / steps
        # The main process's gathers: from scattering actions until all B simulators answered, i.e.
        # the wall time the simulators alone needed (the rate the run had had the policy been free).
        out["sim_only_steps_per_s"] = steps / speed["sim_wait_s"]
        out["sim_share"] = speed["sim_wait_s"] / max(busy, 1e-9)
    else:
        out["policy_share"] = sum(r.policy_s for r in results) / (cfg.workers * max(busy, 1e-9))
        out["policy_s_per_step"] = sum(r.policy_s for r in results) / steps
    print(f"{policy.kind:10s} {layout:7s}: {out['chains_per_min']:.2f} chains/min, {out['steps_per_s']:.1f} steps/s, "
          f"policy share {out['policy_share']:.2f}, start-up {out['startup_s']:.1f} s, avg len {out['avg_len']:.2f}",
          flush=True)
    return out


def precision_check(checkpoint: str, device: str, frames: int = 10, batch: int = 4) -> dict:
    """Actions of bf16 frozen towers vs fp32 on the same episodes (CPU here; a GPU is where it pays)."""
    import numpy as np
    import torch

    from roboflamingo.models.policy import RoboFlamingoPolicy

    rng = np.random.default_rng(0)
    episodes = [[observation(rng) for _ in range(frames)] for _ in range(batch)]
    sentences = list(evaluation_sentences().values())[:batch]

    def actions(precision: str) -> tuple[np.ndarray, torch.Tensor]:
        model = RoboFlamingoPolicy.from_pretrained(checkpoint, map_location=device).eval()
        model.set_precision(precision)
        histories, out = [None] * batch, []
        for t in range(frames):
            a, histories = model.step_batch([e[t] for e in episodes], sentences, histories)
            out.append(a)
        with torch.inference_mode():
            features = model._frame_features([e[0] for e in episodes], sentences)[0]
        return np.stack(out), features

    (ref, f_ref), (low, f_low) = actions("fp32"), actions("bf16")
    # A random-init head barely reacts to its input, so the features show the towers' error too.
    return {"bf16_feature_rel_diff": float((f_low - f_ref).norm() / f_ref.norm()),
            "bf16_max_pose_diff": float(np.abs(low[..., :6] - ref[..., :6]).max()),
            "bf16_gripper_flips": int((low[..., 6] != ref[..., 6]).sum()),
            "bf16_actions_compared": int(ref.shape[0] * ref.shape[1])}


def scaling_part(args: argparse.Namespace) -> dict:
    base = chain_items(args.chain + 1, 0, evaluation_sentences())[args.chain]
    print(f"chain {args.chain}: {base.tasks}", flush=True)
    reference = [machine_scaling()]
    runs = {1: [], 2: []}
    for workers in (1, 2, 2, 1):
        runs[workers].append(measure(workers, base, args)["speed"])
    reference.append(machine_scaling())
    one, two = pool(runs[1]), pool(runs[2])
    r1, r2 = one["chains_per_min"], two["chains_per_min"]
    steps = one["env_steps_per_s"] / max(r1, 1e-9) * 60.0
    return {
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
    }


def layouts_part(args: argparse.Namespace, checkpoint: str) -> dict:
    items = chain_items(args.chains, 0, evaluation_sentences())
    out: dict = {}
    policies = {"tiny": ("", PolicySpec(PolicySourceConfig(checkpoint=checkpoint, device=args.device))),
                "expert": ("_expert", PolicySpec(PolicySourceConfig("expert", scene=args.scene)))}
    for name, spec in (policies[p] for p in args.policies):
        # with --repeat the order is mirrored, so a load drifting during the run biases no layout
        runs: dict[str, list[dict]] = {"workers": [], "batched": [], "pipelined": []}
        order = ("workers", "batched", "pipelined", "pipelined", "batched", "workers")
        for layout in order[: 6 if args.repeat else 3]:
            runs[layout].append(run_layout(items, spec, layout, args))
        w, b, p = (pooled(runs[k]) for k in ("workers", "batched", "pipelined"))
        out.update({
            f"chains_per_min_workers{name}": round(w["chains_per_min"], 3),
            f"chains_per_min_batched{name}": round(b["chains_per_min"], 3),
            f"batched_speedup{name}": round(b["chains_per_min"] / w["chains_per_min"], 3),
            f"eval_steps_per_s_workers{name}": round(w["steps_per_s"], 2),
            f"eval_steps_per_s_batched{name}": round(b["steps_per_s"], 2),
            f"sim_only_steps_per_s{name}": round(b["sim_only_steps_per_s"], 2),
            f"policy_share{name}": round(b["policy_share"], 3),
            f"sim_share{name}": round(b["sim_share"], 3),
            f"policy_share_workers{name}": round(w["policy_share"], 3),
            f"avg_len{name}": round(b["avg_len"], 3),
            f"chains_per_min_pipelined{name}": round(p["chains_per_min"], 3),
            f"pipelined_speedup{name}": round(p["chains_per_min"] / w["chains_per_min"], 3),
            f"eval_steps_per_s_pipelined{name}": round(p["steps_per_s"], 2),
            f"policy_share_pipelined{name}": round(p["policy_share"], 3),
        })
        if name == "":
            out.update(ceiling(w, b, args))
    if "tiny" in args.policies:
        out["batched_vs_sim_only"] = round(out["eval_steps_per_s_batched"] / out["sim_only_steps_per_s"], 3)
        out["pipelined_vs_sim_only"] = round(out["eval_steps_per_s_pipelined"] / out["sim_only_steps_per_s"], 3)
    return out


def ceiling(workers: dict, batched: dict, args: argparse.Namespace) -> dict:
    """The best rate any layout could reach with the per-step CPU costs this run measured (part 3)."""
    if args.main_threads != 1:
        return {}  # a forward on several threads has no single CPU cost to read off its wall time
    cores = len(os.sched_getaffinity(0))
    sim = cores / batched["sim_only_steps_per_s"]
    policy_b1, policy_batched = workers["policy_s_per_step"], batched["policy_s_per_step"]
    best = cores / (sim + policy_batched)
    return {
        "cores": cores,
        "sim_cpu_ms_per_step": round(1e3 * sim, 3),
        "policy_cpu_ms_per_step_b1": round(1e3 * policy_b1, 3),
        "policy_cpu_ms_per_step_batched": round(1e3 * policy_batched, 3),
        "ceiling_steps_per_s": round(best, 2),
        "ceiling_speedup": round(best / workers["steps_per_s"], 3),
        "ceiling_vs_sim_only": round(sim / (sim + policy_batched), 3),
    }


def pooled(runs: list[dict]) -> dict:
    """Rates over repeated runs: means (each run does the same work, so the mean of rates is fair)."""
    keys = ("chains_per_min", "steps_per_s", "sim_only_steps_per_s", "policy_share", "sim_share", "avg_len",
            "policy_s_per_step")
    return {k: sum(r[k] for r in runs) / len(runs) for k in keys if k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=16, help="generator chains per layout run")
    parser.add_argument("--batch", type=int, default=8, help="simulators of the batched layout")
    # 1: the tiny policy's matrices are too small for a second intra-op thread to help (measured at
    # B=8: the same wall time, ~10% more CPU) and a second thread only risks spinning under load.
    parser.add_argument("--main-threads", type=int, default=1, help="torch threads of the batched policy")
    parser.add_argument("--groups", type=int, default=2, help="groups of the pipelined layout (--batch in all)")
    parser.add_argument("--model", default="tiny", help="the checkpoint policy's model config (random weights)")
    parser.add_argument("--device", default="cpu", help="the checkpoint policy's device (cuda: the GPU lines)")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                        help="the checkpoint policy's frozen towers, in every layout (eval.precision)")
    parser.add_argument("--policies", nargs="+", default=["tiny", "expert"], choices=["tiny", "expert"])
    parser.add_argument("--repeat", action="store_true", help="run each layout twice (w, b, p, p, b, w)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1-vs-2-worker part")
    parser.add_argument("--chains-per-worker", type=int, default=1)
    parser.add_argument("--chain", type=int, default=0, help="which generator chain (seed 0) the scaling part repeats")
    parser.add_argument("--ep-len", type=int, default=120, help="steps per subtask (CALVIN: 360)")
    parser.add_argument("--scene", default="D")
    parser.add_argument("--renderer", default="auto", choices=["auto", "egl", "tiny"])
    parser.add_argument("--start-method", default="spawn", choices=["spawn", "forkserver"])
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-eval-ckpt-") as tmp:
        # The checkpoint is written before any simulator exists in this process (the 1-worker runs
        # build one here); sim/egl.py makes the other order safe too.
        checkpoint = save_random_checkpoint(tmp, args.model)
        if not args.no_scaling:
            result.update(scaling_part(args))
        result.update(layouts_part(args, checkpoint))
        result.update(precision_check(checkpoint, args.device))
    result.update({
        "chains": args.chains, "ep_len": args.ep_len, "batch": args.batch, "main_threads": args.main_threads,
        "precision": args.precision, "model": args.model, "device": args.device,
        "groups": args.groups,
        "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2),
        "renderer": args.renderer, "cpu_count": os.cpu_count(),
    })
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
