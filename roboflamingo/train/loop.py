"""``roboflamingo train``: one training loop from a laptop CPU to a multi-GPU cluster.

    roboflamingo train model=tiny head=lstm data.root=data/tabletop train.steps=2000
    torchrun --nproc_per_node 8 -m roboflamingo.cli train model=of3b_mpt1b data=calvin
    roboflamingo train resume=runs/x                    # continue a run from its own config.yaml
    roboflamingo train resume=runs/x train.steps=4000   # ... for longer (recorded in resumes.jsonl)

``train()`` reads top to bottom like nanoGPT's train.py: set-up (process group, run directory,
policy, optimizer, data), an optional resume from the newest verified checkpoint, then the loop
(gradient accumulation, clipping, schedule, logging, validation, checkpoints). Helpers below it do
one thing each.

Run directory::

    config.yaml          the resolved Job (what a resumed run starts from and is checked against)
    resumes.jsonl        one JSON line per resume that changed a setting: the step, key, old and new
    metrics.jsonl        one JSON line per logged step / validation
    checkpoints/step_XXXXXXX/, checkpoints/last   see ``roboflamingo.train.checkpoint``
    tensorboard/, wandb/ when enabled

Exact resume: the sampler's order depends only on (seed, epoch) and every sample's augmentation only
on (seed, epoch, index), so restoring (epoch, batches consumed), the optimizer, the scheduler and
the RNG states of every rank reproduces the uninterrupted run bit for bit on the same hardware.
Validation and rollouts leave those RNG states as they found them: the interrupted run may have
made one the uninterrupted run did not (at the final step of a shorter run).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from roboflamingo.config import ConfigError, save_yaml
from roboflamingo.data.config import DataConfig
from roboflamingo.data.dataset import CalvinDataset, WindowSampler, collate, make_dataloader, split_robot
from roboflamingo.data.inputs import check_split
from roboflamingo.data.layout import DatasetError
from roboflamingo.data.packed import packed_dir_for
from roboflamingo.data.stats import compute_normalization
from roboflamingo.io import DirectoryLocked, DirLock
from roboflamingo.models.config import HeadConfig, ModelConfig
from roboflamingo.process import crash_hook
from roboflamingo.robot import RobotDescription
from roboflamingo.threads import ThreadGovernor
from roboflamingo.train import distributed
from roboflamingo.train.checkpoint import (
    CheckpointError,
    find_resumable,
    list_checkpoints,
    load_trainer_state,
    write_checkpoint,
)
from roboflamingo.train.config import TrainConfig
from roboflamingo.train.ema import WeightAverage
from roboflamingo.train.job import Job, check_same_run, record_resume
from roboflamingo.train.job import help_overrides as help_overrides  # the CLI reads these from this module
from roboflamingo.train.job import load_job as load_job
from roboflamingo.train.loggers import MetricLoggers, check_available, truncate_metrics
from roboflamingo.train.optim import apply_hyperparameters, build_optimizer, build_scheduler

# Fault hook for the resume tests: the run exits hard right after this step (and its checkpoint, if due).
CRASH_AFTER_STEP_ENV = "ROBOFLAMINGO_TRAIN_CRASH_AFTER_STEP"

class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf; training stops before the update."""


class DivergedError(RuntimeError):
    """The weights about to be checkpointed are not a usable policy; nothing is saved and ``last`` stays."""


# No healthy trainable weight of these policies comes near this (they sit within a few units of 0);
# a run whose update blew up (lr=1e30 puts every weight near 1e30, still finite) crosses it at once.
MAX_WEIGHT_ABS = 1e4


