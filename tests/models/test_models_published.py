"""Published weights: MosaicGPT names (models/mosaic_gpt.py), OpenFlamingo / RoboFlamingo key layouts, the convert command.

The fixture writes, from tiny configs, the files a user downloads: a MosaicGPT LM directory (MPT-1B's
remote-code names), an open_clip vision weights file, and checkpoints in the original layouts
(``module.`` prefix, both cross-attention aliases, ``old_decoder_blocks`` frozen copies, the
``lm_head`` LSTM + MLPTanhHead + MLPSigmoidHead). The tensors come from a *source* policy; what
we load must reproduce its backbone features and, for the head, an independent re-implementation of
the original's DeterministicDecoder at inference (action_head.py semantics).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from model_helpers import frame_obs, make_batch, make_stats, micro_config
from torch import nn

from roboflamingo import cli
from roboflamingo.config import to_yaml
from roboflamingo.models import mosaic_gpt, published
from roboflamingo.models.config import HeadConfig, LMConfig, VisionConfig
from roboflamingo.models.convert import Job, convert
from roboflamingo.models.lm_adapters import build_lm
from roboflamingo.models.normalization import identity_stats
from roboflamingo.models.policy import RoboFlamingoPolicy
from roboflamingo.models.vision import build_vision_encoder
from roboflamingo.transforms import preprocess_images

MPT_TO_MOSAIC = {"norm_1": "ln_1", "norm_2": "ln_2", "ffn.up_proj": "mlp.mlp_up", "ffn.down_proj": "mlp.mlp_down",
                 "transformer.norm_f": "transformer.ln_f"}
RELEASED = "checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_4_mpt_3b_4.pth"
INSTRUCTION = "open the drawer"
WIDTHS = [16, 8, 4]  # the original's 1024-512-256, shrunk


def _to_mosaic(name: str) -> str:
    for new, old in MPT_TO_MOSAIC.items():
        name = name.replace(new, old)
    return name


def _write_mosaic_dir(directory, seed: int = 0, **config_overrides):
    """A MosaicGPT checkpoint directory built from a random transformers MPT, and that MPT."""
    from transformers import MptConfig, MptForCausalLM

    torch.manual_seed(seed)
    ref = MptForCausalLM(MptConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=48, vocab_size=2600)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms away from 1, so a swapped name would show
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "mosaic_gpt", "architectures": ["MosaicGPT"], "d_model": 32, "n_heads": 2,
              "n_layers": 2, "max_seq_len": 48, "vocab_size": 2600, "mlp_ratio": 4, "alibi": True,
              "alibi_bias_max": 8, "no_bias": True, "attn_qk_ln": False, "attn_clip_qkv": None,
              "softmax_scale": None, "low_precision_layernorm": True, **config_overrides}
    (directory / "config.json").write_text(json.dumps(config))
    raw = {_to_mosaic(k): v.clone() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    torch.save(raw, directory / "pytorch_model.bin")
    return ref, raw


def _original_head(in_dim: int, hidden: int, act_steps: int) -> nn.Module:
    """The original DeterministicDecoder's parameters: nn.LSTM + MLPTanhHead + MLPSigmoidHead."""

    def mlp(out: int, squash: nn.Module) -> nn.Module:
        m = nn.Module()
        m.mlp = nn.Sequential(nn.Linear(hidden, WIDTHS[0]), nn.ReLU(), nn.Linear(WIDTHS[0], WIDTHS[1]), nn.ReLU(),
                              nn.Linear(WIDTHS[1], WIDTHS[2]), nn.ReLU(), nn.Linear(WIDTHS[2], out), squash)
        return m

    head = nn.Module()
    # The original's DeterministicDecoder always has 4 LSTM layers (published.ORIGINAL_LSTM_LAYERS).
    head.rnn = nn.LSTM(in_dim, hidden, num_layers=4, batch_first=True, dropout=0.1)
    head.actions = mlp(6 * act_steps, nn.Tanh())
    head.gripper = mlp(act_steps, nn.Sigmoid())
    return head.eval()


