"""Run many chains: in this process, in worker processes, and across ``torchrun`` ranks; resumable.

Layout of the work:

- ``torchrun`` ranks split the chains by index (chain i belongs to rank ``i % world_size``); each rank
  appends its results to its own record file (``store.ResultStore``) and, at the end, rank 0 merges
  every rank's records after a barrier. Chains already recorded by an earlier run, under any world
  size, are skipped.
- Within a rank, ``workers`` processes (``spawn``/``forkserver``) each build their own environment and
  policy from picklable factories and pull chains from a shared queue; only the rank's main process
  writes records, so a line is never interleaved. ``workers=1`` runs in the calling process.
- Batched (``eval.batch_size=B``): the policy is built once, in the rank's main process (on the GPU
  when there is one), and B simulator processes each run one chain at a time. Every control step the
  main process gathers the B observations, steps all B episodes in one batched forward
  (``batching.SlotBatcher``, the core the policy server uses too) and scatters the actions; a
  simulator whose chain ended gets the next chain at once. Records, resume and reports are the same.
  ``eval.batch_groups=G`` runs G such groups of B simulators, one group's forward overlapping the
  others' stepping (the simulators then run at a lower priority than the policy).
- Workers watch their parent: if the main process is killed, they stop after the chain in flight
  (the batched ones at once) instead of lingering as orphans.

Which chains a run does, with which seeds, never depends on ``workers`` or ``batch_size``; with a
deterministic policy neither do the records.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roboflamingo.batching import SlotBatcher, SlotPolicy, as_slot_policy
from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.metrics import ChainResult, running_postfix, summarize_chains, summarize_episodes
from roboflamingo.eval.protocol import ChainSteps, EvalEnv, EvalItem, chain_steps, drive
from roboflamingo.eval.store import ResultStore, fingerprint
from roboflamingo.eval.video import VideoWriter
from roboflamingo.process import crash_hook, torchrun_ranks
from roboflamingo.types import Policy

VIDEOS_DIR = "videos"
FAILURES_DIR = "failures"  # under VIDEOS_DIR
# Fault hook for tests: the main process exits hard after this many new records (no clean-up at all).
CRASH_AFTER_ENV = "ROBOFLAMINGO_EVAL_CRASH_AFTER"
SIM_NICENESS = 10  # batched simulators overlapping the policy's forwards yield the cores to it
PolicyFactory = Callable[[int], Policy]  # called with the worker index
EnvFactory = Callable[[], EvalEnv]


def video_name(result: ChainResult) -> str:
    """``chain0003_2of5_fail-open_drawer.mp4`` / ``episode0007_open_drawer_success.mp4``."""
    if len(result.tasks) == 1:
        ok = "success" if result.completed else "fail"
        return f"episode{result.index:04d}_{result.tasks[0]}_{ok}.mp4"
    return f"chain{result.index:04d}_{result.completed}of{len(result.tasks)}_{result.outcome}.mp4"


class _Recorder:
    """Renders and encodes every ``stride``-th observation; the others are never rendered."""

    def __init__(self, env: EvalEnv, writer: VideoWriter, stride: int):
        self.env, self.writer, self.stride, self.seen = env, writer, stride, 0

    def __call__(self, obs: Any) -> None:
        if self.seen % self.stride == 0:
            self.writer.add(self.env.frame(obs))
        self.seen += 1


def item_steps(env: EvalEnv, item: EvalItem, cfg: EvalConfig, video_dir: Path | None) -> ChainSteps:
    """One chain's protocol steps, recorded to video when it is among the first ``num_videos`` or when
    failures are kept (``failure_videos``: written only if it fails, pruned per task at the end)."""
    shown = item.index < cfg.num_videos
    if video_dir is None or not (shown or cfg.failure_videos):
        return (yield from chain_steps(env, item, cfg.ep_len))
    writer = VideoWriter(video_dir / f".item{item.index:04d}.partial.mp4", cfg.video_fps)
    try:
        result = yield from chain_steps(env, item, cfg.ep_len, on_obs=_Recorder(env, writer, cfg.video_stride))
    except BaseException:
        writer.discard()
        raise
    failed = result.failed_task is not None
    if not shown:
        if failed:
            writer.finish(video_dir / FAILURES_DIR / video_name(result))
        else:
            writer.discard()
        return result
    path = writer.finish(video_dir / video_name(result))
    result.video = str(path.relative_to(video_dir.parent))
    if failed and cfg.failure_videos:
        shutil.copyfile(path, video_dir / FAILURES_DIR / path.name)
    return result


def keep_failure_videos(video_dir: Path, results: Sequence[ChainResult], per_task: int) -> dict[str, list[str]]:
    """Per failed task, the first ``per_task`` failures' videos (by chain index) relative to the run
    directory; the other failure videos are deleted. Chosen from the records, not from which worker
    finished first, so the same evaluation keeps the same clips."""
    kept: dict[str, list[str]] = {}
    folder = video_dir / FAILURES_DIR
    for result in sorted(results, key=lambda r: r.index):
        if result.failed_task is None:
            continue
        path = folder / video_name(result)
        clips = kept.setdefault(result.failed_task, [])
        if len(clips) < per_task and path.is_file():
            clips.append(str(path.relative_to(video_dir.parent)))
        else:
            path.unlink(missing_ok=True)
    return {task: clips for task, clips in sorted(kept.items()) if clips}


def execute_item(env: EvalEnv, policy: Policy, item: EvalItem, cfg: EvalConfig, video_dir: Path | None) -> ChainResult:
    """One chain with a single-stream policy in this process."""
    return drive(item_steps(env, item, cfg, video_dir), policy)


class _Results:
    """Workers to the main process: ``put`` returns once the message is in the pipe.

    ``multiprocessing.Queue.put`` only buffers; a feeder thread writes later. A worker that dies hard
    right after (a simulator segfault, ``os._exit``) then takes the results it already reported with
    it, and the rerun repeats chains that had finished.
    """

    def __init__(self, ctx: Any) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._lock = ctx.Lock()  # one writer at a time, so frames from two workers never interleave

    def put(self, message: tuple) -> None:
        with self._lock:
            self._writer.send(message)

    def get(self, timeout: float) -> tuple:
        if not self._reader.poll(timeout):
            raise queue.Empty
        return self._reader.recv()


def _parent_alive() -> bool:
    parent = mp.parent_process()
    return parent is None or parent.is_alive()


def _worker_main(
    worker: int,
    policy_factory: PolicyFactory,
    env_factory: EnvFactory,
    cfg: EvalConfig,
    video_dir: Path | None,
    tasks: Any,
    results: Any,
) -> None:
    env = None
    try:
        # The policy first, so a bad checkpoint fails before a simulator starts. Either order is safe
        # for EGL + triton: the env loads triton before Mesa's LLVM (sim/egl.py).
        policy = policy_factory(worker)
        env = env_factory()
        results.put(("ready", worker, None))
        while True:
            try:
                item = tasks.get(timeout=1.0)
            except queue.Empty:
                if not _parent_alive():
                    return
                continue
            if item is None:
                return
            result = execute_item(env, policy, item, cfg, video_dir)
            results.put(("result", worker, result.to_record()))
            if not _parent_alive():
                return
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
    finally:
        if env is not None:
            env.close()


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Children start with one BLAS/OpenMP/render thread each unless the user chose otherwise, so N
    workers on N cores do not fight over them (a torch policy sets its own thread count explicitly)."""
    # LP_NUM_THREADS: Mesa's llvmpipe, the software EGL renderer, otherwise rasterizes on every core.
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LP_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.setdefault(n, "1")
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


