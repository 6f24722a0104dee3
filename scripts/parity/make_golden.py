"""Golden actions from the *original* RoboFlamingo, for tests/models/test_parity_original.py.

Run it with the original's own environment (it fetches nothing)::

    /work/venvs/orig/bin/python scripts/parity/make_golden.py --original /path/to/RoboFlamingo

where ``--original`` is a checkout of RoboFlamingo/RoboFlamingo (it vendors open_flamingo) and the
Python has the original's pins: torch, transformers==4.33.1, open-clip-torch==2.20.0, Pillow==9.5.0,
einops==0.6.1, einops-exts==0.0.4, tokenizers==0.13.3 (+ zarr webdataset braceexpand omegaconf
hydra-core termcolor, which its modules import). For each case it

1. writes a tokenizer, a small LM directory and a small CLIP weights file (``parity_fixture``);
2. builds the model with the original's ``create_model_and_transforms`` (its train_calvin.py
   arguments), fills every trainable tensor from ``parity_fixture.tensor_for``, wraps it in DDP and
   saves ``{epoch, model_state_dict: get_checkpoint(ddp_model), optimizer_state_dict,
   lr_scheduler_state_dict}`` under the name its ``get_ckpt_name`` gives;
3. records what that file holds (key, shape, dtype, source of the value) and checks that
   ``parity_fixture.write_case`` rebuilds it bit for bit;
4. builds the model again as eval_calvin.py does, loads the file as it does (``strict=False``), and
   steps the original's ``ModelWrapper`` (eval_utils.py) on a fixed episode, recording the returned
   action and, through a forward hook on its ``lm_head``, the float32 pose and gripper probability;
5. writes ``tests/fixtures/parity/<case>.json``.

What is not the original's own code, and why: modules the eval path imports but never calls
(CALVIN's simulator and dataset utilities, pytorch3d, pyhash, moviepy, pyrender, pytorch_lightning)
are stubbed; ``ModelWrapper.step`` hard-codes ``device = 'cuda'``, so without a GPU ``Tensor.to('cuda')``
is redirected to the CPU; the OpenFlamingo checkpoint the original loads before its own is skipped
(every tensor it would provide is overwritten by the RoboFlamingo file); rollout()'s
``split('\\n')[0]`` on the annotation is applied here before ``step``, as rollout does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models"))
import parity_fixture as pf  # noqa: E402

PINS = ("torch", "transformers", "open_clip_torch", "Pillow", "einops", "tokenizers")
STEPS = 20
INSTRUCTION = "  push the blue block to the left \nthen stop"

# name -> how the original is configured. The file names are what the original trainer's
# get_ckpt_name writes for these arguments (checked below).
CASES = {
    "neox_post_ws4": dict(llm_name="mpt_4b", fusion_mode="post", window_size=4),
    "neox_pre_ws24": dict(llm_name="mpt_4b", fusion_mode="pre", window_size=24),
    "neox_base_post_ws8": dict(llm_name="mpt_base_4b", fusion_mode="post", window_size=8),
    "neox_post_ws4_3_fur_step": dict(llm_name="mpt_4b", fusion_mode="post", window_size=4, act_steps=3),
    "mosaic_dolly_post_ws12": dict(llm_name="mpt_dolly_3b", fusion_mode="post", window_size=12),
    "mosaic_pre_ws24": dict(llm_name="mpt_3b", fusion_mode="pre", window_size=24),
}
# The original's factory recognises MPT-1B by this text in its path (its EmbeddingFnMixin hack).
LM_DIRS = {"mpt_4b": "RedPajama-INCITE-Instruct-3B-v1-parity", "mpt_base_4b": "RedPajama-INCITE-Base-3B-v1-parity",
           "mpt_3b": "mpt-1b-redpajama-200b-parity", "mpt_dolly_3b": "mpt-1b-redpajama-200b-dolly-parity"}
CROSS_ATTN_EVERY = {"mpt_4b": 2, "mpt_base_4b": 2, "mpt_3b": 1, "mpt_dolly_3b": 1, "mpt_9b": 4}

VISION = {"embed_dim": 64, "quick_gelu": True,
          "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
          "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
VISION_NAME = "ViT-parity-tiny"


def _stub_attr(attr: str):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return lambda *a, **k: None


def _stub_modules() -> None:
    """Modules the eval path imports but never calls (simulator, dataset, rendering)."""

    class CalvinBaseModel:  # calvin_agent.models.calvin_base_model: an interface (reset / step)
        pass

    names = ["calvin_agent", "calvin_agent.models", "calvin_agent.models.calvin_base_model",
             "calvin_agent.evaluation", "calvin_agent.evaluation.multistep_sequences",
             "calvin_agent.evaluation.utils", "calvin_agent.utils", "calvin_agent.utils.utils",
             "calvin_agent.datasets", "calvin_agent.datasets.utils", "calvin_agent.datasets.utils.episode_utils",
             "calvin_env", "calvin_env.envs", "calvin_env.envs.play_table_env", "pytorch3d",
             "pytorch3d.transforms", "pyhash", "moviepy", "moviepy.editor", "pyrender", "pytorch_lightning"]
    for name in names:
        mod = types.ModuleType(name)
        mod.__getattr__ = _stub_attr  # any name imports
        sys.modules[name] = mod
    sys.modules["calvin_agent.models.calvin_base_model"].CalvinBaseModel = CalvinBaseModel


def _cpu_for_cuda() -> None:
    if torch.cuda.is_available():
        return
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to


def _namespace(case: dict):
    """train_calvin.py's argument defaults plus the released recipe (pt_run_gripper_post_ws_12...bash)."""
    return argparse.Namespace(
        use_gripper=True, fusion_mode=case["fusion_mode"], hist_window=1, sep_resampler=False,
        real_data=False, train_params=-1, no_pretrain=False, fwd_pred=False, fwd_pred_hand=False,
        freeze_sampler=False, use_state=False, rgb_pad=10, gripper_pad=4, use_hist=False, head_type="lstm",
        traj_cons=True, sep_lm_head=False, dif_ws=False, window_size=case["window_size"], unfreeze_vit=False,
        llm_name=case["llm_name"], pooling="max", text_aug=False, residual=False, freeze_embed=False,
        tcp_rel=False, multi_step_action=case.get("act_steps", 1), decoder_type="lstm", hidden_size=768,
        lr_scheduler="constant",
    )


