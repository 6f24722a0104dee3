"""The one weight-file reader and strict loader (models/weights.py) that every model loader uses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from roboflamingo.models.weights import check_state, load_state, read_hf_weights, read_weights


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in nn.Linear(3, 2).state_dict().items()}


def test_every_format_reads_to_the_same_tensors(tmp_path):
    state = _state()
    save_file(state, str(tmp_path / "a.safetensors"))
    torch.save(state, tmp_path / "b.pt")
    # a DDP-wrapped training checkpoint: the model part is found and the module. prefix dropped
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer_state_dict": {"state": {}}}, tmp_path / "c.pth")
    torch.save({"state_dict": state}, tmp_path / "d.bin")
    for name in ("a.safetensors", "b.pt", "c.pth", "d.bin"):
        got = read_weights(tmp_path / name)
        assert set(got) == set(state), name
        for k, v in state.items():
            assert torch.equal(got[k], v), (name, k)


def test_unreadable_or_non_finite_files_are_named(tmp_path):
    state = _state()
    with pytest.raises(FileNotFoundError, match=r"model.vision.weights: .*absent.pt does not exist"):
        read_weights(tmp_path / "absent.pt", field="model.vision.weights")
    torch.save(state, tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut.pt: not a readable torch file \(RuntimeError"):
        read_weights(tmp_path / "cut.pt")
    save_file(state, str(tmp_path / "full.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "full.safetensors").read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"cut.safetensors: not a readable safetensors file"):
        read_weights(tmp_path / "cut.safetensors")
    bad = {**state, "bias": torch.tensor([0.0, float("inf")])}
    torch.save(bad, tmp_path / "inf.pt")
    with pytest.raises(ValueError, match=r"model.vision.weights .*inf.pt: tensor 'bias' holds NaN or inf"):
        read_weights(tmp_path / "inf.pt", field="model.vision.weights")
    torch.save({"weight": state["weight"], "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed.pt: expected a state dict of tensors .* keys step, weight"):
        read_weights(tmp_path / "mixed.pt")


def test_a_pickle_of_objects_needs_trust(tmp_path):
    torch.save({"weight": torch.zeros(2), "config": nn.Linear(1, 1)}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj.pt: cannot be read as plain tensors .*pass trust_pickle=true"):
        read_weights(tmp_path / "obj.pt", unpickle_option="trust_pickle=true")
    with pytest.raises(ValueError, match=r"obj.pt: cannot be read as plain tensors") as refused:
        read_weights(tmp_path / "obj.pt")
    assert "pass " not in str(refused.value)  # no option named where the caller offers none
    # trusted, the file unpickles; a module is then not a tensor
    with pytest.raises(ValueError, match="expected a state dict of tensors"):
        read_weights(tmp_path / "obj.pt", trust_pickle=True)


def test_a_sharded_hf_directory_reads_whole(tmp_path):
    state = _state()
    save_file({"weight": state["weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"bias": state["bias"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "weight": "model-00001-of-00002.safetensors", "bias": "model-00002-of-00002.safetensors"}}))
    got = read_hf_weights(tmp_path)
    assert set(got) == {"weight", "bias"} and torch.equal(got["bias"], state["bias"])
    (tmp_path / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: not a weight index"):
        read_hf_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        read_hf_weights(tmp_path / "empty")


def test_strict_loading_names_every_difference():
    module = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    expected = module.state_dict(keep_vars=True)
    good = {k: torch.full_like(v, 0.5) for k, v in expected.items()}
    with pytest.raises(ValueError, match=r"f.pt does not match the net: missing keys \[1.bias\]; "
                                         r"unexpected keys \[0.extra, 2.weight\]"):
        check_state(expected, {**{k: v for k, v in good.items() if k != "1.bias"}, "2.weight": torch.zeros(1)},
                    "f.pt", "the net", unexpected=["0.extra"])
    wrong = {**good, "0.weight": torch.zeros(3, 2), "1.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"f.pt: '0.weight' has shape \(3, 2\), expected \(2, 3\) \(2 mismatched\)"):
        load_state(expected, wrong, "f.pt", "the net")
    assert all((v != 0.5).any() for v in module.state_dict().values())  # a refused load changes nothing
    load_state(expected, {k: v.half() for k, v in good.items()}, "f.pt", "the net")  # cast to fp32
    assert all(v.dtype == torch.float32 and bool((v == 0.5).all()) for v in module.state_dict().values())