class _Progress:
    """tqdm bar with CALVIN's running success rates; silent when disabled."""

    def __init__(self, total: int, initial: list[ChainResult], mode: str, enabled: bool):
        self.results = list(initial)
        self.initial = len(initial)
        self.mode = mode
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=len(initial), desc="eval", unit="chain", dynamic_ncols=True)
            self._refresh()

    def _refresh(self) -> None:
        if self.bar is None or not self.results:
            return
        if self.mode == "chains":
            self.bar.set_postfix_str(running_postfix(self.results), refresh=False)
        else:
            self.bar.set_postfix_str(f"success {summarize_episodes(self.results)['success_rate']:.0%}", refresh=False)

    def count_new(self) -> int:
        return len(self.results) - self.initial

    def add(self, result: ChainResult) -> None:
        self.results.append(result)
        if self.bar is not None:
            self._refresh()
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class _Run:
    """What every layout is handed: the chains still to do, the factories, and where a finished
    chain goes (``on_result`` records it; only the rank's main process calls it)."""

    items: Sequence[EvalItem]
    policy_factory: PolicyFactory
    env_factory: EnvFactory
    cfg: EvalConfig
    video_dir: Path | None
    on_result: Callable[[ChainResult], None]


def _run_inline(run: _Run) -> float:
    """Every chain in this process; returns the start-up seconds."""
    start = time.perf_counter()
    env = run.env_factory()
    try:
        policy = run.policy_factory(0)
        startup = time.perf_counter() - start
        for item in run.items:
            run.on_result(execute_item(env, policy, item, run.cfg, run.video_dir))
    finally:
        env.close()
    return startup


