"""One writer per run directory (issue 31 item 5): a second run is refused naming the first one's pid,
and the lock goes away with its holder however it dies."""

from __future__ import annotations

import subprocess
import time

from roboflamingo import cli
from roboflamingo.io import DirLock


def _wait_for_lock(run_dir, pid, proc, timeout_s=120.0) -> bool:
    lock = run_dir / ".lock"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        # locked by it, and its config written (what a second run must not replace)
        if lock.is_file() and lock.read_text().startswith(f"{pid} ") and (run_dir / "config.yaml").is_file():
            return True
        time.sleep(0.05)
    return False


def test_a_second_train_run_into_a_busy_run_dir_is_refused_and_changes_nothing(
    tmp_path, train_args, cli_command, subprocess_env, capsys
):
    run_dir = tmp_path / "run"
    # The first run: long enough to still be training when the second one starts.
    first = subprocess.Popen(cli_command(train_args(run_dir, "train.steps=100000", "train.checkpoint_every=100000")),
                             env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for_lock(run_dir, first.pid, first), first.stderr.read() if first.poll() is not None else ""
        config = (run_dir / "config.yaml").read_text()
        # different settings, same directory
        assert cli.main(["train", *train_args(run_dir, "train.steps=2", "train.lr=3e-4", "seed=5")]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another process: pid {first.pid} on " in err and err.count("\n") == 1
        assert (run_dir / "config.yaml").read_text() == config
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()  # SIGKILL: no cleanup code runs
        first.wait(30)
    # the kernel dropped the dead run's lock: the directory is free again
    with DirLock(run_dir):
        pass
    assert cli.main(["train", *train_args(run_dir, "train.steps=1", "train.val_every=0", "resume=true")]) == 0


def test_the_lock_refuses_a_second_holder_in_the_same_process_and_is_released_on_exit(tmp_path):
    import os

    import pytest

    from roboflamingo.io import DirectoryLocked

    with DirLock(tmp_path / "d"):
        with pytest.raises(DirectoryLocked, match=rf"d is in use by another process: pid {os.getpid()} on "):
            DirLock(tmp_path / "d").acquire()
    with DirLock(tmp_path / "d"):  # released by the with block
        pass