def _reference_actions(head: nn.Module, feats: list[torch.Tensor], window: int) -> tuple[np.ndarray, np.ndarray]:
    """The original's inference loop (DeterministicDecoder.forward on one frame at a time): run the LSTM
    with the stored hidden state until the history exceeds the window, then from zero over the last
    ``window`` frames; pose = tanh MLP, gripper = sigmoid > 0.5 -> +1 (open) else -1."""
    history, hidden, actions, p_open = [], None, [], []
    with torch.no_grad():
        for f in feats:
            x_t = f.reshape(1, 1, -1)
            history.append(x_t)
            if len(history) <= window:
                x, hidden = head.rnn(x_t, hidden)
            else:
                history.pop(0)
                hidden = None
                x, _ = head.rnn(torch.cat(history, dim=1), hidden)
            out = x[:, -1]
            pose = head.actions.mlp(out)[0, :6]
            grip = head.gripper.mlp(out)[0, 0]
            actions.append(np.r_[pose.numpy(), 1.0 if grip > 0.5 else -1.0])
            p_open.append(float(grip))
    return np.array(actions, np.float32), np.array(p_open)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    _, mosaic = _write_mosaic_dir(root / "mpt-1b-mosaic")
    vision_cfg = VisionConfig(name="custom", image_size=32, width=32, layers=1, patch_size=8, head_width=16)
    torch.manual_seed(3)
    torch.save(build_vision_encoder(vision_cfg).state_dict(), root / "vit.pt")
    lm = LMConfig(family="mpt", path=str(root / "mpt-1b-mosaic"), bpe_merges=2000, max_positions=48,
                  xattn_heads=2, xattn_dim_head=16)
    model = micro_config("mpt", lm=lm, vision=replace(vision_cfg, weights=str(root / "vit.pt")),
                         train_embeddings=True, window=4, act_steps=1)

    # The source of every trained tensor: a policy in our layout with open gates and trained embeddings.
    torch.manual_seed(1)
    source = RoboFlamingoPolicy.from_config(model, HeadConfig(hidden_size=16, num_layers=2, mlp_widths=WIDTHS))
    with torch.no_grad():
        for block in source.backbone.gated_cross_attn_layers:
            block.attn_gate.uniform_(0.3, 0.9)
            block.ff_gate.uniform_(0.3, 0.9)
        source.backbone.lang_encoder.get_input_embeddings().weight.add_(0.1)
    torch.manual_seed(2)
    head = _original_head(source.backbone.lm_dim, 16, act_steps=1)

    sd: dict[str, torch.Tensor] = {}
    for k, v in source.backbone.perceiver.state_dict().items():
        sd[f"perceiver.{k}"] = v.clone()
    for i, block in enumerate(source.backbone.gated_cross_attn_layers):
        for k, v in block.state_dict().items():
            sd[f"lang_encoder.gated_cross_attn_layers.{i}.{k}"] = v.clone()
            sd[f"lang_encoder.transformer.blocks.{i}.gated_cross_attn_layer.{k}"] = v.clone()
    sd["lang_encoder.transformer.wte.weight"] = source.backbone.lang_encoder.get_input_embeddings().weight.clone()
    for k, v in mosaic.items():  # frozen decoder weights, kept under open_flamingo's old list
        if k.startswith("transformer.blocks."):
            sd["lang_encoder.old_decoder_blocks." + k[len("transformer.blocks."):]] = v.clone()
    of_state = dict(sd)
    sd.update({f"lm_head.{k}": v.clone() for k, v in head.state_dict().items()})
    released = root / RELEASED
    torch.save({"epoch": 4, "model_state_dict": {f"module.{k}": v for k, v in sd.items()},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "lr_scheduler_state_dict": {"last_epoch": 10}}, released)
    torch.save(of_state, root / "checkpoint.pt")
    return {"root": root, "model": model, "source": source, "head": head, "released": released,
            "rf_state": {f"module.{k}": v for k, v in sd.items()}, "of": root / "checkpoint.pt"}


