"""``roboflamingo serve``: a websocket policy server (msgpack frames, one session per client).

Protocol (every frame is binary msgpack; arrays use the safe codec of ``deploy.codec``)::

    server -> client, on connect   {"type": "metadata", "protocol": 1, "session": id, "policy": name,
                                    "observation_spec": {...}, "action_spec": {...},
                                    "features": {...}, "robot": {...},
                                    "control_rate_hz": f, "max_message_bytes": n}
    client -> server               {"type": "step", "id": k, "obs": {...}, "instruction": str}
    server -> client               {"type": "action", "id": k, "action": float32 (action dim,), "step": n,
                                    "timing": {"decode_ms", "queue_ms", "infer_ms", "server_ms"}}
    client -> server               {"type": "reset" | "metadata" | "health", "id": k}
    server -> client, on any error {"type": "error", "id": k, "code": str, "error": str}

``GET /healthz`` answers ``OK`` over plain HTTP for load balancers and probes.

Shapes come from the policy's robot description (``PolicySource.robot``; a checkpoint's ``robot.json``,
CALVIN's for the scripted expert and the random policy): the handshake announces its LeRobot-style
``features`` and the whole description (``robot``), observations are checked against it, and an
observation that carries another built-in robot's cameras and state is refused (``robot_mismatch``)
with both descriptions named, never reshaped.

Who may connect (checked in the HTTP upgrade, before a session or a policy exists):

* a bearer token (``Authorization: Bearer <token>``; ``token_file=`` or ``$ROBOFLAMINGO_TOKEN``) is
  required whenever one is configured, and one must be configured for any non-loopback bind
  (``insecure=true`` overrides that, loudly);
* a request carrying an ``Origin`` header (i.e. from a web page) is refused unless that origin is in
  ``allowed_origins``, so a page in a local browser cannot drive the arm;
* only the paths ``/`` and ``/healthz`` exist;
* ``ssl_certfile=`` / ``ssl_keyfile=`` serve ``wss://``.

What a session may cost: it is closed after ``idle_timeout_s`` without a request (so idle clients
cannot hold every slot); it may sustain ``max_session_bytes_per_s`` of received frames, beyond which
the server pauses reading from it (``ByteBudget``); a frame is decoded with bounded work (``codec.unpackb`` caps the number of
values and the string length); instructions longer than ``max_instruction_chars`` are refused
before any tokenizer sees them; error replies quote at most ``MAX_ERROR_CHARS`` of the input. The
handshake names the checkpoint by its directory name, never by its path on the server.

Each session owns its policy instance (made by the source's factory), because a policy keeps its
history inside the instance. Inference runs in a thread pool so the event loop keeps answering other
clients and health checks while a step computes (openpi#717 is what happens otherwise). A frame larger
than ``max_message_bytes`` gets an error reply and the session stays open; only frames beyond the
transport ceiling (``hard_max_message_bytes``) make the websocket layer close that one connection.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import signal
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from roboflamingo.config import require_positive
from roboflamingo.deploy.auth import TOKEN_ENV, is_loopback, read_secret, token_matches
from roboflamingo.deploy.codec import CodecError, packb, unpackb
from roboflamingo.deploy.protocols import PATHS, ProtocolConnection
from roboflamingo.deploy.protocols.frames import public_text
from roboflamingo.policies import LOCAL_KINDS, PolicySource, PolicySourceConfig, policy_source
from roboflamingo.robot import RobotDescription
from roboflamingo.robots import builtin_names, calvin, load_robot
from roboflamingo.robots.calvin import (
    GRIPPER_INDEX,
    MAX_REL_ORN,
    MAX_REL_POS,
    SCENE_OBS,
    SCENE_OBS_DIM,
)
from roboflamingo.types import Policy

LOG = logging.getLogger("roboflamingo.serve")
PROTOCOL_VERSION = 1
MAX_ERROR_CHARS = 300  # error replies quote the input; a hostile request must not get megabytes back
# A robot mismatch names two descriptions (ours) and at most MAX_LISTED_KEYS of the client's keys.
MAX_MISMATCH_CHARS = 1200
CLOSE_TIMEOUT_S = 2.0  # how long a closing connection waits for the client's close frame
REFUSAL_WAIT_S = 2.0  # how long a refusal waits for the first frame of a client that speaks first


MAX_LISTED_KEYS = 8  # an error that lists what a client sent names at most this many keys


def observation_spec(keys: tuple[str, ...], robot: RobotDescription = calvin.CALVIN) -> dict[str, dict]:
    """The handshake's description of each observation entry the policy reads (-1: any size; the
    model resizes frames, the cameras' native sizes are in the handshake's ``features``)."""
    spec = {cam: {"shape": [-1, -1, 3], "dtype": "uint8"} for cam in robot.camera_names}
    spec[robot.state.key] = {"shape": [robot.state.dim], "dtype": "float32"}
    spec[SCENE_OBS] = {"shape": [SCENE_OBS_DIM], "dtype": "float32"}  # CALVIN's privileged state (expert)
    return {k: spec[k] for k in keys}


@dataclass
class ServerConfig:
    """What a ``PolicyServer`` enforces: where it listens, its limits, who may connect.

    Args:
        host: interface to listen on; anything but a loopback address needs a token (or ``insecure``).
        port: TCP port; 0 picks any free port.
        control_rate_hz: the control rate advertised to clients in the handshake.
        max_message_bytes: larger frames get an error reply and the session stays open.
        hard_max_message_bytes: the transport's ceiling, beyond which the connection is closed; 0
            means 4 x ``max_message_bytes``.
        max_sessions: concurrent sessions (clients), each with its own policy history; more are refused.
        workers: threads running inference off the event loop.
        insecure: allow a non-loopback ``host`` without a token (logged as ``INSECURE``).
        allowed_origins: browser origins (``Origin`` header) allowed to connect; a request from any
            other web page gets 403.
        idle_timeout_s: close a session after this long without a request, freeing its slot; 0 = never.
        max_instruction_chars: longer instructions are refused before any tokenizer sees them.
        max_session_bytes_per_s: received bytes per second a session may sustain (bursts of 2 x
            ``max_message_bytes``); beyond it the server stops reading from that connection for a
            while. 0 = unlimited.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    control_rate_hz: float = 30.0
    max_message_bytes: int = 8 * 2**20
    hard_max_message_bytes: int = 0
    max_sessions: int = 16
    workers: int = 4
    insecure: bool = False
    allowed_origins: list[str] = field(default_factory=list)
    idle_timeout_s: float = 60.0
    max_instruction_chars: int = 1000
    max_session_bytes_per_s: float = 32 * 2**20

    def __post_init__(self) -> None:
        require_positive("control_rate_hz", self.control_rate_hz)
        require_positive("max_message_bytes", self.max_message_bytes)
        require_positive("hard_max_message_bytes", self.hard_max_message_bytes, allow_zero=True)
        if self.hard_max_message_bytes and self.hard_max_message_bytes < self.max_message_bytes:
            raise ValueError(
                f"hard_max_message_bytes must be >= max_message_bytes ({self.max_message_bytes}), "
                f"got {self.hard_max_message_bytes}"
            )
        require_positive("max_sessions", self.max_sessions)
        require_positive("workers", self.workers)
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        require_positive("idle_timeout_s", self.idle_timeout_s, allow_zero=True)
        require_positive("max_instruction_chars", self.max_instruction_chars)
        require_positive("max_session_bytes_per_s", self.max_session_bytes_per_s, allow_zero=True)


