"""This process among its peers: the ranks ``torchrun`` assigns, leaving their process group, and the
fault hook the resume tests use to end a run at a chosen point.

torch.distributed is imported only where a group is left, so a single-process evaluation never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

# The fault hook's exit status, distinct from errors (1, 2) and signals (negative).
CRASH_EXIT_CODE = 77


class Ranks(NamedTuple):
    rank: int
    world_size: int
    local_rank: int


def torchrun_ranks() -> Ranks:
    """This process's place as ``torchrun`` exports it (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``); (0, 1, 0)
    when started any other way."""
    return Ranks(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )


def leave_process_group(synchronize: bool) -> None:
    """Destroy the default process group, if one is up.

    With ``synchronize`` every rank first waits at a barrier for the others: a rank that tears down its
    gloo connections while a slower peer is still inside (or just past) a collective makes that peer
    abort (SIGABRT). Pass False on an error path, where the peers may never reach the barrier.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()


def crash_hook(env_var: str) -> Callable[[int], None]:
    """``check(count)``, which ends the process at once when ``count`` reaches the number in ``env_var``
    (unset or 0: never). ``os._exit``: no clean-up, no flush, no ``finally``, as after a SIGKILL, but at
    a point the test chooses instead of one a race picks."""
    raw = os.environ.get(env_var, "") or "0"
    try:
        after = int(raw)
    except ValueError:
        raise ValueError(f"{env_var} must be a whole number (a count to crash after), got {raw!r}") from None

    def check(count: int) -> None:
        if after and count >= after:
            os._exit(CRASH_EXIT_CODE)

    return check
