"""Which environment to evaluate in: one picklable spec, one factory (the env twin of ``policies``).

- ``tabletop``: our PyBullet tabletop (``roboflamingo/Tabletop-v0``) with the oracle over
  ``envs/tasks.yaml``; initial states through the simulator's ``initial_state_to_obs`` for its scene.
- ``calvin``: the real ``calvin_env`` built from a CALVIN dataset split, with CALVIN's own oracle
  (``calvin_adapter.CalvinEnv``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from roboflamingo.eval.protocol import EvalEnv, GymOracleEnv
from roboflamingo.sim.config import EnvConfig

ENV_KINDS = ("tabletop", "calvin")


@dataclass(frozen=True)
class EnvSpec:
    """Everything a worker needs to build its own environment.

    Args:
        kind: ``tabletop`` or ``calvin``.
        env: the tabletop's settings (``kind=tabletop``).
        calvin_dataset: the CALVIN split directory with ``.hydra/merged_config.yaml`` (``kind=calvin``).
        calvin_tasks_config: CALVIN's ``new_playtable_tasks.yaml``; None finds it beside ``calvin_env``.
    """

    kind: str = "tabletop"
    env: EnvConfig = field(default_factory=EnvConfig)
    calvin_dataset: str | None = None
    calvin_tasks_config: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENV_KINDS:
            raise ValueError(f"environment kind must be one of {list(ENV_KINDS)}, got '{self.kind}'")
        if self.kind == "calvin" and not self.calvin_dataset:
            raise ValueError("the calvin environment needs eval.calvin_dataset=<CALVIN split dir>")

    def identity(self) -> dict[str, Any]:
        if self.kind == "calvin":
            tasks = str(Path(self.calvin_tasks_config).resolve()) if self.calvin_tasks_config else "calvin_env default"
            return {"kind": "calvin", "dataset": str(Path(self.calvin_dataset).resolve()), "tasks": tasks}
        # Camera sizes and the renderer change what a policy sees, so they are part of the identity.
        return {"kind": "tabletop", "env": asdict(self.env)}

    def __call__(self) -> EvalEnv:
        return make_env(self)


def make_env(spec: EnvSpec) -> EvalEnv:
    """Build the environment a spec describes (called once per worker process)."""
    if spec.kind == "calvin":
        from roboflamingo.eval.calvin_adapter import CalvinEnv

        return CalvinEnv(spec.calvin_dataset, spec.calvin_tasks_config)
    from roboflamingo.sim.chains import initial_state_to_obs
    from roboflamingo.sim.env import TabletopEnv
    from roboflamingo.sim.expert import ScriptedExpert
    from roboflamingo.sim.tasks import TaskOracle

    env = TabletopEnv(spec.env)
    to_state = partial(initial_state_to_obs, scene=env.scene)
    return GymOracleEnv(env, TaskOracle.default(), to_state, frames_from_obs=spec.env.render,
                        expert=partial(ScriptedExpert, env.scene))
