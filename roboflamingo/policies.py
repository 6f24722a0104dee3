"""Where a policy comes from: one typed config (group ``configs/policy/``), one way to build it.

Every command that runs a policy (``eval``, ``serve``, ``ros``, and the demo through ``eval``) holds a
``PolicySourceConfig`` under ``policy`` and builds instances with ``build_policy``; the server and the
ROS node take a ``PolicySource`` (``policy_source``): the factory plus what a client must send.

- ``checkpoint``: a ``RoboFlamingoPolicy.save_pretrained`` directory (``policy.checkpoint=<dir>``);
- ``expert``: the tabletop's scripted expert (an upper bound and a check of the protocol);
- ``random``: uniform random actions (a lower bound: it should score about 0);
- ``remote``: a ``roboflamingo serve`` server (``policy.server=ws://host:port``), one session per instance.

A policy keeps its history inside the instance, so anything running several episode streams at once
(the server's sessions, evaluation workers) builds one instance per stream. Heavy imports (torch
models, pybullet, websockets) happen only when their kind is chosen; this module itself imports
neither ``eval`` nor ``deploy`` at load time, so both can import it.
"""

from __future__ import annotations

import enum
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.models.config import ChunkingOverride
from roboflamingo.robot import RobotDescription
from roboflamingo.robots.calvin import CALVIN, ROBOT_OBS, SCENE_OBS
from roboflamingo.types import Observation, Policy

DEVICES = ("auto", "cpu", "cuda")
# How long a served tick waits for the other sessions' frames once the first arrived (a session that
# is not stepping must not stall the rest); a tick fires at once when every session has a frame waiting.
BATCH_WAIT_S = 0.005


class PolicyKind(str, enum.Enum):
    """The closed set of policy sources (the value is what configs and records spell)."""

    checkpoint = "checkpoint"
    expert = "expert"
    random = "random"
    remote = "remote"


# The kinds that run in this process. ``eval`` and ``serve`` take only these (serving a remote policy
# would be a relay of a relay); the ROS node takes every kind.
LOCAL_KINDS = (PolicyKind.checkpoint, PolicyKind.expert, PolicyKind.random)

# What each kind but a checkpoint (whose robot description says) reads from an observation: a client
# must send these (the server's handshake says so). The scripted expert reads the privileged scene
# state, so it needs scene_obs; a remote policy's needs are its server's business.
OBSERVATION_KEYS: dict[PolicyKind, tuple[str, ...]] = {
    PolicyKind.expert: (ROBOT_OBS, SCENE_OBS),
    PolicyKind.random: (ROBOT_OBS,),
    PolicyKind.remote: (),
}


