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
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from roboflamingo.config import ConfigError, load_yaml, save_yaml
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
from roboflamingo.train.config import TrainConfig, check_data_fits_model
from roboflamingo.train.loggers import MetricLoggers, check_available, truncate_metrics
from roboflamingo.train.optim import build_optimizer, build_scheduler

# Fault hook for the resume tests: the run exits hard right after this step (and its checkpoint, if due).
CRASH_AFTER_STEP_ENV = "ROBOFLAMINGO_TRAIN_CRASH_AFTER_STEP"

class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf; training stops before the update."""


class DivergedError(RuntimeError):
    """The weights about to be checkpointed are not a usable policy; nothing is saved and ``last`` stays."""


# No healthy trainable weight of these policies comes near this (they sit within a few units of 0);
# a run whose update blew up (lr=1e30 puts every weight near 1e30, still finite) crosses it at once.
MAX_WEIGHT_ABS = 1e4


@dataclass
class Job:
    """``configs/train.yaml``: what to train (model, head), on what (data), how (train), where.

    Args:
        run_dir: output directory (config, metrics, checkpoints); must not hold checkpoints unless
            ``resume`` is set.
        seed: initialisation, data order and augmentation; ranks add their rank for dropout.
        resume: continue from the newest complete checkpoint in ``run_dir``, with the run's own
            ``config.yaml``: ``resume=<run_dir>`` (or ``run_dir=<dir> resume=true``) needs no other
            override. One that would change the model, head, data or seed is refused with the key
            named; train settings (``train.steps``, logging, ...) and where and how fast data is read
            (``data.root``, ``data.num_workers``, ...) may change, and each change is recorded in
            ``<run_dir>/resumes.jsonl``.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/train"
    seed: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        check_data_fits_model(self.data, self.model)
        self.head.chunking.check(self.model.act_steps)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


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
        changes = _check_same_run(job, run_dir)
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
        policy = _load_policy(resume_from)
        policy.robot.require_compatible(_robot(job.data), f"checkpoint {resume_from}", f"data.root={job.data.root}")
    else:
        stats = _normalization(job.data) if master else None
        policy = _build_policy(job.model, job.head, distributed.broadcast_object(stats, info), _robot(job.data))
    policy.to(info.device)
    policy.train()
    model = distributed.wrap(policy, cfg, info)
    optimizer = build_optimizer(policy, cfg)
    scheduler = build_scheduler(optimizer, cfg)

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
        step, epoch, consumed = state["step"], state["epoch"], state["batches_in_epoch"]
        consumed = _rescale_position(state, consumed, job, info)
        _restore_rng(state["rng"], info, fallback_seed=job.seed + step)
        if master:
            print(f"[train] resumed from {resume_from} at step {step} (epoch {epoch}, batch {consumed})",
                  file=sys.stderr)
            _record_resume(run_dir, step, changes)
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
            val_loss = _validate(model, val_loader, cfg, info, use_bf16)
            if master and val_loss is not None:
                loggers.log(step, {"val/loss": val_loss})
        if cfg.rollout_every and (step % cfg.rollout_every == 0 or step == cfg.steps):
            if rollouts is not None:
                loggers.log(step, rollouts(policy))
            distributed.barrier(info)  # the other ranks wait for rank 0's rollouts
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _check_healthy(model, policy, batch, info, use_bf16, step, cfg.lr)
            _save(model, policy, optimizer, scheduler, ckpt_root, cfg, info,
                  {"step": step, "epoch": epoch, "batches_in_epoch": consumed, "seed": job.seed,
                   "world_size": info.world_size, "batch_size": job.data.batch_size})
        crash_check(step)

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


# What a resumed run may change: how long it trains and how it reports (every train.* key), and where
# and how fast it reads its data. Everything else decides what is trained: model, head, data, seed.
RESUME_MAY_CHANGE = ("train.", "data.root", "data.packed_root", "data.use_packed", "data.check_files_on_open",
                     "data.batch_size", "data.num_workers", "data.pin_memory", "data.prefetch_factor",
                     "data.persistent_workers")
# Where the run is, not what it is.
_NOT_COMPARED = ("run_dir", "resume")
RESUMES_FILE = "resumes.jsonl"


def _value(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _check_same_run(job: Job, run_dir: Path) -> dict[str, list]:
    """Resuming with a different model, head, data or seed would silently train something else: refuse
    it, naming each key; return the settings that may change and did (``key -> [old, new]``)."""
    from roboflamingo.config import schema_keys

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}
    saved = load_yaml(saved_path, Job)
    paths = [k.path for k in schema_keys(Job)]
    return _resume_diff({p: _value(saved, p) for p in paths}, {p: _value(job, p) for p in paths}, saved_path)


def _resume_diff(old: dict[str, Any], new: dict[str, Any], saved_path: Path) -> dict[str, list]:
    changed, refused = {}, []
    for path, value in old.items():
        if path in _NOT_COMPARED or new[path] == value:
            continue
        if path.startswith(RESUME_MAY_CHANGE):
            changed[path] = [value, new[path]]
        else:
            refused.append(f"{path} is {value!r} there, {new[path]!r} now")
    if refused:
        raise ConfigError(
            f"resume: {saved_path} describes another run: {'; '.join(refused[:5])}"
            f"{f' (and {len(refused) - 5} more)' if len(refused) > 5 else ''}. A resumed run keeps its model, "
            f"head, data and seed: drop those overrides (`roboflamingo train resume={saved_path.parent}` needs "
            "none) or start a new run_dir"
        )
    return changed


