"""``roboflamingo serve``: a websocket policy server (msgpack frames, one session per client).

Protocol (every frame is binary msgpack; arrays use the safe codec of ``deploy.codec``)::

    server -> client, on connect   {"type": "metadata", "protocol": 1, "session": id, "policy": name,
                                    "observation_spec": {...}, "action_spec": {...},
                                    "control_rate_hz": f, "max_message_bytes": n}
    client -> server               {"type": "step", "id": k, "obs": {...}, "instruction": str}
    server -> client               {"type": "action", "id": k, "action": float32 (7,), "step": n,
                                    "timing": {"decode_ms", "queue_ms", "infer_ms", "server_ms"}}
    client -> server               {"type": "reset" | "metadata" | "health", "id": k}
    server -> client, on any error {"type": "error", "id": k, "code": str, "error": str}

``GET /healthz`` answers ``OK`` over plain HTTP for load balancers and probes.

Each session owns its policy instance (made by the source's factory), because a policy keeps its
history inside the instance. Inference runs in a thread pool so the event loop keeps answering other
clients and health checks while a step computes (openpi#717 is what happens otherwise). A frame larger
than ``max_message_bytes`` gets an error reply and the session stays open; only frames beyond the
transport ceiling (``hard_max_message_bytes``) make the websocket layer close that one connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from roboflamingo.config import require_choice, require_positive
from roboflamingo.deploy.codec import CodecError, packb, unpackb
from roboflamingo.deploy.policies import POLICY_SOURCES, PolicySource, observation_spec, resolve_policy_source
from roboflamingo.types import (
    ACTION_DIM,
    CAMERAS,
    GRIPPER_INDEX,
    MAX_REL_ORN,
    MAX_REL_POS,
    Policy,
    check_observation,
)

LOG = logging.getLogger("roboflamingo.serve")
PROTOCOL_VERSION = 1


@dataclass
class Job:
    """``roboflamingo serve``: which policy to serve and how."""

    checkpoint: str | None = None  # policy directory (save_pretrained layout)
    policy: str = ""  # "" with checkpoint=..., or expert | random
    scene: str = "D"  # tabletop scene for policy=expert
    device: str = "cpu"
    seed: int = 0  # policy=random: session i uses seed + i
    host: str = "127.0.0.1"
    port: int = 8765
    control_rate_hz: float = 30.0  # advertised to clients in the handshake
    max_message_bytes: int = 8 * 2**20  # larger frames get an error reply
    hard_max_message_bytes: int = 0  # transport ceiling; 0 means 4 x max_message_bytes
    max_sessions: int = 16  # each session holds its own policy copy
    workers: int = 4  # inference threads
    duration_s: float = 0.0  # stop after this long; 0 serves until interrupted

    def __post_init__(self) -> None:
        if self.policy:
            require_choice("policy", self.policy, POLICY_SOURCES)
        if not self.checkpoint and self.policy in ("", "checkpoint"):
            raise ValueError("give checkpoint=<dir> or policy=expert|random")
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
        require_positive("duration_s", self.duration_s, allow_zero=True)
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")


class RequestError(Exception):
    """A client request that gets an error reply; the session continues."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    id: int
    policy: Policy
    lock: asyncio.Lock
    steps: int = 0


def action_spec() -> dict[str, Any]:
    return {
        "shape": [ACTION_DIM],
        "dtype": "float32",
        "low": -1.0,
        "high": 1.0,
        "gripper_index": GRIPPER_INDEX,
        "meaning": "relative tcp delta: pos * 0.02 m, euler xyz * 0.05 rad; gripper -1 close / +1 open",
        "max_rel_pos_m": MAX_REL_POS,
        "max_rel_orn_rad": MAX_REL_ORN,
    }