def _build(paths: dict, case: dict):
    from robot_flamingo.models.factory import create_model_and_transforms

    return create_model_and_transforms(
        VISION_NAME, str(paths["clip"]), str(paths["lm"]), str(paths["tokenizer"]),
        cross_attn_every_n_layers=CROSS_ATTN_EVERY[case["llm_name"]], use_local_files=True,
        use_media_placement_augmentation=False, window_size=case["window_size"], freeze_embed=False,
        train_params=-1, sep_resampler=False, last_action=False, use_diff=False, n_timesteps=150,
        diff_horizon=32, fusion_mode=case["fusion_mode"], use_gripper=True, use_state=False, use_hist=False,
        pad_length=-1, debug=False, multi_step_action=case.get("act_steps", 1), llm_name=case["llm_name"],
        sep_lm_head=False,
        return_feature=True, residual=False, tcp_rel=False, replan=-1, decoder_type="lstm", hidden_size=768,
        freeze_sampler=False, fwd_pred=False, fwd_pred_hand=False, no_image_patch=False, global_latent=1,
    )


def _register_mosaic_gpt(examples: Path) -> None:
    """MPT-1B's remote code, MosaicGPT from mosaicml/examples v0.0.4 (what its model card names), as
    transformers' Auto class for ``model_type: mosaic_gpt`` (the HF repo ships the same files as
    remote code). Its package ``__init__`` files pull in the whole training stack, so only the model
    modules are imported; composer 0.14 (for LPLayerNorm) needs one name torch 2.x dropped."""
    import torch.cuda.amp.grad_scaler as grad_scaler

    if not hasattr(grad_scaler, "_refresh_per_optimizer_state"):
        grad_scaler._refresh_per_optimizer_state = lambda: {}  # used by composer's trainer only
    for name in ("examples", "examples.llm", "examples.llm.src", "examples.llm.src.models"):
        mod = types.ModuleType(name)
        mod.__path__ = [str(examples / name.replace(".", "/"))]
        sys.modules[name] = mod
    from examples.llm.src.models.mosaic_gpt.configuration_mosaic_gpt import MosaicGPTConfig
    from examples.llm.src.models.mosaic_gpt.mosaic_gpt import MosaicGPT
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register("mosaic_gpt", MosaicGPTConfig)
    AutoModelForCausalLM.register(MosaicGPTConfig, MosaicGPT)