def run(job: Job) -> int:
    """CLI entry: train, turning known user errors into one clear line and exit code 2."""
    info = distributed.setup(job.train)
    finished = False
    try:
        train(job, info)
        finished = True
    except (ConfigError, CheckpointError, DatasetError, NonFiniteLossError, DivergedError) as e:
        print(f"roboflamingo train: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup(info, synchronize=finished)
    return 0


def train(job: Job, info: distributed.DistInfo) -> torch.nn.Module:
    """Train ``job`` in this process (one rank of ``info``); returns the trained policy (unwrapped).

    The main process holds ``<run_dir>/.lock`` (an OS lock, released however the process ends) for
    the whole run, so a second run into the same directory is refused, naming the holder's pid,
    before it reads or writes anything there.
    """
    if not info.is_main:
        return _train(job, info)
    run_dir = Path(job.run_dir)
    created = not run_dir.exists()
    before = set() if created else {p.name for p in run_dir.iterdir()}
    try:
        lock = DirLock(job.run_dir).acquire()
    except DirectoryLocked as e:
        raise ConfigError(f"run_dir: {e}; wait for that run to end or choose another run_dir") from None
    try:
        return _train(job, info)
    finally:
        # A run that stopped before writing anything (a config error, a missing input) leaves the
        # directory as it found it: no lock file, and no directory if it made one.
        untouched = {p.name for p in run_dir.iterdir()} - {lock.path.name} == before - {lock.path.name}
        if untouched and lock.path.name not in before:
            lock.path.unlink(missing_ok=True)  # while still locked: nobody can take the old file meanwhile
        lock.release()
        if untouched and created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _train(job: Job, info: distributed.DistInfo) -> torch.nn.Module:
    cfg = job.train
    master = info.is_main
    run_dir = Path(job.run_dir)
    ckpt_root = run_dir / "checkpoints"
    # train.threads=0: follow the machine's free cores, re-checked as other jobs come and go.
    governor = ThreadGovernor(workers=info.world_size) if not cfg.threads and info.device.type == "cpu" else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_available(cfg)  # a missing logger package fails here, before any data is read
    if cfg.precision == "bf16" and info.device.type != "cuda":
        # CPU autocast has no bf16 LSTM kernel (oneDNN fails on the head), and it would be slower.
        raise ConfigError(f"train.precision=bf16 needs a GPU, this run is on {info.device}; use auto or fp32")
    use_bf16 = info.device.type == "cuda" and cfg.precision in ("auto", "bf16")

    # ---- run directory: fresh, or resume from the newest checkpoint that verifies
    resume_from: Path | None = None
    changes: dict[str, list] = {}
    if job.resume:
        changes = check_same_run(job, run_dir)
        if master:
            resume_from = find_resumable(ckpt_root, warn=lambda msg: print(f"[train] {msg}", file=sys.stderr))
        resume_from = distributed.broadcast_object(resume_from, info)
        if resume_from is None and master:
            print(f"[train] resume=true but {ckpt_root} has no checkpoint yet; starting from step 0", file=sys.stderr)
    elif list_checkpoints(ckpt_root):
        raise ConfigError(
            f"{run_dir} already holds checkpoints; pass resume=true to continue that run or choose another run_dir"
        )
    _check_inputs(job)

    # ---- policy: identical initialisation on every rank, normalization from the training split
    _seed_everything(job.seed)
    if resume_from is not None:
        policy = _load_policy(resume_from, job.head)
        policy.robot.require_compatible(_robot(job.data), f"checkpoint {resume_from}", f"data.root={job.data.root}")
    else:
        stats = _normalization(job.data) if master else None
        policy = _build_policy(job.model, job.head, distributed.broadcast_object(stats, info), _robot(job.data))
    policy.to(info.device)
    policy.train()
    model = distributed.wrap(policy, cfg, info)
    optimizer = build_optimizer(policy, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    ema = _weight_average(policy, cfg, info)

    # ---- data: this rank's share of a (seed, epoch)-determined order
    train_loader = _train_loader(job, info)
    val_loader = _val_loader(job, info) if cfg.val_every else None
    rollouts = _rollouts(job, info) if cfg.rollout_every else None
    micro_per_epoch = len(train_loader)
    if micro_per_epoch == 0:
        raise ConfigError(
            f"{job.data.root}/{job.data.train_split} has {len(train_loader.dataset)} windows: not enough for one "
            f"batch of data.batch_size={job.data.batch_size} on each of {info.world_size} processes"
        )
    global_batch = job.data.batch_size * cfg.grad_accum * info.world_size
    # Only now, with the data opened and the policy built, does the run directory get anything: a run
    # refused for its inputs leaves no config.yaml behind to be mistaken for a started run.
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(job, run_dir / "config.yaml")
        if resume_from is None:
            (run_dir / "wandb_id").unlink(missing_ok=True)  # a fresh run is a new W&B run

    # ---- state to resume: step, data position, optimizer, scheduler, RNG
    step, epoch, consumed = 0, 0, 0
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        apply_hyperparameters(optimizer, scheduler, policy, cfg)
        step, epoch, consumed = state["step"], state["epoch"], state["batches_in_epoch"]
        if "raw_weights" in state:  # a run that kept an average saved it as the policy: train on the raw ones
            (ema or WeightAverage(policy, 0.0)).restore_raw(state["raw_weights"], f"checkpoint {resume_from}")
        consumed = _rescale_position(state, consumed, job, info)
        _restore_rng(state["rng"], info, fallback_seed=job.seed + step)
        if master:
            print(f"[train] resumed from {resume_from} at step {step} (epoch {epoch}, batch {consumed})",
                  file=sys.stderr)
            record_resume(run_dir, step, changes)
    else:
        _seed_everything(job.seed + info.rank)  # ranks differ in dropout, agree in everything else
    if master:
        truncate_metrics(run_dir, step)  # lines past the resumed step (or a failed earlier start)
    train_loader.sampler.set_epoch(epoch, skip=consumed * job.data.batch_size)
    batches = iter(train_loader)

    loggers = MetricLoggers(run_dir, cfg, _plain(job)) if master else None
    bar = _progress(cfg, master, step)
    if master and step == 0:
        n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        print(f"[train] {n_train:,} trainable parameters; {info.world_size} process(es) on {info.device}; "
              f"global batch {global_batch}; {micro_per_epoch} micro-batches per epoch per process", file=sys.stderr)

    # ---- the loop: one iteration is one optimizer step over grad_accum micro-batches
    window = _Window()
    crash_check = crash_hook(CRASH_AFTER_STEP_ENV)
    while step < cfg.steps:
        if governor is not None:
            governor.update()
        t0 = time.perf_counter()
        data_s = 0.0
        loss_sum = torch.zeros((), device=info.device)
        log_sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            t_data = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:  # epoch boundary: a new (seed, epoch) order
                epoch, consumed = epoch + 1, 0
                train_loader.sampler.set_epoch(epoch)
                batches = iter(train_loader)
                batch = next(batches)
            consumed += 1
            batch = _to_device(batch, info.device)
            data_s += time.perf_counter() - t_data
            distributed.set_grad_sync(model, micro == cfg.grad_accum - 1)
            with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, logs = model(batch)
            if info.world_size == 1 and not torch.isfinite(loss.detach()).all():
                # Stop before the update: one NaN step poisons every weight, and nothing after it
                # (checkpoints, `last`) may point at such a policy. With several ranks the gradient
                # norm below (the same on every rank after the all-reduce) stops them all together.
                raise NonFiniteLossError(
                    f"step {step + 1}: the training loss is {float(loss.detach())} on a batch of {job.data.root} "
                    f"(split {job.data.train_split}); no update was applied and no checkpoint written for it"
                )
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v) / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip if cfg.grad_clip else math.inf
        )
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(f"step {step + 1}: the gradient norm is {float(grad_norm)}; no update was applied")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            ema.update(step)
        window.add(time.perf_counter() - t0, data_s, global_batch)

        if step % cfg.log_every == 0 or step == cfg.steps:
            # The policy's own logs (whose "loss" is this rank's) are averaged over ranks too.
            names = sorted(log_sums)
            values = distributed.all_reduce_mean(
                [loss_sum.item() / cfg.grad_accum, float(grad_norm)] + [log_sums[k] for k in names], info
            )
            loss_val = values[0]
            metrics = {**dict(zip(names, values[2:])), "loss": loss_val, "lr": lr, "grad_norm": values[1],
                       "epoch": float(epoch), **window.summary()}
            window = _Window()
            if master:
                loggers.log(step, {f"train/{k}": v for k, v in metrics.items()})
                bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", sps=f"{metrics['samples_per_s']:.1f}")
        if master:
            bar.update(1)
        if val_loader is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            with _averaged(ema):
                val_loss = _validate(model, val_loader, cfg, info, use_bf16)
            if master and val_loss is not None:
                loggers.log(step, {"val/loss": val_loss})
        if cfg.rollout_every and (step % cfg.rollout_every == 0 or step == cfg.steps):
            if rollouts is not None:
                with _averaged(ema):
                    loggers.log(step, rollouts(policy))
            distributed.barrier(info)  # the other ranks wait for rank 0's rollouts
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            position = {"step": step, "epoch": epoch, "batches_in_epoch": consumed, "seed": job.seed,
                        "world_size": info.world_size, "batch_size": job.data.batch_size}
            if ema is not None:
                position["raw_weights"] = ema.raw_state()
            with _averaged(ema):
                _check_healthy(model, policy, batch, info, use_bf16, step, cfg.lr)
                _save(model, policy, optimizer, scheduler, ckpt_root, cfg, info, position)
        crash_check(step)

    if ema is not None:
        ema.install()
    if master:
        bar.close()
        loggers.close()
        if rollouts is not None:
            rollouts.close()
        print(f"[train] done: {step} steps; final checkpoint {ckpt_root / 'last'}", file=sys.stderr)
        if cfg.plot:
            _plot(run_dir)
    distributed.barrier(info)
    return policy