@dataclass
class PolicySourceConfig:
    """Which policy to run (group ``configs/policy/``: ``policy=checkpoint|expert|random|remote``).

    Args:
        kind: ``checkpoint``, ``expert``, ``random`` or ``remote``.
        checkpoint: the directory ``RoboFlamingoPolicy.save_pretrained`` wrote, a training checkpoint or
            run directory, or a Hugging Face Hub id (``org/name``) read offline from the local cache
            (``kind=checkpoint`` only).
        device: where a checkpoint runs: ``auto`` (CUDA when available; under torchrun each rank its
            ``LOCAL_RANK`` GPU), ``cpu`` or ``cuda``.
        scene: the tabletop scene the scripted expert acts in.
        seed: seed of the random policy; instance i (a worker, a session) uses ``seed + i``.
        server: the ``roboflamingo serve`` URL (``ws://`` or ``wss://``) of a remote policy.
        token_file: the remote server's token (first line); empty reads ``$ROBOFLAMINGO_TOKEN``.
        server_ca: a CA (or self-signed) certificate that signs a ``wss://`` server's certificate.
        chunking: a checkpoint's action-chunk execution for this run (``policy.chunking.execute_steps=4``,
            ``policy.chunking.ensemble=true``); unset fields keep the checkpoint's ``head.chunking``.
    """

    kind: PolicyKind = PolicyKind.checkpoint
    checkpoint: str | None = None
    device: str = "auto"
    scene: str = "D"
    seed: int = 0
    server: str = "ws://127.0.0.1:8765"
    token_file: str = ""
    server_ca: str = ""
    chunking: ChunkingOverride = field(default_factory=ChunkingOverride)

    def __post_init__(self) -> None:
        try:
            self.kind = PolicyKind(self.kind)
        except ValueError:
            raise ValueError(f"policy.kind must be one of {[k.value for k in PolicyKind]}, got '{self.kind}'") from None
        if self.device not in DEVICES:
            raise ValueError(f"policy.device must be one of {list(DEVICES)}, got '{self.device}'")

    def check(self, allowed: tuple[PolicyKind, ...] = tuple(PolicyKind), command: str = "") -> None:
        """The cross-field rules, raising a ValueError that names the field; every command's ``Job``
        calls it (not ``__post_init__``: the bare default, ``checkpoint`` without a directory, is how
        a config starts before its overrides)."""
        if self.kind not in allowed:
            raise ValueError(f"{f'roboflamingo {command}: ' if command else ''}policy must be one of "
                             f"{[k.value for k in allowed]}, got '{self.kind.value}'")
        if self.kind is PolicyKind.checkpoint:
            if not self.checkpoint:
                raise ValueError("policy=checkpoint needs checkpoint=<dir> (a directory written by save_pretrained)")
            from roboflamingo.models.hub import resolve

            try:
                resolve(self.checkpoint)
            except FileNotFoundError as e:
                raise ValueError(f"checkpoint={self.checkpoint}: {e}") from e
        elif self.checkpoint:
            raise ValueError(f"checkpoint={self.checkpoint} is only read with policy=checkpoint, "
                             f"not policy={self.kind.value}")
        if self.chunking.is_set and self.kind is not PolicyKind.checkpoint:
            raise ValueError(f"policy.chunking is only read with policy=checkpoint, not policy={self.kind.value}")
        if self.kind is PolicyKind.remote and not self.server.startswith(("ws://", "wss://")):
            raise ValueError(f"policy=remote needs server=ws://host:port: server must be a ws:// or wss:// URL, "
                             f"got '{self.server}'")
        for name in ("token_file", "server_ca"):
            path = getattr(self, name)
            if path and not Path(path).expanduser().is_file():
                raise ValueError(f"policy.{name}={path}: no such file")

    @property
    def observation_keys(self) -> tuple[str, ...]:
        if self.kind is PolicyKind.checkpoint:
            return source_robot(self).observation_keys  # type: ignore[union-attr]  # never None here
        return OBSERVATION_KEYS[self.kind]

    def info(self) -> dict[str, Any]:
        """The handshake's description of the source: the checkpoint by its directory name only, never
        by where files live on the server."""
        if self.kind is PolicyKind.checkpoint:
            local = Path(self.checkpoint).expanduser()
            return {"checkpoint": local.resolve().name if local.exists() else self.checkpoint}
        if self.kind is PolicyKind.expert:
            return {"scene": self.scene}
        if self.kind is PolicyKind.random:
            return {"seed": self.seed}
        return {"server": self.server}


class RandomPolicy:
    """Uniform random actions over the robot's action bounds (unbounded dims: [-1, 1]) with random
    binary grippers: the floor of every score."""

    def __init__(self, seed: int = 0, robot: RobotDescription | None = None):
        self.seed = seed
        self.robot = robot or CALVIN
        self.rng = np.random.default_rng(seed)
        spec = self.robot.action
        self._low = np.where(np.isfinite(spec.low), spec.low, -1.0)
        self._high = np.where(np.isfinite(spec.high), spec.high, 1.0)

    def reset(self) -> None:
        pass

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        spec = self.robot.action
        action = self.rng.uniform(self._low, self._high, size=spec.dim).astype(np.float32)
        for i in spec.grippers:
            action[i] = spec.open if self.rng.random() < 0.5 else spec.close
        return action


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    # Under torchrun each rank takes its own GPU (LOCAL_RANK), not all of them cuda:0.
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local) % torch.cuda.device_count()}" if local else "cuda"


