"""The built-in PyBullet tabletop: a CALVIN-like world, its task oracle, scripted expert and datasets.

Importing this package registers the Gymnasium ids ``roboflamingo/Tabletop-v0`` (scene from the
``scene`` keyword, D by default) and ``roboflamingo/Tabletop{A,B,C,D}-v0``.
"""

from __future__ import annotations

import gymnasium

ENV_ID = "roboflamingo/Tabletop-v0"


def _register() -> None:
    ids = {ENV_ID: {}} | {f"roboflamingo/Tabletop{s}-v0": {"scene": s} for s in "ABCD"}
    for env_id, kwargs in ids.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="roboflamingo.sim.env:TabletopEnv", kwargs=kwargs,
                               max_episode_steps=None, disable_env_checker=False)


_register()