# ---------------------------------------------------------------------------------------------
# helpers, in the order the loop uses them


def _plot(run_dir: Path) -> None:
    """The metrics picture; a failure to draw it costs the picture, never the trained run."""
    from roboflamingo.train.plot import write_plot

    try:
        path, _ = write_plot(run_dir)
    except Exception as e:  # matplotlib's errors have no common base; the run itself is complete
        print(f"[train] warning: could not draw {run_dir / 'metrics.png'}: {e}", file=sys.stderr)
        return
    print(f"[train] metrics plot: {path}", file=sys.stderr)


def _check_inputs(job: Job) -> None:
    """The splits this run reads exist, or an error that says which command makes them."""
    data = job.data
    packed_only = data.format == "lerobot" or data.use_packed == "always"
    check_split(data, data.train_split, "data.train_split", packed_needed=packed_only)
    if job.train.val_every:
        try:
            check_split(data, data.val_split, "data.val_split", packed_needed=packed_only)
        except DatasetError as e:
            raise DatasetError(f"{e} (train.val_every={job.train.val_every}; set train.val_every=0 to train "
                               "without validation)") from e


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _normalization(data: DataConfig) -> dict[str, np.ndarray]:
    split_dir = Path(data.root) / data.train_split
    return compute_normalization(split_dir, packed_dir=packed_dir_for(data.root, data.train_split, data.packed_root))