def build_policy(cfg: PolicySourceConfig, index: int = 0, torch_threads: int = 0, precision: str = "fp32") -> Policy:
    """A fresh policy instance: the one construction path of every command.

    ``index`` seeds the random policy (``cfg.seed + index``); ``torch_threads`` (0: torch's default)
    and ``precision`` (of the frozen towers) apply to a checkpoint.
    """
    if cfg.kind is PolicyKind.random:
        return RandomPolicy(seed=cfg.seed + index)
    if cfg.kind is PolicyKind.expert:
        from roboflamingo.sim.expert import ScriptedExpert

        return ScriptedExpert(cfg.scene)
    if cfg.kind is PolicyKind.remote:
        from roboflamingo.deploy.auth import TOKEN_ENV, read_secret
        from roboflamingo.deploy.client import PolicyClient

        token = read_secret("", cfg.token_file, TOKEN_ENV)
        return PolicyClient(cfg.server, token=token, ssl_cafile=cfg.server_ca).connect()
    import torch

    from roboflamingo.models.policy import RoboFlamingoPolicy

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = resolve_device(cfg.device)
    model = RoboFlamingoPolicy.from_pretrained(cfg.checkpoint, map_location=device)
    model.to(device)
    model.eval()
    if cfg.chunking.is_set:
        chunking = cfg.chunking.apply(model.head_config.chunking)
        chunking.check(model.model_config.act_steps, where="policy.chunking")
        model.set_chunking(chunking)
    if precision != "fp32":
        model.set_precision(precision)
    return model


def source_robot(cfg: PolicySourceConfig) -> RobotDescription | None:
    """The robot a source's policies are for; None for a remote one (its server's handshake says)."""
    if cfg.kind is PolicyKind.checkpoint:
        # Read without building the model, so a server or node knows the shapes before weights load.
        from roboflamingo.models.checkpoint import read_robot

        return read_robot(cfg.checkpoint)
    if cfg.kind is PolicyKind.remote:
        return None
    return CALVIN  # the scripted expert and the random policy act on CALVIN's tabletop


@dataclass
class PolicySource:
    """What a server needs from a source: a factory of fresh instances, what they read, and the robot
    they are for (whose shapes the server announces and checks; None: known only after connecting)."""

    name: str
    factory: Callable[[], Policy]
    observation_keys: tuple[str, ...]
    info: dict = field(default_factory=dict)
    robot: RobotDescription | None = CALVIN


def policy_source(cfg: PolicySourceConfig) -> PolicySource:
    """The factory for a server's sessions (or a node's one policy): for a checkpoint, one model whose
    slots (each its own history) are stepped together, all sessions waiting at a tick in one forward
    (the evaluator's batching core); for the others, ``build_policy`` per call (random: seeds count up)."""
    cfg.check()
    robot = source_robot(cfg)
    keys = cfg.observation_keys
    if cfg.kind is PolicyKind.checkpoint:
        from roboflamingo.batching import BatchedModel, BatchedSession, SlotBatcher
        from roboflamingo.threads import choose_threads

        # On a CPU the free cores, not all of them (threads.py); elsewhere torch's default.
        threads = choose_threads() if resolve_device(cfg.device) == "cpu" else 0
        batcher = SlotBatcher(BatchedModel(build_policy(cfg, torch_threads=threads)), max_wait_s=BATCH_WAIT_S).start()
        factory: Callable[[], Policy] = lambda: BatchedSession(batcher)  # noqa: E731
    else:
        counter = itertools.count()
        factory = lambda: build_policy(cfg, next(counter))  # noqa: E731
    return PolicySource(cfg.kind.value, factory, keys, cfg.info(), robot)
