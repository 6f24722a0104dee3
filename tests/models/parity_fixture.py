"""The files of a parity case, written the same way by the harness and by the CI test.

``scripts/parity/make_golden.py`` builds the *original* RoboFlamingo with small weights, saves a
checkpoint exactly as its trainer does, and records what that checkpoint holds (key names, shapes,
dtypes, the file name) in ``tests/fixtures/parity/<case>.json`` together with the original's actions.
The tensors themselves are too large to commit (the original's LSTM head alone is ~130 MB), so every
value comes from :func:`tensor_for` (a hash of the seed and the tensor's *source* name); the harness
checks that the file written by :func:`write_case` equals the one the original saved, bit for bit.

This module must import under the original's pins too (torch, numpy; nothing from ``roboflamingo``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"

# What the cases share: CALVIN's camera sizes and a fixed episode.
STATIC_SIZE, GRIPPER_SIZE = 200, 84
CORPUS = (
    "open the drawer close the drawer push the blue block to the left push the red block to the right "
    "lift the pink block from the table turn on the light bulb turn off the led slide the door to the left "
    "rotate the blue block right place the block in the slider push the sliding door to the right "
    "stack the blocks on top of each other take the red block and rotate it to the left"
)
N_MERGES = 300


# -- values ------------------------------------------------------------------------------------------

def _rng(seed: int, source: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{source}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def tensor_for(seed: int, source: str, shape: list[int], dtype: str = "float32") -> torch.Tensor:
    """The value of the tensor named ``source`` (``lm/...``, ``clip/...``, ``trained/...``, ``rotary/...``).

    Scales keep every stage in its working range: LayerNorm gains away from 1 (so a missing or
    extra norm shows), cross-attention gates open (so vision reaches the LM), matrices ~1/sqrt(fan_in).
    """
    if source.startswith("rotary/"):
        # The persistent buffer transformers 4.33's GPTNeoXRotaryEmbedding saves: 1 / base^(2i/dim).
        _, dim, base = source.split("/")
        dim_i = int(dim)
        value = 1.0 / (float(base) ** (torch.arange(0, dim_i, 2).float().to("cpu") / dim_i))
        return value.to(getattr(torch, dtype))
    name = source.split("/", 1)[1]
    leaf = name.rsplit(".", 1)[-1]
    n = _rng(seed, source).standard_normal(int(np.prod(shape)) if shape else 1)
    if leaf in ("attn_gate", "ff_gate"):
        v = 0.5 + 0.2 * n
    elif len(shape) == 1 and leaf == "weight":  # LayerNorm gains
        v = 1.0 + 0.3 * n
    elif name == "lm_head.gripper.mlp.6.bias":
        # Centres the original's gripper logit near 0, so its decision changes within the episode.
        v = 0.33 + 0.01 * n
    elif len(shape) <= 1:  # biases, scalars, class embedding
        v = 0.1 * n
    else:
        # The head's ReLU MLPs would shrink every difference ~2x a layer at unit gain (He init: 2).
        gain = 2.0 if ".mlp." in name else 1.5 if ".rnn." in name else 1.0
        v = gain * n / math.sqrt(int(np.prod(shape[1:])))
    return torch.from_numpy(v.astype(np.float32).reshape(shape)).to(getattr(torch, dtype))


def observations(seed: int, steps: int) -> list[dict[str, np.ndarray]]:
    """A fixed episode: smooth images that drift (so features change every step) plus pixel noise."""
    rng = np.random.default_rng(seed)
    out = []
    for size_key, size in (("rgb_static", STATIC_SIZE), ("rgb_gripper", GRIPPER_SIZE)):
        base = rng.uniform(0, 255, (steps + 8, 8, 8, 3))
        for t in range(steps):
            grid = base[t:t + 8].mean(axis=0)
            img = np.kron(grid, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
            img = img + rng.normal(0, 20, img.shape)
            if len(out) <= t:
                out.append({})
            out[t][size_key] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def observations_digest(obs: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for o in obs:
        for key in ("rgb_static", "rgb_gripper"):
            h.update(np.ascontiguousarray(o[key]).tobytes())
    return h.hexdigest()


# -- the tokenizer -----------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merges() -> list[tuple[str, str]]:
    """Greedy BPE merges learned on CORPUS (ties broken by the pair's text): deterministic."""
    table = _bytes_to_unicode()
    words: dict[tuple[str, ...], int] = {}
    for i, w in enumerate(CORPUS.split(" ")):
        text = (" " if i else "") + w
        key = tuple(table[b] for b in text.encode())
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(N_MERGES):
        counts: dict[tuple[str, str], int] = {}
        for w, c in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + c
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        new_words: dict[tuple[str, ...], int] = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def write_tokenizer(directory: Path) -> int:
    """A GPT-NeoX-style byte-level BPE tokenizer directory (no pad token declared, as RedPajama's).

    Returns its vocabulary size.
    """
    directory.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|padding|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    merges = _merges()
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(specials)],
        "normalizer": {"type": "NFC"}, "pre_tokenizer": byte_level, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "vocab": vocab,
                  "merges": [f"{a} {b}" for a, b in merges]},
    }
    (directory / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    eos = "<|endoftext|>"
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPTNeoXTokenizer", "bos_token": eos, "eos_token": eos, "unk_token": eos,
         "add_prefix_space": False, "model_max_length": 2048}))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": eos, "eos_token": eos, "unk_token": eos}))
    return len(vocab)


# -- a case's files ----------------------------------------------------------------------------------

def _save_tensors(spec_tensors: list, seed: int, path: Path) -> dict[str, torch.Tensor]:
    out = {name: tensor_for(seed, source, shape, dtype) for name, shape, dtype, source in spec_tensors}
    torch.save(out, path)
    return out


def write_case(spec: dict, root: Path) -> dict[str, Path]:
    """Write a case's tokenizer, LM directory, CLIP weights and checkpoint under ``root``.

    ``spec`` is a case file's ``files`` part. Returns the paths.
    """
    seed = spec["seed"]
    root.mkdir(parents=True, exist_ok=True)
    paths = {"tokenizer": root / "tokenizer", "lm": root / spec["lm"]["dir"], "clip": root / "clip.pt",
             "checkpoint": root / spec["checkpoint"]["file_name"]}
    write_tokenizer(paths["tokenizer"])
    paths["lm"].mkdir(parents=True, exist_ok=True)
    (paths["lm"] / "config.json").write_text(json.dumps(spec["lm"]["config"], indent=1))
    _save_tensors(spec["lm"]["tensors"], seed, paths["lm"] / "pytorch_model.bin")
    _save_tensors(spec["clip"]["tensors"], seed, paths["clip"])
    ckpt = spec["checkpoint"]
    state = {name: tensor_for(seed, source, shape, dtype) for name, shape, dtype, source in ckpt["tensors"]}
    # Tensors the original shares between two keys are saved once by torch.save; keep that sharing.
    by_source: dict[str, torch.Tensor] = {}
    for name, _, _, source in ckpt["tensors"]:
        state[name] = by_source.setdefault(source, state[name])
    torch.save({**ckpt["extra"], "model_state_dict": state}, paths["checkpoint"])
    return paths
