"""Instruction tokenization: ``<image>{instruction}<|endofchunk|>{eos}``, as RoboFlamingo formats it.

The built-in tokenizer (``model.lm.tokenizer: clip_bpe``) is CLIP's byte-level BPE, built in
process from the vocabulary file that ships inside open_clip, so tiny and mid configs work offline.
Keeping the first ``bpe_merges`` merges keeps common words whole: a small policy then sees word
identities, not characters, which is what lets it map a paraphrase onto words it was trained on.
"""

from __future__ import annotations

import gzip
from functools import lru_cache

import torch

from roboflamingo.models.config import BUILTIN_TOKENIZER, LMConfig

IMAGE_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
PAD_TOKEN = "<PAD>"


@lru_cache(maxsize=4)
def _clip_bpe(merges: int):
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:]
    available = 49152 - 256 - 2  # the merges CLIP itself uses
    if merges > available:
        raise ValueError(f"model.lm.bpe_merges must be <= {available}, got {merges}")
    pairs = [tuple(m.split()) for m in lines[:merges]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=pairs)


def build_tokenizer(cfg: LMConfig):
    """The HF tokenizer with ``<image>``, ``<|endofchunk|>`` (and ``<PAD>`` if it had no pad) added."""
    import copy

    if cfg.tokenizer == BUILTIN_TOKENIZER:
        tok = copy.deepcopy(_clip_bpe(cfg.bpe_merges))
    else:
        from transformers import AutoTokenizer

        from roboflamingo.models.lm_adapters import resolve_path

        path = resolve_path(cfg.tokenizer or cfg.path)
        if not str(cfg.tokenizer or cfg.path):
            raise ValueError(
                f"model.lm.tokenizer is empty and model.lm.path is empty: set one to a local HuggingFace "
                f"tokenizer directory, or use '{BUILTIN_TOKENIZER}'"
            )
        if not path.is_dir():
            raise FileNotFoundError(f"model.lm.tokenizer: {path} is not a directory")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not _declares_pad(path):
            # transformers >= 5 gives GPT-NeoX tokenizers a default pad (<|padding|>); the original,
            # under 4.33, saw none in these files and added <PAD>, which its embeddings have a row for.
            tok.pad_token = None
    tok.add_special_tokens({"additional_special_tokens": [END_OF_CHUNK, IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "right"
    return tok


def _declares_pad(directory) -> bool:
    """Whether a tokenizer directory's own files name a pad token."""
    import json
    from pathlib import Path

    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = Path(directory) / name
        if file.is_file():
            try:
                if json.loads(file.read_text()).get("pad_token"):
                    return True
            except (json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{file}: not a JSON object ({e})") from e
    return False


def clean_instruction(instruction: str) -> str:
    """The first line, stripped: what the original's rollout and preprocess_text_calvin pass on."""
    return instruction.split("\n")[0].strip()


def format_instruction(instruction: str, eos_token: str | None) -> str:
    return f"{IMAGE_TOKEN}{clean_instruction(instruction)}{END_OF_CHUNK}{eos_token or ''}"


def end_token(tok) -> str | None:
    """What closes an instruction: EOS, or BERT's [SEP] for an encoder without one."""
    return tok.eos_token or tok.sep_token


def tokenize(tok, instructions: list[str], max_length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """list of B strings -> input_ids (B, L) long, attention_mask (B, L) bool, right-padded."""
    if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
        raise TypeError(f"instructions must be a list of str, got {type(instructions).__name__}")
    enc = tok(
        [format_instruction(s, end_token(tok)) for s in instructions],
        add_special_tokens=False, padding="longest", truncation=True, max_length=max_length,
        return_tensors="pt",
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device=device, dtype=torch.bool)
