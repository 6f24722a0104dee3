"""``roboflamingo <command> [overrides]``: the one place that wires the layers together.

Each command names a module exposing a ``Job`` dataclass (its config schema) and ``run(job)``, and a
primary config ``configs/<config>.yaml`` (None: the Job's own defaults). Arguments are Hydra
overrides (``model=tiny head=lstm train.steps=100``). ``--cfg`` prints the composed, validated config
instead of running; ``--help`` describes the command, its config groups and every key, generated from
the Job dataclass and its docstrings, so a new command gets it by being registered here.
Modules are imported only when their command runs, so ``roboflamingo inspect`` never loads pybullet.
"""

from __future__ import annotations

import enum
import importlib
import json
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace

from roboflamingo.config import (
    ConfigError,
    check_group_options,
    check_override_keys,
    command_groups,
    compose,
    did_you_mean,
    load,
    schema_keys,
    schema_overrides,
    schema_sections,
    section_doc,
    summary,
    to_yaml,
)


@dataclass(frozen=True)
class Command:
    module: str
    config: str
    help: str
    # Config keys that bare arguments (no "=") fill in order: `convert SRC DST`.
    positional: tuple[str, ...] = ()
    # Boolean config keys that `--key` sets to true: `env --json`.
    flags: tuple[str, ...] = ()
    # Short spellings of nested keys, `(alias, key, group option it implies)`: `checkpoint=<dir>` is
    # `policy=checkpoint policy.checkpoint=<dir>` unless a `policy=` override picks another kind.
    aliases: tuple[tuple[str, str, str | None], ...] = ()
    # The command in another environment: `env=<name>` runs `(name, module, config, help)` instead (its
    # own Job and primary config; aliases and flags stay the command's).
    envs: tuple[tuple[str, str, str, str], ...] = ()


CHECKPOINT_ALIAS = ("checkpoint", "policy.checkpoint", "checkpoint")
REMOTE_ALIASES = (("server", "policy.server", "remote"), ("token_file", "policy.token_file", None),
                  ("server_ca", "policy.server_ca", None))


COMMANDS: dict[str, Command] = {
    "inspect": Command("roboflamingo.models.inspect", "inspect", "build a model on the meta device, print its sizes"),
    "generate": Command("roboflamingo.sim.generate", "generate", "roll out the scripted expert into a CALVIN-layout dataset",
                        envs=(("metaworld", "roboflamingo.metaworld.generate", "generate_metaworld",
                               "record Meta-World's scripted experts as a dataset in our layout"),)),
    "expert-check": Command("roboflamingo.sim.expert_check", "expert_check", "success of the scripted expert per task",
                            envs=(("metaworld", "roboflamingo.metaworld.expert_check", "expert_check_metaworld",
                                   "success of Meta-World's scripted policies per task and difficulty group"),)),
    "pack": Command("roboflamingo.data.pack", "pack", "convert a CALVIN-layout split into packed shards",
                    flags=("verify",)),
    "export-lerobot": Command("roboflamingo.data.export_lerobot", "export_lerobot",
                              "export a split as a LeRobotDataset v3 (videos, parquet, meta/)", positional=("out",)),
    "train": Command("roboflamingo.train.loop", "train", "train a policy"),
    "plot": Command("roboflamingo.train.plot", None, "draw a training run's metrics.jsonl (losses and every other "
                    "series) into a PNG", positional=("run_dir",)),
    "eval": Command("roboflamingo.eval.run", "eval", "closed-loop evaluation with CALVIN's long-horizon protocol",
                    aliases=(CHECKPOINT_ALIAS,),
                    envs=(("metaworld", "roboflamingo.metaworld.evaluate", "eval_metaworld",
                           "closed-loop evaluation on Meta-World: seeded episodes per task, per-difficulty table"),)),
    "demo": Command("roboflamingo.demo", "demo", "generate, train, evaluate and report on the built-in tabletop"),
    "action-error": Command("roboflamingo.eval.open_loop", "action_error",
                            "per-task open-loop action error of a checkpoint on held-out demonstrations"),
    "serve": Command("roboflamingo.deploy.server", "serve", "websocket policy server", aliases=(CHECKPOINT_ALIAS,)),
    "ros": Command("roboflamingo.deploy.ros_node", "ros", "control a robot through rosbridge or as a ROS 2 node",
                   aliases=(CHECKPOINT_ALIAS, *REMOTE_ALIASES)),
    "sim-robot": Command("roboflamingo.deploy.sim_robot", "sim_robot", "serve the tabletop as a robot over rosbridge or ROS 2"),
    "convert": Command("roboflamingo.models.convert", "convert", "convert published weights to our checkpoint format",
                       positional=("src", "dst"), flags=("bundle",)),
    "export": Command("roboflamingo.models.export", None,
                      "a saved policy as a standalone directory (--bundle: with its frozen towers inside)",
                      positional=("src", "dst"), flags=("bundle",)),
    "env": Command("roboflamingo.envinfo", None, "what this machine offers: versions, device, renderer, calvin_env, disk",
                   flags=("json",)),
}