@dataclass
class Job(ServerConfig):
    """``roboflamingo serve``: which policy to serve (``policy``) and how (the server's settings).

    Args:
        policy: the policy source: ``checkpoint=<dir>``, ``policy=expert`` or ``policy=random``
            (``policy.device``: where a checkpoint runs; ``policy.seed``: session i's random seed + i).
        duration_s: stop after this long; 0 serves until interrupted.
        token: prefer token_file or ``$ROBOFLAMINGO_TOKEN``: a command line is visible in ``ps``.
        token_file: its first line is the token; clients send ``Authorization: Bearer <token>``.
        ssl_certfile: PEM certificate (chain): serve ``wss://``.
        ssl_keyfile: PEM private key; empty when the certificate file holds it.
    """

    # On the CPU unless told otherwise (policy.device=auto takes a GPU where there is one).
    policy: PolicySourceConfig = field(default_factory=lambda: PolicySourceConfig(device="cpu"))
    duration_s: float = 0.0
    # Who may connect; see the module docstring.
    token: str = ""
    token_file: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        # A relay of another server is not offered: serve the policy where it runs.
        self.policy.check(LOCAL_KINDS, "serve")
        require_positive("duration_s", self.duration_s, allow_zero=True)
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        for name in ("ssl_certfile", "ssl_keyfile", "token_file"):
            path = getattr(self, name)
            if path and not Path(path).expanduser().is_file():
                raise ValueError(f"{name}={path}: no such file")


