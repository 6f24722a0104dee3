"""The command registry: every command resolves to a module with a Job schema and a run()."""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from roboflamingo import cli, envinfo
from roboflamingo.config import command_groups, doc_problems, schema_keys, schema_sections, section_doc
from roboflamingo.sim.tasks import TaskOracle

ROOT = Path(__file__).resolve().parents[1]


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


# Commands that cannot run without naming their input.
REQUIRED = {"serve": ["policy=random"], "eval": ["policy=random"], "convert": ["src=in.pth", "dst=out"],
            "eval env=metaworld": ["policy=random"],
            "action-error": ["checkpoint=ckpt", "split_dir=data/validation"]}
# Every command and every environment variant of one ("eval env=metaworld").
ALL = dict(cli.all_commands())


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_command_has_job_run_and_config(name):
    cmd = ALL[name]
    module = importlib.import_module(cmd.module)
    assert callable(module.run)
    job = cli.load(cmd.config, module.Job, REQUIRED.get(name, []))
    assert isinstance(job, module.Job)


def test_cfg_prints_the_composed_config_and_bad_override_exits_2(capsys):
    assert cli.main(["inspect", "--cfg"]) == 0
    assert "model" in capsys.readouterr().out
    assert cli.main(["inspect", "no_such_key=1"]) == 2
    assert "invalid config" in capsys.readouterr().err


