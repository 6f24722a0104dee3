"""The OpenFlamingo-style backbone: one frame + one instruction -> one feature vector.

::

    rgb_static  --ViT--> patches --+                        (fusion=post: one resampler pass per
    rgb_gripper --ViT--> patches --+--Perceiver--> latents   camera, latents concatenated;
                                                   |         fusion=pre: patches concatenated first)
    <image>{instruction}<|endofchunk|> --> LM layers, each N-th preceded by a gated cross-attention
                                           to the latents --> last hidden states --pool--> feature

Cross-attention is attached by composition: a forward pre-hook on each chosen decoder layer runs
``gated_cross_attn_layers[i]`` on the layer's input hidden states. The LM's own modules and
``state_dict`` keys are untouched; the visual latents reach the hooks only inside
:meth:`FlamingoBackbone.conditioned_on`, which clears them in ``finally``.

The layers below the first cross-attention block never see the image: while they are frozen they run
once per distinct instruction and are skipped in the batched pass (``text_prefix.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import nn

from roboflamingo.models.config import BUILTIN_TOKENIZER, ModelConfig
from roboflamingo.models.keypoints import SpatialSoftmax
from roboflamingo.models.lm_adapters import build_lm, decoder_layers, get_adapter
from roboflamingo.models.resampler import PerceiverResampler
from roboflamingo.models.text import IMAGE_TOKEN, build_tokenizer
from roboflamingo.models.text_prefix import TextPrefix
from roboflamingo.models.vision import build_vision_encoder, vision_width
from roboflamingo.models.xattn import GatedCrossAttentionBlock


@torch.no_grad()
def _init_new_rows(lm: nn.Module, old_rows: int) -> None:
    """Added tokens start at the mean of the pretrained embeddings, deterministically.

    A pretrained LM is re-read from its files when a checkpoint loads, so (frozen) rows for the added
    special tokens must come out the same on every build; a random init would not.
    """
    for emb in {id(e): e for e in (lm.get_input_embeddings(), lm.get_output_embeddings()) if e is not None}.values():
        weight = emb.weight
        weight[old_rows:] = weight[:old_rows].mean(dim=0)
        bias = getattr(emb, "bias", None)
        if bias is not None and bias.shape[0] == weight.shape[0]:
            bias[old_rows:] = bias[:old_rows].mean()


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden (N, L, D), attention_mask (N, L) -> (N, D): ``model.lm.pooling`` over the real tokens."""
    mask = attention_mask.bool()
    if pooling == "last":
        last = mask.long().sum(dim=1).clamp(min=1) - 1  # right padding: last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        weight = mask[..., None].to(hidden.dtype)
        return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
    # Max over real tokens only; the original pooled over padding too.
    return hidden.masked_fill(~mask[..., None], torch.finfo(hidden.dtype).min).amax(dim=1)


