"""How many intra-op threads a CPU job should use, given what else the machine is running.

torch's OpenMP team assumes it owns every core. When other processes are runnable, a parallel
region waits at its barrier for whichever thread the kernel has descheduled, and with the default
spin-waiting the waiting threads burn the very cores the late one needs: on 2 shared cores a
training step went from 0.23 s to 5-7 s. Two things fix it:

* passive waiting (``OMP_WAIT_POLICY=PASSIVE``, set by ``roboflamingo/__init__`` before torch loads
  its OpenMP runtime), so a thread that waits sleeps instead of spinning;
* ``choose_threads``: the cores this process may use minus the ones other processes keep busy now
  (runnable tasks from ``/proc``, our own threads and children excluded), split between workers;
  ``ThreadGovernor`` re-checks it while a long job runs, because load changes.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

WAIT_POLICY_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_passive_waiting() -> None:
    """Ask OpenMP runtimes loaded after this call to sleep rather than spin (user settings win)."""
    for key, value in WAIT_POLICY_ENV.items():
        os.environ.setdefault(key, value)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _running_tasks() -> int | None:
    """Runnable tasks on the machine right now (the 4th field of /proc/loadavg: running/total)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def _own_running(pid: int | None = None) -> int:
    """Our process's runnable threads plus those of its children (DataLoader workers)."""
    pid = os.getpid() if pid is None else pid
    count = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "R":
                count += 1
            children = (task / "children").read_text().split()
        except (OSError, ValueError, IndexError):
            continue
        count += sum(_own_running(int(c)) for c in children)
    return count


def other_load(samples: int = 5, interval_s: float = 0.01) -> float:
    """Cores kept busy by other processes, averaged over a few instantaneous samples; 0 if unknown."""
    values = []
    for i in range(samples):
        total = _running_tasks()
        if total is None:
            return 0.0
        values.append(max(0, total - _own_running()))
        if i + 1 < samples:
            time.sleep(interval_s)
    return sum(values) / len(values)


def choose_threads(requested: int = 0, workers: int = 1, load: float | None = None) -> int:
    """``requested`` if set, else this worker's share of the cores other processes leave free (>= 1)."""
    if requested > 0:
        return requested
    cores = available_cores()
    busy = other_load() if load is None else load
    free = max(1, math.floor(cores - busy + 0.5))
    return max(1, free // max(1, workers))


class ThreadGovernor:
    """Re-chooses torch's thread count every ``every_s`` seconds of a long CPU job (auto mode only)."""

    def __init__(self, every_s: float = 10.0, workers: int = 1, clock=time.monotonic) -> None:
        import torch

        self._torch = torch
        self.every_s = every_s
        self.workers = workers
        self.clock = clock
        self.next_check = clock()
        self.threads = torch.get_num_threads()

    def update(self) -> int:
        now = self.clock()
        if now >= self.next_check:
            self.next_check = now + self.every_s
            threads = choose_threads(0, self.workers)
            if threads != self.threads:
                self._torch.set_num_threads(threads)
                self.threads = threads
        return self.threads
