"""What the benchmarks share: random-weight policies of any model config, and CALVIN-sized frames.

Imported as ``bench_common`` by the scripts next to it (``python scripts/bench_*.py`` puts this folder
on ``sys.path``).
"""

from __future__ import annotations

import os

import numpy as np

from roboflamingo.config import load
from roboflamingo.models.config import BUILTIN_TOKENIZER
from roboflamingo.models.inspect import Job
from roboflamingo.robots.calvin import RGB_GRIPPER, RGB_STATIC, ROBOT_OBS, ROBOT_OBS_DIM


def random_weights_job(model: str = "tiny", head: str = "lstm") -> tuple[Job, bool]:
    """``model=<model> head=<head>``, made buildable with random weights where it names weight or
    tokenizer files (``of3b_mpt1b``: nothing can be downloaded). Such a config gets CLIP's built-in
    tokenizer and keeps its LM's own embedding rows (``lm.vocab_size``), so its parameters and
    memory are the real model's. Returns the job and whether it was changed."""
    base = [f"model={model}", f"head={head}"]
    job = load("inspect", Job, base)
    lm = job.model.lm
    if lm.tokenizer == BUILTIN_TOKENIZER and not job.model.vision.weights:
        return job, False
    if not lm.vocab_size:
        raise ValueError(f"model={model}: no model.lm.vocab_size to size a random LM's embeddings with")
    overrides = [f"model.lm.tokenizer={BUILTIN_TOKENIZER}", "model.lm.path=", "model.lm.embedding_size=0",
                 "model.vision.weights="]
    return load("inspect", Job, base + overrides), True


def save_random_checkpoint(directory: str | os.PathLike, model: str = "tiny", head: str = "lstm") -> str:
    """A policy of ``model``/``head`` with seed-0 random weights and identity statistics, saved."""
    import torch

    from roboflamingo.models.normalization import identity_stats
    from roboflamingo.models.policy import RoboFlamingoPolicy

    job, _ = random_weights_job(model, head)
    torch.manual_seed(0)
    RoboFlamingoPolicy.from_config(job.model, job.head, identity_stats()).save_pretrained(directory)
    return str(directory)


def observation(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A raw CALVIN observation: 200x200 static and 84x84 gripper uint8 frames, robot_obs."""
    return {RGB_STATIC: rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
            RGB_GRIPPER: rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
            ROBOT_OBS: rng.normal(size=ROBOT_OBS_DIM).astype(np.float32)}