def _record_resume(run_dir: Path, step: int, changes: dict[str, list]) -> None:
    """Append the settings this resume changed to ``resumes.jsonl`` (config.yaml now holds the new ones)."""
    import json

    if not changes:
        return
    for key, (old, new) in changes.items():
        print(f"[train] resume changes {key}: {old!r} -> {new!r}", file=sys.stderr)
    line = {"step": step, "changed": {k: [_plain_value(o), _plain_value(n)] for k, (o, n) in changes.items()}}
    with open(run_dir / RESUMES_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def _plain_value(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def load_job(overrides: list[str]) -> Job:
    """The Job of ``roboflamingo train <overrides>``.

    ``resume=<run_dir>`` (or ``resume=true`` with ``run_dir``) continues that run from its own
    ``config.yaml``: the overrides given are applied on top of it (a group choice such as ``model=tiny``
    sets its whole section, as when composing), and :func:`train` refuses the ones that change what is
    trained. Without a saved config (a run that never started) it composes ``configs/train.yaml`` as
    a fresh run does.
    """
    from roboflamingo.config import load

    resume, run_dir, rest = _resume_overrides(overrides)
    saved = Path(run_dir) / "config.yaml"
    if resume and saved.is_file():
        return _resumed_job(saved, rest, run_dir)
    if resume == "path":
        # resume=<dir> names a run to continue; a typo must not start a fresh one with the defaults.
        raise ConfigError(f"resume={run_dir}: no run to continue there ({saved} does not exist)")
    if resume:
        rest = [*rest, f"run_dir={run_dir}", "resume=true"]
    return load("train", Job, rest)


_TRUE, _FALSE = ("true", "True", "yes", "1"), ("false", "False", "no", "0", "")


def help_overrides(overrides: list[str]) -> list[str]:
    """The overrides as ``--help`` composes them: ``resume=<run_dir>`` is ``run_dir=<run_dir> resume=true``."""
    resume, run_dir, rest = _resume_overrides(overrides)
    return [*rest, f"run_dir={run_dir}", "resume=true"] if resume else overrides


def _resume_overrides(overrides: list[str]) -> tuple[str, str, list[str]]:
    """``(how: "" not resuming, "flag" resume=true, "path" resume=<run_dir>; run_dir; the other
    overrides)``; ``resume=<path>`` is ``run_dir=<path> resume=true``."""
    resume, run_dir, rest = None, None, []
    for o in overrides:
        key, eq, value = o.lstrip("+").partition("=")
        if eq and key == "resume":
            resume = value
        elif eq and key == "run_dir":
            run_dir = value
        else:
            rest.append(o)
    if resume is None or resume in _FALSE:
        return "", "", overrides
    if resume in _TRUE:
        return "flag", run_dir or Job.__dataclass_fields__["run_dir"].default, rest
    if run_dir is not None and Path(run_dir).resolve() != Path(resume).resolve():
        raise ConfigError(f"resume={resume} names a run directory, but run_dir={run_dir} names another")
    return "path", resume, rest


def _resumed_job(saved_path: Path, overrides: list[str], run_dir: str) -> Job:
    from omegaconf import OmegaConf

    from roboflamingo.config import (
        check_override_keys,
        command_groups,
        compose,
        config_dir,
        schema_keys,
        schema_overrides,
        to_dataclass,
    )

    try:
        saved = OmegaConf.load(saved_path)
    except Exception as e:  # yaml errors come in several types
        raise ConfigError(f"{saved_path}: not valid YAML ({e})") from e
    tree = OmegaConf.merge(OmegaConf.structured(Job), saved)
    if overrides:
        groups = command_groups("train", Job)
        names = tuple(g.name for g in groups)
        check_override_keys(Job, overrides, names, source="configs/train.yaml")
        composed = OmegaConf.merge(OmegaConf.structured(Job), compose("train", schema_overrides(overrides, names)))
        touched = _touched(overrides, {g.name for g in groups}, config_dir())
        for key in schema_keys(Job):
            if any(key.path == t or key.path.startswith(t + ".") for t in touched):
                OmegaConf.update(tree, key.path, OmegaConf.select(composed, key.path), merge=False)
    tree.run_dir, tree.resume = run_dir, True
    # Refused changes are named here, before a half-changed config fails a cross-field check.
    before = OmegaConf.merge(OmegaConf.structured(Job), saved)
    paths = [k.path for k in schema_keys(Job)]
    _resume_diff({p: _plain_value(OmegaConf.select(before, p)) for p in paths},
                 {p: _plain_value(OmegaConf.select(tree, p)) for p in paths}, saved_path)
    return to_dataclass(tree, Job, source=str(saved_path))


def _touched(overrides: list[str], groups: set[str], root: Path) -> set[str]:
    """The dotted keys (and key prefixes) a list of overrides sets."""
    from omegaconf import OmegaConf

    out = set()
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in groups and (root / key / f"{value}.yaml").is_file() and \
                "# @package _global_" in (root / key / f"{value}.yaml").read_text():
            out |= _leaf_keys(OmegaConf.to_container(OmegaConf.load(root / key / f"{value}.yaml")))
        else:
            out.add(key)
    return out


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        if k == "defaults":
            continue
        if isinstance(v, dict) and v:
            out |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


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


def _load_policy(checkpoint: Path) -> torch.nn.Module:
    from roboflamingo.models.policy import RoboFlamingoPolicy

    return RoboFlamingoPolicy.from_pretrained(checkpoint, map_location="cpu")


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