def _drain_results(results: Any, on_result: Callable[[ChainResult], None]) -> None:
    """Record chains other workers already finished before giving up, so a rerun need not redo them."""
    while True:
        try:
            kind, _, payload = results.get(timeout=0.1)
        except queue.Empty:
            return
        if kind == "result":
            on_result(ChainResult.from_record(payload))


def _run_workers(run: _Run) -> float:
    """``run.cfg.workers`` processes, each with its own simulator and policy; returns the start-up seconds."""
    ctx = mp.get_context(run.cfg.start_method)
    tasks, results = ctx.Queue(), _Results(ctx)
    n = min(run.cfg.workers, len(run.items))
    for item in run.items:
        tasks.put(item)
    for _ in range(n):
        tasks.put(None)
    start = time.perf_counter()
    startup = 0.0
    with _single_threaded_children():
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(w, run.policy_factory, run.env_factory, run.cfg, run.video_dir, tasks, results),
                name=f"eval-worker-{w}",
                daemon=True,
            )
            for w in range(n)
        ]
        for p in procs:
            p.start()
    try:
        pending, ready = len(run.items), 0
        while pending:
            try:
                kind, worker, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [(i, p.exitcode) for i, p in enumerate(procs) if not p.is_alive()]
                if any(code != 0 for _, code in dead) or len(dead) == n:
                    _drain_results(results, run.on_result)
                    raise RuntimeError(
                        f"eval worker(s) exited before finishing their chains: {dead} (worker, exit code); "
                        "finished chains are recorded, rerun to resume"
                    ) from None
                continue
            if kind == "error":
                _drain_results(results, run.on_result)
                raise RuntimeError(f"eval worker {worker} failed:\n{payload}")
            if kind == "ready":
                ready += 1
                if ready == n:
                    startup = time.perf_counter() - start
                continue
            pending -= 1
            run.on_result(ChainResult.from_record(payload))
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    return startup


def slot_policy(policy_factory: PolicyFactory) -> SlotPolicy:
    """The batched evaluator's policy: one ``step_batch`` model for all slots (a checkpoint, loaded
    once), or else one single-stream policy per slot (``policy_factory(slot)``, slot i seeded like
    worker i)."""
    first = policy_factory(0)
    made = {0: first}  # slot 0 keeps the policy that was made to look at
    return as_slot_policy(first, lambda slot: made.pop(slot, None) or policy_factory(slot))


def _sim_worker_main(env_factory: EnvFactory, cfg: EvalConfig, video_dir: Path | None, conn: Any) -> None:
    """A batched-evaluation simulator: runs the chains it is sent, asking the main process for actions.

    Messages in: ``("chain", EvalItem)``, ``("act", action)``, ``("stop", None)``. Out: ``("ready",)``,
    ``("request", ActionRequest)``, ``("result", record)``, ``("error", traceback)``.
    """
    env = None
    if cfg.batch_groups > 1:
        # The policy's forwards are the critical path of every simulator: when groups overlap, the
        # main process must not get only a 1/(B*G+1) share of the cores under the fair scheduler.
        os.nice(SIM_NICENESS)
    try:
        env = env_factory()
        conn.send(("ready", None))
        steps = None
        while True:
            if not conn.poll(1.0):
                if not _parent_alive():
                    return
                continue
            kind, payload = conn.recv()
            if kind == "stop":
                return
            try:
                if kind == "chain":
                    steps = item_steps(env, payload, cfg, video_dir)
                    request = next(steps)
                else:
                    request = steps.send(payload)
            except StopIteration as done:
                conn.send(("result", done.value.to_record()))
                continue
            conn.send(("request", request))
    except (EOFError, BrokenPipeError):
        return  # the main process is gone
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        if env is not None:
            env.close()


