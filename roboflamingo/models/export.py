"""``roboflamingo export SRC DST [--bundle]``: a saved policy as a standalone, movable directory.

    roboflamingo export runs/x/checkpoints/last ship/my_policy --bundle

``SRC`` is anything ``from_pretrained`` takes (a policy directory of either format, a training
checkpoint, a run directory, a Hub id in the local cache); ``DST`` gets ``config.json`` +
``model.safetensors`` in the current format, without training state, its frozen towers located and
verified by sha256 (``models/towers.py``) and, with ``--bundle``, copied into ``DST/towers/`` so the
directory needs nothing else. No model is built: exporting a 3B policy reads no LM weights but to hash
them. ``huggingface_hub.upload_folder(folder_path=DST, repo_id=...)`` pushes the result as it is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from roboflamingo.config import ConfigError


@dataclass
class Job:
    """``roboflamingo export SRC DST``: a saved policy as a standalone, movable policy directory.

    Args:
        src: the saved policy: a policy directory, a training checkpoint (``runs/x/checkpoints/last``),
            a run directory, or a Hugging Face Hub id (``org/name``) already in the local cache.
        dst: the directory to write (a policy directory in the current format, without training state).
        bundle: copy the frozen towers (vision weights, LM and tokenizer directories) into
            ``dst/towers/``, so ``dst`` loads with nothing else on disk.
        overwrite: replace a policy already in ``dst``.
    """

    src: str = ""
    dst: str = ""
    bundle: bool = False
    overwrite: bool = False


def run(job: Job) -> int:
    from roboflamingo.models.checkpoint import CheckpointError, export_policy

    if not job.src or not job.dst:
        print("roboflamingo export: needs SRC and DST (roboflamingo export SRC DST [--bundle])", file=sys.stderr)
        return 2
    try:
        summary = export_policy(job.src, job.dst, bundle=job.bundle, overwrite=job.overwrite)
    except (ConfigError, ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"roboflamingo export: {e}", file=sys.stderr)
        return 1
    print(f"exported {summary['src']} -> {summary['dst']}{' (towers bundled)' if job.bundle else ''}",
          file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0