class RequestError(Exception):
    """A client request that gets an error reply; the session continues."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ByteBudget:
    """A token bucket over received bytes: how long a session must pause after each frame.

    Receiving and unmasking an 8 MB frame costs the event loop milliseconds whatever its content, so
    a few clients streaming maximal frames would slow every other session; paused, their bytes wait
    in the kernel (TCP backpressure) instead of on the event loop.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.t = burst, now

    def charge(self, n: int, now: float) -> float:
        """Take ``n`` bytes; returns the seconds to wait before reading the next frame (0 if none)."""
        if not self.rate:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class Session:
    id: int
    policy: Policy
    lock: asyncio.Lock
    ws: Any = None
    last_active: float = 0.0  # server clock at the last request or reply
    budget: ByteBudget | None = None
    steps: int = 0


def _bound(value: float) -> float | None:
    return None if np.isinf(value) else float(value)  # None: unbounded (msgpack/JSON have no inf)


def action_spec(robot: RobotDescription = calvin.CALVIN) -> dict[str, Any]:
    """The handshake's description of the action ``step`` returns, in the robot's units."""
    a = robot.action
    spec: dict[str, Any] = {
        "shape": [a.dim],
        "dtype": "float32",
        "names": list(a.names),
        "low": [_bound(v) for v in a.low],
        "high": [_bound(v) for v in a.high],
        "grippers": list(a.grippers),
        "gripper_positions": list(a.gripper_positions),
        "close": a.close,
        "open": a.open,
        "mode": a.mode,
        "space": a.space,
        "rate_hz": a.rate_hz,
    }
    if robot.shapes() == calvin.CALVIN.shapes():
        # What CALVIN clients have always read (scalar bounds, the gripper's index, the scales).
        spec.update({
            "low": -1.0,
            "high": 1.0,
            "gripper_index": GRIPPER_INDEX,
            "meaning": "relative tcp delta: pos * 0.02 m, euler xyz * 0.05 rad; gripper -1 close / +1 open",
            "max_rel_pos_m": MAX_REL_POS,
            "max_rel_orn_rad": MAX_REL_ORN,
        })
    return spec


def describe_observation(obs: dict) -> str:
    """What a client sent, key by key with array shapes, bounded (error messages quote it)."""
    parts = []
    for key, value in list(obs.items())[:MAX_LISTED_KEYS]:
        shape = getattr(value, "shape", None)
        name = str(key)[:40]
        parts.append(f"{name} {'x'.join(map(str, shape))}" if shape is not None else name)
    more = f", ... ({len(obs)} keys)" if len(obs) > MAX_LISTED_KEYS else ""
    return "{" + ", ".join(parts) + more + "}"


@functools.cache
def _builtin_robots() -> tuple[RobotDescription, ...]:
    return tuple(load_robot(name) for name in builtin_names())