HELP_FLAGS = ("-h", "--help")
WIDTH = 100
BASE_ENV = "tabletop"  # where the commands' own Jobs run (configs/env/tabletop.yaml)


def env_variants() -> dict[str, list[str]]:
    """Environment name -> the commands that run in it with ``env=<name>``."""
    out: dict[str, list[str]] = {}
    for name, cmd in COMMANDS.items():
        for env, *_ in cmd.envs:
            out.setdefault(env, []).append(name)
    return out


def all_commands() -> Iterator[tuple[str, Command]]:
    """Every command and every environment variant of one (``"eval env=metaworld"``)."""
    for name, cmd in COMMANDS.items():
        yield name, cmd
        for env, *_ in cmd.envs:
            yield f"{name} env={env}", select_env(name, cmd, [f"env={env}"])[0]


def select_env(name: str, cmd: Command, overrides: list[str]) -> tuple[Command, list[str]]:
    """The command and overrides as ``env=<name>`` among ``overrides`` asks for them (the last one
    counts). ``env=tabletop``, the base commands' own environment, is dropped where the command's
    config has no ``env`` group (expert-check). A ValueError names the commands that do run in an
    environment this one does not."""
    chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "env"]
    if not chosen:
        return cmd, overrides
    for env, module, config, help_ in cmd.envs:
        if env == chosen[-1]:
            return replace(cmd, module=module, config=config, help=help_, envs=()), overrides
    variants = env_variants()
    if chosen[-1] in variants:
        raise ValueError(f"env={chosen[-1]} is not available for '{name}'; it runs "
                         f"{', '.join(variants[chosen[-1]])}")
    if chosen[-1] == BASE_ENV and cmd.envs and cmd.config:
        from roboflamingo.config import _defaults_list, config_dir

        if "env" not in _defaults_list(config_dir() / f"{cmd.config}.yaml"):
            return cmd, [o for o in overrides if o.partition("=")[0] != "env"]
    return cmd, overrides


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: roboflamingo <command> [key=value ...] [--cfg] [-h]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "`roboflamingo <command> --help` lists the command's config groups and every key."]
    for env, names in env_variants().items():
        lines += [f"`env={env}` runs {', '.join(names)} in {env} (`roboflamingo {names[0]} env={env} --help`)."]
    return "\n".join(lines)


def format_value(value) -> str:
    """A config value as it would be typed in an override (YAML flow style)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str).replace('"', "")
    return str(value)


def _values(cmd: Command, job_cls: type, overrides: list[str]) -> tuple[dict[str, str], str]:
    """Every key's value as the command would run it (``path -> text``), and a note on where from."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    tree = OmegaConf.structured(job_cls)
    note = "the Job's defaults"
    if cmd.config is not None:
        found = command_groups(cmd.config, job_cls)
        groups = tuple(g.name for g in found)
        check_group_options(found, overrides, source=f"configs/{cmd.config}.yaml")
        check_override_keys(job_cls, overrides, groups, source=f"configs/{cmd.config}.yaml")
        tree = OmegaConf.merge(tree, compose(cmd.config, schema_overrides(overrides, groups)))
        note = f"configs/{cmd.config}.yaml" + (f" with {' '.join(overrides)}" if overrides else "")
    values = {}
    for key in schema_keys(job_cls):
        try:
            values[key.path] = format_value(OmegaConf.select(tree, key.path, throw_on_missing=True))
        except MissingMandatoryValue:
            values[key.path] = "??? (required)"
    return values, note


def expand_aliases(cmd: Command, overrides: list[str]) -> list[str]:
    """``alias=value`` -> ``key=value``, plus the group option the alias implies when none is given."""
    table = {alias: (key, option) for alias, key, option in cmd.aliases}
    out: list[str] = []
    implied: dict[str, str] = {}  # group -> option; the first alias wins (checkpoint= before server=)
    for o in overrides:
        name, eq, value = o.partition("=")
        if eq and name in table:
            key, option = table[name]
            out.append(f"{key}={value}")
            if option:
                implied.setdefault(key.partition(".")[0], option)
        else:
            out.append(o)
    picked = {o.partition("=")[0] for o in out}
    return [*(f"{g}={o}" for g, o in implied.items() if g not in picked), *out]


def _rst(text: str) -> str:
    return text.replace("``", "`")


def _wrap(text: str, indent: int = 0, hang: int | None = None) -> list[str]:
    # never split a word (`non-causal`, a path): the text must read back exactly as the docstring
    return textwrap.wrap(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * (hang or indent),
                         break_on_hyphens=False, break_long_words=False)


