"""A policy directory that moves: frozen towers named by identity and found through the search path,
bundled copies, Hub ids from the local cache, the first format, and errors that name what they want."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import frame_obs, make_batch, make_stats, micro_config, micro_head, open_gates

from roboflamingo import cli
from roboflamingo.config import ConfigError
from roboflamingo.io import sha256_file
from roboflamingo.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from roboflamingo.models.config import LMConfig
from roboflamingo.models.lm_adapters import build_lm
from roboflamingo.models.policy import RoboFlamingoPolicy
from roboflamingo.models.text import build_tokenizer
from roboflamingo.models.towers import TowerNotFoundError
from roboflamingo.models.vision import build_vision_encoder

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "v1"
INSTRUCTION = "open the drawer"


@pytest.fixture
def search_path(tmp_path, monkeypatch):
    """An empty $ROBOFLAMINGO_WEIGHTS unset and an empty Hugging Face cache: only what a test puts
    there is found (never this machine's own cache)."""
    monkeypatch.delenv("ROBOFLAMINGO_WEIGHTS", raising=False)
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _write_towers(root: Path) -> dict[str, Path]:
    """The three kinds of frozen tower a real config reads: open_clip weights (one file), a
    HuggingFace LM directory and a tokenizer directory."""
    lm_cfg = LMConfig(family="llama", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                      max_positions=48, bpe_merges=2000)
    tokenizer = build_tokenizer(lm_cfg)
    tokenizer.save_pretrained(root / "tokenizer")
    torch.manual_seed(11)
    lm = build_lm(lm_cfg, vocab=len(tokenizer))
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    lm.save_pretrained(root / "tiny-llama")
    vision = micro_config().vision
    torch.manual_seed(12)
    torch.save(build_vision_encoder(vision).state_dict(), root / "vit.pt")
    return {"vision": root / "vit.pt", "lm": root / "tiny-llama", "tokenizer": root / "tokenizer"}


def _policy_with_towers(paths: dict[str, Path]):
    base = micro_config(use_state=True)
    model = replace(base, vision=replace(base.vision, weights=str(paths["vision"])),
                    lm=replace(base.lm, path=str(paths["lm"]), tokenizer=str(paths["tokenizer"])))
    torch.manual_seed(0)
    policy = RoboFlamingoPolicy.from_config(model, micro_head(), make_stats(2))
    open_gates(policy, 0.4)
    return policy


def _actions(policy, steps: int = 4) -> np.ndarray:
    batch = make_batch(b=1, t=steps, seed=3)
    policy.reset()
    return np.stack([policy.step(frame_obs(batch, 0, t), INSTRUCTION) for t in range(steps)])


@pytest.fixture
def saved(tmp_path, search_path):
    towers = _write_towers(tmp_path / "towers")
    policy = _policy_with_towers(towers)
    policy.save_pretrained(tmp_path / "policy")
    return {"dir": tmp_path / "policy", "towers": towers, "actions": _actions(policy)}


def test_the_config_names_each_tower_by_identity_and_absolute_path(saved):
    config = json.loads((saved["dir"] / CONFIG_FILE).read_text())
    assert config["format"] == "roboflamingo-policy-v2" and config["roboflamingo_version"]
    vision, lm, tok = (config["towers"][t] for t in ("vision", "lm", "tokenizer"))
    assert vision == {"field": "model.vision.weights", "family": "open_clip custom", "name": "vit.pt",
                      "path": str(saved["towers"]["vision"]), "kind": "file",
                      "bytes": saved["towers"]["vision"].stat().st_size,
                      "sha256": sha256_file(saved["towers"]["vision"])}
    assert lm["kind"] == "directory" and lm["family"] == "llama LM" and lm["name"] == "tiny-llama"
    assert {"config.json", "model.safetensors"} <= set(lm["files"])
    assert lm["files"]["model.safetensors"]["sha256"] == sha256_file(saved["towers"]["lm"] / "model.safetensors")
    assert tok["field"] == "model.lm.tokenizer" and "tokenizer_config.json" in tok["files"]
    assert config["model"]["lm"]["path"] == str(saved["towers"]["lm"])
    assert config["preprocessing"]["images"]["size"] == 32 and config["preprocessing"]["state"]["used"]
    assert config["normalization"]["action_std"] == pytest.approx(make_stats(2)["action_std"].tolist())
    np.testing.assert_array_equal(_actions(RoboFlamingoPolicy.from_pretrained(saved["dir"])), saved["actions"])


def test_a_moved_policy_finds_its_renamed_towers_through_the_search_path(saved, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "my_policy"
    shutil.move(saved["dir"], moved)
    # The towers leave the recorded paths, under other names, into a weights directory.
    weights = tmp_path / "weights"
    (weights / "clip").mkdir(parents=True)
    shutil.move(saved["towers"]["vision"], weights / "clip" / "renamed.bin")
    shutil.move(saved["towers"]["lm"], weights / "llm-copy")
    shutil.move(saved["towers"]["tokenizer"], weights / "tok")
    with pytest.raises(TowerNotFoundError):
        RoboFlamingoPolicy.from_pretrained(moved)
    monkeypatch.setenv("ROBOFLAMINGO_WEIGHTS", os.pathsep.join([str(tmp_path / "not-there"), str(weights)]))
    loaded = RoboFlamingoPolicy.from_pretrained(moved)
    assert loaded.model_config.vision.weights == str(weights / "clip" / "renamed.bin")
    assert loaded.model_config.lm.path == str(weights / "llm-copy")
    np.testing.assert_array_equal(_actions(loaded), saved["actions"])  # bit-identical


def test_a_file_of_another_content_at_the_recorded_path_is_not_taken(saved, tmp_path, monkeypatch):
    vit = saved["towers"]["vision"]
    good = vit.read_bytes()
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vit.pt").write_bytes(good)
    vit.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same name, same size, one bit off
    with pytest.raises(TowerNotFoundError) as err:
        RoboFlamingoPolicy.from_pretrained(saved["dir"])
    want = sha256_file(weights / "vit.pt")
    assert f"the recorded path {vit}: sha256 {sha256_file(vit)}, not {want}" in str(err.value)
    monkeypatch.setenv("ROBOFLAMINGO_WEIGHTS", str(weights))
    np.testing.assert_array_equal(_actions(RoboFlamingoPolicy.from_pretrained(saved["dir"])), saved["actions"])


def test_a_missing_tower_error_lists_every_place_and_the_sha256(saved, search_path):
    want = sha256_file(saved["towers"]["vision"])
    size = saved["towers"]["vision"].stat().st_size
    saved["towers"]["vision"].unlink()
    with pytest.raises(TowerNotFoundError) as err:
        RoboFlamingoPolicy.from_pretrained(saved["dir"])
    message = str(err.value)
    assert message.startswith(f"{saved['dir']}: the frozen vision tower (model.vision.weights) 'vit.pt' "
                              f"(open_clip custom, {size} bytes, sha256 {want}) was not found; looked at:")
    assert f"a bundled copy in {saved['dir'] / 'towers' / 'vision'}: none (save with bundle=True" in message
    assert f"the recorded path {saved['towers']['vision']}: missing" in message
    assert f"the Hugging Face cache {search_path}: no file matches" in message
    assert "$ROBOFLAMINGO_WEIGHTS: not set" in message and "bundle=True" in message


def test_a_bundled_policy_needs_nothing_else_on_disk(saved, tmp_path):
    policy = RoboFlamingoPolicy.from_pretrained(saved["dir"])
    policy.save_pretrained(tmp_path / "bundled", bundle=True)
    config = json.loads((tmp_path / "bundled" / CONFIG_FILE).read_text())
    assert config["towers"]["vision"]["bundled"] == "towers/vision/vit.pt"
    assert (tmp_path / "bundled" / "towers" / "lm" / "tiny-llama" / "model.safetensors").is_file()
    shutil.rmtree(saved["towers"]["vision"].parent)  # every original tower gone
    shutil.rmtree(saved["dir"])
    shutil.move(tmp_path / "bundled", tmp_path / "shipped")
    loaded = RoboFlamingoPolicy.from_pretrained(tmp_path / "shipped")
    assert loaded.model_config.vision.weights == str(tmp_path / "shipped" / "towers" / "vision" / "vit.pt")
    np.testing.assert_array_equal(_actions(loaded), saved["actions"])
    # Saved again in place (from its own bundle) it still loads.
    loaded.save_pretrained(tmp_path / "shipped", bundle=True)
    np.testing.assert_array_equal(_actions(RoboFlamingoPolicy.from_pretrained(tmp_path / "shipped")), saved["actions"])


def _lay_out_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = "a" * 40) -> Path:
    """A model repository as huggingface_hub caches it: blobs named by sha256, snapshot links, refs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for rel, source in files.items():
        blob = repo / "blobs" / sha256_file(source)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_towers_are_found_in_the_hugging_face_cache(saved, search_path, tmp_path):
    """As `hf download` leaves them: the vision file by its sha256 blob, the LM as a snapshot."""
    lm = saved["towers"]["lm"]
    _lay_out_hub_cache(search_path, "org/clip", {"open_clip_pytorch_model.bin": saved["towers"]["vision"]})
    _lay_out_hub_cache(search_path, "org/tiny-llama", {p.name: p for p in lm.iterdir()})
    _lay_out_hub_cache(search_path, "org/tok", {p.name: p for p in saved["towers"]["tokenizer"].iterdir()})
    shutil.rmtree(saved["towers"]["vision"].parent)
    loaded = RoboFlamingoPolicy.from_pretrained(saved["dir"])
    assert "models--org--clip/blobs/" in loaded.model_config.vision.weights
    assert "models--org--tiny-llama/snapshots/" in loaded.model_config.lm.path
    np.testing.assert_array_equal(_actions(loaded), saved["actions"])


def test_a_hub_id_loads_offline_from_the_local_cache(saved, search_path, tmp_path):
    from huggingface_hub import ModelCard

    RoboFlamingoPolicy.from_pretrained(saved["dir"]).save_pretrained(tmp_path / "push", bundle=True)
    files = {p.relative_to(tmp_path / "push").as_posix(): p for p in (tmp_path / "push").rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert ModelCard.load(tmp_path / "push" / "README.md").data.library_name == "roboflamingo"
    _lay_out_hub_cache(search_path, "lab/drawer-policy", files, commit="b" * 40)
    shutil.rmtree(saved["towers"]["vision"].parent)
    for name in ("lab/drawer-policy", f"lab/drawer-policy@{'b' * 40}"):
        np.testing.assert_array_equal(_actions(RoboFlamingoPolicy.from_pretrained(name)), saved["actions"])
    with pytest.raises(FileNotFoundError, match=rf"the Hub model 'lab/other' is not in the local Hugging Face "
                                                rf"cache {search_path} \(nothing is downloaded"):
        RoboFlamingoPolicy.from_pretrained("lab/other")


def test_the_readme_snippet_runs(saved, search_path, tmp_path, monkeypatch):
    """README's first screen, verbatim (between its python fences), on a policy from the Hub cache."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    RoboFlamingoPolicy.from_pretrained(saved["dir"]).save_pretrained(tmp_path / "push", bundle=True)
    files = {p.relative_to(tmp_path / "push").as_posix(): p for p in (tmp_path / "push").rglob("*") if p.is_file()}
    repo_id = snippet.split('from_pretrained("', 1)[1].split('"', 1)[0]
    _lay_out_hub_cache(search_path, repo_id, files)
    batch = make_batch(b=1, t=4, seed=3)  # what _actions stepped through
    scope = {"obs": frame_obs(batch, 0, 0)}
    exec(compile(snippet, "README.md", "exec"), scope)
    np.testing.assert_array_equal(scope["action"], saved["actions"][0])


def test_import_roboflamingo_stays_light_and_exports_the_policy(tmp_path):
    import subprocess
    import sys

    code = ("import sys, roboflamingo; assert 'torch' not in sys.modules, 'import roboflamingo loaded torch'; "
            "from roboflamingo import RoboFlamingoPolicy; print(RoboFlamingoPolicy.__module__, roboflamingo.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from importlib.metadata import version

    assert out == ["roboflamingo.models.policy", version("roboflamingo")]


# -- the first format ---------------------------------------------------------------------------------

def _golden():
    data = json.loads((V1 / "actions.json").read_text())
    rng = np.random.default_rng(data["observation_seed"])
    obs = [{"rgb_static": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "rgb_gripper": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            "robot_obs": rng.normal(0, 1, 15)} for _ in range(len(data["actions"]))]
    return obs, data["instruction"], np.asarray(data["actions"], np.float32)


def _v1_actions(directory) -> np.ndarray:
    obs, instruction, _ = _golden()
    policy = RoboFlamingoPolicy.from_pretrained(directory)
    policy.reset()
    return np.stack([policy.step(o, instruction) for o in obs])


def test_a_checkpoint_written_by_the_first_format_acts_bit_identically(tmp_path):
    _, _, want = _golden()
    np.testing.assert_array_equal(_v1_actions(V1 / "step_0000002"), want)
    # Its optimizer state dropped (and so its manifest no longer all there) it still loads.
    copy = tmp_path / "step"
    shutil.copytree(V1 / "step_0000002", copy)
    (copy / "trainer.pt").unlink()
    np.testing.assert_array_equal(_v1_actions(copy), want)
    # The policy files alone, without manifest or trainer state.
    for name in ("manifest.json",):
        (copy / name).unlink()
    np.testing.assert_array_equal(_v1_actions(copy), want)


def test_export_writes_the_current_format_from_any_source(tmp_path, capsys):
    _, _, want = _golden()
    assert cli.main(["export", str(V1 / "step_0000002"), str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == "roboflamingo-policy-v1" and summary["towers"] == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "out" / CONFIG_FILE).read_text())["format"] == "roboflamingo-policy-v2"
    np.testing.assert_array_equal(_v1_actions(tmp_path / "out"), want)
    assert cli.main(["export", str(V1 / "step_0000002"), str(tmp_path / "out")]) == 1
    assert "already holds a policy; pass overwrite=true" in capsys.readouterr().err


def test_export_bundle_from_a_saved_policy(saved, tmp_path, capsys):
    assert cli.main(["export", str(saved["dir"]), str(tmp_path / "ship"), "--bundle"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["towers"] == {
        "vision": "vit.pt", "lm": "tiny-llama", "tokenizer": "tokenizer"}
    shutil.rmtree(saved["towers"]["vision"].parent)
    np.testing.assert_array_equal(_actions(RoboFlamingoPolicy.from_pretrained(tmp_path / "ship")), saved["actions"])


# -- what a bad directory is told ---------------------------------------------------------------------

def _edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / CONFIG_FILE).read_text())
    edit(config)
    (directory / CONFIG_FILE).write_text(json.dumps(config))


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(format="roboflamingo-policy-v9"),
     r"config\.json: format is 'roboflamingo-policy-v9', expected 'roboflamingo-policy-v2'"),
    (lambda c: c["towers"]["vision"].update(sha256="abc"), r"config\.json: towers\.vision\.sha256 must be 64 hex digits"),
    (lambda c: c["towers"].pop("lm"), r"config\.json: 'towers' names \['tokenizer', 'vision'\], but the model config "
                                      r"reads \['lm', 'tokenizer', 'vision'\]"),
    (lambda c: c["model"]["lm"].update(hidden_sise=3), r"config\.json: unknown key 'model\.lm\.hidden_sise'"),
    (lambda c: c["towers"]["vision"].update(bundled="../../elsewhere/vit.pt"),
     r"config\.json: towers\.vision\.bundled: '\.\./\.\./elsewhere/vit\.pt' must be a relative path inside"),
    (lambda c: c["normalization"]["action_mean"].__setitem__(0, 9.0),
     r"config\.json: normalization\.action_mean differs from normalizer\.action_mean in .*model\.safetensors"),
], ids=["format", "sha256", "tower-entry", "unknown-key", "escaping-bundle", "edited-statistics"])
def test_a_bad_config_is_refused_naming_the_file_and_field(saved, edit, match):
    _edit_config(saved["dir"], edit)
    with pytest.raises(ConfigError, match=match):
        RoboFlamingoPolicy.from_pretrained(saved["dir"])


def test_unreadable_or_incomplete_directories_name_what_they_lack(saved, tmp_path):
    (saved["dir"] / CONFIG_FILE).write_text("{")
    with pytest.raises(ConfigError, match=rf"{saved['dir'] / CONFIG_FILE}: not valid JSON"):
        RoboFlamingoPolicy.from_pretrained(saved["dir"])
    (saved["dir"] / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"not a policy checkpoint \(expected config\.json \+ "
                                                r"model\.safetensors"):
        RoboFlamingoPolicy.from_pretrained(saved["dir"])
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nowhere'} does not exist"):
        RoboFlamingoPolicy.from_pretrained(tmp_path / "nowhere")
