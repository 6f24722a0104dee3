"""A minimal rosbridge v2 relay with no ROS behind it.

rosbridge needs a ROS install (rclpy or rospy; ``make ros2`` builds one from PyPI wheels and the real
rosbridge_server, which the ROS 2 tests use), yet the simulated robot and the control node only need a
bridge that routes topics and services between websocket clients: the relay is that bridge for
one-machine runs and the fast test tier, with no ROS and no build. This relay
speaks the subset of the rosbridge v2 protocol that roslibpy uses: ``advertise``, ``unadvertise``,
``publish`` (with ``latch``), ``subscribe`` (with ``queue_length``), ``unsubscribe``,
``advertise_service``, ``unadvertise_service``, ``call_service`` and ``service_response``, plus
``/rosapi/get_time``. It binds to 127.0.0.1 by default; it is a development and test tool, not a
replacement for rosbridge on a robot. A bad frame is answered with a ``status`` message and the relay
keeps serving.

Who may drive the arm:

* with a ``secret`` the relay behaves like rosbridge with ``authenticate:=true``: a connection's
  first message must be a rosauth ``auth`` op with a valid MAC (``deploy.auth``), else it is closed;
* the command topics (``/target_pose``, ``/gripper_command``, ``/joint_command`` by default) belong
  to one session: the first to advertise or publish them, which must be authenticated at level
  ``control`` when a secret is set. Publishes on them from any other session are refused (``status``
  error, ``counts["refused"]``) until the owner disconnects, so nothing but the control node's
  session (and its safety filter) moves the robot;
* a non-loopback bind needs a secret unless ``insecure=True``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from roboflamingo.deploy.auth import is_loopback, rosauth_valid

LOG = logging.getLogger("roboflamingo.relay")
COMMAND_TOPICS = ("/target_pose", "/gripper_command", "/joint_command")


@dataclass
class _Client:
    ws: ServerConnection
    subscriptions: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    services: set[str] = field(default_factory=set)
    authenticated: bool = False
    level: str = ""


@dataclass
class Published:
    """One routed publish, kept for tests and latency measurements."""

    time: float  # time.monotonic() when the relay routed it
    topic: str
    msg: dict


class RosbridgeRelay:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        max_size: int = 16 * 2**20,
        log_size: int = 10_000,
        secret: str = "",
        command_topics: tuple[str, ...] = COMMAND_TOPICS,
        insecure: bool = False,
        clock: Any = time.time,
    ):
        if not secret and not is_loopback(host) and not insecure:
            raise ValueError(
                f"a rosbridge relay on {host} (not loopback) needs a rosauth secret, or insecure=True"
            )
        if not secret and not is_loopback(host):
            LOG.warning("INSECURE: rosbridge relay on %s without authentication", host)
        self.secret = secret
        self.command_topics = frozenset(command_topics)
        self.command_owner: dict[str, _Client] = {}
        self.clock = clock
        self.host, self.port = host, port
        self.max_size = max_size
        self.clients: dict[ServerConnection, _Client] = {}
        self.topic_types: dict[str, str] = {}
        self.latched: dict[str, dict] = {}
        self.services: dict[str, _Client] = {}
        self.pending_calls: dict[str, _Client] = {}
        self.log: collections.deque[Published] = collections.deque(maxlen=log_size)
        self.counts: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- routing ---------------------------------------------------------------------------------
    async def _send(self, client: _Client, msg: dict) -> None:
        try:
            await client.ws.send(json.dumps(msg))
        except ConnectionClosed:
            pass

    async def _status(self, client: _Client, level: str, text: str, msg_id: Any = None) -> None:
        await self._send(client, {"op": "status", "level": level, "msg": text, "id": msg_id})

    async def _handle(self, ws: ServerConnection) -> None:
        client = _Client(ws)
        self.clients[ws] = client
        try:
            async for frame in ws:
                msg = None
                try:
                    msg = json.loads(frame)
                    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                        raise ValueError("a rosbridge message must be a JSON object with a string 'op'")
                    if self.secret and not client.authenticated:
                        if not await self._authenticate(client, msg):
                            return
                        continue
                    await self._dispatch(client, msg)
                except (ValueError, KeyError, TypeError, PermissionError) as e:
                    # roslibpy registers no handler for 'status' and merely logs it; real clients see it.
                    self.counts["errors"] += 1
                    # rosbridge names the failing op's id, which is how a client learns which of its
                    # publishes was refused.
                    msg_id = msg.get("id") if isinstance(msg, dict) else None
                    await self._status(client, "error", f"{type(e).__name__}: {e}", msg_id)
        except ConnectionClosed:
            pass
        finally:
            self.clients.pop(ws, None)
            for name in client.services:
                self.services.pop(name, None)
            for topic in [t for t, owner in self.command_owner.items() if owner is client]:
                del self.command_owner[topic]

    async def _authenticate(self, client: _Client, msg: dict) -> bool:
        """rosbridge's rule: the first message must be a valid ``auth`` op, or the connection ends."""
        if msg.get("op") == "auth" and rosauth_valid(self.secret, msg, self.clock()):
            client.authenticated, client.level = True, str(msg["level"])
            return True
        self.counts["refused"] += 1
        LOG.warning("closing an unauthenticated rosbridge connection from %s", client.ws.remote_address)
        await self._status(client, "error", "authentication required: send a valid rosauth 'auth' op first")
        await client.ws.close(1008, "authentication required")
        return False

    def _may_command(self, client: _Client, topic: str) -> bool:
        """Whether ``client`` may publish on a command topic; the first eligible session claims it."""
        if topic not in self.command_topics:
            return True
        if self.secret and client.level != "control":
            return False
        owner = self.command_owner.setdefault(topic, client)
        return owner is client
    async def _dispatch(self, client: _Client, msg: dict) -> None:
        op = msg["op"]
        self.counts[op] += 1
        if op == "auth":
            return  # already authenticated, or the relay runs without a secret
        if op == "advertise":
            self._may_command(client, msg["topic"])  # claims a free command topic; refusal comes on publish
            self.topic_types.setdefault(msg["topic"], msg.get("type", ""))
        elif op == "unadvertise":
            pass  # other publishers may still use the topic
        elif op == "subscribe":
            topic = msg["topic"]
            client.subscriptions[topic].add(str(msg.get("id", "")))
            if topic in self.latched:
                await self._send(client, {"op": "publish", "topic": topic, "msg": self.latched[topic]})
        elif op == "unsubscribe":
            subs = client.subscriptions.get(msg["topic"])
            if subs is not None:
                subs.discard(str(msg.get("id", "")))
                if not subs or msg.get("id") is None:
                    client.subscriptions.pop(msg["topic"], None)
        elif op == "publish":
            if not self._may_command(client, msg["topic"]):
                self.counts["refused"] += 1
                LOG.warning("refused a publish on %s from a session that does not own it", msg["topic"])
                raise PermissionError(f"publish on {msg['topic']}: only the control node's session may command")
            await self._publish(msg["topic"], msg["msg"], bool(msg.get("latch", False)))
        elif op == "advertise_service":
            self.services[msg["service"]] = client
            client.services.add(msg["service"])
        elif op == "unadvertise_service":
            self.services.pop(msg["service"], None)
            client.services.discard(msg["service"])
        elif op == "call_service":
            await self._call_service(client, msg)
        elif op == "service_response":
            caller = self.pending_calls.pop(str(msg.get("id")), None)
            if caller is not None:
                await self._send(caller, msg)
        else:
            raise ValueError(f"unsupported op '{op}'")

    async def _publish(self, topic: str, payload: Any, latch: bool) -> None:
        if not isinstance(payload, dict):
            raise TypeError(f"publish on {topic}: 'msg' must be an object")
        self.log.append(Published(time.monotonic(), topic, payload))
        if latch:
            self.latched[topic] = payload
        out = {"op": "publish", "topic": topic, "msg": payload}
        for client in list(self.clients.values()):
            if client.subscriptions.get(topic):
                await self._send(client, out)

    async def _call_service(self, client: _Client, msg: dict) -> None:
        name, call_id = msg["service"], msg.get("id")
        if name in self.services:
            self.pending_calls[str(call_id)] = client
            await self._send(self.services[name], msg)
            return
        if name == "/rosapi/get_time":
            now = time.time()
            values = {"time": {"secs": int(now), "nsecs": int((now % 1) * 1e9)}}
            await self._send(
                client,
                {"op": "service_response", "id": call_id, "service": name, "values": values, "result": True},
            )
            return
        await self._send(
            client,
            {
                "op": "service_response",
                "id": call_id,
                "service": name,
                "values": f"service {name} does not exist",
                "result": False,
            },
        )

    # -- lifecycle -------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Future) -> None:
        # No permessage-deflate, like rosbridge by default (use_compression: false): base64 JPEG does not
        # compress, and deflating every frame on every hop costs CPU the control loop needs.
        async with serve(
            self._handle, self.host, self.port, max_size=self.max_size, compression=None
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await stop

    def start(self, timeout_s: float = 10.0) -> RosbridgeRelay:
        """Serve on a background thread; returns once the port is bound."""

        def main() -> None:
            async def inner() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = self._loop.create_future()
                await self.serve(self._stop)

            asyncio.run(inner())

        self._thread = threading.Thread(target=main, name="rosbridge-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"rosbridge relay did not start on {self.host}:{self.port}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        if self._thread is not None:
            self._thread.join(timeout_s)

    def drop_connections(self) -> None:
        """Close every client connection (the relay keeps listening), as when a bridge restarts."""
        if self._loop is None:
            raise RuntimeError("drop_connections() on a relay that is not running (start() it first)")

        async def drop() -> None:
            for ws in list(self.clients):
                await ws.close(1001, "relay dropped connections")

        asyncio.run_coroutine_threadsafe(drop(), self._loop).result(10)

    def published(self, topic: str) -> list[Published]:
        return [p for p in list(self.log) if p.topic == topic]

    def __enter__(self) -> RosbridgeRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
