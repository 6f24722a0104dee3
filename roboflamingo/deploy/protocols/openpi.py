"""openpi's policy-server protocol (openpi-client 0.1.2, ``WebsocketClientPolicy``).

    server -> client, on connect   the metadata map (ours: ``PolicyServer.metadata``)
    client -> server               a bare observation map: the served robot's observation keys (its
                                   cameras and state key; CALVIN's ``rgb_static``, ``rgb_gripper``,
                                   ``robot_obs``, ``scene_obs``) and the instruction as ``prompt``
    server -> client               {"actions": float32 (1, action dim), "server_timing": {...}}
    on an error                    a text frame "<code>: <reason>"; openpi's client raises it as a
                                   RuntimeError, and the session stays open

openpi-client packs arrays as ``{b"__ndarray__", b"data", b"dtype", b"shape"}``: our codec's layout,
but with *bytes* keys, and it decodes only arrays whose keys are bytes. So frames are decoded by our
codec (its bounds apply) and their bytes-keyed arrays then checked by the codec's own array rules
(numeric and bool dtypes only, byte count against the shape); replies are written openpi's way.

Observations are accepted in the spellings openpi's and LeRobot's clients use: openpi's
``observation/<key>`` (its LIBERO and DROID examples), a nested ``images`` map with channel-first
(3, H, W) frames (its ALOHA example), and LeRobot's ``observation.images.<camera>`` and
``observation.state`` (the robot's state key).

openpi's client never tells the server that an episode starts (its ``reset()`` sends nothing): a
session is one episode stream, and a new connection is a new session with a fresh policy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from roboflamingo.deploy.codec import (
    ALLOWED_KINDS,
    NDARRAY_KEY,
    CodecError,
    _decode_array,
    _encode_default,
    unpackb,
)
from roboflamingo.deploy.codec import packb as native_packb
from roboflamingo.deploy.protocols.frames import Send, frame_problem, walk
from roboflamingo.robot import RobotDescription

if TYPE_CHECKING:
    from roboflamingo.deploy.server import PolicyServer

PROMPT_KEY = "prompt"
OBS_PREFIX = "observation/"
IMAGES_KEY = "images"  # openpi's ALOHA client nests its cameras here
LEROBOT_IMAGE_PREFIX = "observation.images."
LEROBOT_STATE = "observation.state"
_B_NDARRAY = NDARRAY_KEY.encode()
_B_NPGENERIC = b"__npgeneric__"


def _convert(d: dict) -> Any:
    if d.get(_B_NDARRAY) is True:
        return _decode_array({k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()})
    if d.get(_B_NPGENERIC) is True:
        dtype, value = d.get(b"dtype"), d.get(b"data")
        try:
            kind = np.dtype(dtype).kind
        except TypeError as e:
            raise CodecError(f"numpy scalar has an unknown dtype {dtype!r}") from e
        if kind not in ALLOWED_KINDS or not isinstance(value, (bool, int, float)):
            raise CodecError(f"numpy scalar of dtype {dtype!r} is not allowed (bool, int, uint and float only)")
        return value
    return d


def _encode(obj: Any) -> Any:
    encoded = _encode_default(obj)
    if isinstance(obj, np.ndarray):
        return {k.encode(): v for k, v in encoded.items()}
    return encoded


def packb(obj: Any) -> bytes:
    """Encode as openpi's ``msgpack_numpy.packb`` does (bytes keys for arrays)."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def decode(frame: bytes) -> Any:
    """Decode an openpi frame; any failure becomes a ``CodecError`` with the reason."""
    return walk(unpackb(frame), _convert)


def _channels_last(image: Any) -> Any:
    # openpi's ALOHA client sends (3, H, W); our policies read (H, W, 3).
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        return np.ascontiguousarray(image.transpose(1, 2, 0))
    return image


def to_observation(msg: dict, robot: RobotDescription) -> dict:
    """An openpi observation map (``prompt`` removed) in our keys for ``robot``; keys that are not
    strings pass through for the server to name."""
    obs: dict = {}
    cameras = set(robot.camera_names)
    for key, value in msg.items():
        if not isinstance(key, str):
            obs[key] = value
        elif key == IMAGES_KEY and isinstance(value, dict) and IMAGES_KEY not in robot.observation_keys:
            obs.update({k: _channels_last(v) if k in cameras else v for k, v in value.items()})
        elif key == LEROBOT_STATE:
            obs[robot.state.key] = value
        else:
            name = key.removeprefix(LEROBOT_IMAGE_PREFIX).removeprefix(OBS_PREFIX)
            obs[name] = _channels_last(value) if name in cameras else value
    return obs


class OpenpiTranslator:
    name = "openpi"
    speaks_first = False

    def __init__(self, server: PolicyServer, send: Send) -> None:
        self.server, self.send = server, send
        self.pending: deque[None] = deque()  # one entry per step frame handed to the server

    async def incoming(self, frame: bytes | str) -> AsyncIterator[bytes | str]:
        problem = frame_problem(frame, self.server.config.max_message_bytes, "a binary msgpack observation map")
        if problem:
            await self.send(problem)
            return
        try:
            msg = decode(frame)
        except CodecError as e:
            await self.send(f"bad_request: {e}"[:1000])
            return
        if not isinstance(msg, dict):
            await self.send(f"bad_request: an observation must be a map, got {type(msg).__name__}")
            return
        instruction = msg.pop(PROMPT_KEY, None)
        if not isinstance(instruction, str):
            await self.send(f"bad_request: the observation needs the instruction as a string '{PROMPT_KEY}'")
            return
        obs = to_observation(msg, self.server.robot)
        try:
            native = native_packb({"type": "step", "obs": obs, "instruction": instruction})
        except (TypeError, ValueError, OverflowError) as e:
            await self.send(f"bad_request: {e}"[:1000])
            return
        self.pending.append(None)
        yield native

    def outgoing(self, frame: bytes | str) -> bytes | str | None:
        if not self.pending:  # the metadata greeting, or a refusal before the session started
            return frame
        self.pending.popleft()
        reply = unpackb(frame)
        if reply.get("type") != "action":
            return f"{reply.get('code')}: {reply.get('error')}"
        return packb({"actions": np.asarray(reply["action"], np.float32)[None], "server_timing": reply["timing"]})
