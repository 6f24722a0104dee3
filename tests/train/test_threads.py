"""Thread choice that degrades gracefully under contention (issue 18, case 9); clocks and /proc injected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from roboflamingo import threads
from roboflamingo.eval.policies import default_torch_threads
from roboflamingo.threads import ThreadGovernor, choose_threads


@pytest.mark.parametrize(
    "cores, load, workers, expected",
    [(2, 0.0, 1, 2), (2, 1.0, 1, 1), (2, 0.4, 1, 2), (2, 0.6, 1, 1), (2, 7.0, 1, 1),
     (2, 0.0, 2, 1), (8, 2.0, 3, 2), (16, 0.0, 4, 4), (1, 0.0, 1, 1)],
)
def test_threads_are_the_free_cores_split_between_workers(monkeypatch, cores, load, workers, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    assert choose_threads(0, workers, load=load) == expected
    assert choose_threads(3, workers, load=load) == 3  # an explicit setting always wins


def test_other_load_excludes_our_own_threads_and_children(monkeypatch):
    monkeypatch.setattr(threads, "_running_tasks", lambda: 5)
    monkeypatch.setattr(threads, "_own_running", lambda pid=None: 3)
    assert threads.other_load(samples=3, interval_s=0.0) == 2.0
    monkeypatch.setattr(threads, "_running_tasks", lambda: None)  # no /proc: assume an idle machine
    assert threads.other_load(samples=1) == 0.0


def test_own_running_counts_at_least_the_calling_thread():
    assert threads._own_running() >= 1  # this thread is running while it reads /proc


def test_eval_workers_use_the_shared_choice(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "other_load", lambda: 4.0)
    assert default_torch_threads(2) == 2
    assert default_torch_threads(2, batch_size=8) == 4  # the simulators wait during its forward
    assert default_torch_threads(1, batch_size=4, batch_groups=2) == 2  # other groups step meanwhile


def test_the_governor_rechecks_on_its_own_clock(monkeypatch):
    now = {"t": 0.0}
    choices = iter([1, 1, 2])
    monkeypatch.setattr(threads, "choose_threads", lambda requested, workers: next(choices))
    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(every_s=10.0, clock=lambda: now["t"])
        assert gov.update() == 1 and torch.get_num_threads() == 1
        now["t"] = 5.0
        assert gov.update() == 1  # not due yet: no /proc read
        now["t"] = 10.0
        assert gov.update() == 1
        now["t"] = 25.0
        assert gov.update() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_the_package_asks_openmp_to_wait_passively_unless_told_otherwise(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import roboflamingo, os; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