def robot_of_observation(obs: dict, exclude: RobotDescription) -> RobotDescription | None:
    """The built-in robot (not of ``exclude``'s shapes) whose cameras and state ``obs`` carries, if any."""
    for other in _builtin_robots():
        if other.shapes() == exclude.shapes():
            continue
        if all(k in obs for k in other.observation_keys) and np.shape(obs[other.state.key]) == (other.state.dim,):
            return other
    return None


def _as_observation(obs: Any, keys: tuple[str, ...], robot: RobotDescription = calvin.CALVIN) -> dict[str, np.ndarray]:
    if not isinstance(obs, dict):
        raise RequestError("bad_observation", f"'obs' must be a map of arrays, got {type(obs).__name__}")
    cameras = set(robot.camera_names)
    out = {}
    for key, value in obs.items():
        if not isinstance(key, str):
            raise RequestError("bad_observation", f"observation keys must be strings, got {key!r}")
        if key not in keys:
            continue  # not needed by this policy: never converted (a large one would cost the event loop)
        if key in cameras:
            try:
                out[key] = value if isinstance(value, np.ndarray) else np.asarray(value)
            except (TypeError, ValueError) as e:  # a ragged list, for one
                raise RequestError("bad_observation", f"observation['{key}'] is not an image array: {e}") from e
            continue
        try:
            out[key] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise RequestError("bad_observation", f"observation['{key}'] is not numeric: {e}") from e
    try:
        if SCENE_OBS in keys:
            calvin.check_observation(out, keys)  # the description's checks plus the privileged scene state
        else:
            robot.check_observation(out, keys)
    except ValueError as e:
        other = robot_of_observation(obs, robot)
        if other is not None:  # another robot's client: say so rather than which key is missing
            raise RequestError("robot_mismatch", f"the policy is for {robot.summary()}, but the observation "
                               f"{describe_observation(obs)} is for {other.summary()}") from e
        raise RequestError("bad_observation", str(e)) from e
    return out


