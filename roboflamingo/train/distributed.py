"""Process-group set-up and the few collectives the loop needs.

One code path for every launch: without ``torchrun`` the world has one process and every helper
here is a cheap no-op; under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment)
the group uses NCCL on GPUs and gloo on CPUs, and the policy is wrapped in DistributedDataParallel
or, for backbones too large to replicate (9B), FSDP (``fully_shard``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from roboflamingo.process import leave_process_group, torchrun_ranks
from roboflamingo.train.config import TrainConfig


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(cfg: TrainConfig) -> DistInfo:
    """Read the torchrun environment, pick the device and join the process group."""
    rank, world_size, local_rank = torchrun_ranks()
    if cfg.device:
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={cfg.device!r} but CUDA is not available")
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, device)


def cleanup(info: DistInfo, synchronize: bool = True) -> None:
    """Leave the group; ``synchronize=False`` on an error path (see ``leave_process_group``)."""
    if info.enabled:
        leave_process_group(synchronize)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: list[float], info: DistInfo) -> list[float]:
    """Mean over ranks of a few scalars (one collective for all of them)."""
    if not info.enabled or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / info.world_size).tolist()


def wrap(policy: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """The module the loop calls: the policy itself, or its DDP / FSDP wrapper under torchrun."""
    if not info.enabled:
        return policy
    if cfg.strategy == "fsdp":
        return _fully_shard(policy, cfg.fsdp_min_params)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        policy, device_ids=device_ids, find_unused_parameters=cfg.find_unused_parameters
    )


def _fully_shard(policy: nn.Module, min_params: int) -> nn.Module:
    """Shard every submodule holding at least ``min_params`` not-yet-sharded parameters, innermost
    first (the decoder layers of a 7B LM become one unit each), then the root for the rest."""
    from torch.distributed.fsdp import fully_shard

    def visit(module: nn.Module, parent: nn.Module | None) -> int:
        count = sum(visit(child, module) for child in module.children())
        count += sum(p.numel() for p in module.parameters(recurse=False))
        # fully_shard refuses containers, and MultiheadAttention reads out_proj's weight directly
        # (never calling its forward), so a sharded out_proj would never be unsharded.
        container = isinstance(module, (nn.ModuleList, nn.ModuleDict)) or isinstance(parent, nn.MultiheadAttention)
        if module is not policy and count >= min_params and not container:
            fully_shard(module)
            return 0
        return count

    visit(policy, None)
    fully_shard(policy)
    return policy


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def set_grad_sync(model: nn.Module, sync: bool) -> None:
    """Skip the gradient all-reduce on non-final accumulation micro-steps.

    DDP's ``require_backward_grad_sync`` is what ``no_sync()`` toggles, without the extra context
    manager around the forward and backward (nanoGPT's choice).
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model.require_backward_grad_sync = sync
    elif is_fsdp(model):
        model.set_requires_gradient_sync(sync)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the policy's full (unsharded) state dict on CPU, for ``save_pretrained``; a
    collective, so every rank calls it. ``None`` otherwise (the module's own tensors are full)."""
    if not is_fsdp(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_replicas(model: nn.Module, info: DistInfo) -> None:
    """Raise if DDP replicas have drifted apart (they must hold identical weights after every step)."""
    if not info.enabled or is_fsdp(model):
        return
    with torch.no_grad():
        sums = [float(p.double().sum()) for p in model.parameters() if p.requires_grad]
    fingerprints = gather_objects(sums, info)
    if any(f != fingerprints[0] for f in fingerprints[1:]):
        raise RuntimeError("data-parallel replicas hold different weights (rank fingerprints differ)")


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state (gathered from the shards under FSDP; a collective there)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)
    else:
        optimizer.load_state_dict(state)