class _SimPool:
    """The simulator processes of a batched evaluation and their pipes."""

    def __init__(self, n: int, env_factory: EnvFactory, cfg: EvalConfig, video_dir: Path | None):
        ctx = mp.get_context(cfg.start_method)
        self.conns, self.procs = [], []
        with _single_threaded_children():
            for w in range(n):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_sim_worker_main, args=(env_factory, cfg, video_dir, theirs),
                                   name=f"eval-sim-{w}", daemon=True)
                proc.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(proc)

    def _dead(self, w: int) -> RuntimeError:
        self.procs[w].join(timeout=5)
        dead = [(i, p.exitcode) for i, p in enumerate(self.procs) if not p.is_alive()]
        return RuntimeError(
            f"eval simulator(s) exited before finishing their chains: {dead} (worker, exit code); "
            "finished chains are recorded, rerun to resume"
        )

    def receive(self, waiting: set[int]) -> Iterator[tuple[int, str, Any]]:
        """Messages from the workers in ``waiting``, as they come (raises when one died or failed)."""
        from multiprocessing.connection import wait

        index = {id(self.conns[w]): w for w in waiting}
        ready = wait([self.conns[w] for w in waiting], timeout=1.0)
        if not ready:
            for w in waiting:
                if not self.procs[w].is_alive():
                    raise self._dead(w)
        for conn in ready:
            w = index[id(conn)]
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                raise self._dead(w) from None
            if kind == "error":
                raise RuntimeError(f"eval simulator {w} failed:\n{payload}")
            yield w, kind, payload

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("stop", None))
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        for conn in self.conns:
            conn.close()


def _run_batched(run: _Run, stats: dict[str, Any]) -> float:
    """The batched layout (see the module docstring); fills ``stats`` with the forward counters."""
    start = time.perf_counter()
    n = min(run.cfg.batch_size * run.cfg.batch_groups, len(run.items))
    pool = _SimPool(n, run.env_factory, run.cfg, run.video_dir)  # simulators start while the policy loads
    if "torch" not in sys.modules:
        # Between forwards the simulators need these cores: the policy's OpenMP threads must sleep
        # then, not spin (spinning threads of a 2-thread policy on a busy 2-core box cost it 5-10x).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        batcher = SlotBatcher(slot_policy(run.policy_factory))
        slots = [batcher.open() for _ in range(n)]
        waiting = set(range(n))
        while waiting:
            for w, kind, _ in pool.receive(set(waiting)):
                if kind != "ready":
                    raise RuntimeError(f"eval simulator {w} sent '{kind}' before it was ready")
                waiting.discard(w)
        startup = time.perf_counter() - start
        queue_ = list(reversed(run.items))  # pop() takes them in order
        for w in range(n):
            pool.conns[w].send(("chain", queue_.pop()))
        # Simulator w belongs to group w % G. A group's forward runs as soon as each of its busy
        # simulators waits for an action; with G > 1 the other groups keep stepping meanwhile.
        groups = [list(range(g, n, run.cfg.batch_groups)) for g in range(min(run.cfg.batch_groups, n))]
        busy, requests = set(range(n)), {}
        sim_wait = 0.0  # time spent waiting for simulators, the policy idle
        while busy:
            due = [g for g in groups if any(w in busy for w in g) and all(w in requests for w in g if w in busy)]
            for group in due:
                futures = {}
                for w in group:
                    request = requests.pop(w, None)
                    if request is None:
                        continue  # its chains are done
                    if request.new_episode:
                        batcher.reset(slots[w])
                    futures[w] = batcher.submit(slots[w], request.obs, request.instruction)
                batcher.tick()  # one batched forward for the group's episodes
                for w, future in futures.items():
                    pool.conns[w].send(("act", future.result()))
            if due:
                continue
            t0 = time.perf_counter()
            for w, kind, payload in pool.receive(busy - set(requests)):
                if kind == "request":
                    requests[w] = payload
                elif kind == "result":
                    run.on_result(ChainResult.from_record(payload))
                    if queue_:  # refill the slot at once; its first request joins the next forward
                        pool.conns[w].send(("chain", queue_.pop()))
                    else:
                        busy.discard(w)
                else:
                    raise RuntimeError(f"eval simulator {w} sent an unexpected '{kind}'")
            sim_wait += time.perf_counter() - t0
        stats.update({"batch_size": run.cfg.batch_size, "batch_groups": len(groups), "simulators": n,
                      "policy_forwards": batcher.forwards, "policy_forward_s": batcher.policy_s,
                      "sim_wait_s": sim_wait})
        return startup
    finally:
        pool.close()


