"""Weight files in and out of modules: the one reader and the one strict loader every loader uses.

``read_weights`` reads a safetensors file or a torch pickle (``.pt``, ``.pth``, ``.bin``), unwraps
a training checkpoint to its model state dict and refuses non-finite values; ``read_hf_weights``
reads a HuggingFace model directory (sharded or not) through it. ``load_state`` copies a state dict
into a module's tensors with every key accounted for: a missing or unexpected key, or a shape that
differs, is an error that names the file and the keys.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

# Where a training checkpoint keeps its model tensors beside the optimizer and scheduler states.
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
# What DDP puts in front of every parameter name of the module it wraps.
_DDP_PREFIX = "module."


def list_keys(keys: Iterable[str], limit: int = 20) -> str:
    """Sorted keys for an error message, the first ``limit`` of them and how many there are in all."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_weights(path: str | Path, field: str = "", trust_pickle: bool = False,
                 unpickle_option: str = "") -> dict[str, torch.Tensor]:
    """The model tensors of a weight file, ``module.`` stripped; every floating tensor finite.

    Accepts a bare state dict or a training checkpoint holding ``model_state_dict`` / ``state_dict`` /
    ``model`` (the optimizer and scheduler states are not needed). A pickle is memory-mapped where
    possible: a released 3B ``.pth`` is 17.6 GB, most of it Adam state that is never touched.
    ``field``: the config field the path came from, for the messages; ``trust_pickle``: unpickle
    arbitrary objects (only for a file the user trusts); ``unpickle_option``: how the caller's user
    sets it, named in the error for a file that holds more than tensors.
    """
    path = Path(path)
    where = f"{field} {path}" if field else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: {path} does not exist" if field else f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated or garbled files
            raise ValueError(f"{where}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    else:
        obj = _unpickle(path, where, trust_pickle, unpickle_option)
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{where}: expected a state dict of tensors (or a dict with 'model_state_dict'), "
            f"got {type(obj).__name__} with keys {list_keys(map(str, obj)) if isinstance(obj, dict) else '-'}"
        )
    for name, value in obj.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: tensor '{name}' holds NaN or inf (a corrupt or diverged checkpoint)")
    return {k.removeprefix(_DDP_PREFIX): v for k, v in obj.items()}


def _unpickle(path: Path, where: str, trust_pickle: bool, unpickle_option: str) -> object:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files written by torch < 1.6 (not a zip archive) cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # truncated or garbled: torch raises RuntimeError, EOFError, ...
        what = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        if isinstance(e, pickle.UnpicklingError) and not trust_pickle:  # an object that is not a tensor
            hint = f"; if you trust this file, pass {unpickle_option} to unpickle it fully" if unpickle_option else ""
            raise ValueError(f"{where}: cannot be read as plain tensors ({what}){hint}") from e
        raise ValueError(f"{where}: not a readable torch file ({what})") from e


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HuggingFace model directory (single or sharded, safetensors or .bin)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{index}: not a weight index (a JSON object with a 'weight_map'): {e}") from e
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(read_weights(directory / shard))
            return out
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_weights(directory / name)
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin (or sharded index)")


def check_state(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                against: str, unexpected: Sequence[str] = ()) -> None:
    """Raise unless ``state`` has exactly ``expected``'s keys, each with its shape.

    ``unexpected``: keys of the file the caller already found to have no place in ``expected``.
    ``source`` names the file, ``against`` what it was to match (``the policy built from its config``).
    """
    missing = set(expected) - set(state)
    extra = [*(set(state) - set(expected)), *unexpected]
    if missing or extra:
        raise ValueError(f"{source} does not match {against}: missing keys [{list_keys(missing)}]; "
                         f"unexpected keys [{list_keys(extra)}]")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        more = f" ({len(bad)} mismatched)" if len(bad) > 1 else ""
        raise ValueError(f"{source}: '{k}' has shape {tuple(state[k].shape)}, "
                         f"expected {tuple(expected[k].shape)}{more}")


def copy_state(targets: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``targets`` (name -> a module's own tensor), in the module's order (as
    ``load_state_dict`` does, which matters only for tied weights), cast to each target's dtype."""
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(state[name])


def load_state(module_tensors: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
               against: str, unexpected: Sequence[str] = ()) -> None:
    """``check_state``, then ``copy_state``: a strict load of ``state`` into ``module_tensors``."""
    check_state(module_tensors, state, source, against, unexpected)
    copy_state(module_tensors, state)