def command_help(name: str, cmd: Command, overrides: list[str] | None = None) -> str:
    """What ``roboflamingo <name> --help`` prints, read from the Job dataclass and the config tree."""
    overrides = list(overrides or [])
    job_cls = importlib.import_module(cmd.module).Job
    values, note = _values(cmd, job_cls, overrides)
    usage_line = " ".join(["usage: roboflamingo", name, *(k.upper() for k in cmd.positional),
                           "[key=value ...]", *(f"[--{f}]" for f in cmd.flags), "[--cfg] [-h]"])
    lines = [usage_line, "", f"{cmd.help}."]
    if cmd.envs:
        lines += _wrap("other environments: " + ", ".join(f"env={e} (`roboflamingo {name} env={e} --help`)"
                                                          for e, *_ in cmd.envs))
    if cmd.aliases:
        lines += _wrap("aliases: " + ", ".join(f"{a}= is {k}=" + (f" (and {k.partition('.')[0]}={o})" if o else "")
                                               for a, k, o in cmd.aliases))
    if summary(job_cls):
        lines += _wrap(_rst(summary(job_cls)))
    if cmd.positional:
        lines += ["", "positional: " + ", ".join(f"{k.upper()} fills {k}=" for k in cmd.positional)]
    if cmd.flags:
        lines += ["", "flags: " + ", ".join(f"--{f} sets {f}=true" for f in cmd.flags)]
    groups = command_groups(cmd.config, job_cls)
    if groups:
        lines += ["", "config groups (group=option, * marks the default; +group=option adds one not picked):"]
        width = max(len(g.name) for g in groups)
        for g in groups:
            opts = ", ".join(o + ("*" if o == g.default else "") for o in g.options)
            lines.append(f"  {(g.name if g.default else '+' + g.name):<{width + 1}}  {opts}")
    lines += ["", f"keys (key: type = value from {note}):"]
    keys = schema_keys(job_cls)
    for path, cls in schema_sections(job_cls):
        own = [k for k in keys if k.path.rpartition(".")[0] == path]
        if not own:
            continue
        if path:
            lines += [""] + _wrap(f"{path} ({cls.__name__}): {_rst(section_doc(job_cls, path))}".rstrip(": "), 0, 4)
        for k in own:
            lines.append(f"  {k.path}: {k.type} = {values[k.path]}")
            if k.doc:
                lines += _wrap(_rst(k.doc), 6)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"roboflamingo: unknown command '{name}'{did_you_mean(name, list(COMMANDS))}\n\n{usage()}",
              file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    show_cfg = "--cfg" in args
    show_help = any(a in HELP_FLAGS for a in args)
    args = [a for a in args if a != "--cfg" and a not in HELP_FLAGS]
    overrides = []
    for a in [a for a in args if a.startswith("--")]:
        if a[2:] not in cmd.flags:
            known = " ".join([*(f"--{f}" for f in cmd.flags), "--cfg", "--help"])
            print(f"roboflamingo {name}: unknown option '{a}'; expected key=value overrides, {known}", file=sys.stderr)
            return 2
        overrides.append(f"{a[2:]}=true")
    args = [a for a in args if not a.startswith("--")]
    bare = [a for a in args if "=" not in a]
    if len(bare) > len(cmd.positional):
        expected = " ".join(k.upper() for k in cmd.positional) or "only key=value overrides"
        print(f"roboflamingo {name}: unexpected argument(s) {bare}; expected {expected}", file=sys.stderr)
        return 2
    overrides += [f"{key}={value}" for key, value in zip(cmd.positional, bare)]
    overrides += [a for a in args if "=" in a]
    overrides = expand_aliases(cmd, overrides)
    try:
        cmd, overrides = select_env(name, cmd, overrides)
    except ValueError as e:
        print(f"roboflamingo {name}: {e}", file=sys.stderr)
        return 2
    module = importlib.import_module(cmd.module)
    try:
        if show_help:
            # A command with overrides of its own spelling (`train resume=<run_dir>`) says how to read them.
            spelled = getattr(module, "help_overrides", None)
            print(command_help(name, cmd, spelled(overrides) if spelled else overrides))
            return 0
        # A command may build its Job itself (`train resume=<run_dir>` starts from the run's config).
        loader = getattr(module, "load_job", None)
        job = loader(overrides) if loader is not None else load(cmd.config, module.Job, overrides)
    except ConfigError as e:
        print(f"roboflamingo {name}: invalid config: {e}\n(`roboflamingo {name} --help` lists every key)",
              file=sys.stderr)
        return 2
    if show_cfg:
        print(to_yaml(job))
        return 0
    result = module.run(job)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