def _features(policy, batch, frames) -> list[torch.Tensor]:
    ids, mask = policy.tokenize([INSTRUCTION])
    out = []
    with torch.no_grad():
        for t in frames:
            obs = frame_obs(batch, 0, t)
            s = preprocess_images(torch.as_tensor(obs["rgb_static"])[None], policy.image_size)
            g = preprocess_images(torch.as_tensor(obs["rgb_gripper"])[None], policy.image_size)
            out.append(policy.backbone([s, g], ids, mask)[0])
    return out


def _episode(n: int = 7):
    batch = make_batch(b=1, t=n, a=1, seed=5)
    return batch, list(range(n))


# -- MosaicGPT ---------------------------------------------------------------------------------------

def test_mosaic_gpt_names_map_onto_transformers_mpt(tmp_path):
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.3.attn.Wqkv.weight") == "transformer.blocks.3.attn.Wqkv.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.3.attn.out_proj.weight") == \
        "transformer.blocks.3.attn.out_proj.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.0.ln_1.weight") == "transformer.blocks.0.norm_1.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.0.ln_2.weight") == "transformer.blocks.0.norm_2.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.0.mlp.mlp_up.weight") == "transformer.blocks.0.ffn.up_proj.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.0.mlp.mlp_down.weight") == \
        "transformer.blocks.0.ffn.down_proj.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.ln_f.weight") == "transformer.norm_f.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.wte.weight") == "transformer.wte.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.0.attn.q_ln.weight") == \
        "transformer.blocks.0.attn.Wqkv.q_ln.weight"
    assert mosaic_gpt.mosaic_to_mpt_key("transformer.blocks.0.attn.rotary.weight") is None

    ref, _ = _write_mosaic_dir(tmp_path / "lm")
    lm = build_lm(LMConfig(family="mpt", path=str(tmp_path / "lm")), vocab=0).eval()
    assert type(lm).__name__ == "MptForCausalLM"
    ids = torch.randint(0, 2600, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, ref(input_ids=ids).logits, atol=0, rtol=0)


def test_mosaic_gpt_features_mpt_lacks_are_refused(tmp_path):
    # QK LayerNorm (MPT-1B has it) is built; its weights must then be in the file, and only then.
    _write_mosaic_dir(tmp_path / "qk", attn_qk_ln=True)
    with pytest.raises(ValueError, match=r"missing keys \[transformer.blocks.0.attn.Wqkv.k_ln.weight"):
        build_lm(LMConfig(family="mpt", path=str(tmp_path / "qk")), vocab=0)
    _, raw = _write_mosaic_dir(tmp_path / "extra")
    raw["transformer.blocks.1.attn.q_ln.weight"] = torch.ones(32)
    torch.save(raw, tmp_path / "extra" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"unexpected keys \[transformer.blocks.1.attn.Wqkv.q_ln.weight\]"):
        build_lm(LMConfig(family="mpt", path=str(tmp_path / "extra")), vocab=0)
    _write_mosaic_dir(tmp_path / "lowbias", no_bias=False)
    with pytest.raises(ValueError, match="no_bias=false"):
        build_lm(LMConfig(family="mpt", path=str(tmp_path / "lowbias")), vocab=0)


# -- RoboFlamingo .pth -------------------------------------------------------------------------------