_OWN_PROCESS_GROUP = False


def _barrier(world_size: int, timeout_min: int) -> None:
    global _OWN_PROCESS_GROUP
    if world_size <= 1:
        return
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo: the barrier only synchronizes CPU processes, and works with or without GPUs.
        dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_min))
        _OWN_PROCESS_GROUP = True
    dist.barrier()


def _release_process_group() -> None:
    """Tear down the process group if this module created it (a caller's own group is left alone)."""
    global _OWN_PROCESS_GROUP
    if _OWN_PROCESS_GROUP:
        import torch.distributed as dist

        dist.destroy_process_group()
        _OWN_PROCESS_GROUP = False


def speed_figures(new: list[ChainResult], wall_s: float, startup_s: float, cfg: EvalConfig, world: int) -> dict:
    """Throughput of this run (resumed chains excluded); rates use the time after start-up."""
    steps = sum(r.env_steps for r in new)
    busy = max(wall_s - startup_s, 1e-9)
    return {
        "chains_this_run": len(new),
        "wall_s": wall_s,
        "startup_s": startup_s,
        "chains_per_min": 60.0 * len(new) / busy if new else 0.0,
        "env_steps_per_s": steps / busy if new else 0.0,
        "policy_ms_per_step": 1e3 * sum(r.policy_s for r in new) / steps if steps else 0.0,
        "env_ms_per_step": 1e3 * sum(r.env_s for r in new) / steps if steps else 0.0,
        "cpu_s_per_chain": sum(r.cpu_s for r in new) / len(new) if new else 0.0,
        "wall_s_per_chain": sum(r.wall_s for r in new) / len(new) if new else 0.0,
        "workers": cfg.workers,
        "batch_size": cfg.batch_size,
        "world_size": world,
    }


def summarize(results: list[ChainResult], mode: str) -> dict[str, Any]:
    return summarize_chains(results) if mode == "chains" else summarize_episodes(results)


