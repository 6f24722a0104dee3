"""The client protocols ``roboflamingo serve`` speaks, all on one port, all through one policy core.

===================  =============  ===================================================================
protocol             URL path       how it is recognised
===================  =============  ===================================================================
ours (``native``)    ``/``          any first frame that is not openpi's (``deploy.client``)
openpi-client        ``/``          the first frame is a map without ``type`` holding ``prompt`` or an
                                    observation key (``protocols.openpi``)
                     ``/openpi``    forced, for observations that happen to carry a ``type`` key
vla-eval             ``/vla-eval``  its client speaks first (HELLO), so it needs its own path
===================  =============  ===================================================================

Ours and openpi's clients both wait for the server's metadata map before sending anything, so ``/``
greets with it and the first frame picks the protocol for the rest of the session. vla-eval's
``Connection`` sends HELLO and expects HELLO back as its first frame, which a greeting would break.

A protocol is a translator and nothing more. ``handler(server)`` hands ``PolicyServer._handler`` a
``ProtocolConnection``: iterating it yields *our* request frames (``{"type": "step" | "reset", ...}``)
translated from the client's, and what the server sends back through it is translated into the
client's protocol. The server's whole request path (admission, size limit, decode bounds, idle
timeout, observation checks, the session's policy and lock, batching, error codes) is therefore
the same for every protocol: one policy core, one history per session. Token carriers per protocol
are in ``deploy.auth.presented_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed

from roboflamingo.deploy.codec import CodecError, packb, unpackb
from roboflamingo.deploy.protocols.frames import Send
from roboflamingo.robots.calvin import OBS_KEYS

if TYPE_CHECKING:
    from roboflamingo.deploy.server import PolicyServer

LOG = logging.getLogger("roboflamingo.serve")

NATIVE_PATH = "/"
OPENPI_PATH = "/openpi"
VLA_EVAL_PATH = "/vla-eval"
PATHS = (NATIVE_PATH, OPENPI_PATH, VLA_EVAL_PATH)
OPENPI_KEYS = ("prompt", *OBS_KEYS)  # what an openpi observation for our policies carries


class Translator(Protocol):
    """One connection's protocol, between the client's frames and the server's native ones."""

    name: str
    # The client sends the first frame and reads every server frame as the reply to one of its own
    # (vla-eval); otherwise the server greets first (ours, openpi).
    speaks_first: bool

    def incoming(self, frame: bytes | str) -> AsyncIterator[bytes | str]:
        """The native request frames one client frame stands for, in order (it may answer directly)."""

    def outgoing(self, frame: bytes | str) -> bytes | str | None:
        """The client's form of one frame the server sends (None: nothing goes out)."""


class NativeTranslator:
    """Our own protocol (``server.py``'s docstring): frames pass through unchanged."""

    name = "roboflamingo"
    speaks_first = False

    async def incoming(self, frame: bytes | str) -> AsyncIterator[bytes | str]:
        yield frame

    def outgoing(self, frame: bytes | str) -> bytes | str | None:
        return frame


def _looks_openpi(frame: bytes | str, keys: tuple[str, ...] = ()) -> bool:
    """An observation map without ``type`` but with an instruction (``prompt``), an observation key
    (CALVIN's or ``keys``, the served robot's) or one of openpi's and LeRobot's spellings of one.

    Anything else, undecodable frames included, goes to our protocol, which names what is wrong.
    """
    if isinstance(frame, str):
        return False
    try:
        msg = unpackb(frame)
    except CodecError:
        return False
    if not isinstance(msg, dict) or "type" in msg:
        return False
    known = {*OPENPI_KEYS, *keys, "images"}
    return any(isinstance(k, str) and (k in known or k.startswith(("observation/", "observation."))) for k in msg)


