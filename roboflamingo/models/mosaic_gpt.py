"""MosaicGPT (the remote code MPT-1B ships with) read as transformers' ``MptForCausalLM``.

No remote code is run: the ``config.json`` is translated into an ``MptConfig`` (what MPT cannot
express is refused) and every parameter renamed. MosaicGPT's QK LayerNorm, which transformers' MPT
lacks, is added inside the fused q/k/v projection (``QKNormWqkv``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from roboflamingo.models.weights import load_state, read_hf_weights

MOSAIC_MODEL_TYPES = ("mosaic_gpt",)

# Block-level renames (MosaicGPT GPTBlock -> transformers MptBlock); the model level is below.
_MOSAIC_BLOCK = {
    "ln_1.weight": "norm_1.weight",
    "attn.Wqkv.weight": "attn.Wqkv.weight",
    "attn.out_proj.weight": "attn.out_proj.weight",
    "ln_2.weight": "norm_2.weight",
    "mlp.mlp_up.weight": "ffn.up_proj.weight",
    "mlp.mlp_down.weight": "ffn.down_proj.weight",
    # QK LayerNorm (MPT-1B has it): kept inside the fused projection, see QKNormWqkv.
    "attn.q_ln.weight": "attn.Wqkv.q_ln.weight",
    "attn.k_ln.weight": "attn.Wqkv.k_ln.weight",
}
_MOSAIC_BLOCK_KEY = re.compile(r"^(transformer\.blocks\.\d+)\.(.+)$")


def mosaic_to_mpt_key(name: str) -> str | None:
    """The transformers MPT name of a MosaicGPT parameter, or None if MPT has no such parameter.

    MPT keys pass through unchanged, so a state dict may mix both spellings.
    """
    if name in ("transformer.wte.weight", "lm_head.weight"):
        return name
    if name in ("transformer.ln_f.weight", "transformer.norm_f.weight"):
        return "transformer.norm_f.weight"
    m = _MOSAIC_BLOCK_KEY.match(name)
    if m:
        rest = m.group(2)
        if rest in _MOSAIC_BLOCK:
            return f"{m.group(1)}.{_MOSAIC_BLOCK[rest]}"
        if rest in _MOSAIC_BLOCK.values():
            return name
    return None


def mosaic_to_mpt_config(cfg: dict):
    """transformers ``MptConfig`` equivalent to a MosaicGPT ``config.json``; raises for what MPT lacks."""
    from transformers import MptConfig

    problems = []
    if not cfg.get("alibi", False):
        problems.append("alibi=false (learned positions; transformers' MPT always uses ALiBi)")
    if cfg.get("alibi_bias_max", 8) != 8:
        problems.append(f"alibi_bias_max={cfg.get('alibi_bias_max')} (transformers' MPT fixes 8)")
    if not cfg.get("no_bias", False):
        problems.append("no_bias=false (transformers' MPT has no biases)")
    if cfg.get("mlp_ratio", 4) != 4:
        problems.append(f"mlp_ratio={cfg.get('mlp_ratio')} (transformers' MPT fixes 4)")
    if problems:
        raise ValueError(f"this MosaicGPT cannot be mapped onto transformers' MPT: {'; '.join(problems)}")
    for key in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size"):
        if key not in cfg:
            raise ValueError(f"MosaicGPT config.json has no '{key}'")
    return MptConfig(
        d_model=cfg["d_model"], n_heads=cfg["n_heads"], n_layers=cfg["n_layers"], expansion_ratio=4,
        max_seq_len=cfg["max_seq_len"], vocab_size=cfg["vocab_size"], no_bias=True,
        attn_config={"softmax_scale": cfg.get("softmax_scale"), "clip_qkv": cfg.get("attn_clip_qkv"),
                     "alibi": True, "alibi_bias_max": 8},
        logit_scale=cfg.get("logit_scale"), tie_word_embeddings=True,
    )


class QKNormWqkv(nn.Linear):
    """MPT's fused q/k/v projection followed by MosaicGPT's QK LayerNorm (``attn_qk_ln``).

    MosaicGPT clips the projection, then normalizes the query and the key (each over all heads,
    weight only: the model has no biases); transformers' MPT has no such norm, so it lives here,
    where MptAttention calls ``Wqkv``, and the clipping moves in with it (in the same order).
    """

    def __init__(self, d_model: int, clip_qkv: float | None):
        super().__init__(d_model, 3 * d_model, bias=False)
        self.clip_qkv = clip_qkv
        self.q_ln = nn.LayerNorm(d_model, bias=False)
        self.k_ln = nn.LayerNorm(d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = super().forward(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.chunk(3, dim=-1)
        return torch.cat([self.q_ln(q), self.k_ln(k), v], dim=-1)


def _add_qk_norm(lm: nn.Module, d_model: int, clip_qkv: float | None) -> None:
    for block in lm.transformer.blocks:
        device = block.attn.Wqkv.weight.device
        block.attn.Wqkv = QKNormWqkv(d_model, clip_qkv).to(device)
        block.attn.clip_qkv = None  # applied inside Wqkv, before the norm


def load_mosaic_gpt(directory: str | Path, load_weights: bool = True) -> nn.Module:
    """A MosaicGPT directory (``model_type: mosaic_gpt``) as a transformers ``MptForCausalLM``.

    No remote code is run: the config is translated and every weight renamed; a MosaicGPT weight with
    no MPT counterpart, or an MPT weight the file lacks, is an error naming it.
    """
    from transformers import MptForCausalLM

    directory = Path(directory)
    raw_config = json.loads((directory / "config.json").read_text())
    config = mosaic_to_mpt_config(raw_config)
    lm = MptForCausalLM(config)
    if raw_config.get("attn_qk_ln", False):
        _add_qk_norm(lm, config.d_model, raw_config.get("attn_clip_qkv"))
    if not load_weights:
        return lm
    state, unmapped = {}, []
    for name, value in read_hf_weights(directory).items():
        target = mosaic_to_mpt_key(name.removeprefix("model."))
        if target is None:
            unmapped.append(name)
        else:
            state[target] = value
    if "transformer.wte.weight" in state:
        state.setdefault("lm_head.weight", state["transformer.wte.weight"])  # tied, as in MosaicGPT
    # Unexpected: a MosaicGPT weight with no MPT name, or one this config does not build (q_ln
    # weights without attn_qk_ln).
    load_state(lm.state_dict(keep_vars=True), state, str(directory),
               "transformers' MPT built from its config.json (MosaicGPT names renamed onto it)", unmapped)
    return lm


def is_mosaic_gpt(directory: Path) -> bool:
    config = directory / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in MOSAIC_MODEL_TYPES