def _lm_config(llm_name: str, vocab: int) -> dict:
    if llm_name in ("mpt_3b", "mpt_dolly_3b"):
        return _mosaic_config(vocab)
    return _neox_config(vocab)


def _mosaic_config(vocab: int) -> dict:
    # mpt-1b-redpajama-200b's architecture (ALiBi, QK LayerNorm, no biases, low-precision LayerNorm:
    # its model card), shrunk; torch attention.
    return {"architectures": ["MosaicGPT"], "model_type": "mosaic_gpt", "d_model": 128, "n_heads": 4,
            "n_layers": 4, "mlp_ratio": 4, "max_seq_len": 64, "vocab_size": (vocab + 63) // 64 * 64,
            "attn_pdrop": 0.0, "resid_pdrop": 0.0, "emb_pdrop": 0.0, "attn_impl": "torch", "attn_qk_ln": True,
            "attn_clip_qkv": None, "softmax_scale": None, "prefix_lm": False, "attn_uses_sequence_id": False,
            "alibi": True, "alibi_bias_max": 8, "init_device": "cpu", "logit_scale": None, "no_bias": True,
            "low_precision_layernorm": True, "use_cache": False, "torch_dtype": "float32"}


def _neox_config(vocab: int) -> dict:
    # RedPajama-INCITE-3B's architecture (GPT-NeoX, sequential residual, rotary on a quarter of each
    # head), shrunk; its embedding has more rows than the tokenizer, as the real one (50432 > 50277).
    return {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
            "max_position_embeddings": 64, "rotary_pct": 0.25, "rotary_emb_base": 10000,
            "use_parallel_residual": False, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            "tie_word_embeddings": False, "vocab_size": (vocab + 63) // 64 * 64, "bos_token_id": 0,
            "eos_token_id": 0, "initializer_range": 0.02, "torch_dtype": "float32", "use_cache": True}


def _spec_of(tensors: dict, prefix: str) -> list:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch."), f"{prefix}/{k}"] for k, v in tensors.items()]


