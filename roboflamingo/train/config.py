"""``TrainConfig``: the optimisation recipe, the checkpoint cadence and the loggers.

Defaults follow RoboFlamingo's released recipe (reference/roboflamingo.md section 5): AdamW at 1e-4,
weight decay 0.1 on the cross-attention weights only, a constant schedule after warmup, gradient
clipping at 1.0. The batch size per process is the data config's (``data.batch_size``); the global
batch is ``data.batch_size * train.grad_accum * world_size`` (the original: 6 windows x 8 GPUs = 48).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roboflamingo.config import require_choice, require_positive

SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("auto", "ddp", "fsdp")
WANDB_MODES = ("offline", "online", "disabled")
MAX_LR = 1e37  # float32's largest value is 3.4e38; a diverging but representable lr is caught at the checkpoint


@dataclass
class TrainConfig:
    """Training loop settings.

    Args:
        steps: optimizer steps to train for (the run ends after this many, across resumes).
        grad_accum: micro-steps per optimizer step; gradients are synchronised only on the last.
        lr: peak learning rate (the original scales 1e-4 by batch_size/6); below 1e37, where the
            optimizer's float32 update would overflow. A run whose weights diverge anyway stops at
            its next checkpoint (exit 2), before the checkpoint is written.
        weight_decay: AdamW decay, applied to the cross-attention weights only
            (``policy.optimizer_param_groups``).
        betas: AdamW (beta1, beta2).
        eps: AdamW epsilon.
        warmup_steps: linear warmup from 0 to ``lr``.
        schedule: what follows warmup: constant | cosine | linear (decay to ``min_lr_ratio * lr``).
        min_lr_ratio: the floor of the cosine/linear decay as a fraction of ``lr``.
        grad_clip: max global gradient norm; 0 disables clipping.
        ema_decay: keep an exponential moving average of the trainable weights with this decay
            (diffusion_policy's EMA model; ``roboflamingo.train.ema``); validation, rollouts and every
            checkpoint's policy use the average, the optimizer trains the raw weights. 0: off.
        precision: auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 (autocast; refused on CPU).
        strategy: multi-process wrapper under torchrun: auto (= ddp) | ddp | fsdp (shards every
            submodule holding at least ``fsdp_min_params`` parameters; for the 9B backbone).
        fsdp_min_params: size threshold for a submodule to become its own FSDP unit.
        find_unused_parameters: DDP option; leave off (unused weights should be frozen instead).
        log_every: steps between metric lines (metrics.jsonl, TensorBoard, W&B).
        val_every: steps between validation losses; 0 disables validation.
        val_batches: batches of the validation split per validation (per process).
        rollout_every: steps between closed-loop rollouts of the policy on the tabletop the data was
            generated in (``roboflamingo.train.rollouts``), logged as ``rollout/success`` and
            ``rollout/<task>`` beside the loss; 0 disables them. Tabletop data only.
        rollout_episodes: single-task episodes per task in each rollout, with the evaluation
            sentences, from the same initial states every time.
        rollout_ep_len: control steps each rollout episode may take (CALVIN's protocol: 360).
        checkpoint_every: steps between checkpoints (a final one is always written).
        keep_checkpoints: newest checkpoints to keep; 0 keeps all. At least 2 are kept so a
            corrupt newest one can fall back to the previous.
        progress: show the tqdm bar (rank 0 only).
        tensorboard: write TensorBoard events to ``<run_dir>/tensorboard`` (needs the logging extra).
        wandb: log to Weights & Biases (needs the logging extra).
        wandb_project: W&B project name.
        wandb_mode: offline (default; sync later with ``wandb sync``) | online | disabled.
        device: torch device; empty picks cuda:<local_rank> when available, else cpu.
        threads: torch intra-op threads per process. 0 on a CPU: this process's share of the cores
            other processes leave free, re-checked every 10 s as other jobs come and go (a thread
            governor, ``roboflamingo.threads``); 0 on a GPU: torch's default. Set a number for
            repeatable CPU results (sums change with the thread count).
        run_name: W&B run name; empty uses the run directory's name.
        plot: when training ends, draw every series of ``metrics.jsonl`` (loss, validation loss, ...)
            into ``<run_dir>/metrics.png``; ``roboflamingo plot RUN_DIR`` redraws it at any time.
    """

    steps: int = 1000
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    precision: str = "auto"
    strategy: str = "auto"
    fsdp_min_params: int = 10_000_000
    find_unused_parameters: bool = False
    log_every: int = 10
    val_every: int = 0
    val_batches: int = 4
    rollout_every: int = 0
    rollout_episodes: int = 2
    rollout_ep_len: int = 360
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "roboflamingo"
    wandb_mode: str = "offline"
    device: str = ""
    threads: int = 0
    run_name: str = ""
    plot: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "log_every", "checkpoint_every", "val_batches", "rollout_episodes",
                     "rollout_ep_len"):
            require_positive(f"train.{name}", getattr(self, name))
        require_positive("train.lr", self.lr)
        if self.lr >= MAX_LR:
            raise ValueError(f"train.lr must be < {MAX_LR:g}: AdamW's first update, lr / (1 - beta1), is computed in "
                             f"float32 and overflows beyond it; got {self.lr:g}")
        for name in ("weight_decay", "eps", "warmup_steps", "min_lr_ratio", "grad_clip", "val_every",
                     "keep_checkpoints", "threads", "fsdp_min_params", "rollout_every"):
            require_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.min_lr_ratio > 1:
            raise ValueError(f"train.min_lr_ratio must be <= 1, got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")
        require_choice("train.schedule", self.schedule, SCHEDULES)
        require_choice("train.precision", self.precision, PRECISIONS)
        require_choice("train.strategy", self.strategy, STRATEGIES)
        require_choice("train.wandb_mode", self.wandb_mode, WANDB_MODES)


def check_data_fits_model(data, model) -> None:
    """The one cross-field rule between a dataset and the policy it trains (``data``: ``DataConfig``,
    ``model``: ``ModelConfig``): checked by ``train`` and, before any work, by the demo."""
    for key in ("window", "act_steps"):
        if getattr(data, key) != getattr(model, key):
            raise ValueError(
                f"data.{key} ({getattr(data, key)}) must equal model.{key} ({getattr(model, key)}): "
                "the dataset cuts windows the policy was built for"
            )
    if data.image_size not in (None, model.vision.image_size):
        raise ValueError(
            f"data.image_size ({data.image_size}) must be unset or equal model.vision.image_size "
            f"({model.vision.image_size}): the workers resize for the policy's vision encoder"
        )
