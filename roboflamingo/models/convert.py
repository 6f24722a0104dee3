"""``roboflamingo convert src=FILE dst=DIR``: published weights -> our checkpoint directory.

- A released RoboFlamingo ``.pth`` becomes a complete policy: backbone tensors and the LSTM head
  mapped strictly (see ``published.py``), fusion / window / act_steps / backbone read from the file
  name, the original's tanh pose and sigmoid gripper reproduced exactly, identity normalization (the
  original normalizes nothing: CALVIN's actions are already in [-1, 1]).
- An OpenFlamingo ``checkpoint.pt`` gives the backbone; the head is freshly initialised from
  ``head`` and ``seed``, and the statistics are identity: a starting point for training.

The result is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``), so
``roboflamingo eval checkpoint=DST`` and ``roboflamingo serve checkpoint=DST`` take it directly. The
frozen vision encoder and LM are named in ``config.json`` by absolute path and identity (size,
sha256), so the result loads from any working directory and, moved, finds them through the search
path (``models/towers.py``); ``--bundle`` copies them in instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from roboflamingo.config import ConfigError, require_choice
from roboflamingo.models.config import HeadConfig, ModelConfig

FORMATS = ("auto", "roboflamingo", "openflamingo")


@dataclass
class Job:
    """``roboflamingo convert SRC DST``: a published RoboFlamingo / OpenFlamingo file as our checkpoint.

    Args:
        src: the published file (RoboFlamingo ``.pth`` or OpenFlamingo ``checkpoint.pt``).
        dst: the checkpoint directory to write.
        format: ``auto`` (a file with ``lm_head.*`` tensors is RoboFlamingo), or force one.
        model: the backbone; ``model.vision.weights``, ``model.lm.path`` and ``model.lm.tokenizer``
            must name local files. For RoboFlamingo, ``fusion``, ``window``, ``act_steps`` and whether
            the embeddings are trained come from the file (name and keys), not from this group.
        head: the fresh head for an OpenFlamingo backbone (a RoboFlamingo head is read from its tensors).
        fusion, window, act_steps: override what the RoboFlamingo file name says ("" / 0: the
            name's), for a renamed file.
        check_frozen: compare the frozen LM / vision copies the original saves with the ones read from
            ``model.lm.path`` / ``model.vision.weights`` (a mismatch means another backbone).
        trust_pickle: unpickle arbitrary objects from ``src`` (only for a file you trust; plain tensor
            files never need it).
        seed: initialisation of a fresh head (OpenFlamingo).
        overwrite: replace an existing checkpoint in ``dst``.
        bundle: copy the frozen vision encoder and LM (and tokenizer) files into ``dst/towers/``.
    """

    src: str = ""
    dst: str = ""
    format: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    fusion: str = ""
    window: int = 0
    act_steps: int = 0
    check_frozen: bool = True
    trust_pickle: bool = False
    seed: int = 0
    overwrite: bool = False
    bundle: bool = False

    def __post_init__(self) -> None:
        require_choice("format", self.format, FORMATS)
        if self.fusion:
            require_choice("fusion", self.fusion, ("post", "pre"))
        if self.window < 0 or self.act_steps < 0:
            raise ValueError(f"window and act_steps must be >= 0 (0 = from the file name), "
                             f"got {self.window}, {self.act_steps}")


def _detect(job: Job, state: dict) -> str:
    if job.format != "auto":
        return job.format
    return "roboflamingo" if any(k.startswith("lm_head.") for k in state) else "openflamingo"


def convert(job: Job) -> dict:
    """Do the conversion; returns a summary (also printed by :func:`run` as its last line)."""
    import torch

    from roboflamingo.models import published
    from roboflamingo.models.checkpoint import WEIGHTS_FILE
    from roboflamingo.models.normalization import identity_stats
    from roboflamingo.models.policy import RoboFlamingoPolicy
    from roboflamingo.models.weights import read_weights

    if not job.src or not job.dst:
        raise ConfigError("convert needs src=<published file> and dst=<checkpoint directory>")
    dst = Path(job.dst)
    if (dst / WEIGHTS_FILE).exists() and not job.overwrite:
        raise ConfigError(f"{dst} already holds a checkpoint; pass overwrite=true to replace it")
    state = read_weights(job.src, trust_pickle=job.trust_pickle, unpickle_option="trust_pickle=true")
    published.check_dtypes(state, job.src)  # before anything reads a rounded value as a mismatch
    kind = _detect(job, state)
    if kind == "roboflamingo":
        name = published.parse_checkpoint_name(job.src)
        if job.fusion:
            name.fusion = job.fusion
        name.window = job.window or name.window
        name.act_steps = job.act_steps or name.act_steps
        model = published.roboflamingo_model_config(job.model, name, state)
        head_tensors = published.head_state(state)
        head = published.head_config_from_state(head_tensors)
        published.pose_dim_check(head_tensors, model.act_steps)
    else:
        model = replace(job.model, train_embeddings=published.embedding_key_present(state))
        head = job.head
    torch.manual_seed(job.seed)
    policy = RoboFlamingoPolicy(model, head)
    counts = published.load_flamingo_state(policy, state, job.src, with_head=kind == "roboflamingo",
                                           check_frozen=job.check_frozen)
    # The original normalizes nothing (CALVIN's rel_actions are already scaled into [-1, 1]).
    policy.set_normalization(identity_stats())
    policy.save_pretrained(dst, bundle=job.bundle)
    return {"format": kind, "src": job.src, "dst": str(dst), "fusion": model.fusion, "window": model.window,
            "act_steps": model.act_steps, "train_embeddings": model.train_embeddings,
            "trainable_params": policy.num_trainable_parameters(), **counts}


def run(job: Job) -> int:
    try:
        summary = convert(job)
    except (ValueError, FileNotFoundError) as e:
        print(f"roboflamingo convert: {e}", file=sys.stderr)
        return 1
    print(f"converted {summary['format']} weights {summary['src']} -> {summary['dst']}", file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0
