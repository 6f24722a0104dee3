"""Published weights in their original layouts, mapped strictly onto our policy.

Two sources, each loaded with every key accounted for:

- an **OpenFlamingo** ``checkpoint.pt`` (3B / 4B / 9B): ``perceiver.*``,
  ``lang_encoder.gated_cross_attn_layers.N.*`` and the LM's input embedding;
- a released **RoboFlamingo** ``.pth`` (``{epoch, model_state_dict, optimizer_state_dict,
  lr_scheduler_state_dict}``, keys prefixed ``module.``): the same plus the ``lm_head.*`` policy head.

The files are read by ``weights.read_weights``; an MPT-1B LM's frozen copies carry MosaicGPT names,
renamed as ``mosaic_gpt`` renames the LM itself.

What the original files hold besides the trainable tensors (open_flamingo #210): open_flamingo wraps
every decoder layer in a ``FlamingoLayer`` and keeps the old list as ``old_decoder_blocks``, so each
cross-attention block is saved twice (``gated_cross_attn_layers.N`` and
``<layers>.N.gated_cross_attn_layer``) and the frozen decoder weights survive under
``old_decoder_blocks.N`` (``get_checkpoint`` deletes only the first name of a shared tensor). The
duplicates must equal their primary copy, and the frozen LM copies must equal the LM read from
``model.lm.path``; anything else in the file is an error that names the keys. The only tensors
allowed to be absent are the frozen vision encoder and LM, which the original never saved and which
come from ``model.vision.weights`` / ``model.lm.path`` instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from roboflamingo.models.config import HeadConfig, ModelConfig
from roboflamingo.models.lm_adapters import decoder_layers, get_adapter
from roboflamingo.models.mosaic_gpt import mosaic_to_mpt_key
from roboflamingo.models.weights import check_state, copy_state, list_keys
from roboflamingo.robots.calvin import POSE_DIM

# -- RoboFlamingo file names ------------------------------------------------------------------------

# llm_name in the file name -> (our model config, LM family, cross_attn_every_n_layers) of mpt_dict.
BACKBONES = {
    "mpt_3b": ("of3b_mpt1b", "mpt", 1),
    "mpt_dolly_3b": ("of3b_mpt1b", "mpt", 1),
    "mpt_base_4b": ("of4b", "gpt_neox", 2),
    "mpt_4b": ("of4b", "gpt_neox", 2),
    "mpt_9b": ("of9b_mpt7b", "mpt", 4),
}


# The original's mpt_dict loads these as MosaicGPT (MPT-1B's remote code).
MOSAIC_BACKBONES = ("mpt_3b", "mpt_dolly_3b")


@dataclass
class PublishedName:
    """What a released checkpoint's file name says about how it was trained (eval_ckpts.py parses it)."""

    backbone: str  # llm_name, a key of BACKBONES
    model_config: str  # configs/model/<name>.yaml
    family: str
    cross_attn_every_n_layers: int
    fusion: str
    window: int
    act_steps: int


def parse_checkpoint_name(name: str) -> PublishedName:
    """``checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_12_mpt_3b_4.pth`` -> post, W=12, mpt_3b."""
    stem = Path(name).name
    # get_ckpt_name puts options (pooling, res_, tcp_, ...) between llm_name and the epoch; the
    # longest llm_name first: 'mpt_dolly_3b' must not be read as 'mpt_3b'.
    found = [k for k in sorted(BACKBONES, key=len, reverse=True) if f"_{k}_" in stem]
    if "llama" in stem:
        raise ValueError(f"{stem}: llama backbones are not supported (the original's llama path is broken)")
    if not found:
        raise ValueError(f"{stem}: no backbone in the file name (expected one of {list(BACKBONES)} "
                         f"before the epoch, as in ..._ws_12_mpt_3b_4.pth)")
    if found[0] == "mpt_9b":
        raise ValueError(
            f"{stem}: mpt_9b (MPT-7B) is not converted: the original pools MPT-7B's hidden_states[-1], "
            f"which its remote code changed (llm-foundry <= v0.1.1: the last block's input; >= v0.2.0: "
            f"the final normed output), and which revision the released files used is not known, so "
            f"parity with the original cannot be shown (the OpenFlamingo-9B checkpoint.pt still converts)"
        )
    words = f"_{stem.removesuffix('.pth')}_"
    for option, why in _REFUSED_OPTIONS:
        if option in words:
            raise ValueError(f"{stem}: the file name has '{option.strip('_')}': {why}; such a checkpoint "
                             f"cannot be converted exactly (rename it only if the name is wrong)")
    if "_no_gripper_" in words:
        raise ValueError(f"{stem}: the file name has 'no_gripper': trained on the static camera only "
                         f"(and eval_ckpts.py would still feed it the gripper camera); not supported")
    if "gripper" not in stem:
        raise ValueError(f"{stem}: the file name has no 'gripper': the original then evaluates it with the "
                         f"static camera only, which this policy does not support")
    # eval_ckpts.py: 'post' anywhere in the name means post fusion, anything else is evaluated as 'pre'.
    fusion = "post" if "post" in stem else "pre"
    # get_ckpt_name leaves '_ws_N' out when the window is eval_ckpts.py's default of 8.
    ws = re.search(r"_ws_(\d+)", stem)
    fur = re.search(r"_(\d+)_fur_step", stem)
    model_config, family, every = BACKBONES[found[0]]
    return PublishedName(found[0], model_config, family, every, fusion, int(ws.group(1)) if ws else 8,
                         int(fur.group(1)) if fur else 1)


