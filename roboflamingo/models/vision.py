"""The frozen image encoder: an open_clip vision transformer that returns its patch tokens.

Only the vision tower is built (open_clip's text tower is never used by the policy). A named model
(``ViT-L-14``) takes its architecture from open_clip's bundled model config, so no download is
needed; its weights come from a local file and are loaded strictly.
"""

from __future__ import annotations

from open_clip.factory import get_model_config
from open_clip.model import _build_vision_tower
from torch import nn

from roboflamingo.models.config import VisionConfig
from roboflamingo.models.weights import load_state, read_weights


def vision_cfg_dict(cfg: VisionConfig) -> tuple[int, dict]:
    """(embed_dim, open_clip vision_cfg) for ``cfg``; raises for an unknown or mismatched name."""
    if cfg.name == "custom":
        vision = {
            "image_size": cfg.image_size, "layers": cfg.layers, "width": cfg.width,
            "patch_size": cfg.patch_size, "head_width": cfg.head_width, "mlp_ratio": cfg.mlp_ratio,
        }
        # The pooled projection is unused (patch tokens feed the resampler); keep it small.
        return min(cfg.width, 64), vision
    full = get_model_config(cfg.name)
    if full is None or "vision_cfg" not in full:
        raise ValueError(f"model.vision.name '{cfg.name}' is not an open_clip model config (or 'custom')")
    vision = dict(full["vision_cfg"])
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"model.vision.name '{cfg.name}' is not a ViT; patch tokens need an open_clip ViT")
    if vision.get("image_size", 224) != cfg.image_size:
        raise ValueError(
            f"model.vision.image_size ({cfg.image_size}) must equal {cfg.name}'s own "
            f"({vision.get('image_size', 224)})"
        )
    return full["embed_dim"], vision


def vision_width(cfg: VisionConfig) -> int:
    return int(vision_cfg_dict(cfg)[1]["width"])


def build_vision_encoder(cfg: VisionConfig, load_weights: bool = True) -> nn.Module:
    """An open_clip ``VisionTransformer`` whose forward returns ``(pooled, tokens)``."""
    embed_dim, vision = vision_cfg_dict(cfg)
    vision["output_tokens"] = True
    # open_clip 2.20 (the original's) left ln_post off the patch tokens; >= 2.23 applies it to all.
    vision["final_ln_after_pool"] = not cfg.token_ln_post
    visual = _build_vision_tower(embed_dim, vision, quick_gelu=cfg.quick_gelu)
    if cfg.weights and load_weights:
        load_vision_weights(visual, cfg.weights)
    return visual


def load_vision_weights(visual: nn.Module, path: str) -> None:
    """Load open_clip weights strictly: a full CLIP state dict (its ``visual.*`` part) or a bare one."""
    state = read_weights(path, field="model.vision.weights")
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    load_state(visual.state_dict(keep_vars=True), state, f"model.vision.weights {path}", "the vision encoder")