def _robot(data: DataConfig) -> RobotDescription:
    """The robot the training split was recorded on (its description; CALVIN's without one)."""
    return split_robot(data, data.train_split)


def _build_policy(model: ModelConfig, head: HeadConfig, stats: dict[str, np.ndarray],
                  robot: RobotDescription) -> torch.nn.Module:
    from roboflamingo.models.policy import RoboFlamingoPolicy

    return RoboFlamingoPolicy.from_config(model, head, stats, robot=robot)


def _load_policy(checkpoint: Path, head: HeadConfig) -> torch.nn.Module:
    from roboflamingo.models.policy import RoboFlamingoPolicy

    policy = RoboFlamingoPolicy.from_pretrained(checkpoint, map_location="cpu")
    policy.set_chunking(head.chunking)  # the one head setting a resume may change (train/job.py)
    return policy


class ResumableSampler(WindowSampler):
    """``WindowSampler`` that can start an epoch part-way: ``set_epoch(e, skip=n)`` drops the first
    ``n`` samples of epoch ``e`` (what the interrupted run had already consumed) and nothing else."""

    skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


def _train_loader(job: Job, info: distributed.DistInfo) -> DataLoader:
    data = job.data
    ds = CalvinDataset(data, data.train_split, seed=job.seed, resize=job.model.vision.resize)
    sampler = ResumableSampler(len(ds), info.rank, info.world_size, seed=job.seed, shuffle=True,
                               drop_last=data.drop_last)
    base = make_dataloader(data, data.train_split, info.rank, info.world_size, job.seed, dataset=ds)
    # Same settings as the data pipeline's loader, with our sampler; a private generator keeps the
    # loader from drawing its worker base seed from the global RNG, which resume restores exactly.
    return DataLoader(
        ds, batch_size=data.batch_size, sampler=sampler, collate_fn=collate, num_workers=base.num_workers,
        pin_memory=base.pin_memory, drop_last=data.drop_last, prefetch_factor=base.prefetch_factor,
        persistent_workers=base.persistent_workers, worker_init_fn=base.worker_init_fn,
        generator=torch.Generator().manual_seed(job.seed),
    )


