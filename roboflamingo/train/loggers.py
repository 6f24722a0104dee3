"""Where training metrics go: ``metrics.jsonl`` always, TensorBoard and Weights & Biases on request.

Both optional loggers are imported only when enabled, and a missing package fails at start-up (before
any data is read) with the install hint, not at the first log line an hour later. W&B defaults to
offline mode: runs are written under ``<run_dir>/wandb`` and uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import uuid
from pathlib import Path
from typing import Any

from roboflamingo.config import ConfigError
from roboflamingo.io import atomic_write_text
from roboflamingo.train.config import TrainConfig

METRICS = "metrics.jsonl"
INSTALL_HINT = "pip install 'roboflamingo[logging]'"


def check_available(cfg: TrainConfig) -> None:
    """Raise ``ConfigError`` naming the option and the install command when a logger is missing."""
    wanted = [("train.tensorboard", "tensorboard", cfg.tensorboard),
              ("train.wandb", "wandb", cfg.wandb and cfg.wandb_mode != "disabled")]
    for option, package, enabled in wanted:
        if enabled and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{option}=true needs the '{package}' package, which is not installed: {INSTALL_HINT} "
                f"(or pip install {package}), or set {option}=false"
            )


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines logged after ``step``: a resumed run repeats those steps and would
    otherwise log them twice."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash that made this a resume
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class MetricLoggers:
    """Fan one metrics dict out to every enabled sink. Create it on rank 0 only."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, config: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.jsonl = open(run_dir / METRICS, "a", buffering=1)  # line-buffered: a crash loses <= 1 line
        self.tb = None
        self.wandb_run = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if cfg.wandb and cfg.wandb_mode != "disabled":
            import wandb

            # A stable id kept in the run directory makes a resumed run continue the same W&B run.
            id_file = run_dir / "wandb_id"
            if not id_file.is_file():
                atomic_write_text(id_file, uuid.uuid4().hex[:16])
            self.wandb_run = wandb.init(
                project=cfg.wandb_project,
                name=cfg.run_name or run_dir.name,
                id=id_file.read_text().strip(),
                resume="allow",
                dir=str(run_dir),
                mode=cfg.wandb_mode,
                config=config,
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN; null marks a diverged value