class PolicyServer:
    """Serve one policy source to many clients; see the module docstring for the protocol."""

    def __init__(
        self,
        source: PolicySource,
        config: ServerConfig | None = None,
        *,
        token: str = "",
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        **settings: Any,
    ) -> None:
        """``config`` (default ``ServerConfig()``) with ``settings`` replacing some of its fields
        (``PolicyServer(source, port=0, max_sessions=2)``); ``token`` is the resolved secret."""
        cfg = replace(config or ServerConfig(), **settings)
        check_bind(cfg.host, token, cfg.insecure)
        if source.robot is None:
            raise ValueError(f"policy source '{source.name}' names no robot description; a server must "
                             "announce the shapes it serves")
        self.config = cfg
        self.source = source
        self.robot: RobotDescription = source.robot
        self.host, self.port = cfg.host, cfg.port  # port: the bound one once serving (port 0 picks one)
        self.token = token
        self.allowed_origins = frozenset(cfg.allowed_origins)
        self.ssl_context = ssl_context
        self.clock = clock
        self.hard_max_message_bytes = cfg.hard_max_message_bytes or 4 * cfg.max_message_bytes
        self.pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="policy")
        # Image decoding for the protocols that send compressed images (vla-eval): off the event loop
        # and apart from inference, so a client's large images cost neither the loop nor a policy thread.
        self.decode_pool = ThreadPoolExecutor(max_workers=max(2, cfg.workers), thread_name_prefix="decode")
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._starting = 0  # connections whose policy is still being created
        self.started = time.monotonic()
        # Cumulative; the open-session count is "sessions" in health().
        self.counters = {"sessions_total": 0, "steps": 0, "errors": 0, "refused": 0, "idle_closed": 0, "throttled": 0}

    # -- handshake and health ---------------------------------------------------------------------
    def metadata(self, session_id: int | None = None) -> dict[str, Any]:
        return {
            "type": "metadata",
            "protocol": PROTOCOL_VERSION,
            "session": session_id,
            "policy": self.source.name,
            "policy_info": self.source.info,
            "observation_spec": observation_spec(self.source.observation_keys, self.robot),
            "action_spec": action_spec(self.robot),
            # The robot the policy is for: LeRobot-style features, and the whole description so a
            # client (the ROS node) can assemble observations and commands without other files.
            "features": self.robot.features(),
            "robot": self.robot.to_dict(),
            "control_rate_hz": self.config.control_rate_hz,
            "max_message_bytes": self.config.max_message_bytes,
        }

    def health(self) -> dict[str, Any]:
        return {
            "type": "health",
            "status": "ok",
            **self.counters,
            "sessions": len(self.sessions),
            "uptime_s": round(time.monotonic() - self.started, 3),
        }

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        """Admission, before the upgrade: path, then Origin, then the token."""
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        if path not in PATHS:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, f"no such path; connect to one of {', '.join(PATHS)}\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins:
            # Browsers always send Origin on websockets; robot clients do not.
            LOG.warning("refused a connection from origin %.100r (allowed_origins=%s)", origin, sorted(self.allowed_origins))
            return self._refuse(connection, HTTPStatus.FORBIDDEN, "origin not allowed\n")
        if self.token and not token_matches(request, self.token):
            LOG.warning("refused a connection from %s: missing or wrong token", connection.remote_address)
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
        return None

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, text: str) -> Any:
        self.counters["refused"] += 1
        return connection.respond(status, text)

    async def drop_idle(self) -> int:
        """Close every session idle for longer than ``idle_timeout_s``; returns how many."""
        if not self.config.idle_timeout_s:
            return 0
        now = self.clock()
        idle = [s for s in self.sessions.values() if now - s.last_active > self.config.idle_timeout_s and not s.lock.locked()]
        for session in idle:
            self.sessions.pop(session.id, None)  # the slot is free now, not when the close completes
            self.counters["idle_closed"] += 1
            LOG.info("closing session %d: idle for more than %.1f s", session.id, self.config.idle_timeout_s)
            if session.ws is not None:
                asyncio.ensure_future(session.ws.close(1001, "idle timeout"))
        return len(idle)

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(min(self.config.idle_timeout_s / 4, 5.0))
            await self.drop_idle()

    # -- per-connection loop ------------------------------------------------------------------------
    async def _handler(self, ws: ProtocolConnection) -> None:
        loop = asyncio.get_running_loop()
        # Slots are taken before the (slow) factory runs, so simultaneous connects cannot overshoot.
        if len(self.sessions) + self._starting >= self.config.max_sessions:
            full = self._error(None, "server_full", f"server holds {self.config.max_sessions} sessions")
            await ws.refuse(packb(full), 1013, "server full", REFUSAL_WAIT_S)
            return
        session_id = next(self._ids)
        self._starting += 1
        try:
            policy = await loop.run_in_executor(self.pool, self.source.factory)
        except Exception as e:
            LOG.exception("policy factory failed")
            failed = self._error(None, "policy_error", f"could not create a policy: {e}")
            await ws.refuse(packb(failed), 1011, "policy factory failed", REFUSAL_WAIT_S)
            return
        finally:
            self._starting -= 1
        budget = ByteBudget(self.config.max_session_bytes_per_s, 2 * self.config.max_message_bytes, time.monotonic())
        session = Session(session_id, policy, asyncio.Lock(), ws, self.clock(), budget)
        # The connection charges every client frame to the budget and pauses reading beyond it.
        ws.budget = budget
        ws.on_throttle = lambda: self.counters.__setitem__("throttled", self.counters["throttled"] + 1)
        self.sessions[session_id] = session
        self.counters["sessions_total"] += 1
        try:
            await ws.send(packb(self.metadata(session_id)))
            async for frame in ws:
                session.last_active = self.clock()
                reply = await self._reply(session, frame)
                await ws.send(packb(reply))
                session.last_active = self.clock()
        except ConnectionClosed:
            pass
        finally:
            self.sessions.pop(session_id, None)

    def _error(self, request_id: Any, code: str, message: str) -> dict[str, Any]:
        self.counters["errors"] += 1
        message = public_text(message)  # a policy's exception text may quote reprs with addresses
        limit = MAX_MISMATCH_CHARS if code == "robot_mismatch" else MAX_ERROR_CHARS
        if len(message) > limit:
            message = message[:limit] + f"... ({len(message)} characters, truncated)"
        # The id is echoed for matching replies; a huge or odd one is not worth echoing.
        if not (request_id is None or isinstance(request_id, int) or (isinstance(request_id, str) and len(request_id) <= 64)):
            request_id = None
        return {"type": "error", "id": request_id, "code": code, "error": message}

    async def _reply(self, session: Session, frame: bytes | str) -> dict[str, Any]:
        t_recv = time.perf_counter()
        request_id = None
        try:
            if isinstance(frame, str):
                raise RequestError("bad_request", "expected a binary msgpack frame, got a text frame")
            if len(frame) > self.config.max_message_bytes:
                raise RequestError(
                    "too_large",
                    f"message of {len(frame)} bytes exceeds max_message_bytes={self.config.max_message_bytes}",
                )
            try:
                msg = unpackb(frame)
            except CodecError as e:
                raise RequestError("bad_request", str(e)) from e
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise RequestError("bad_request", "a request must be a map with a string 'type'")
            request_id = msg.get("id")
            kind = msg["type"]
            if kind == "step":
                return await self._step(session, msg, request_id, t_recv)
            if kind == "reset":
                async with session.lock:
                    await asyncio.get_running_loop().run_in_executor(self.pool, session.policy.reset)
                session.steps = 0
                return {"type": "reset", "id": request_id, "session": session.id}
            if kind == "metadata":
                return {**self.metadata(session.id), "id": request_id}
            if kind in ("health", "ping"):
                return {**self.health(), "id": request_id}
            raise RequestError(
                "bad_request", f"unknown request type '{kind}' (step, reset, metadata, health)"
            )
        except RequestError as e:
            return self._error(request_id, e.code, str(e))

    async def _step(self, session: Session, msg: dict, request_id: Any, t_recv: float) -> dict[str, Any]:
        instruction = msg.get("instruction")
        if not isinstance(instruction, str):
            raise RequestError(
                "bad_request", f"'instruction' must be a string, got {type(instruction).__name__}"
            )
        if len(instruction) > self.config.max_instruction_chars:
            # Refused before the tokenizer: a megabyte instruction would hold an inference thread.
            raise RequestError(
                "too_long",
                f"'instruction' has {len(instruction)} characters, max_instruction_chars={self.config.max_instruction_chars}",
            )
        obs = _as_observation(msg.get("obs"), self.source.observation_keys, self.robot)
        t_decoded = time.perf_counter()

        def infer() -> tuple[np.ndarray, float, float]:
            t0 = time.perf_counter()
            action = session.policy.step(obs, instruction)
            return action, t0, time.perf_counter()

        # A slot of a shared batcher (a checkpoint source): concurrent sessions share one forward per tick.
        submit = getattr(session.policy, "submit", None)
        async with session.lock:
            try:
                if submit is not None:
                    t0 = time.perf_counter()
                    action = await asyncio.wrap_future(submit(obs, instruction))
                    t1 = time.perf_counter()
                else:
                    action, t0, t1 = await asyncio.get_running_loop().run_in_executor(self.pool, infer)
            except Exception as e:
                LOG.warning("policy step failed in session %d:\n%s", session.id, traceback.format_exc())
                raise RequestError("policy_error", f"{type(e).__name__}: {e}") from e
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (self.robot.action.dim,) or not np.all(np.isfinite(action)):
            raise RequestError("policy_error", f"policy returned an invalid action {action!r} "
                               f"({self.robot.action.dim} finite numbers expected for robot '{self.robot.name}')")
        session.steps += 1
        self.counters["steps"] += 1
        ms = 1000.0
        timing = {
            "decode_ms": (t_decoded - t_recv) * ms,
            "queue_ms": (t0 - t_decoded) * ms,
            "infer_ms": (t1 - t0) * ms,
            "server_ms": (time.perf_counter() - t_recv) * ms,
        }
        return {"type": "action", "id": request_id, "action": action, "step": session.steps, "timing": timing}

    # -- lifecycle --------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Future, ready: Callable[[int], None] | None = None) -> None:
        # Ours, openpi's or vla-eval's protocol, chosen by the URL path and the first frame.
        from roboflamingo.deploy.protocols import handler

        async with serve(
            handler(self),
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.hard_max_message_bytes,
            compression=None,  # images are already dense; deflate only costs CPU on both ends
            ssl=self.ssl_context,
            max_queue=2,  # a paused (throttled) session's frames stay in the kernel, not in memory
            # A client that does not answer our close frame (a refused one that gave up, a dead link)
            # would otherwise hold its handler, and shutdown, for websockets' default 10 s.
            close_timeout=CLOSE_TIMEOUT_S,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            sweeper = asyncio.ensure_future(self._sweep_idle()) if self.config.idle_timeout_s else None
            if ready is not None:
                ready(self.port)
            try:
                await stop
            finally:
                if sweeper is not None:
                    sweeper.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port}"