class AutoTranslator:
    """``/``: the greeting both clients expect goes out as is; the first frame picks the protocol."""

    speaks_first = False  # the clients it tells apart on "/" (ours, openpi) wait for our greeting

    def __init__(self, server: PolicyServer, send: Send) -> None:
        self.server, self.send = server, send
        self.chosen: Translator | None = None

    @property
    def name(self) -> str:
        return self.chosen.name if self.chosen is not None else "undecided"

    async def incoming(self, frame: bytes | str) -> AsyncIterator[bytes | str]:
        if self.chosen is None:
            from roboflamingo.deploy.protocols.openpi import OpenpiTranslator

            openpi = _looks_openpi(frame, self.server.source.observation_keys)
            self.chosen = OpenpiTranslator(self.server, self.send) if openpi else NativeTranslator()
            LOG.info("a client on / speaks %s", self.chosen.name)
        async for native_frame in self.chosen.incoming(frame):
            yield native_frame

    def outgoing(self, frame: bytes | str) -> bytes | str | None:
        return frame if self.chosen is None else self.chosen.outgoing(frame)


def translator_for(path: str, server: PolicyServer, send: Send) -> Translator | None:
    """The translator for a connection to ``path`` (query string ignored); None when the path is unknown."""
    route = urlsplit(path).path or NATIVE_PATH
    if route == NATIVE_PATH:
        return AutoTranslator(server, send)
    if route == OPENPI_PATH:
        from roboflamingo.deploy.protocols.openpi import OpenpiTranslator

        return OpenpiTranslator(server, send)
    if route == VLA_EVAL_PATH:
        from roboflamingo.deploy.protocols.vla_eval import VlaEvalTranslator

        return VlaEvalTranslator(server, send)
    return None


class ProtocolConnection:
    """A websocket connection as ``PolicyServer._handler`` sees it: native frames in and out."""

    def __init__(self, ws: Any, translator: Translator) -> None:
        self.ws = ws
        self.translator = translator
        # The session's byte budget (``server.ByteBudget``), set by the server: every client frame is
        # charged, the ones a translator refuses or answers itself too (a vla-eval client streaming
        # frames that are all refused must not get the event loop for free), at the larger of its own
        # size and the native frames it became (a small PNG that decodes to 8 MB costs 8 MB).
        self.budget: Any = None
        self.on_throttle: Callable[[], None] | None = None

    @property
    def request(self) -> Any:
        return self.ws.request

    @property
    def remote_address(self) -> Any:
        return self.ws.remote_address

    async def refuse(self, frame: bytes, code: int, reason: str, wait_s: float) -> None:
        """Send a refusal (a native error frame) and close. A client that speaks first gets it as the
        reply to its first frame: vla-eval's, finding the socket closed before its HELLO went out,
        reconnects (recursively, until RecursionError) instead of reading why it was refused."""
        if self.translator.speaks_first:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                await asyncio.wait_for(self.ws.recv(), wait_s)
        with contextlib.suppress(ConnectionClosed):
            await self.send(frame)
        await self.close(code, reason)

    async def send(self, frame: bytes | str) -> None:
        out = self.translator.outgoing(frame)
        if out is not None:
            await self.ws.send(out)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    def __aiter__(self) -> AsyncIterator[bytes | str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[bytes | str]:
        async for frame in self.ws:
            cost = len(frame)
            async for native in self.translator.incoming(frame):
                cost = max(cost, len(native))
                yield native  # the server answers it before the generator resumes
            if self.budget is not None:
                pause = self.budget.charge(cost, time.monotonic())
                if pause:
                    if self.on_throttle is not None:
                        self.on_throttle()
                    await asyncio.sleep(pause)


def handler(server: PolicyServer) -> Callable[[Any], Awaitable[None]]:
    """The websocket handler for ``server``: pick the protocol from the path, then serve the session."""

    async def handle(ws: Any) -> None:
        path = ws.request.path if ws.request is not None else NATIVE_PATH
        translator = translator_for(path, server, ws.send)
        if translator is None:  # refused before a policy is made for it
            known = ", ".join(PATHS)
            await ws.send(packb(server._error(None, "bad_request", f"unknown path {path[:100]!r} ({known})")))
            await ws.close(1008, "unknown path")
            return
        await server._handler(ProtocolConnection(ws, translator))

    return handle