# Options eval_calvin.py / eval_ckpts.py read from a file name, with why each is not converted.
_REFUSED_OPTIONS = (
    ("_two_way_", "two_way fusion (cameras stacked in the batch, features concatenated in the head)"),
    ("_vit_concat_", "vit_concat fusion (an FC head over the whole history)"),
    ("_fc_", "the FC head over the history (use_hist)"),
    ("_gpt_", "the GPT-2 decoder head"),
    ("_diff_", "the diffusion head"),
    ("_sep_", "a separate resampler for the gripper camera"),
    ("_state_", "robot state embedded into the head (use_state)"),
    ("_tcp_", "actions in the TCP frame, which the original turns into the world frame with robot_obs"),
    ("_res_", "residual cross-attention (a cloned copy of every block)"),
    ("_difws_", "a variable training window"),
    ("_latent_", "global latents"),
    ("_no_image_patch_", "no image patches"),
    ("_unfreeze_vit_", "a trained vision encoder"),
    ("_freeze_emb_", "frozen LM embeddings, whose added token rows the original re-draws at random on "
                     "every load"),
    ("_avg_", "average pooling over all positions, padding included"),
)


# -- the original's LSTM head -----------------------------------------------------------------------

_HEAD_LINEAR = re.compile(r"^(actions|gripper)\.mlp\.(\d+)\.(weight|bias)$")
_HEAD_RNN = re.compile(r"^rnn\.(weight|bias)_(ih|hh)_l(\d+)$")
# DeterministicDecoder's num_layers default, which the original's model factory never overrides.
ORIGINAL_LSTM_LAYERS = 4


def head_config_from_state(head: dict[str, torch.Tensor], dropout: float = 0.1) -> HeadConfig:
    """The HeadConfig that reproduces the original DeterministicDecoder held in ``head`` (``lm_head.*``).

    Sizes come from the tensors; ``pose_tanh`` and no input norm are what MLPTanhHead / the
    original do; ``sliding`` history is its inference behaviour.
    """
    layers = sorted({int(m.group(3)) for k in head if (m := _HEAD_RNN.match(k))})
    if not layers or not {"actions.mlp.0.weight", "gripper.mlp.0.weight"} <= set(head):
        raise ValueError(f"not the original LSTM head (DeterministicDecoder): keys [{list_keys(head)}]")
    extra = [f"lm_head.{k}" for k in head if (m := _HEAD_RNN.match(k)) and int(m.group(3)) >= ORIGINAL_LSTM_LAYERS]
    if extra:
        # The original loads with strict=False: it would drop these and run its 4 layers.
        raise ValueError(
            f"unexpected keys [{list_keys(extra)}]: the original's DeterministicDecoder always builds "
            f"{ORIGINAL_LSTM_LAYERS} LSTM layers (l0-l{ORIGINAL_LSTM_LAYERS - 1}) and its strict=False load "
            f"ignores these, so a {len(layers)}-layer conversion would not act as it does"
        )
    if layers != list(range(ORIGINAL_LSTM_LAYERS)):
        absent = [f"lm_head.rnn.*_l{i}" for i in range(ORIGINAL_LSTM_LAYERS) if i not in layers]
        raise ValueError(
            f"missing keys [{', '.join(absent)}]: the original's DeterministicDecoder always builds "
            f"{ORIGINAL_LSTM_LAYERS} LSTM layers and would leave these at their random initialisation"
        )
    hidden = head["rnn.weight_hh_l0"].shape[1]
    linears = sorted({int(m.group(2)) for k in head if (m := _HEAD_LINEAR.match(k)) and m.group(1) == "actions"})
    widths = [int(head[f"actions.mlp.{i}.weight"].shape[0]) for i in linears[:-1]]
    return HeadConfig(type="lstm", hidden_size=int(hidden), num_layers=len(layers), dropout=dropout,
                      mlp_widths=widths, input_norm=False, pose_tanh=True, lstm_history="sliding",
                      float16_actions=True)


