"""The package as a user installs it: a wheel, installed (not editable) into a fresh venv, runs the
commands from an empty directory outside the repository: generate, train, eval and serve.

torch and the other dependencies are not downloaded again: the fresh venv sees this environment's
site-packages through a ``.pth`` file, and the wheel is installed with ``--no-deps``. Its own
site-packages come first on ``sys.path``, so ``roboflamingo`` is the installed copy, which the test
checks before anything else.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from packaging.version import Version

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# The fast tiny model of the training tests, on the generated 32/16 px images.
MODEL = ["model=tiny", "head=lstm", "model.window=4", "model.vision.image_size=32", "model.vision.width=64",
         "model.vision.layers=1", "model.resampler.depth=1", "model.resampler.num_latents=8", "model.lm.hidden_size=64",
         "model.lm.num_heads=2", "model.lm.intermediate_size=128", "model.lm.bpe_merges=2000", "head.num_layers=2"]
ENV = ["env.static_size=32", "env.gripper_size=16", "env.renderer=tiny"]


def _build_wheel(out: Path) -> Path:
    """The wheel of a copy of the source (setuptools writes build/ and egg-info/ beside it)."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "roboflamingo", src / "roboflamingo", ignore=shutil.ignore_patterns("__pycache__"))
    # Without isolation when this environment has the build backend pyproject asks for (no download).
    try:
        local_backend = Version(importlib.metadata.version("setuptools")) >= Version("77")
    except importlib.metadata.PackageNotFoundError:
        local_backend = False
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out / "dist"), str(src)]
    if local_backend:
        cmd.insert(5, "--no-build-isolation")
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (out / "dist").glob("roboflamingo-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(bin dir, environment)`` of a fresh venv with the wheel installed, not editable."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "--quiet",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ROBOFLAMINGO_CONFIG_DIR", "ROBOFLAMINGO_ENVS_DIR", "ROBOFLAMINGO_WEIGHTS")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HF_HUB_CACHE=str(root / "hf-cache"))
    return venv, env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An empty directory outside the repository, where every command runs."""
    path = tmp_path_factory.mktemp("user")
    assert not path.resolve().is_relative_to(REPO)
    return path


def _run(installed, workdir, *args, timeout=600) -> subprocess.CompletedProcess:
    venv, env = installed
    proc = subprocess.run([str(venv / "bin" / "roboflamingo"), *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"roboflamingo {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_installed_package_is_the_wheel_not_this_checkout(installed, workdir):
    venv, env = installed
    code = ("import roboflamingo, json; from roboflamingo.config import config_dir; "
            "from roboflamingo.sim.scene import envs_dir; "
            "print(json.dumps([roboflamingo.__file__, str(config_dir()), str(envs_dir()), roboflamingo.__version__]))")
    out = subprocess.run([venv / "bin" / "python", "-c", code], cwd=workdir, env=env, check=True, capture_output=True,
                         text=True).stdout
    import json

    module, configs, envs, version = json.loads(out)
    site = venv.resolve()
    for path in (module, configs, envs):
        assert Path(path).resolve().is_relative_to(site), f"{path} is not inside the fresh venv {site}"
    assert (Path(configs) / "train.yaml").is_file() and (Path(envs) / "scenes" / "D.yaml").is_file()
    assert version == importlib.metadata.version("roboflamingo")


def test_generate_train_eval_and_serve_from_an_empty_directory(installed, workdir):
    venv, env = installed
    _run(installed, workdir, "generate", "root=data", "mode=single", "tasks=[turn_on_led,turn_off_led]",
         "train_scenes=[A]", "val_scenes=[D]", "episodes_per_task=2", "val_episodes_per_task=1", "workers=1",
         "progress=false", *ENV)
    assert (workdir / "data" / "training" / "ep_start_end_ids.npy").is_file()

    _run(installed, workdir, "train", *MODEL, "data.root=data", "data.batch_size=2", "data.num_workers=0",
         "train.steps=3", "train.checkpoint_every=3", "train.val_every=0", "train.progress=false", "train.threads=1",
         "run_dir=runs/train")
    assert (workdir / "runs" / "train" / "checkpoints" / "last" / "pretrained_model" / "config.json").is_file()

    _run(installed, workdir, "eval", "checkpoint=runs/train", "eval.num_chains=1", "eval.ep_len=3",
         "eval.progress=false", "env.render=false", *ENV, "policy.device=cpu", "run_dir=runs/eval")
    assert (workdir / "runs" / "eval" / "results.json").is_file()

    server = subprocess.Popen([str(venv / "bin" / "roboflamingo"), "serve", "checkpoint=runs/train", "port=0",
                               "policy.device=cpu"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # blocks until the server says where it listens (or exits)
        match = re.search(r"on (ws://[\d.]+:\d+)", line)
        assert match, f"the server did not start: {line!r}\n{server.stderr.read() if server.poll() is not None else ''}"
        client = textwrap.dedent("""
            import sys
            import numpy as np
            from roboflamingo.deploy.client import PolicyClient
            with PolicyClient(sys.argv[1]) as client:
                client.reset()
                obs = {"rgb_static": np.zeros((32, 32, 3), np.uint8), "rgb_gripper": np.zeros((16, 16, 3), np.uint8),
                       "robot_obs": np.zeros(15)}
                action = client.step(obs, "turn on the led")
            assert action.shape == (7,) and abs(action[6]) == 1.0, action
            print("ok")
        """)
        done = subprocess.run([venv / "bin" / "python", "-c", client, match.group(1)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "ok", done.stderr[-3000:]
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err[-3000:]
    assert "served 1 sessions, 1 steps" in out
