"""Fixtures for the training tests: a small CALVIN-layout dataset and a fast variant of the tiny policy.

Every run here trains the real ``RoboFlamingoPolicy`` on data read by the real data pipeline; the
model is the tiny config shrunk further (fewer, narrower layers, 4-frame windows) so a step takes
a fraction of a second on one CPU thread.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roboflamingo.data.synthetic import write_split

REPO = Path(__file__).resolve().parents[2]
STATIC, GRIPPER = (32, 32), (16, 16)

# The tiny model, narrower and shallower; still the full policy (ViT, resampler, LM with gated
# cross-attention, LSTM head).
FAST_MODEL = [
    "model=tiny", "head=lstm", "model.window=4",
    "model.vision.image_size=32", "model.vision.width=64", "model.vision.layers=1",
    "model.resampler.depth=1", "model.resampler.num_latents=8",
    "model.lm.hidden_size=64", "model.lm.num_heads=2", "model.lm.intermediate_size=128",
    "model.lm.bpe_merges=2000", "head.num_layers=2",
]
QUIET = ["train.progress=false", "train.threads=1", "data.num_workers=0"]


def write_dataset(root: Path, episodes: int = 2, frames: int = 24) -> Path:
    """``root/{training,validation}``: ``episodes`` episodes of ``frames`` frames, two annotated
    segments each (so windows come from several instructions)."""
    for split, seed, first in (("training", 0, 0), ("validation", 1, 1000)):
        eps = [(first + k * frames, first + (k + 1) * frames - 1) for k in range(episodes)]
        anns = []
        for k, (s, e) in enumerate(eps):
            mid = s + frames // 2
            anns.append((s, mid - 1, "open_drawer", "open the drawer"))
            anns.append((mid, e, "lift_red_block_table", f"lift the red block (take {k})"))
        write_split(root / split, eps, anns, STATIC, GRIPPER, seed=seed)
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train_data"))


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "roboflamingo.cli", "train", *args]


@pytest.fixture(scope="session")
def cli_command():
    """The argv that runs ``roboflamingo train <args>`` in a subprocess."""
    return _cli


@pytest.fixture(scope="session")
def run_subprocess(subprocess_env):
    def run(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=subprocess_env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def final_weights():
    """The tensors of a run's newest checkpoint (``checkpoints/last/pretrained_model/model.safetensors``)."""

    def load(run_dir: Path) -> dict[str, torch.Tensor]:
        return load_file(str(Path(run_dir) / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"))

    return load


@pytest.fixture(scope="session")
def train_args(dataset):
    """Overrides for a fast run of the real policy on ``dataset``; ``extra`` are appended."""

    def args(run_dir: Path, *extra: str) -> list[str]:
        return [*FAST_MODEL, *QUIET, f"data.root={dataset}", "data.batch_size=4", f"run_dir={run_dir}", *extra]

    return args