class FlamingoBackbone(nn.Module):
    def __init__(self, cfg: ModelConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = build_vision_encoder(cfg.vision, load_weights=load_weights)
        self.vis_dim = vision_width(cfg.vision)
        self.perceiver = PerceiverResampler(self.vis_dim, cfg.resampler)
        self.keypoints = SpatialSoftmax(self.vis_dim, cfg.keypoints) if cfg.keypoints else None

        lm_cfg = cfg.lm
        # Real configs name a tokenizer directory that may be empty while only inspecting sizes.
        has_tokenizer = lm_cfg.tokenizer == BUILTIN_TOKENIZER or bool(lm_cfg.tokenizer or lm_cfg.path)
        self.tokenizer = build_tokenizer(lm_cfg) if (has_tokenizer or load_weights) else None
        n_tokens = len(self.tokenizer) if self.tokenizer is not None else lm_cfg.embedding_size
        if self.tokenizer is not None and lm_cfg.embedding_size and lm_cfg.embedding_size != n_tokens:
            raise ValueError(
                f"model.lm.embedding_size is {lm_cfg.embedding_size} but the tokenizer has {n_tokens} tokens "
                f"(with the added special tokens); set it to {n_tokens} or 0"
            )
        if n_tokens <= 0:
            raise ValueError("model.lm.embedding_size must be > 0 when no tokenizer is available")
        self.lang_encoder = build_lm(lm_cfg, vocab=lm_cfg.vocab_size or n_tokens, load_weights=load_weights)
        old_rows = self.lang_encoder.get_input_embeddings().weight.shape[0]
        if old_rows != n_tokens:
            self.lang_encoder.resize_token_embeddings(n_tokens, mean_resizing=False)
            if n_tokens > old_rows and lm_cfg.path and load_weights:
                _init_new_rows(self.lang_encoder, old_rows)
        self.image_token_id = (
            self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) if self.tokenizer is not None else None
        )

        self.lm_dim = self.lang_encoder.get_input_embeddings().weight.shape[1]
        layers = decoder_layers(self.lang_encoder, get_adapter(lm_cfg.family))
        every = lm_cfg.cross_attn_every_n_layers
        # Indexed like the decoder layers (None where a layer has no block), as OpenFlamingo does.
        self.gated_cross_attn_layers = nn.ModuleList(
            GatedCrossAttentionBlock(self.lm_dim, self.vis_dim, lm_cfg.xattn_dim_head, lm_cfg.xattn_heads,
                                     lm_cfg.xattn_ff_mult, lm_cfg.xattn_gate_init)
            if (i + 1) % every == 0 else None
            for i in range(len(layers))
        )
        if not any(b is not None for b in self.gated_cross_attn_layers):
            raise ValueError(
                f"model.lm.cross_attn_every_n_layers ({every}) exceeds the LM's {len(layers)} layers: "
                f"no cross-attention would be inserted"
            )
        self._conditioning: tuple[torch.Tensor, torch.Tensor | None] | None = None
        depth = next(i for i, block in enumerate(self.gated_cross_attn_layers) if block is not None)
        # Kept off the module tree: the cache holds no weights of its own.
        self.text_prefix = TextPrefix(self.lang_encoder, layers, depth, get_adapter(lm_cfg.family).layer_returns_tuple)
        for i, layer in enumerate(layers):
            if self.gated_cross_attn_layers[i] is not None:
                layer.register_forward_pre_hook(partial(self._xattn_hook, i), with_kwargs=True)
        self.train_vision = False

    def attn_gate_openness(self) -> torch.Tensor:
        """Mean |tanh| of the cross-attention gates: 0 when the LM's output ignores the images."""
        gates = [block.attn_gate for block in self.gated_cross_attn_layers if block is not None]
        return torch.cat(gates).detach().tanh().abs().mean()

    # -- cross-attention plumbing -------------------------------------------------------------------

    def _xattn_hook(self, idx: int, module: nn.Module, args: tuple, kwargs: dict):
        if self._conditioning is None:
            return None  # the LM used on its own
        media, attends = self._conditioning
        block = self.gated_cross_attn_layers[idx]

        def attend(hidden: torch.Tensor) -> torch.Tensor:
            # The block's fp32 gates promote its output to fp32; a half-precision LM (eval.precision)
            # must get its own dtype back, or its half-precision LayerNorms refuse the fp32 input.
            return block(hidden, media, attends).to(hidden.dtype)

        if args:
            return (attend(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = attend(kwargs["hidden_states"])
        return args, kwargs

    @contextlib.contextmanager
    def conditioned_on(self, media: torch.Tensor, text_attends: torch.Tensor | None) -> Iterator[None]:
        """LM calls inside this block cross-attend to ``media`` (N, M, D_v)."""
        if self._conditioning is not None:
            raise RuntimeError("FlamingoBackbone.conditioned_on is not re-entrant")
        self._conditioning = (media, text_attends)
        try:
            yield
        finally:
            self._conditioning = None

    # -- forward ------------------------------------------------------------------------------------

    def encode_images(self, *cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One (N, 3, S, S) preprocessed batch per camera, in image-slot order -> visual latents
        (N, M, D_v) (``post`` fusion concatenates each camera's latents, ``pre`` their patch tokens)
        and, with ``model.keypoints``, each camera's keypoints side by side (N, cameras * 2K)."""
        n = cameras[0].shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_vision):
            # All cameras in one batch: one ViT call per frame instead of one per camera.
            tokens = self.vision_encoder(torch.cat(cameras, dim=0))[1]  # (K*N, v, D_v)
        points = None if self.keypoints is None else torch.cat(self.keypoints(tokens).split(n), dim=1)
        if self.cfg.fusion == "pre":
            return self.perceiver(torch.cat(tokens.split(n), dim=1)), points  # (N, latents, D_v)
        latents = self.perceiver(tokens)  # (K*N, latents, D_v)
        return torch.cat(latents.split(n), dim=1), points  # (N, K*latents, D_v)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (N, L), media (N, M, D_v) -> pooled last hidden states (N, D_lm)."""
        attends = None
        if self.image_token_id is not None:
            attends = (input_ids == self.image_token_id).cumsum(dim=1) > 0
        block_input = self.cfg.lm.hidden_state == "last_block_input"
        # last_block_input reads the layers' recorded inputs, which skipped layers would not hold.
        cached = not block_input and self.text_prefix.usable()
        with contextlib.ExitStack() as stack:
            if cached:
                stack.enter_context(self.text_prefix.skipped(self.text_prefix.hidden(input_ids, attention_mask)))
            stack.enter_context(self.conditioned_on(media, attends))
            out = self.lang_encoder.base_model(
                input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False,
                output_hidden_states=block_input,
            )
        # hidden_states holds each layer's input (recorded before its cross-attention hook runs),
        # then the final normed output.
        hidden = out.hidden_states[-2] if block_input else out.last_hidden_state  # (N, L, D_lm)
        return pool_tokens(hidden, attention_mask, self.cfg.lm.pooling)

    def forward(self, cameras: Sequence[torch.Tensor], input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """One feature per frame: each camera's images (N, 3, S, S), tokens (N, L) -> (N, D_lm), with
        ``model.keypoints`` followed by the cameras' keypoints (N, D_lm + cameras * 2K)."""
        media, points = self.encode_images(*cameras)
        feature = self.encode_text(input_ids, attention_mask, media)
        return feature if points is None else torch.cat((feature, points.to(feature.dtype)), dim=-1)
