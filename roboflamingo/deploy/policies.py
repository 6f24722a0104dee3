"""Where a deployed policy comes from: one function that turns ``checkpoint=`` / ``policy=`` into a factory.

A policy keeps its history inside the instance, so anything that serves several episodes at once (the
server's sessions, parallel evaluation workers) must call the factory once per episode stream instead of
sharing one instance; for a checkpoint every instance is a slot (its own history) of one shared model
that steps all waiting sessions in one batched forward (``eval.batching``). The heavy imports (torch models, pybullet) happen only when that source is chosen.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from roboflamingo.eval.batching import BatchedModel, BatchedSession, SlotBatcher
from roboflamingo.eval.policies import RandomPolicy  # one baseline for evaluation and serving
from roboflamingo.types import (
    RGB_GRIPPER,
    RGB_STATIC,
    ROBOT_OBS,
    ROBOT_OBS_DIM,
    SCENE_OBS,
    SCENE_OBS_DIM,
    Policy,
)

POLICY_SOURCES = ("checkpoint", "expert", "random")
# How long a tick waits for the other sessions' frames once the first arrived (a session that is not
# stepping must not stall the rest); a tick fires at once when every session has a frame waiting.
BATCH_WAIT_S = 0.005


@dataclass
class PolicySource:
    """A resolved policy source: how to make a fresh instance and what it needs to see."""

    name: str
    factory: Callable[[], Policy]
    observation_keys: tuple[str, ...]
    info: dict = field(default_factory=dict)


def observation_spec(keys: tuple[str, ...]) -> dict[str, dict]:
    """The handshake's description of each observation entry (-1: any size)."""
    spec = {
        RGB_STATIC: {"shape": [-1, -1, 3], "dtype": "uint8"},
        RGB_GRIPPER: {"shape": [-1, -1, 3], "dtype": "uint8"},
        ROBOT_OBS: {"shape": [ROBOT_OBS_DIM], "dtype": "float32"},
        SCENE_OBS: {"shape": [SCENE_OBS_DIM], "dtype": "float32"},
    }
    return {k: spec[k] for k in keys}


def _checkpoint_factory(checkpoint: str, device: str) -> Callable[[], Policy]:
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint={checkpoint}: not a directory (expected config.yaml + model.safetensors)"
        )
    from roboflamingo.models.policy import RoboFlamingoPolicy

    if device == "cpu":
        import torch

        from roboflamingo.threads import choose_threads

        torch.set_num_threads(choose_threads())  # the free cores, not all of them (threads.py)
    base = RoboFlamingoPolicy.from_pretrained(str(path), map_location=device)
    base.eval()
    # One model for every session: each caller gets a slot (its own history) on one batcher, which
    # steps all sessions waiting at a tick in one forward (the evaluator's batching core).
    batcher = SlotBatcher(BatchedModel(base), max_wait_s=BATCH_WAIT_S).start()
    return lambda: BatchedSession(batcher)


def _expert_factory(scene: str) -> Callable[[], Policy]:
    from roboflamingo.sim.expert import ScriptedExpert

    return lambda: ScriptedExpert(scene)


def resolve_policy_source(
    policy: str = "",
    checkpoint: str | None = None,
    scene: str = "D",
    device: str = "cpu",
    seed: int = 0,
    server: str = "",
    token: str | None = None,
    ssl_cafile: str = "",
) -> PolicySource:
    """``checkpoint=<dir>`` (policy empty or "checkpoint"), ``policy=expert``, ``policy=random``, or
    ``policy=remote`` with ``server=ws://host:port`` (each instance is its own session on that server;
    ``token`` None reads ``$ROBOFLAMINGO_TOKEN``, ``ssl_cafile`` trusts a private CA for wss://).
    """
    name = policy or ("checkpoint" if checkpoint else "")
    if name == "remote":
        if not server.startswith(("ws://", "wss://")):
            raise ValueError(f"policy=remote needs server=ws://host:port, got '{server}'")
        from roboflamingo.deploy.client import PolicyClient

        return PolicySource(name, lambda: PolicyClient(server, token=token, ssl_cafile=ssl_cafile).connect(), (),
                            {"server": server})
    if name not in POLICY_SOURCES:
        raise ValueError(
            f"policy must be one of {[*POLICY_SOURCES, 'remote']} (or give checkpoint=<dir>), got '{policy}'"
        )
    if name == "checkpoint":
        if not checkpoint:
            raise ValueError("policy=checkpoint needs checkpoint=<dir>")
        factory = _checkpoint_factory(checkpoint, device)
        # The directory's own name only: the handshake must not tell clients where files live on the server.
        return PolicySource(
            name, factory, (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS), {"checkpoint": Path(checkpoint).resolve().name}
        )
    if checkpoint:
        raise ValueError(f"checkpoint={checkpoint} was given together with policy={name}; choose one")
    if name == "expert":
        # The scripted expert reads the privileged scene state, so a client must send scene_obs.
        return PolicySource(name, _expert_factory(scene), (ROBOT_OBS, SCENE_OBS), {"scene": scene})
    counter = itertools.count()
    return PolicySource(name, lambda: RandomPolicy(seed + next(counter)), (ROBOT_OBS,), {"seed": seed})


def make_policy_factory(
    policy: str = "",
    checkpoint: str | None = None,
    scene: str = "D",
    device: str = "cpu",
    seed: int = 0,
    server: str = "",
) -> Callable[[], Policy]:
    """The factory alone, for callers (eval) that need nothing else from the source."""
    return resolve_policy_source(policy, checkpoint, scene, device, seed, server).factory
