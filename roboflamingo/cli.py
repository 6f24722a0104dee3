"""``roboflamingo <command> [overrides]``: the one place that wires the layers together.

Each command names a module exposing a ``Job`` dataclass (its config schema) and ``run(job)``, and a
primary config ``configs/<config>.yaml``. Arguments are Hydra overrides (``model=tiny head=lstm
train.steps=100``). ``--cfg`` prints the composed, validated config instead of running.
Modules are imported only when their command runs, so ``roboflamingo inspect`` never loads pybullet.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from roboflamingo.config import ConfigError, load, to_yaml


@dataclass(frozen=True)
class Command:
    module: str
    config: str
    help: str
    # Config keys that bare arguments (no "=") fill in order: `convert SRC DST`.
    positional: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {
    "inspect": Command("roboflamingo.models.inspect", "inspect", "build a model on the meta device, print its sizes"),
    "generate": Command("roboflamingo.sim.generate", "generate", "roll out the scripted expert into a CALVIN-layout dataset"),
    "expert-check": Command("roboflamingo.sim.expert_check", "expert_check", "success of the scripted expert per task"),
    "pack": Command("roboflamingo.data.pack", "pack", "convert a CALVIN-layout split into packed shards"),
    "export-lerobot": Command("roboflamingo.data.export_lerobot", "export_lerobot",
                              "export a split as a LeRobotDataset v3 (videos, parquet, meta/)", positional=("out",)),
    "train": Command("roboflamingo.train.loop", "train", "train a policy"),
    "eval": Command("roboflamingo.eval.run", "eval", "closed-loop evaluation with CALVIN's long-horizon protocol"),
    "demo": Command("roboflamingo.demo", "demo", "generate, train, evaluate and report on the built-in tabletop"),
    "serve": Command("roboflamingo.deploy.server", "serve", "websocket policy server"),
    "ros": Command("roboflamingo.deploy.ros_node", "ros", "control a robot through rosbridge"),
    "sim-robot": Command("roboflamingo.deploy.sim_robot", "sim_robot", "serve the tabletop as a robot over rosbridge"),
    "convert": Command("roboflamingo.models.convert", "convert", "convert published weights to our checkpoint format",
                       positional=("src", "dst")),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: roboflamingo <command> [key=value ...] [--cfg]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"roboflamingo: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    show_cfg = "--cfg" in args
    args = [a for a in args if a != "--cfg"]
    bare = [a for a in args if "=" not in a]
    if len(bare) > len(cmd.positional):
        expected = " ".join(k.upper() for k in cmd.positional) or "only key=value overrides"
        print(f"roboflamingo {name}: unexpected argument(s) {bare}; expected {expected}", file=sys.stderr)
        return 2
    overrides = [f"{key}={value}" for key, value in zip(cmd.positional, bare)]
    overrides += [a for a in args if "=" in a]
    module = importlib.import_module(cmd.module)
    try:
        job = load(cmd.config, module.Job, overrides)
    except ConfigError as e:
        print(f"roboflamingo {name}: invalid config: {e}", file=sys.stderr)
        return 2
    if show_cfg:
        print(to_yaml(job))
        return 0
    result = module.run(job)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
