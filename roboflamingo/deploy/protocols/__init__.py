"""The client protocols ``roboflamingo serve`` speaks, all on one port, all through one policy core.

===================  ===========  =====================================================================
protocol             URL path     how it is recognised
===================  ===========  =====================================================================
ours (``native``)    ``/``        the first frame is a map with a string ``type`` (``deploy.client``)
openpi-client        ``/``        the first frame is a bare observation map (``protocols.openpi``)
                     ``/openpi``  forced, for observations that happen to carry a ``type`` key
vla-eval             ``/vla-eval``  its client speaks first (HELLO), so it needs its own path
===================  ===========  =====================================================================

Ours and openpi's clients both wait for the server's metadata map before sending anything, so ``/``
greets with it and the first frame picks the protocol for the rest of the session. vla-eval's
``Connection`` sends HELLO and expects HELLO back as the first frame, which a greeting would break.

Every adapter is a translator and nothing more: it turns a foreign frame into our own request
(``{"type": "step" | "reset", ...}``), hands it to the server's request path (``PolicyServer._reply``:
size limit, observation checks, the session's policy and lock, inference in the pool, error codes)
and turns the reply into the foreign frame. So one policy core serves all three, a session's
history lives in its policy, and anything the server learns (batching, limits) applies to every
protocol at once. Token carriers per protocol: ``protocols.auth``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import msgpack

from roboflamingo.deploy.codec import packb

if TYPE_CHECKING:
    from roboflamingo.deploy.server import PolicyServer, Session

LOG = logging.getLogger("roboflamingo.serve")

NATIVE_PATH = "/"
OPENPI_PATH = "/openpi"
VLA_EVAL_PATH = "/vla-eval"
PATHS = (NATIVE_PATH, OPENPI_PATH, VLA_EVAL_PATH)


class Adapter(Protocol):
    """One session's protocol: an optional greeting, then one (or no) reply per client frame."""

    name: str

    def greeting(self) -> bytes | None: ...

    async def handle(self, frame: bytes | str) -> bytes | str | None: ...


class Core:
    """The native request path of one session, as foreign protocols reach it."""

    def __init__(self, server: PolicyServer, session: Session) -> None:
        self.server = server
        self.session = session

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer ``msg`` exactly as a native client's frame would be answered (an error is a reply)."""
        try:
            frame = packb(msg)
        except (TypeError, ValueError, OverflowError) as e:
            return self.server._error(msg.get("id"), "bad_request", f"cannot pass the request on: {e}")
        return await self.server._reply(self.session, frame)

    async def step(self, obs: Any, instruction: Any, request_id: Any = None) -> dict[str, Any]:
        return await self.request({"type": "step", "id": request_id, "obs": obs, "instruction": instruction})

    async def reset(self, request_id: Any = None) -> dict[str, Any]:
        return await self.request({"type": "reset", "id": request_id})

    def metadata(self) -> dict[str, Any]:
        return self.server.metadata(self.session.id)


class NativeAdapter:
    """Our own protocol (``server.py``'s docstring), unchanged."""

    name = "roboflamingo"

    def __init__(self, core: Core) -> None:
        self.core = core

    def greeting(self) -> bytes | None:
        return packb(self.core.metadata())

    async def handle(self, frame: bytes | str) -> bytes | str | None:
        return packb(await self.core.server._reply(self.core.session, frame))


def _looks_native(frame: bytes | str) -> bool:
    """Our requests are maps with a string ``type``; anything undecodable goes to ours for its error."""
    if isinstance(frame, str):
        return True
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types for corrupt input
        return True
    return not isinstance(msg, dict) or isinstance(msg.get("type"), str)


class AutoAdapter:
    """``/``: greet with the metadata both clients expect, then let the first frame pick the protocol."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.chosen: Adapter | None = None

    @property
    def name(self) -> str:
        return self.chosen.name if self.chosen else "undecided"

    def greeting(self) -> bytes | None:
        return NativeAdapter(self.core).greeting()

    async def handle(self, frame: bytes | str) -> bytes | str | None:
        if self.chosen is None:
            from roboflamingo.deploy.protocols.openpi import OpenpiAdapter

            self.chosen = NativeAdapter(self.core) if _looks_native(frame) else OpenpiAdapter(self.core)
            LOG.info("session %d speaks %s", self.core.session.id, self.chosen.name)
        return await self.chosen.handle(frame)


def adapter_for(path: str, core: Core) -> Adapter | None:
    """The adapter that serves a connection to ``path`` (query string ignored), None when unknown."""
    route = urlsplit(path).path or NATIVE_PATH
    if route == NATIVE_PATH:
        return AutoAdapter(core)
    if route == OPENPI_PATH:
        from roboflamingo.deploy.protocols.openpi import OpenpiAdapter

        return OpenpiAdapter(core)
    if route == VLA_EVAL_PATH:
        from roboflamingo.deploy.protocols.vla_eval import VlaEvalAdapter

        return VlaEvalAdapter(core)
    return None


async def serve_session(server: PolicyServer, session: Session, ws: Any) -> None:
    """Run one connection's session to its end in the protocol its URL path and first frame choose."""
    path = ws.request.path if ws.request is not None else NATIVE_PATH
    adapter = adapter_for(path, Core(server, session))
    if adapter is None:
        known = ", ".join(PATHS)
        await ws.send(packb(server._error(None, "bad_request", f"unknown path {path[:100]!r} ({known})")))
        await ws.close(1008, "unknown path")
        return
    hello = adapter.greeting()
    if hello is not None:
        await ws.send(hello)
    async for frame in ws:
        reply = await adapter.handle(frame)
        if reply is not None:
            await ws.send(reply)