def make_case(name: str, case: dict, original: Path, out: Path, work: Path, seed: int) -> dict:
    import open_clip
    from robot_flamingo.eval.eval_utils import ModelWrapper
    from robot_flamingo.train.train_utils import get_checkpoint, get_ckpt_name
    from transformers import AutoConfig, AutoModelForCausalLM, get_constant_schedule_with_warmup

    root = work / name
    args = _namespace(case)
    file_name = get_ckpt_name(args, 4)
    # get_ckpt_name appends the epoch twice (_4.pth4.pth); the released files end in _4.pth.
    file_name = file_name[: file_name.index(".pth") + 4]
    lm_dir = LM_DIRS[case["llm_name"]]
    vocab = pf.write_tokenizer(root / "tokenizer")
    lm_config = _lm_config(case["llm_name"], vocab)
    (root / lm_dir).mkdir(parents=True, exist_ok=True)
    (root / lm_dir / "config.json").write_text(json.dumps(lm_config))
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(root / lm_dir))
    clip = open_clip.create_model(VISION_NAME)
    files = {"seed": seed,
             "lm": {"dir": lm_dir, "config": lm_config, "tensors": _spec_of(dict(lm.named_parameters()), "lm")},
             "clip": {"name": VISION_NAME, "config": VISION, "tensors": _spec_of(clip.state_dict(), "clip")},
             "checkpoint": {"file_name": file_name, "tensors": [], "extra": {}}}
    del lm, clip
    paths = {"tokenizer": root / "tokenizer", "lm": root / lm_dir, "clip": root / "clip.pt"}
    pf._save_tensors(files["lm"]["tensors"], seed, paths["lm"] / "pytorch_model.bin")
    pf._save_tensors(files["clip"]["tensors"], seed, paths["clip"])
    lm_values = {k: pf.tensor_for(seed, s, sh, d) for k, sh, d, s in files["lm"]["tensors"]}

    # -- train: build, fill the trainable tensors, save as train_calvin.py does --------------------
    torch.manual_seed(42)
    model, _, _ = _build(paths, case)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    trained_ptr = {}
    with torch.no_grad():
        for pname, p in ddp.named_parameters():
            if p.requires_grad:
                key = pname.removeprefix("module.")
                p.copy_(pf.tensor_for(seed, f"trained/{key}", list(p.shape)))
                trained_ptr[p.data_ptr()] = key
    optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=5000)
    extra = {"epoch": 4, "optimizer_state_dict": optimizer.state_dict(),
             "lr_scheduler_state_dict": scheduler.state_dict()}
    saved = root / "original" / file_name
    saved.parent.mkdir(parents=True, exist_ok=True)
    state = get_checkpoint(ddp)
    torch.save({"epoch": 4, "model_state_dict": state, "optimizer_state_dict": extra["optimizer_state_dict"],
                "lr_scheduler_state_dict": extra["lr_scheduler_state_dict"]}, saved)

    # -- what the file holds, and where each value came from -------------------------------------
    rotary_dim = int(lm_config.get("hidden_size", 0) // lm_config.get("num_attention_heads", 1)
                     * lm_config.get("rotary_pct", 0))
    entries = []
    for key, value in state.items():
        bare = key.removeprefix("module.")
        if bare.endswith("rotary_emb.inv_freq"):
            source = f"rotary/{rotary_dim}/{lm_config.get('rotary_emb_base')}"
        else:
            source = f"trained/{trained_ptr[value.data_ptr()]}" if value.data_ptr() in trained_ptr else None
            if source is None:
                source = next((f"lm/{k}" for k, v in lm_values.items()
                               if v.shape == value.shape and torch.equal(v, value)), None)
        if source is None:
            raise RuntimeError(f"{key}: no source found for this saved tensor")
        entries.append([key, list(value.shape), str(value.dtype).removeprefix("torch."), source])
    files["checkpoint"]["tensors"] = entries
    files["checkpoint"]["extra"] = json.loads(json.dumps(extra))
    regen = pf.write_case(files, root / "regenerated")
    again = torch.load(regen["checkpoint"], map_location="cpu")
    del ddp, model, optimizer, scheduler
    bad = [k for k in state if not torch.equal(state[k], again["model_state_dict"][k])]
    if bad or set(state) != set(again["model_state_dict"]):
        raise RuntimeError(f"write_case does not rebuild the original's file: {bad[:5]}")

    # -- eval: as eval_calvin.py builds, loads and steps -------------------------------------------
    torch.manual_seed(42)
    model, image_processor, tokenizer = _build(paths, case)
    model = model.float().eval()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    checkpoint = torch.load(saved, map_location="cpu")
    ddp.load_state_dict(checkpoint["model_state_dict"], False)
    ddp.eval()
    wrapper = ModelWrapper(ddp, tokenizer, image_processor, None, False, history_len=None, future_act_len=-1)
    seen = []
    ddp.module.lm_head.register_forward_hook(lambda m, i, o: seen.append((o[0].detach().clone(), o[1].detach().clone())))
    episode = pf.observations(seed, STEPS)
    instruction = INSTRUCTION.split("\n")[0]  # rollout() does this before step()
    ids, _ = wrapper.text_process_fn([instruction])
    wrapper.reset()
    steps = []
    for obs in episode:
        seen.clear()
        action = wrapper.step({"rgb_obs": obs, "robot_obs": np.zeros(15, np.float32)}, instruction)
        pose, grip = seen[-1]
        a = case.get("act_steps", 1)  # the wrapper executes the first of the A predicted actions
        steps.append({"pose": pose.reshape(-1, a, 6)[-1, 0].tolist(), "gripper_prob": float(grip.reshape(-1, a)[-1, 0]),
                      "action": [float(a) for a in action], "action_dtype": str(action.dtype)})
    golden = {
        "lm_hidden_states": _hidden_states_semantic(paths["lm"]),
        "case": name, "generated_by": "scripts/parity/make_golden.py",
        "original": {"repo": "RoboFlamingo/RoboFlamingo", "commit": _commit(original), "pins": _pins()},
        "config": {**case, "cross_attn_every_n_layers": CROSS_ATTN_EVERY[case["llm_name"]]},
        "files": files,
        "episode": {"seed": seed, "steps": STEPS, "digest": pf.observations_digest(episode),
                    "instruction": INSTRUCTION, "input_ids": ids[0].tolist(), "tokenizer_length": len(tokenizer)},
        "steps": steps,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(golden, indent=None, separators=(",", ":")) + "\n")
    return golden