def _val_loader(job: Job, info: distributed.DistInfo) -> DataLoader:
    data = job.data
    split_dir = Path(data.root) / data.val_split
    if not split_dir.is_dir() and not (packed_dir_for(data.root, data.val_split, data.packed_root)).is_dir():
        raise ConfigError(f"train.val_every={job.train.val_every} but {split_dir} does not exist "
                          "(set train.val_every=0 to train without validation)")
    # A fixed random subset (epoch 0 of a shuffled order), cut evenly across ranks so that every
    # rank runs the same number of validation batches.
    return make_dataloader(data, data.val_split, info.rank, info.world_size, job.seed,
                           shuffle=True, drop_last=info.world_size > 1, augment=False,
                           resize=job.model.vision.resize)


def _rollouts(job: Job, info: distributed.DistInfo):
    from roboflamingo.train.rollouts import TrainingRollouts

    if info.world_size > 1 and job.train.strategy == "fsdp":
        raise ConfigError("train.rollout_every: rollouts step the whole policy on rank 0, which FSDP shards; "
                          "set train.rollout_every=0 or train with ddp")
    if not info.is_main:
        return None
    cfg = job.train
    return TrainingRollouts(job.data, cfg.rollout_episodes, cfg.rollout_ep_len, job.seed)


def _weight_average(policy: torch.nn.Module, cfg: TrainConfig, info: distributed.DistInfo) -> WeightAverage | None:
    if not cfg.ema_decay:
        return None
    if info.world_size > 1 and cfg.strategy == "fsdp":
        raise ConfigError("train.ema_decay: the average is kept per full parameter, which FSDP shards; "
                          "set train.ema_decay=0 or train with ddp")
    return WeightAverage(policy, cfg.ema_decay)


def _averaged(ema: WeightAverage | None) -> contextlib.AbstractContextManager:
    """The averaged weights in the policy for the block, when the run keeps an average."""
    return ema.applied() if ema is not None else contextlib.nullcontext()


def _rescale_position(state: dict[str, Any], consumed: int, job: Job, info: distributed.DistInfo) -> int:
    """Batches to skip in the resumed epoch; exact when world size and batch size are unchanged."""
    old = state["world_size"] * state["batch_size"]
    new = info.world_size * job.data.batch_size
    if old == new and state["world_size"] == info.world_size:
        return consumed
    if info.is_main:
        print(f"[train] warning: resuming with {info.world_size} process(es) x batch {job.data.batch_size} "
              f"instead of {state['world_size']} x {state['batch_size']}: the data position is rounded and "
              "the run will not match an uninterrupted one exactly", file=sys.stderr)
    return consumed * old // new


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(per_rank: list[dict[str, Any]], info: distributed.DistInfo, fallback_seed: int) -> None:
    if len(per_rank) != info.world_size:  # a different world size: fresh but reproducible streams
        _seed_everything(fallback_seed + info.rank)
        return
    state = per_rank[info.rank]
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(job: Job) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(job), resolve=True)  # type: ignore[return-value]