def test_released_checkpoint_reproduces_the_original(world, tmp_path):
    summary = convert(Job(src=str(world["released"]), dst=str(tmp_path / "ckpt"), model=world["model"]))
    assert summary["format"] == "roboflamingo" and summary["window"] == 4 and summary["fusion"] == "post"
    in_file = world["rf_state"]
    assert summary["aliases_checked"] == sum(".gated_cross_attn_layer." in k for k in in_file) > 0
    assert summary["frozen_checked"] == sum(".old_decoder_blocks." in k for k in in_file) == 2 * 6
    policy = RoboFlamingoPolicy.from_pretrained(tmp_path / "ckpt")
    hc = policy.head_config
    assert (hc.pose_tanh, hc.input_norm, hc.hidden_size, hc.num_layers, hc.mlp_widths) == (True, False, 16, 4, WIDTHS)
    for key, value in policy.normalization().items():  # identity: the original normalizes nothing
        np.testing.assert_array_equal(value, identity_stats()[key])

    # The converted policy reads the LM and vision tower as the original did (MosaicGPT's last-block
    # input, no ln_post on the patch tokens; tests/models/test_parity_original.py runs the original):
    # the source tensors under those same semantics are the reference here.
    vision, lm = policy.model_config.vision, policy.model_config.lm
    assert (vision.resize, vision.token_ln_post, lm.hidden_state) == ("pil_bicubic", False, "last_block_input")
    source = RoboFlamingoPolicy(replace(world["source"].model_config, vision=vision, lm=lm),
                                world["source"].head_config)
    source.load_state_dict(world["source"].state_dict())
    batch, frames = _episode(7)  # 7 frames with window 4: the sliding re-run from zero is exercised
    feats = _features(source.eval(), batch, frames)
    for ours, theirs in zip(_features(policy, batch, frames), feats):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    expected, p_open = _reference_actions(world["head"], feats, window=4)
    policy.reset()
    got, got_p = [], []
    for t in frames:
        obs = frame_obs(batch, 0, t)
        with torch.no_grad():
            _, grip = policy.step_outputs(obs, INSTRUCTION)
        got_p.append(float(grip[0, 0].softmax(-1)[1]))  # first action, the one gripper
    policy.reset()
    got = np.stack([policy.step(frame_obs(batch, 0, t), INSTRUCTION) for t in frames])
    # The original returns float16 actions (eval_utils.py), and so does a converted policy.
    np.testing.assert_allclose(got, expected.astype(np.float16).astype(np.float32), atol=2 ** -10)
    np.testing.assert_array_equal(got[:, :6], got[:, :6].astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(got_p, p_open, atol=1e-6)  # p(open) = the original's sigmoid, exactly mapped


def test_a_missing_key_is_named(world):
    gone = "module.lang_encoder.gated_cross_attn_layers.1.attn.to_q.weight"
    state = {k: v for k, v in world["rf_state"].items() if k != gone}
    policy = RoboFlamingoPolicy.from_config(world["model"], published.head_config_from_state(published.head_state(_strip(state))))
    with pytest.raises(ValueError, match=r"missing keys \[backbone.gated_cross_attn_layers.1.attn.to_q.weight\]"):
        published.load_flamingo_state(policy, _strip(state), "x.pth", with_head=True)
    head_less = {k: v for k, v in world["rf_state"].items() if k != "module.lm_head.rnn.bias_hh_l1"}
    with pytest.raises(ValueError, match=r"missing keys \[action_head.rnn.bias_hh_l1\]"):
        published.load_flamingo_state(policy, _strip(head_less), "x.pth", with_head=True)


def test_an_extra_or_inconsistent_key_is_named(world):
    rf = _strip(world["rf_state"])
    policy = RoboFlamingoPolicy.from_config(world["model"], published.head_config_from_state(published.head_state(rf)))
    for extra in ("lang_encoder.transformer.blocks.0.attn.q_ln.weight", "perceiver_gripper.latents",
                  "lm_head.embed_arm_state.0.weight"):
        with pytest.raises(ValueError, match=rf"unexpected keys \[.*{extra.replace('.', '[.]')}"):
            published.load_flamingo_state(policy, {**rf, extra: torch.zeros(3)}, "x.pth", with_head=True)
    alias = "lang_encoder.transformer.blocks.0.gated_cross_attn_layer.attn_gate"
    with pytest.raises(ValueError, match=rf"'{alias}' is a duplicate of .* different values"):
        published.load_flamingo_state(policy, {**rf, alias: rf[alias] + 1}, "x.pth", with_head=True)
    frozen = "lang_encoder.old_decoder_blocks.1.mlp.mlp_up.weight"
    with pytest.raises(ValueError, match=r"trained on another backbone: \[backbone.lang_encoder.transformer.blocks.1.ffn"):
        published.load_flamingo_state(policy, {**rf, frozen: rf[frozen] + 1}, "x.pth", with_head=True)
    published.load_flamingo_state(policy, {**rf, frozen: rf[frozen] + 1}, "x.pth", with_head=True, check_frozen=False)
    # The vision tower, if a file holds it (RoboFlamingo's whole CLIP model), is a checked frozen copy.
    conv = policy.backbone.vision_encoder.conv1.weight.detach()
    counts = published.load_flamingo_state(policy, {**rf, "vision_encoder.visual.conv1.weight": conv.clone()},
                                           "x.pth", with_head=True)
    assert counts["frozen_checked"] == 13
    with pytest.raises(ValueError, match=r"another backbone: \[backbone.vision_encoder.conv1.weight\]"):
        published.load_flamingo_state(policy, {**rf, "vision_encoder.visual.conv1.weight": conv + 1}, "x.pth",
                                      with_head=True)


def test_files_the_original_could_not_have_evaluated_as_converted_are_refused(world, tmp_path):
    """No embedding key (--freeze_embed) and no frozen LM copies are refused, each with its reason."""
    rf = world["rf_state"]
    no_embedding = {k: v for k, v in rf.items() if not k.endswith("wte.weight")}
    src = tmp_path / RELEASED
    torch.save({"epoch": 4, "model_state_dict": no_embedding}, src)
    with pytest.raises(ValueError, match=r"no LM input embeddings \(trained with --freeze_embed\)"):
        convert(Job(src=str(src), dst=str(tmp_path / "a"), model=world["model"]))
    no_frozen = {k: v for k, v in rf.items() if ".old_decoder_blocks." not in k}
    torch.save({"epoch": 4, "model_state_dict": no_frozen}, src)
    with pytest.raises(ValueError, match=r"no frozen LM weights .* pass check_frozen=false"):
        convert(Job(src=str(src), dst=str(tmp_path / "b"), model=world["model"]))
    assert convert(Job(src=str(src), dst=str(tmp_path / "b"), model=world["model"], check_frozen=False))["loaded"]
    # Saved rotary frequencies (transformers < 4.35) need an LM that has them.
    rotary = {**rf, "module.lang_encoder.old_decoder_blocks.0.attention.rotary_emb.inv_freq": torch.ones(4)}
    torch.save({"epoch": 4, "model_state_dict": rotary}, src)
    with pytest.raises(ValueError, match=r"holds rotary frequencies .* the LM has no rotary embedding"):
        convert(Job(src=str(src), dst=str(tmp_path / "c"), model=world["model"]))


def test_sigmoid_gripper_maps_exactly_per_action_step():
    """With A future steps the original's A sigmoid units become A pairs of logits (0, z_a)."""
    from roboflamingo.models.heads import MLP

    torch.manual_seed(0)
    head = _original_head(in_dim=8, hidden=16, act_steps=3)
    mapped = published.map_head(head.state_dict(), act_steps=3)
    ours = MLP([16, *WIDTHS, 2 * 3])
    ours.load_state_dict({k[len("action_head.gripper."):]: v for k, v in mapped.items()
                          if k.startswith("action_head.gripper.")})
    x = torch.randn(5, 16) * 3
    with torch.no_grad():
        p_open = ours(x).unflatten(-1, (3, 2)).softmax(-1)[..., 1]
        torch.testing.assert_close(p_open, head.gripper.mlp(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="expected one per action step"):
        published.map_head(head.state_dict(), act_steps=1)


def _strip(state):
    return {k.removeprefix("module."): v for k, v in state.items()}


@pytest.mark.parametrize("name, expected", [
    ("checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_12_mpt_3b_4.pth", ("of3b_mpt1b", "post", 12, 1)),
    ("checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_12_mpt_dolly_3b_2.pth", ("of3b_mpt1b", "post", 12, 1)),
    ("ABC_D/checkpoint_gripper_pre_ws_8_3_fur_step_mpt_base_4b_3.pth", ("of4b", "pre", 8, 3)),
    # get_ckpt_name leaves out ws_8 (eval_ckpts.py's default); without 'post' eval_ckpts.py evaluates 'pre'.
    ("checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_mpt_4b_4.pth", ("of4b", "post", 8, 1)),
    ("checkpoint_gripper_hist_1_ws_12_mpt_3b_4.pth", ("of3b_mpt1b", "pre", 12, 1)),
])
def test_file_names_give_the_config(name, expected):
    parsed = published.parse_checkpoint_name(name)
    assert (parsed.model_config, parsed.fusion, parsed.window, parsed.act_steps) == expected


@pytest.mark.parametrize("name, error", [
    ("checkpoint_gripper_post_ws_12_llama_9b_4.pth", "llama"),
    ("checkpoint_gripper_two_way_ws_12_mpt_3b_4.pth", "two_way"),
    ("model.pth", "no backbone"),
    ("checkpoint_gripper_post_hist_1_tcp_ws_12_mpt_3b_4.pth", "'tcp': actions in the TCP frame"),
    ("checkpoint_no_gripper_hist_1_ws_12_mpt_3b_4.pth", "'no_gripper'"),
    ("checkpoint_static_post_ws_12_mpt_3b_4.pth", "no 'gripper'"),
    ("checkpoint_gripper_post_hist_1_freeze_emb_ws_12_mpt_3b_4.pth", "'freeze_emb'"),
    ("checkpoint_gripper_post_hist_1_ws_12_mpt_3b_res_4.pth", "'res'"),
    ("checkpoint_gripper_post_hist_1_ws_12_mpt_3b_avg_4.pth", "'avg'"),
    ("checkpoint_gripper_post_hist_1_state_ws_12_mpt_3b_4.pth", "'state'"),
    ("checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_12_mpt_9b_2.pth2.pth", "mpt_9b .* is not converted"),
])
def test_unsupported_file_names_are_refused(name, error):
    with pytest.raises(ValueError, match=error):
        published.parse_checkpoint_name(name)


# -- OpenFlamingo checkpoint.pt ----------------------------------------------------------------------

def test_openflamingo_checkpoint_gives_the_backbone(world, tmp_path):
    summary = convert(Job(src=str(world["of"]), dst=str(tmp_path / "of"), model=world["model"],
                          head=HeadConfig(hidden_size=16, num_layers=1, dropout=0.0)))
    assert summary["format"] == "openflamingo" and summary["train_embeddings"]
    policy = RoboFlamingoPolicy.from_pretrained(tmp_path / "of")
    batch, frames = _episode(2)
    for ours, theirs in zip(_features(policy, batch, frames), _features(world["source"], batch, frames)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"unexpected keys \[lm_head.actions.mlp.0.bias, "):
        convert(Job(src=str(world["released"]), dst=str(tmp_path / "x"), model=world["model"], format="openflamingo"))


# -- the command -------------------------------------------------------------------------------------

def test_convert_command_round_trip(world, tmp_path, monkeypatch, capsys):
    """roboflamingo convert through the CLI (a model group written next to a copy of configs/)."""
    import shutil

    from roboflamingo.config import config_dir

    configs = tmp_path / "configs"
    shutil.copytree(config_dir(), configs)
    (configs / "model" / "micro_published.yaml").write_text(to_yaml(world["model"]))
    monkeypatch.setenv("ROBOFLAMINGO_CONFIG_DIR", str(configs))
    args = ["convert", "model=micro_published", f"src={world['released']}", f"dst={tmp_path / 'ckpt'}"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["window"] == 4
    assert cli.main(args) == 1  # an existing checkpoint is not replaced without overwrite=true
    assert "overwrite=true" in capsys.readouterr().err
    policy = RoboFlamingoPolicy.from_pretrained(tmp_path / "ckpt")
    action = policy.step(frame_obs(make_batch(b=1, t=1, a=1), 0, 0), INSTRUCTION)
    assert action.shape == (7,) and action.dtype == np.float32 and abs(action[6]) == 1.0
    # A backbone other than the file name's is refused.
    wrong = ["convert", "model=micro_published", "model.lm.cross_attn_every_n_layers=2",
             f"src={world['released']}", f"dst={tmp_path / 'other'}"]
    assert cli.main(wrong) == 1
    assert "backbone 'mpt_3b'" in capsys.readouterr().err


# -- save_pretrained from a gathered state dict ------------------------------------------------------

def test_save_pretrained_takes_a_full_state_dict(world, tmp_path):
    policy = world["source"]
    policy.set_normalization(make_stats())
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    state["backbone.perceiver.latents"] += 1.0
    policy.save_pretrained(tmp_path / "a", state_dict=state)
    loaded = RoboFlamingoPolicy.from_pretrained(tmp_path / "a")
    torch.testing.assert_close(loaded.backbone.perceiver.latents, state["backbone.perceiver.latents"])
    with pytest.raises(ValueError, match=r"lacks \[backbone.perceiver.latents\]"):
        policy.save_pretrained(tmp_path / "b", state_dict={k: v for k, v in state.items()
                                                           if k != "backbone.perceiver.latents"})
    with pytest.raises(ValueError, match=r"state_dict\['backbone.perceiver.latents'\] has shape \(2, 32\)"):
        policy.save_pretrained(tmp_path / "c", state_dict={**state, "backbone.perceiver.latents": torch.zeros(2, 32)})


# -- the conversion defects found by checking malformed files against the original ---------------------

def _save_released(state: dict[str, torch.Tensor], path) -> None:
    torch.save({"epoch": 4, "model_state_dict": state}, path)


def test_an_lstm_layer_the_original_never_builds_is_refused_with_the_key_named(world, tmp_path):
    """The original always builds 4 LSTM layers and loads with strict=False: an ``rnn.*_l4`` is dropped
    there, so converting it into a 5-layer head would act differently."""
    rf = dict(world["rf_state"])
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        rf[f"module.lm_head.rnn.{name}_l4"] = rf[f"module.lm_head.rnn.{name}_l3"].clone()
    src = tmp_path / RELEASED
    _save_released(rf, src)
    with pytest.raises(ValueError, match=r"unexpected keys \[lm_head\.rnn\.bias_hh_l4, lm_head\.rnn\.bias_ih_l4, "
                                         r"lm_head\.rnn\.weight_hh_l4, lm_head\.rnn\.weight_ih_l4\].*always builds 4"):
        convert(Job(src=str(src), dst=str(tmp_path / "ckpt"), model=world["model"]))
    assert not (tmp_path / "ckpt").exists()
    # A missing layer would be left at random by the original: refused too, the layer named.
    short = {k: v for k, v in world["rf_state"].items() if not k.endswith("_l3")}
    _save_released(short, src)
    with pytest.raises(ValueError, match=r"missing keys \[lm_head\.rnn\.\*_l3\]"):
        convert(Job(src=str(src), dst=str(tmp_path / "ckpt"), model=world["model"]))


def test_relative_tower_paths_are_written_absolute_and_load_from_any_directory(world, tmp_path, monkeypatch):
    root = world["root"]
    monkeypatch.chdir(root)
    model = world["model"]
    relative = replace(model, vision=replace(model.vision, weights="vit.pt"),
                       lm=replace(model.lm, path="mpt-1b-mosaic"))
    assert convert(Job(src=RELEASED, dst="converted", model=relative))["format"] == "roboflamingo"
    saved = json.loads((root / "converted" / "config.json").read_text())
    assert saved["model"]["vision"]["weights"] == str(root / "vit.pt")
    assert saved["model"]["lm"]["path"] == str(root / "mpt-1b-mosaic")
    assert saved["towers"]["vision"]["sha256"] and saved["towers"]["lm"]["files"]["config.json"]["sha256"]
    monkeypatch.chdir(tmp_path)  # somewhere the relative names mean nothing
    policy = RoboFlamingoPolicy.from_pretrained(root / "converted")
    obs = frame_obs(make_batch(b=1, t=1, a=1), 0, 0)
    reference = RoboFlamingoPolicy.from_pretrained(str(root / "converted"))
    np.testing.assert_array_equal(policy.step(obs, INSTRUCTION), reference.step(obs, INSTRUCTION))


@pytest.fixture(scope="module")
def neox_world(tmp_path_factory):
    """An OpenFlamingo-4B-style (GPT-NeoX, rotary) released file, with the rotary frequencies
    transformers < 4.35 saved in every decoder layer."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from roboflamingo.models.text import build_tokenizer

    root = tmp_path_factory.mktemp("neox")
    lm_cfg = LMConfig(family="gpt_neox", bpe_merges=2000, max_positions=48, xattn_heads=2, xattn_dim_head=16,
                      cross_attn_every_n_layers=2)
    vocab = len(build_tokenizer(lm_cfg))
    torch.manual_seed(4)
    hf = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=48, vocab_size=vocab))
    hf.save_pretrained(root / "neox")
    vision_cfg = VisionConfig(name="custom", image_size=32, width=32, layers=1, patch_size=8, head_width=16)
    torch.save(build_vision_encoder(vision_cfg).state_dict(), root / "vit.pt")
    model = micro_config("gpt_neox", lm=replace(lm_cfg, path=str(root / "neox")),
                         vision=replace(vision_cfg, weights=str(root / "vit.pt")), train_embeddings=True, window=4,
                         act_steps=1)
    torch.manual_seed(5)
    source = RoboFlamingoPolicy.from_config(model, HeadConfig(hidden_size=16, mlp_widths=WIDTHS))
    head = _original_head(source.backbone.lm_dim, 16, act_steps=1)
    lm = source.backbone.lang_encoder
    sd = {f"perceiver.{k}": v.clone() for k, v in source.backbone.perceiver.state_dict().items()}
    for i, block in enumerate(source.backbone.gated_cross_attn_layers):
        if block is None:
            continue
        for k, v in block.state_dict().items():
            sd[f"lang_encoder.gated_cross_attn_layers.{i}.{k}"] = v.clone()
            sd[f"lang_encoder.gpt_neox.layers.{i}.gated_cross_attn_layer.{k}"] = v.clone()
    sd["lang_encoder.gpt_neox.embed_in.weight"] = lm.get_input_embeddings().weight.detach().clone()
    for k, v in lm.state_dict().items():
        if k.startswith("gpt_neox.layers."):
            sd["lang_encoder.old_decoder_blocks." + k[len("gpt_neox.layers."):]] = v.clone()
    inv_freq = next(m.inv_freq for m in lm.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor))
    for i in range(2):
        sd[f"lang_encoder.old_decoder_blocks.{i}.attention.rotary_emb.inv_freq"] = inv_freq.clone()
    sd.update({f"lm_head.{k}": v.clone() for k, v in head.state_dict().items()})
    return {"root": root, "model": model, "state": {f"module.{k}": v for k, v in sd.items()},
            "name": "checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_4_mpt_4b_4.pth"}


def test_rotary_frequencies_of_a_layer_the_lm_lacks_are_refused_with_the_key_named(neox_world, tmp_path):
    src = tmp_path / neox_world["name"]
    _save_released(neox_world["state"], src)
    summary = convert(Job(src=str(src), dst=str(tmp_path / "ok"), model=neox_world["model"]))
    assert summary["frozen_checked"] > 0  # the well-formed file converts, its frequencies checked
    stray = "lang_encoder.old_decoder_blocks.7.attention.rotary_emb.inv_freq"  # 2 layers: no layer 7
    _save_released({**neox_world["state"], f"module.{stray}": neox_world["state"][
        "module.lang_encoder.old_decoder_blocks.0.attention.rotary_emb.inv_freq"].clone()}, src)
    with pytest.raises(ValueError, match=rf"unexpected keys \[{re.escape(stray)}\]: rotary frequencies of a "
                                         r"decoder layer the LM does not have \(2 layers"):
        convert(Job(src=str(src), dst=str(tmp_path / "stray"), model=neox_world["model"]))


@pytest.mark.parametrize("dtype, name", [(torch.float16, "float16"), (torch.bfloat16, "bfloat16")])
def test_a_half_precision_file_is_refused_naming_the_dtype_not_the_rotary_settings(neox_world, tmp_path, dtype,
                                                                                      name):
    """The original trainer's --precision fp16 saves model.half(): every tensor, rotary frequencies
    included, is float16; the message must say so."""
    src = tmp_path / neox_world["name"]
    _save_released({k: v.to(dtype) if v.is_floating_point() else v for k, v in neox_world["state"].items()}, src)
    with pytest.raises(ValueError, match=rf"{re.escape(str(src))}: holds {name} tensors \(95 of 95, e.g. '[^']+'\), "
                                         r"expected float32: saved by the original trainer with --precision fp16") as err:
        convert(Job(src=str(src), dst=str(tmp_path / "half"), model=neox_world["model"]))
    assert "rotary" not in str(err.value)