def test_bare_arguments_fill_positional_keys(capsys):
    assert cli.main(["convert", "in.pth", "out_dir", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "src: in.pth" in out and "dst: out_dir" in out
    assert cli.main(["convert", "a", "b", "c"]) == 2
    assert "expected SRC DST" in capsys.readouterr().err
    assert cli.main(["inspect", "tiny"]) == 2
    assert "only key=value overrides" in capsys.readouterr().err


# ------------------------------------------------------------------ --help, mistakes, env


def _key_value(job, path: str):
    value = job
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _flat(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


@pytest.mark.parametrize("name", sorted(ALL))
def test_help_lists_every_key_with_its_type_default_and_doc(name, capsys):
    cmd = ALL[name]
    job_cls = importlib.import_module(cmd.module).Job
    flag = "-h" if len(name) % 2 else "--help"  # both spellings, across the commands
    assert cli.main([*name.split(), flag, *REQUIRED.get(name, [])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: roboflamingo {name.split()[0]}") and cmd.help in out
    # the values the command would run with: the validated Job built the ordinary way
    job = cli.load(cmd.config, job_cls, REQUIRED.get(name, []))
    keys = schema_keys(job_cls)
    assert keys, f"{name}: its Job has no keys"
    for key in keys:
        line = f"  {key.path}: {key.type} = {cli.format_value(_key_value(job, key.path))}"
        assert line in out.splitlines(), f"{name} --help lacks '{line}'"
        # an empty doc is test_every_key_has_a_help_sentence's to report, with where to write it
        assert _flat(key.doc) in _flat(out), f"{name} --help lacks the doc of {key.path}"
    for path, cls in schema_sections(job_cls)[1:]:
        if any(k.path.rpartition(".")[0] == path for k in keys):
            header = f"{path} ({cls.__name__}): {section_doc(job_cls, path)}"
            assert _flat(header) in _flat(out), f"{name} --help lacks the section header '{header}'"
    # a dataclass without a docstring has its constructor signature as __doc__: never print that
    assert not re.search(r"\w+\(\w+: [\w\[\]| ]+ = ", out), f"{name} --help prints a raw dataclass signature"
    for group in command_groups(cmd.config, job_cls):
        assert group.name in out and all(option in out for option in group.options)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_key_has_a_help_sentence(name):
    """Every key of every command, and every nested section, is documented in an ``Args:`` section.

    A new config field fails here until it has its sentence; the message says which key and in which
    file and class to write it.
    """
    job_cls = importlib.import_module(cli.COMMANDS[name].module).Job
    problems = doc_problems(job_cls)
    assert not problems, (f"`roboflamingo {name} --help` would show keys without help (write each sentence "
                          "in the Args: section of the dataclass named):\n  " + "\n  ".join(problems))
    assert all(k.doc.strip() for k in schema_keys(job_cls))


def test_help_reads_the_docstrings_and_the_groups(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "  train.steps: int = 20000" in out  # configs/train/default.yaml, not the dataclass's own 1000
    assert "optimizer steps to train for" in out
    assert "model.lm (LMConfig): The frozen causal language model" in out
    assert "  model   mid, of3b_mpt1b, of4b, of9b_mpt7b, tiny*, tiny_minilm" in out
    # help composes the overrides given with it
    assert cli.main(["train", "model=mid", "train.steps=7", "-h"]) == 0
    out = capsys.readouterr().out
    assert "  model.name: str = mid" in out and "  train.steps: int = 7" in out
    # a _global_ group that sets only demo keys is offered to demo, added with +
    assert cli.main(["demo", "--help"]) == 0
    assert "+experiment  abc_to_d" in capsys.readouterr().out
    assert cli.main(["demo", "+experiment=abc_to_d", "--cfg"]) == 0
    assert "run_dir: runs/abc_to_d" in capsys.readouterr().out
    # The all-tasks configuration names every task the tabletop's oracle knows, each once.
    assert cli.main(["demo", "+experiment=all_tasks", "--cfg"]) == 0
    composed = yaml.safe_load(capsys.readouterr().out)
    assert sorted(composed["tasks"]) == sorted(TaskOracle.default().tasks) and len(composed["tasks"]) == 34
    assert cli.main(["train", "--help"]) == 0
    assert "experiment" not in capsys.readouterr().out  # its keys are not train's


@pytest.mark.parametrize("override, message", [
    ("modle=tiny", "unknown key 'modle'; did you mean 'model'?"),
    ("train.stpes=5", "unknown key 'train.stpes'; did you mean 'train.steps'?"),
    ("stpes=5", "unknown key 'stpes'; did you mean 'train.steps'?"),
    ("model.lm.familly=mpt", "unknown key 'model.lm.familly'; did you mean 'model.lm.family'?"),
    ("dat.root=x", "unknown key 'dat' (in 'dat.root'); did you mean 'data'?"),
    ("+model.vision.widht=3", "unknown key 'model.vision.widht'; did you mean 'model.vision.width' or"),
    ("zzzz=1", "unknown key 'zzzz'; valid keys at the top level: model, head, data, train, run_dir, seed, resume"),
])
def test_mistyped_key_gets_the_closest_valid_keys(override, message, capsys):
    assert cli.main(["train", override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "+modle" not in err and "To append" not in err  # not Hydra's advice
    assert "roboflamingo train --help" in err
    assert cli.main(["train", override, "--help"]) == 2  # help with the typo says the same
    assert message in capsys.readouterr().err


def test_mistyped_command_gets_the_closest_command(capsys):
    assert cli.main(["trian", "model=tiny"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'; did you mean 'train'?" in err
    assert cli.main(["export-lerobto"]) == 2
    assert "did you mean 'export-lerobot'" in capsys.readouterr().err
    assert cli.main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fly'\n" in err and "did you mean" not in err and "commands:" in err


@pytest.mark.parametrize("args, message", [
    (["train", "model=tinny"], "unknown option 'tinny' for config group 'model'; did you mean 'tiny'? (options: mid, "
                               "of3b_mpt1b, of4b, of9b_mpt7b, tiny, tiny_minilm; configs/model/<option>.yaml)"),
    (["train", "head=lstn"], "unknown option 'lstn' for config group 'head'; did you mean 'lstm'?"),
    (["eval", "policy=expret"], "unknown option 'expret' for config group 'policy'; did you mean 'expert'?"),
    (["ros", "deploy=ros3"], "for config group 'deploy'; did you mean 'ros2' or 'ros1'? (options: ros1, ros2, sim, sim_ros2, so101;"),
    (["demo", "+experiment=zzz"], "unknown option 'zzz' for config group 'experiment' (options: abc_to_d, all_tasks;"),
])
def test_mistyped_group_option_gets_the_closest_options(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Config search path" not in err and "file://" not in err  # not Hydra's dump
    assert cli.main([*args, "--help"]) == 2  # help with the typo says the same
    assert message in capsys.readouterr().err


def test_env_picks_a_commands_variant_and_names_where_it_runs(capsys):
    assert cli.main(["eval", "env=metaworld", "policy=expert", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "benchmark_seed: 42" in out and "mode: single_task" in out and "ep_len: 500" in out
    assert cli.main(["eval", "--help"]) == 0
    assert "env=metaworld (`roboflamingo eval env=metaworld --help`)" in capsys.readouterr().out
    assert cli.main(["expert-check", "env=metaworld", "tasks=[easy]", "--cfg"]) == 0
    assert "render: 'off'" in capsys.readouterr().out
    assert cli.main(["expert-check", "env=metaworld", "tasks=[eazy]"]) == 2
    assert "'eazy' is neither a Meta-World task nor a group" in capsys.readouterr().err
    assert cli.main(["expert-check", "env=metaworld", "env=tabletop", "--cfg"]) == 0  # the last one counts
    assert "scene: D" in capsys.readouterr().out
    for name in ("train", "demo", "serve"):
        assert cli.main([name, "env=metaworld"]) == 2
        assert f"env=metaworld is not available for '{name}'; it runs generate, expert-check, eval" in (
            capsys.readouterr().err)
    assert cli.main([]) == 0
    assert "`env=metaworld` runs generate, expert-check, eval in metaworld" in capsys.readouterr().out


def test_flags(capsys):
    assert cli.main(["env", "--json", "--cfg"]) == 0
    assert "json: true" in capsys.readouterr().out
    assert cli.main(["env", "--bogus"]) == 2
    assert "unknown option '--bogus'" in capsys.readouterr().err
    assert cli.main(["train", "--json"]) == 2  # a flag belongs to its command
    assert cli.main(["env", "jsno=true"]) == 2
    assert "did you mean 'json'?" in capsys.readouterr().err


@pytest.mark.slow
def test_env_json_names_the_renderer_and_the_calvin_env_state(tmp_path):
    data_dir = tmp_path / "not" / "yet" / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "roboflamingo.cli", "env", "--json", f"data_dir={data_dir}", f"runs_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["renderer"]["loads"] in ("egl", "tiny"), report["renderer"]
    if report["renderer"]["loads"] == "egl":
        assert importlib.util.find_spec("eglRenderer") is not None  # PyBullet's plugin exists to load
    installed = importlib.util.find_spec("calvin_env") is not None
    assert report["calvin_env"]["state"] in (("imports", "fails to import") if installed else ("not installed",))
    assert report["egl_triton"]["share_process"] in (True, False, None)
    if report["renderer"]["loads"] != "egl":
        assert report["egl_triton"]["share_process"] is None
    assert report["packages"]["torch"] == torch.__version__.split("+")[0]
    assert report["torch"]["threads"] >= 1 and report["torch"]["device"] in ("cpu", "cuda", "mps")
    assert report["disk"]["data"]["exists"] is False and report["disk"]["data"]["measured_at"] == str(tmp_path)
    assert report["disk"]["runs"]["free_gb"] >= 0


def test_a_probe_child_killed_by_a_signal_is_reported_not_fatal():
    # what importing triton after EGL does on Mesa, without needing either: the child segfaults
    # after its first answer, and the report says so.
    code = ("import json, os, signal; print(json.dumps({'renderer': 'egl', 'gl_renderer': 'llvmpipe'}), flush=True);"
            "os.kill(os.getpid(), signal.SIGSEGV)")
    renderer, share = envinfo._renderer_report(envinfo._start(code), 60, triton_installed=True)
    assert renderer == {"loads": "egl", "gl_renderer": "llvmpipe", "error": None}
    assert share["share_process"] is False and "SIGSEGV" in share["detail"]
    ok = "import json; print(json.dumps({'renderer': 'egl', 'gl_renderer': None})); print(json.dumps({'triton': '3'}))"
    assert envinfo._renderer_report(envinfo._start(ok), 60, triton_installed=True)[1]["share_process"] is True
    tiny = "import json; print(json.dumps({'renderer': 'tiny', 'gl_renderer': None}))"
    assert envinfo._renderer_report(envinfo._start(tiny), 60, triton_installed=True)[1]["share_process"] is None
    broken = envinfo._renderer_report(envinfo._start("raise SystemExit('no scene')"), 60, triton_installed=True)
    assert broken[0]["loads"] is None and "exit code 1" in broken[0]["error"] and "no scene" in broken[0]["error"]