def _progress(cfg: TrainConfig, master: bool, step: int):
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=step, disable=not (master and cfg.progress), desc="train",
                unit="step", dynamic_ncols=True)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class _Window:
    """Throughput over the steps since the last log line."""

    def __init__(self) -> None:
        self.steps, self.step_s, self.data_s, self.samples = 0, 0.0, 0.0, 0

    def add(self, step_s: float, data_s: float, samples: int) -> None:
        self.steps += 1
        self.step_s += step_s
        self.data_s += data_s
        self.samples += samples

    def summary(self) -> dict[str, float]:
        return {
            "samples_per_s": self.samples / max(self.step_s, 1e-9),
            "step_ms": 1000.0 * self.step_s / max(self.steps, 1),
            "data_wait_fraction": self.data_s / max(self.step_s, 1e-9),
        }


@torch.no_grad()
def _validate(model: torch.nn.Module, loader: DataLoader, cfg: TrainConfig, info: distributed.DistInfo,
              use_bf16: bool) -> float | None:
    """Mean loss over the first ``val_batches`` batches of the fixed validation subset, all ranks."""
    n = min(cfg.val_batches, len(loader))
    if n == 0:
        return None
    model.eval()
    total = 0.0
    # Starting the loader draws its base seed from the global torch RNG. Forked, so that a validation
    # the uninterrupted run did not make (the final one of a shorter run, later resumed) leaves the
    # training's dropout masks as they were; the RNG state saved in the next checkpoint is the same.
    with torch.random.fork_rng(devices=[]):
        for i, batch in enumerate(loader):
            if i == n:
                break
            with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, _ = model(_to_device(batch, info.device))
            total += float(loss)
    model.train()
    return distributed.all_reduce_mean([total / n], info)[0]


@torch.no_grad()
def _check_healthy(model: torch.nn.Module, policy: torch.nn.Module, batch: dict[str, Any],
                   info: distributed.DistInfo, use_bf16: bool, step: int, lr: float) -> None:
    """Before a checkpoint is written (and ``last`` moves to it): every trainable weight finite and
    within ``MAX_WEIGHT_ABS``, and a forward pass on the step's last batch (eval mode) with a finite
    loss. Every rank checks its part; any rank's finding stops all of them (``DivergedError``)."""
    problem = None
    for name, p in policy.named_parameters():
        if not p.requires_grad or not p.is_floating_point():
            continue
        local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP shard: each rank checks its own
        if local.numel() == 0:
            continue
        biggest = float(local.detach().abs().max())
        if not math.isfinite(biggest) or biggest > MAX_WEIGHT_ABS:
            problem = f"weight '{name}' reaches {biggest:g} (beyond {MAX_WEIGHT_ABS:g})"
            break
    model.eval()
    try:
        with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = model(batch)
    finally:
        model.train()
    if problem is None and not torch.isfinite(loss).all():
        problem = f"a forward pass on the step's last batch gives the loss {float(loss):g}"
    found = [p for p in distributed.gather_objects(problem, info) if p]
    if found:
        raise DivergedError(
            f"step {step}: {found[0]}: the run diverged (is train.lr={lr:g} too high?); "
            "no checkpoint was written for it, and `last` still points at the previous one"
        )


def _save(model, policy, optimizer, scheduler, root: Path, cfg: TrainConfig, info: distributed.DistInfo,
          position: dict[str, Any]) -> None:
    """Every rank contributes (optimizer shards, RNG states); rank 0 writes; all wait for it."""
    distributed.check_replicas(model, info)
    optim_state = distributed.optimizer_state(model, optimizer)
    full_weights = distributed.full_state_dict(model)
    rng = distributed.gather_objects(_rng_state(), info)
    if info.is_main:
        state = {**position, "optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng}

        def save_policy(directory: Path) -> None:
            if full_weights is None:
                policy.save_pretrained(directory)
            else:
                policy.save_pretrained(directory, state_dict=full_weights)

        write_checkpoint(root, position["step"], save_policy, state, keep=cfg.keep_checkpoints)
    distributed.barrier(info)
