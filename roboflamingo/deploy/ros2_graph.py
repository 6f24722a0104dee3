"""A private ROS 2 graph on this machine, driven from the project venv (which cannot import rclpy).

The ROS side (rosbridge_server, the sim robot as a ROS 2 node, the native control node) runs under
the ROS 2 venv's python (``make ros2``: ``.venv-ros2``, or ``$ROBOFLAMINGO_ROS2_PYTHON``). Every
process started here gets the same environment: a ``ROS_DOMAIN_ID`` of its own so that concurrent
runs on one machine never see each other's topics, discovery limited to this machine
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: no DDS traffic leaves it), Fast DDS, and this
checkout first on ``PYTHONPATH``. The tests and ``scripts/bench_serve.py`` use it; a real robot's
graph needs none of it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_ENV = "ROBOFLAMINGO_ROS2_PYTHON"
REQUIRE_ENV = "ROBOFLAMINGO_REQUIRE_ROS2"
DEFAULT_VENV = REPO_ROOT / ".venv-ros2"
# Fast DDS maps a domain to UDP ports 7400 + 250 * id; above 232 they overflow.
MAX_DOMAIN_ID = 232


def ros2_python() -> Path | None:
    """The ROS 2 venv's interpreter, or None when there is none."""
    configured = os.environ.get(PYTHON_ENV)
    path = Path(configured) if configured else DEFAULT_VENV / "bin" / "python"
    return path if path.exists() else None


def rosbridge_script(python: Path) -> Path:
    """``rosbridge_websocket`` as ``setup_ros2_venv.sh`` installs it into the venv's prefix."""
    return python.parent.parent / "lib" / "rosbridge_server" / "rosbridge_websocket"


def pick_domain_id() -> int:
    """A domain from 1..232 that differs between concurrent processes (pid-based, not random, so a
    test run can be repeated with the same graph)."""
    return 1 + os.getpid() % MAX_DOMAIN_ID


def graph_env(domain_id: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The ROS wheels re-exec python once with their library path; a value inherited from another
    # venv's process would skip that.
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra or {})
    return env


class Process:
    """A child process whose combined output is kept (the last lines) and can be waited on for a line."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], name: str, keep_lines: int = 2000) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.line_count = 0  # lines ever read: the index of lines[0] is line_count - len(lines)
        self._new_line = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, cwd=REPO_ROOT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self.line_count += 1
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first output line matching ``pattern``; raises with the output when the process ends or
        ``timeout_s`` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0  # lines checked, counted from the process's first line (older ones may have rotated out)
        with self._new_line:
            while True:
                first = self.line_count - len(self.lines)
                for line in list(self.lines)[max(0, seen - first):]:
                    m = regex.search(line)
                    if m:
                        return m
                seen = self.line_count
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._new_line.wait(min(left, 0.5))
        state = "timed out" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        raise RuntimeError(f"{self.name} {state} before printing /{pattern}/; its output:\n" + self.output())

    def output(self, last: int = 60) -> str:
        return "\n".join(list(self.lines)[-last:])

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{self.name} still running after {timeout_s} s; its output:\n" + self.output()) from None

    def stop(self, grace_s: float = 5.0) -> int:
        """SIGINT (rclpy and our commands shut down cleanly on it), then SIGKILL after ``grace_s``."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._reader.join(5)
        return self.proc.returncode


class Graph:
    """One private ROS 2 graph: start processes in it with ``run``, ``rosbridge`` for a rosbridge_server."""

    def __init__(self, python: Path | None = None, domain_id: int | None = None) -> None:
        python = python or ros2_python()
        if python is None:
            raise FileNotFoundError(
                f"no ROS 2 venv: run `make ros2` (builds {DEFAULT_VENV}) or set ${PYTHON_ENV}"
            )
        self.python = python
        self.domain_id = pick_domain_id() if domain_id is None else domain_id
        self.env = graph_env(self.domain_id)
        self.processes: list[Process] = []

    def run(self, argv: Sequence[str], name: str, python: str | Path | None = None,
            env: dict[str, str] | None = None) -> Process:
        """``python argv...`` in this graph (the ROS 2 venv's python unless another is given)."""
        p = Process([str(python or self.python), *argv], {**self.env, **(env or {})}, name)
        self.processes.append(p)
        return p

    def roboflamingo(self, args: Sequence[str], name: str, native: bool = True) -> Process:
        """``roboflamingo <args>`` under the ROS 2 venv (``native``) or this (the project) interpreter."""
        return self.run(["-m", "roboflamingo.cli", *args], name, python=None if native else sys.executable)

    def rosbridge(self, timeout_s: float = 60.0) -> tuple[Process, int]:
        """rosbridge_server's websocket node on 127.0.0.1 and a free port; returns it and the port."""
        script = rosbridge_script(self.python)
        if not script.exists():
            raise FileNotFoundError(f"{script} is missing: the ROS 2 venv was built without rosbridge (make ros2)")
        p = self.run([str(script), "--port", "0", "--address", "127.0.0.1"], "rosbridge_server")
        port = int(p.wait_for_line(r"Rosbridge WebSocket server started on port (\d+)", timeout_s).group(1))
        return p, port

    def close(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.processes.clear()

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