def map_head(head: dict[str, torch.Tensor], act_steps: int) -> dict[str, torch.Tensor]:
    """Original ``lm_head.*`` tensors -> our ``action_head.*`` tensors.

    The original's MLPs are ``Sequential(Linear, ReLU, ..., Linear, Tanh|Sigmoid)`` with the Linears at
    even indices, as ours (without the final squashing). Its gripper is one sigmoid unit per step; ours
    is two logits per step, so the unit z becomes logits (0, z): softmax gives p(open) = sigmoid(z)
    exactly, and argmax picks open exactly when the original's sigmoid(z) > 0.5 does.
    """
    out: dict[str, torch.Tensor] = {}
    last = max(int(m.group(2)) for k in head if (m := _HEAD_LINEAR.match(k)) and m.group(1) == "gripper")
    for key, value in head.items():
        m = _HEAD_LINEAR.match(key)
        if m and m.group(1) == "gripper" and int(m.group(2)) == last:
            if value.shape[0] != act_steps:
                raise ValueError(f"lm_head.{key} has {value.shape[0]} outputs, expected one per action step "
                                 f"({act_steps})")
            two = value.new_zeros((2 * act_steps, *value.shape[1:]))
            two[1::2] = value  # row 2a = logit of "close" (0), row 2a+1 = the original's logit
            out[f"action_head.{key}"] = two
        elif m or _HEAD_RNN.match(key):
            out[f"action_head.{key}"] = value
        else:
            raise ValueError(f"lm_head.{key}: not a parameter of the original LSTM head; only "
                             f"rnn.*, actions.mlp.* and gripper.mlp.* are supported")
    return out


# -- flamingo backbone keys -------------------------------------------------------------------------

def _lm_key(name: str, family: str) -> str:
    return (mosaic_to_mpt_key(name) or name) if family == "mpt" else name


def split_flamingo_state(state: dict[str, torch.Tensor], policy) -> tuple[dict, dict, dict, list]:
    """Sort the keys of an (OpenFlamingo or RoboFlamingo) state dict, ``module.`` already stripped.

    Returns ``(load, aliases, frozen, unexpected)``: ``load`` maps our policy key -> tensor for
    what the file provides; ``aliases`` maps a duplicate's file key -> (our key, tensor);
    ``frozen`` maps our (frozen, file-sourced) key -> the file's copy; ``unexpected`` lists file keys
    that are none of these.
    """
    bb = policy.backbone
    family = bb.cfg.lm.family
    layers = get_adapter(family).layers_path
    ours = dict(policy.named_parameters())
    xattn = re.compile(rf"^lang_encoder\.(?:gated_cross_attn_layers\.(\d+)|{re.escape(layers)}\.(\d+)"
                       rf"\.gated_cross_attn_layer)\.(.+)$")
    old_block = re.compile(rf"^lang_encoder\.(?:old_decoder_blocks\.(\d+)|{re.escape(layers)}\.(\d+)"
                           rf"\.decoder_layer)\.(.+)$")
    load: dict[str, torch.Tensor] = {}
    aliases: dict[str, tuple[str, torch.Tensor]] = {}
    frozen: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    head: dict[str, torch.Tensor] = {}
    # RoboFlamingo keeps the whole CLIP model under vision_encoder (image tower at visual.*, the text
    # tower beside it); OpenFlamingo only the image tower.
    full_clip = any(k.startswith("vision_encoder.visual.") for k in state)
    for key, value in state.items():
        if key.startswith("lm_head."):
            head[key[len("lm_head."):]] = value
            continue
        if key.endswith(ROTARY_BUFFER) and (xattn.match(key) or old_block.match(key)):
            # transformers < 4.35 saved GPT-NeoX's rotary frequencies as a persistent buffer of
            # every layer; they are computed from the config, so they are checked, not loaded.
            frozen[f"rotary:{key}"] = value
            continue
        if key.startswith("perceiver."):
            target, primary = f"backbone.{key}", True
        elif m := xattn.match(key):
            idx = m.group(1) or m.group(2)
            target, primary = f"backbone.gated_cross_attn_layers.{idx}.{m.group(3)}", m.group(1) is not None
        elif m := old_block.match(key):
            idx = m.group(1) or m.group(2)
            target = f"backbone.lang_encoder.{_lm_key(f'{layers}.{idx}.{m.group(3)}', family)}"
            primary = False
        elif key.startswith("lang_encoder."):
            target, primary = f"backbone.lang_encoder.{_lm_key(key[len('lang_encoder.'):], family)}", True
        elif key.startswith("vision_encoder.visual." if full_clip else "vision_encoder."):
            sub = key.removeprefix("vision_encoder.").removeprefix("visual." if full_clip else "")
            target, primary = f"backbone.vision_encoder.{sub}", True
        else:
            unexpected.append(key)
            continue
        if target not in ours:
            unexpected.append(key)
        elif not ours[target].requires_grad:
            frozen[target] = value
        elif primary:
            load[target] = value
        else:
            aliases[key] = (target, value)
    # Head parameters of variants we do not build (use_state embeddings, ...) are unexpected keys.
    unexpected += [f"lm_head.{k}" for k in head if not (_HEAD_LINEAR.match(k) or _HEAD_RNN.match(k))]
    head = {k: v for k, v in head.items() if _HEAD_LINEAR.match(k) or _HEAD_RNN.match(k)}
    if head:
        load.update(map_head(head, policy.model_config.act_steps))
    return load, aliases, frozen, unexpected


