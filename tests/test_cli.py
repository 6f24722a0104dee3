"""The command registry: every command resolves to a module with a Job schema and a run()."""

import importlib

import pytest

from roboflamingo import cli


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


# Commands that cannot run without naming their input.
REQUIRED = {"serve": ["policy=random"], "convert": ["src=in.pth", "dst=out"]}


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_has_job_run_and_config(name):
    cmd = cli.COMMANDS[name]
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