def _as_observation(obs: Any, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not isinstance(obs, dict):
        raise RequestError("bad_observation", f"'obs' must be a map of arrays, got {type(obs).__name__}")
    out = {}
    for key, value in obs.items():
        if not isinstance(key, str):
            raise RequestError("bad_observation", f"observation keys must be strings, got {key!r}")
        if key in CAMERAS:
            out[key] = value if isinstance(value, np.ndarray) else np.asarray(value)
            continue
        try:
            out[key] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise RequestError("bad_observation", f"observation['{key}'] is not numeric: {e}") from e
    try:
        check_observation(out, keys)
    except ValueError as e:
        raise RequestError("bad_observation", str(e)) from e
    return out


class PolicyServer:
    """Serve one policy source to many clients; see the module docstring for the protocol."""

    def __init__(
        self,
        source: PolicySource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_rate_hz: float = 30.0,
        max_message_bytes: int = 8 * 2**20,
        hard_max_message_bytes: int = 0,
        max_sessions: int = 16,
        workers: int = 4,
    ) -> None:
        self.source = source
        self.host, self.port = host, port
        self.control_rate_hz = control_rate_hz
        self.max_message_bytes = max_message_bytes
        self.hard_max_message_bytes = hard_max_message_bytes or 4 * max_message_bytes
        self.max_sessions = max_sessions
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="policy")
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._starting = 0  # connections whose policy is still being created
        self.started = time.monotonic()
        self.counters = {"sessions": 0, "steps": 0, "errors": 0}

    # -- handshake and health ---------------------------------------------------------------------
    def metadata(self, session_id: int | None = None) -> dict[str, Any]:
        return {
            "type": "metadata",
            "protocol": PROTOCOL_VERSION,
            "session": session_id,
            "policy": self.source.name,
            "policy_info": self.source.info,
            "observation_spec": observation_spec(self.source.observation_keys),
            "action_spec": action_spec(),
            "control_rate_hz": self.control_rate_hz,
            "max_message_bytes": self.max_message_bytes,
        }

    def health(self) -> dict[str, Any]:
        return {
            "type": "health",
            "status": "ok",
            "sessions": len(self.sessions),
            "uptime_s": round(time.monotonic() - self.started, 3),
            **self.counters,
        }

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        return None

    # -- per-connection loop ------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        # Slots are taken before the (slow) factory runs, so simultaneous connects cannot overshoot.
        if len(self.sessions) + self._starting >= self.max_sessions:
            await ws.send(
                packb(self._error(None, "server_full", f"server holds {self.max_sessions} sessions"))
            )
            await ws.close(1013, "server full")
            return
        session_id = next(self._ids)
        self._starting += 1
        try:
            policy = await loop.run_in_executor(self.pool, self.source.factory)
        except Exception as e:
            LOG.exception("policy factory failed")
            await ws.send(packb(self._error(None, "policy_error", f"could not create a policy: {e}")))
            await ws.close(1011, "policy factory failed")
            return
        finally:
            self._starting -= 1
        session = Session(session_id, policy, asyncio.Lock())
        self.sessions[session_id] = session
        self.counters["sessions"] += 1
        try:
            await ws.send(packb(self.metadata(session_id)))
            async for frame in ws:
                reply = await self._reply(session, frame)
                await ws.send(packb(reply))
        except ConnectionClosed:
            pass
        finally:
            self.sessions.pop(session_id, None)

    def _error(self, request_id: Any, code: str, message: str) -> dict[str, Any]:
        self.counters["errors"] += 1
        return {"type": "error", "id": request_id, "code": code, "error": message}

    async def _reply(self, session: Session, frame: bytes | str) -> dict[str, Any]:
        t_recv = time.perf_counter()
        request_id = None
        try:
            if isinstance(frame, str):
                raise RequestError("bad_request", "expected a binary msgpack frame, got a text frame")
            if len(frame) > self.max_message_bytes:
                raise RequestError(
                    "too_large",
                    f"message of {len(frame)} bytes exceeds max_message_bytes={self.max_message_bytes}",
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
        obs = _as_observation(msg.get("obs"), self.source.observation_keys)
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
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise RequestError("policy_error", f"policy returned an invalid action {action!r}")
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
        async with serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.hard_max_message_bytes,
            compression=None,  # images are already dense; deflate only costs CPU on both ends
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready(self.port)
            await stop
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"


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


def build_server(job: Job) -> PolicyServer:
    source = resolve_policy_source(job.policy, job.checkpoint, job.scene, job.device, job.seed)
    return PolicyServer(
        source,
        host=job.host,
        port=job.port,
        control_rate_hz=job.control_rate_hz,
        max_message_bytes=job.max_message_bytes,
        hard_max_message_bytes=job.hard_max_message_bytes,
        max_sessions=job.max_sessions,
        workers=job.workers,
    )


def run(job: Job) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = build_server(job)

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
                f"serving policy '{server.source.name}' on ws://{job.host}:{port} (GET /healthz)", flush=True
            ),
        )

    asyncio.run(main())
    print(f"served {server.counters['sessions']} sessions, {server.counters['steps']} steps", flush=True)
    return 0