def _hidden_states_semantic(lm_dir: Path) -> dict:
    """What the LM's ``hidden_states[-1]`` (which the original pools) is, found by running the LM."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    blocks = lm.transformer.blocks if hasattr(lm, "transformer") else lm.gpt_neox.layers
    final_norm = lm.transformer.ln_f if hasattr(lm, "transformer") else lm.gpt_neox.final_layer_norm
    seen = {}
    blocks[-1].register_forward_pre_hook(lambda m, a: seen.setdefault("last_block_input", a[0].detach()))
    final_norm.register_forward_hook(lambda m, a, o: seen.setdefault("final_norm_output", o.detach()))
    with torch.no_grad():
        out = lm(input_ids=torch.arange(3, 12)[None], output_hidden_states=True)
    last = out.hidden_states[-1]
    return {"count": len(out.hidden_states), "num_blocks": len(blocks),
            "last_is_last_block_input": bool(torch.equal(last, seen["last_block_input"])),
            "last_is_final_norm_output": bool(torch.equal(last, seen["final_norm_output"]))}


def _commit(original: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(original), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return (original / "COMMIT").read_text().strip() if (original / "COMMIT").is_file() else "unknown"


def _pins() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in PINS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout of RoboFlamingo/RoboFlamingo")
    parser.add_argument("--mosaic-examples", type=Path, default=None,
                        help="checkout of mosaicml/examples at v0.0.4 (for the MPT-1B cases)")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "parity")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    original = args.original.resolve()
    sys.path[:0] = [str(original), str(original / "open_flamingo")]
    _stub_modules()
    _cpu_for_cuda()
    if any(CASES[c]["llm_name"] in ("mpt_3b", "mpt_dolly_3b") for c in args.cases):
        if args.mosaic_examples is None:
            parser.error("the MPT-1B cases need --mosaic-examples (mosaicml/examples at v0.0.4)")
        _register_mosaic_gpt(args.mosaic_examples.resolve())
    torch.set_num_threads(1)
    import open_clip

    work = Path(args.work or tempfile.mkdtemp(prefix="parity_"))
    cfg_dir = work / "open_clip_configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{VISION_NAME}.json").write_text(json.dumps(VISION))
    open_clip.add_model_config(cfg_dir)
    torch.distributed.init_process_group("gloo", init_method=f"file://{work}/pg", rank=0, world_size=1)
    for name in args.cases:
        golden = make_case(name, CASES[name], original, args.out, work, args.seed)
        print(json.dumps({"case": name, "file": golden["files"]["checkpoint"]["file_name"],
                          "keys": len(golden["files"]["checkpoint"]["tensors"]),
                          "first_action": golden["steps"][0]["action"]}), flush=True)
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
