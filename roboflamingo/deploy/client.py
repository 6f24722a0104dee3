"""``PolicyClient``: a remote policy behind ``roboflamingo serve``, usable wherever a local one is.

It satisfies the ``Policy`` protocol (``reset()``, ``step(obs, instruction)``), so the ROS node and the
evaluator drive a policy on a GPU box exactly as they drive one in process. Blocking calls on the
websockets sync client keep it usable from any thread.

The robot's shapes come from the server's handshake (``robot``, announced by ``roboflamingo
serve``; CALVIN's for a server from before descriptions): ``step`` checks the action against its
dimension. A client built for one robot (``robot=``) refuses a server whose policy is for another,
naming both descriptions, before it sends any observation.

It sends the server's bearer token (``token=``, else ``$ROBOFLAMINGO_TOKEN``) in the handshake and,
for ``wss://`` URLs, verifies the server's certificate (the system CAs, or ``ssl_cafile`` for a
private or self-signed one).
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import time
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from roboflamingo.deploy.auth import TOKEN_ENV, read_secret
from roboflamingo.deploy.codec import packb, unpackb
from roboflamingo.robot import RobotDescription
from roboflamingo.robots import load_robot
from roboflamingo.types import Observation


class PolicyServerError(RuntimeError):
    """The server answered a request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"policy server error [{code}]: {message}")
        self.code = code


def robot_from_metadata(metadata: dict[str, Any], where: str = "the server's handshake") -> RobotDescription:
    """The robot a handshake announces; CALVIN's when it names none (a server from before descriptions)."""
    if "robot" not in metadata:
        return load_robot("calvin")
    return RobotDescription.from_dict(metadata["robot"], where)


class PolicyClient:
    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765",
        timeout_s: float = 10.0,
        max_message_bytes: int = 2**24,
        token: str | None = None,
        ssl_cafile: str = "",
        robot: RobotDescription | None = None,
    ):
        """``robot``: the robot this client sends observations of; a server whose policy is for
        another is refused at connect (``RobotMismatch``). None accepts whatever the server serves."""
        self.url = url
        self.expected_robot = robot
        self.robot: RobotDescription | None = None  # the server's, from its handshake
        self.token = read_secret(env=TOKEN_ENV) if token is None else token
        self.ssl_cafile = ssl_cafile
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None
        self._stack: contextlib.ExitStack | None = None
        self._ids = itertools.count(1)
        self.metadata: dict[str, Any] = {}
        self.last_timing: dict[str, float] = {}

    # -- connection -------------------------------------------------------------------------------
    def connect(self) -> PolicyClient:
        if self._ws is not None:
            return self
        # Entered as a context manager: websockets >= 17.1 deprecates bare connect() objects.
        stack = contextlib.ExitStack()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        tls = ssl.create_default_context(cafile=self.ssl_cafile or None) if self.url.startswith("wss://") else None
        try:
            self._ws = stack.enter_context(
                connect(
                    self.url,
                    open_timeout=self.timeout_s,
                    max_size=self.max_message_bytes,
                    compression=None,
                    additional_headers=headers,
                    ssl=tls,
                )
            )
        except InvalidStatus as e:  # refused before the upgrade: 401 no/wrong token, 403 origin, 404 path
            status = e.response.status_code
            code = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status, f"http_{status}")
            raise PolicyServerError(code, f"{self.url} answered HTTP {status}") from e
        except InvalidHandshake as e:  # e.g. ws:// to a TLS port: no HTTP answer at all
            raise ConnectionError(f"{self.url}: no websocket handshake ({e}); is the server wss://?") from e
        self._stack = stack
        hello = unpackb(self._ws.recv(timeout=self.timeout_s))
        if not isinstance(hello, dict) or hello.get("type") != "metadata":
            self.close()
            if isinstance(hello, dict) and hello.get("type") == "error":
                raise PolicyServerError(str(hello.get("code")), str(hello.get("error")))
            raise ConnectionError(f"{self.url}: expected a metadata handshake, got {hello!r:.200}")
        try:
            robot = robot_from_metadata(hello, f"{self.url}'s handshake")
            if self.expected_robot is not None:
                self.expected_robot.require_compatible(robot, "this client", f"the policy at {self.url}")
        except ValueError:  # RobotMismatch included: no session for observations the policy cannot read
            self.close()
            raise
        self.metadata, self.robot = hello, robot
        return self

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._ws, self._stack = None, None

    def __enter__(self) -> PolicyClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def session(self) -> int | None:
        return self.metadata.get("session")

    @property
    def observation_keys(self) -> tuple[str, ...]:
        return tuple(self.connect().metadata.get("observation_spec", {}))

    # -- requests ---------------------------------------------------------------------------------
    def send_raw(self, frame: bytes | str) -> dict[str, Any]:
        """Send one frame as is and return the decoded reply (error replies are returned, not raised)."""
        ws = self.connect()._ws
        if ws is None:
            raise ConnectionError(f"no connection to {self.url}")
        try:
            ws.send(frame)
            return unpackb(ws.recv(timeout=self.timeout_s))
        except (ConnectionClosed, TimeoutError) as e:
            # The session (and its history) is gone; the next call opens a fresh one.
            self.close()
            raise ConnectionError(f"{self.url}: connection lost ({e})") from e

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        request_id = next(self._ids)
        reply = self.send_raw(packb({**msg, "id": request_id}))
        if reply.get("type") == "error":
            raise PolicyServerError(str(reply.get("code")), str(reply.get("error")))
        if reply.get("id") != request_id:
            raise ConnectionError(f"reply id {reply.get('id')} does not match request id {request_id}")
        return reply

    def health(self) -> dict[str, Any]:
        return self.request({"type": "health"})

    def reset(self) -> None:
        self.request({"type": "reset"})

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        t0 = time.perf_counter()
        reply = self.request({"type": "step", "obs": dict(obs), "instruction": instruction})
        action = np.asarray(reply["action"], dtype=np.float32)
        dim = self.robot.action.dim if self.robot is not None else None
        if action.shape != (dim,):
            raise ConnectionError(f"server returned an action of shape {action.shape}, expected ({dim},) "
                                  f"for the {self.robot.summary() if self.robot else 'unknown robot'} it announced")
        self.last_timing = {**reply.get("timing", {}), "roundtrip_ms": (time.perf_counter() - t0) * 1000.0}
        return action