def evaluate_items(
    items: Sequence[EvalItem],
    policy_factory: PolicyFactory,
    env_factory: EnvFactory,
    cfg: EvalConfig,
    run_dir: str | os.PathLike,
    identity: dict[str, Any],
) -> dict[str, Any] | None:
    """Evaluate ``items`` (resuming from ``run_dir``); return the merged summary on rank 0, else None.

    ``identity`` describes the policy and environment; together with the protocol settings it forms
    the fingerprint that keeps results of different evaluations apart.
    """
    indices = [it.index for it in items]
    if len(set(indices)) != len(indices):
        raise ValueError("chain indices must be unique")
    rank, world, _ = torchrun_ranks()
    run_dir = Path(run_dir)
    # an item's setup is part of what it evaluates; items without one keep the fingerprints they had
    chains = [[it.index, it.initial_state, it.tasks, it.instructions, *([it.setup] if it.setup else [])]
              for it in items]
    protocol = {"mode": cfg.mode, "ep_len": cfg.ep_len, "items": chains}
    fp = fingerprint({"identity": identity, "protocol": protocol})
    store = ResultStore(run_dir, fp, rank)
    if rank == 0:
        foreign = store.foreign_fingerprints()
        if foreign and cfg.overwrite:
            store.clear()
            for video in (run_dir / VIDEOS_DIR).rglob("*.mp4"):
                video.unlink()
        elif foreign:
            raise ValueError(
                f"{store.dir} holds results of a different evaluation ({sorted(foreign)}, this one is {fp}); "
                "use another run_dir or eval.overwrite=true"
            )
    _barrier(world, cfg.dist_timeout_min)

    before = store.load()
    mine = [it for it in items if it.index % world == rank]
    todo = [it for it in mine if it.index not in before]
    video_dir = run_dir / VIDEOS_DIR if cfg.num_videos or cfg.failure_videos else None
    if video_dir is not None:
        (video_dir / FAILURES_DIR if cfg.failure_videos else video_dir).mkdir(parents=True, exist_ok=True)
    progress = _Progress(
        len(mine), [before[it.index] for it in mine if it.index in before], cfg.mode, cfg.progress and rank == 0
    )

    crash_check = crash_hook(CRASH_AFTER_ENV)

    def on_result(result: ChainResult) -> None:
        store.append(result)
        progress.add(result)
        crash_check(progress.count_new())  # right after a record

    start = time.perf_counter()
    startup = 0.0
    batch_stats: dict[str, Any] = {}
    try:
        run = _Run(todo, policy_factory, env_factory, cfg, video_dir, on_result)
        if todo and cfg.batch_size:
            startup = _run_batched(run, batch_stats)
        elif todo:
            startup = (_run_inline if cfg.workers == 1 else _run_workers)(run)
    finally:
        progress.close()
        store.close()
    wall = time.perf_counter() - start

    _barrier(world, cfg.dist_timeout_min)
    _release_process_group()
    if rank != 0:
        return None
    done = store.load()
    wanted = set(indices)
    results = [done[i] for i in sorted(done) if i in wanted]
    missing = sorted(wanted - set(done))
    if missing:
        raise RuntimeError(f"chains {missing[:10]}{'...' if len(missing) > 10 else ''} have no record after the run")
    new = [r for r in results if r.index not in before]
    summary = summarize(results, cfg.mode)
    summary["speed"] = speed_figures(new, wall, startup, cfg, world)
    if batch_stats:
        summary["speed"].update(batch_stats)
        summary["speed"]["policy_share"] = batch_stats["policy_forward_s"] / max(wall - startup, 1e-9)
    if cfg.failure_videos:
        summary["failure_videos"] = keep_failure_videos(run_dir / VIDEOS_DIR, results, cfg.failure_videos)
    summary["fingerprint"] = fp
    return summary


def describe(factory: Any) -> Any:
    """A factory's ``identity()`` or, failing that, its import path: stable across runs, unlike
    ``repr`` (which may carry a memory address and would make every rerun look like a new evaluation)."""
    if hasattr(factory, "identity"):
        return factory.identity()
    target = getattr(factory, "func", factory)  # functools.partial
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__qualname__)}"
    if target is not factory:
        return {"factory": name, "args": repr(factory.args), "keywords": repr(sorted(factory.keywords.items()))}
    return {"factory": name}


def evaluate_chains(
    policy_factory: PolicyFactory,
    env_factory: EnvFactory,
    cfg: EvalConfig,
    items: Sequence[EvalItem] | None = None,
    run_dir: str | os.PathLike | None = None,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Evaluate a policy with CALVIN's protocol and return the summary (``None`` on ranks > 0).

    ``policy_factory(worker)`` and ``env_factory()`` must be picklable when ``cfg.workers > 1`` (for
    instance ``PolicySpec`` and ``EnvSpec``). Without ``items`` the chains (or single-task episodes)
    come from the simulator's sequence generator and the evaluation sentences, as ``cfg`` says.
    Without ``run_dir`` the records go to a temporary directory (nothing to resume from).
    """
    if items is None:
        from roboflamingo.eval.items import build_items

        items = build_items(cfg)
    if identity is None:
        identity = {"policy": describe(policy_factory), "env": describe(env_factory)}
    if run_dir is not None:
        return evaluate_items(items, policy_factory, env_factory, cfg, run_dir, identity)
    with tempfile.TemporaryDirectory(prefix="roboflamingo-eval-") as tmp:
        return evaluate_items(items, policy_factory, env_factory, cfg, tmp, identity)