class ServerThread:
    """Run a ``PolicyServer`` on its own event loop in a background thread (tests, bench, ROS node)."""

    def __init__(self, server: PolicyServer, timeout_s: float = 10.0) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="policy-server", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            await self.server.serve(self._stop, ready=lambda _port: self._ready.set())

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced to the starting thread
            self._error = e
            self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self.timeout_s) or self._error is not None:
            raise RuntimeError(f"policy server did not start: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(self.timeout_s)

    @property
    def url(self) -> str:
        return self.server.url


def check_bind(host: str, token: str, insecure: bool) -> None:
    """A non-loopback bind needs a token, unless the user says ``insecure`` (then it is logged)."""
    if token or is_loopback(host):
        return
    if not insecure:
        raise ValueError(
            f"serving on {host} (not loopback) needs a token: set token_file=<file> or "
            f"${TOKEN_ENV}, or pass insecure=true to accept anyone who can reach the port"
        )
    LOG.warning("INSECURE: serving on %s without a token; anyone who reaches the port drives the policy", host)


def server_ssl_context(certfile: str, keyfile: str = "") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(Path(certfile).expanduser(), Path(keyfile).expanduser() if keyfile else None)
    return ctx


def build_server(job: Job) -> PolicyServer:
    token = read_secret(job.token, job.token_file, TOKEN_ENV)
    if not job.insecure:
        check_bind(job.host, token, False)  # refuse before a checkpoint is loaded for nothing
    ssl_context = server_ssl_context(job.ssl_certfile, job.ssl_keyfile) if job.ssl_certfile else None
    return PolicyServer(policy_source(job.policy), job, token=token, ssl_context=ssl_context)


def run(job: Job) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server = build_server(job)
    except (ValueError, FileNotFoundError, ssl.SSLError) as e:
        # no token for a public bind, a bad token file or certificate, a checkpoint (or a frozen tower) not found
        print(f"roboflamingo serve: {e}", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        if job.duration_s:
            loop.call_later(job.duration_s, lambda: stop.done() or stop.set_result(None))
        await server.serve(
            stop,
            ready=lambda port: print(
                f"serving policy '{server.source.name}' on {server.url.rsplit(':', 1)[0]}:{port} (GET /healthz)"
                f"{'' if server.token else ' without a token'}",
                flush=True,
            ),
        )

    asyncio.run(main())
    print(f"served {server.counters['sessions_total']} sessions, {server.counters['steps']} steps", flush=True)
    return 0