def load_flamingo_state(policy, state: dict[str, torch.Tensor], source: str, with_head: bool,
                        check_frozen: bool = True) -> dict[str, int]:
    """Strictly copy an original-layout state dict into ``policy`` (its trainable tensors).

    Every trainable tensor of the backbone (and of the head when ``with_head``) must be in the file;
    every key of the file must be one of those, a duplicate equal to one, or a frozen copy equal to
    what was read from ``model.vision.weights`` / ``model.lm.path`` (checked unless
    ``check_frozen=False``). Returns counts of what was loaded / checked.
    """
    check_dtypes(state, source)
    load, aliases, frozen, unexpected = split_flamingo_state(state, policy)
    params = dict(policy.named_parameters())
    required = {n: p for n, p in params.items() if p.requires_grad and (with_head or not n.startswith("action_head."))}
    if not with_head:
        unexpected += sorted(f"lm_head.{k[len('action_head.'):]}" for k in load if k.startswith("action_head."))
        load = {k: v for k, v in load.items() if not k.startswith("action_head.")}
    check_state(required, load, source, "the policy built from its config", unexpected)
    for key, (target, value) in aliases.items():
        if not torch.equal(value, load[target]):
            raise ValueError(f"{source}: '{key}' is a duplicate of '{target}' but holds different values")
    rotary = {k.removeprefix("rotary:"): v for k, v in frozen.items() if k.startswith("rotary:")}
    frozen = {k: v for k, v in frozen.items() if not k.startswith("rotary:")}
    _check_rotary(policy, rotary, source)
    if check_frozen and not frozen and with_head:
        raise ValueError(
            f"{source}: holds no frozen LM weights (no 'lang_encoder.old_decoder_blocks.*', which the "
            f"original trainer always saves), so nothing shows it was trained on model.lm.path; pass "
            f"check_frozen=false to convert it without that check"
        )
    if check_frozen:
        differ = [k for k, v in frozen.items()
                  if tuple(v.shape) != tuple(params[k].shape) or not torch.equal(v.to(params[k].dtype), params[k].data)]
        if differ:
            raise ValueError(
                f"{source}: frozen weights saved in the file differ from the ones read from "
                f"model.vision.weights / model.lm.path, so the file was trained on another backbone: "
                f"[{list_keys(differ)}] (check_frozen=false skips this check)"
            )
    copy_state(required, load)
    return {"loaded": len(load), "aliases_checked": len(aliases), "frozen_checked": len(frozen) if check_frozen else 0}


ROTARY_BUFFER = "rotary_emb.inv_freq"


