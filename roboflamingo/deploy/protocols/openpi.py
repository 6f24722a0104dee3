"""openpi's policy-server protocol (openpi-client 0.1.2, ``WebsocketClientPolicy``).

    server -> client, on connect   the metadata map (ours: ``PolicyServer.metadata``)
    client -> server               a bare observation map: our observation keys (``rgb_static``,
                                   ``rgb_gripper``, ``robot_obs``, ``scene_obs``; openpi's
                                   ``observation/`` prefix is accepted) and the instruction as ``prompt``
    server -> client               {"actions": float32 (1, 7), "server_timing": {...}}
    on an error                    a text frame with the reason; openpi's client raises it as a
                                   RuntimeError, and the session stays open

openpi-client packs arrays as ``{b"__ndarray__", b"data", b"dtype", b"shape"}``: the layout of our
codec, but with *bytes* keys, and it only decodes arrays whose keys are bytes; so this module reads
both spellings and writes openpi's. Decoding keeps our codec's rules (numeric and bool dtypes only,
byte count checked against the shape), so a frame is data and nothing else.

openpi's client never tells the server that an episode starts (its ``reset()`` sends nothing); a
session is one episode stream, and a new connection is a new session with a fresh policy.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from roboflamingo.deploy.codec import ALLOWED_KINDS, NDARRAY_KEY, CodecError, _decode_array, _encode_default
from roboflamingo.deploy.protocols import Core

PROMPT_KEY = "prompt"
OBS_PREFIX = "observation/"
_B_NDARRAY = NDARRAY_KEY.encode()
_B_NPGENERIC = b"__npgeneric__"


def _object_hook(d: dict) -> Any:
    if d.get(_B_NDARRAY) is True:
        return _decode_array({k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()})
    if d.get(NDARRAY_KEY) is True:
        return _decode_array(d)
    if d.get(_B_NPGENERIC) is True:
        dtype, value = d.get(b"dtype"), d.get(b"data")
        try:
            kind = np.dtype(dtype).kind
        except TypeError as e:
            raise CodecError(f"numpy scalar has an unknown dtype {dtype!r}") from e
        if kind not in ALLOWED_KINDS or isinstance(value, (dict, list, bytes, str)):
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


def unpackb(data: bytes) -> Any:
    """Decode an openpi frame; any failure becomes a ``CodecError`` with the reason."""
    try:
        return msgpack.unpackb(bytes(data), raw=False, object_hook=_object_hook, strict_map_key=True)
    except CodecError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for corrupt input
        raise CodecError(f"not a valid msgpack message ({type(e).__name__}: {e})") from e


class OpenpiAdapter:
    name = "openpi"

    def __init__(self, core: Core) -> None:
        self.core = core

    def greeting(self) -> bytes | None:
        return packb(self.core.metadata())

    async def handle(self, frame: bytes | str) -> bytes | str | None:
        limit = self.core.server.max_message_bytes
        if isinstance(frame, str):
            return "bad_request: expected a binary msgpack observation map, got a text frame"
        if len(frame) > limit:
            return f"too_large: message of {len(frame)} bytes exceeds max_message_bytes={limit}"
        try:
            msg = unpackb(frame)
        except CodecError as e:
            return f"bad_request: {e}"[:1000]
        if not isinstance(msg, dict):
            return f"bad_request: an observation must be a map, got {type(msg).__name__}"
        instruction = msg.pop(PROMPT_KEY, None)
        if not isinstance(instruction, str):
            return f"bad_request: the observation needs the instruction as a string '{PROMPT_KEY}'"
        obs = {k[len(OBS_PREFIX) :] if isinstance(k, str) and k.startswith(OBS_PREFIX) else k: v for k, v in msg.items()}
        reply = await self.core.step(obs, instruction)
        if reply.get("type") == "error":
            return f"{reply.get('code')}: {reply.get('error')}"
        return packb({"actions": np.asarray(reply["action"], np.float32)[None], "server_timing": reply["timing"]})