def _check_rotary(policy, saved: dict[str, torch.Tensor], source: str) -> None:
    """Saved rotary frequencies must belong to a decoder layer the LM has, and be the ones our LM
    computes from its config."""
    if not saved:
        return
    lm = policy.backbone.lang_encoder
    ours = [m.inv_freq for m in lm.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    if not ours:
        raise ValueError(f"{source}: holds rotary frequencies ({list_keys(saved)}) but the LM has no rotary embedding")
    adapter = get_adapter(policy.backbone.cfg.lm.family)
    n_layers = len(decoder_layers(lm, adapter))
    where = re.compile(rf"^lang_encoder\.(?:old_decoder_blocks\.(\d+)|{re.escape(adapter.layers_path)}\.(\d+)"
                       rf"\.decoder_layer)\.(.+)\.{re.escape(ROTARY_BUFFER)}$")
    stray = []
    for key in saved:
        m = where.match(key)
        index = int(m.group(1) or m.group(2)) if m else n_layers
        if index >= n_layers or not _has_submodule(lm, f"{adapter.layers_path}.{index}.{m.group(3)}"):
            stray.append(key)
    if stray:
        raise ValueError(f"{source}: unexpected keys [{list_keys(stray)}]: rotary frequencies of a decoder layer "
                         f"the LM does not have ({n_layers} layers, {adapter.layers_path}.0-{n_layers - 1})")
    want = ours[0].detach().float().cpu()
    bad = [k for k, v in saved.items()
           if tuple(v.shape) != tuple(want.shape) or not torch.allclose(v.float(), want, rtol=1e-6, atol=0)]
    if bad:
        raise ValueError(f"{source}: rotary frequencies [{list_keys(bad)}] differ from the ones model.lm.path's "
                         f"config gives (shape {tuple(want.shape)}): another rotary_pct / rotary_emb_base")


def _has_submodule(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def check_dtypes(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a file whose floating tensors are not float32, naming the dtype.

    The original trainer's ``--precision fp16`` / ``bf16`` runs ``model.half()`` / ``.bfloat16()``
    and saves that: its frozen LM copies and rotary frequencies are rounded, and its evaluation loads
    them over the LM, so no float32 policy built from ``model.lm.path`` acts as it does.
    """
    floats = [k for k, v in state.items() if v.is_floating_point()]
    other = [k for k in floats if state[k].dtype != torch.float32]
    if other:
        dtypes = sorted({str(state[k].dtype).removeprefix("torch.") for k in other})
        raise ValueError(
            f"{source}: holds {'/'.join(dtypes)} tensors ({len(other)} of {len(floats)}, e.g. '{sorted(other)[0]}'), "
            f"expected float32: saved by the original trainer with --precision fp16 or bf16, whose rounded frozen "
            f"LM copies its evaluation loads over the LM; convert a checkpoint trained with --precision fp32 or amp"
        )


def head_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("lm_head."):]: v for k, v in state.items() if k.startswith("lm_head.")}


def embedding_key_present(state: dict[str, torch.Tensor]) -> bool:
    """Whether the file holds the LM input embeddings (absent when trained with ``--freeze_embed``)."""
    return any(k.startswith("lang_encoder.") and k.endswith(("wte.weight", "embed_tokens.weight", "embed_in.weight"))
               for k in state)


def roboflamingo_model_config(model: ModelConfig, name: PublishedName, state: dict[str, torch.Tensor]) -> ModelConfig:
    """``model`` with what the released file says: fusion, window, act_steps and trainable embeddings."""
    if model.lm.family != name.family or model.lm.cross_attn_every_n_layers != name.cross_attn_every_n_layers:
        raise ValueError(
            f"the file name says backbone '{name.backbone}' (model={name.model_config}: family "
            f"{name.family}, cross-attention every {name.cross_attn_every_n_layers} layers) but the model "
            f"config has family {model.lm.family}, every {model.lm.cross_attn_every_n_layers}"
        )
    if not embedding_key_present(state):
        raise ValueError(
            "the file holds no LM input embeddings (trained with --freeze_embed): the original then "
            "re-draws the rows of its added tokens (<image>, <|endofchunk|>, <PAD>) at random on every "
            "load, so no conversion can reproduce it"
        )
    # The original's preprocessing, which its weights were trained and evaluated with (open_clip 2.20).
    vision = replace(model.vision, resize="pil_bicubic", token_ln_post=False)
    lm = model.lm
    if name.backbone in MOSAIC_BACKBONES:
        # MosaicGPT's hidden_states[-1], which the original pools, is the input of its last block
        # (whatever format model.lm.path holds the same weights in).
        lm = replace(lm, hidden_state="last_block_input")
    return replace(model, vision=vision, lm=lm, fusion=name.fusion, window=name.window, act_steps=name.act_steps,
                   use_state=False, train_embeddings=True, freeze_resampler=False, unfreeze_vision=False)


def pose_dim_check(head: dict[str, torch.Tensor], act_steps: int) -> None:
    last = max(int(m.group(2)) for k in head if (m := _HEAD_LINEAR.match(k)) and m.group(1) == "actions")
    rows = head[f"actions.mlp.{last}.weight"].shape[0]
    if rows != POSE_DIM * act_steps:
        raise ValueError(f"lm_head.actions.mlp.{last}.weight has {rows} outputs, expected "
                         f"{POSE_DIM} x act_steps ({act_steps}) = {POSE_DIM * act_steps}")
