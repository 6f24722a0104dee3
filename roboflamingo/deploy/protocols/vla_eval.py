"""vla-eval's model-server protocol (vla-eval 0.8.0, ``vla_eval.connection.Connection``), on ``/vla-eval``.

Every frame is a msgpack map ``{type, payload, seq, timestamp}``::

    client -> server   hello           {harness_version, protocol_version, benchmark?}
    server -> client   hello           {harness_version, protocol_version, model_server, capabilities,
                                        observation_params, action_spec, observation_spec}
    client -> server   episode_start   {task: {...}}          -> the session's policy is reset
    client -> server   observation     {images: {rgb_static, rgb_gripper: HWC uint8}, states: (15,),
                                        scene_obs?: (24,), task_description: str,
                                        episode_restart?: true (a new subtask: reset first)}
    server -> client   action          {actions: float32 (7,)}, seq = the observation's seq
    client -> server   episode_end     {...}                   -> nothing
    server -> client   error           {error: str}, seq = the failing message's seq

``observation_params`` tells a benchmark what this policy needs (vla-eval's orchestrator passes
them to the benchmark's constructor): ``send_wrist_image``, ``send_state`` and, for the scripted
expert, which reads the privileged scene state, ``send_scene_obs``.

Images arrive as vla-eval's ``{"__image__": True, "format": raw | png | jpeg, "data", "shape"}``
(PNG by default). They are decoded here under the same rules as our codec: the declared shape must
be HWC with at most ``max_message_bytes`` pixels' worth of bytes, checked from the image header
before any pixel is decompressed, and the decoded array must have exactly that shape.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import msgpack
import numpy as np

from roboflamingo import __version__
from roboflamingo.deploy.codec import NDARRAY_KEY, CodecError, _decode_array, packb
from roboflamingo.deploy.protocols import Core
from roboflamingo.types import CAMERAS, RGB_GRIPPER, ROBOT_OBS, SCENE_OBS

LOG = logging.getLogger("roboflamingo.serve")

PROTOCOL_VERSION = 1
TYPES = ("hello", "observation", "action", "episode_start", "episode_end", "error")
IMAGE_KEY = "__image__"
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
STATE_KEYS = ("states", "state")  # vla-eval's CALVIN benchmark sends "states"; its docs say "state"


def _decode_image(d: dict, limit: int) -> np.ndarray:
    fmt, shape, data = d.get("format"), d.get("shape"), d.get("data")
    if not isinstance(data, bytes) or not isinstance(shape, list) or len(shape) != 3:
        raise CodecError("an image needs 'format', 'data' (bytes) and an HWC 'shape' of 3 ints")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise CodecError(f"image shape must be 3 positive ints, got {shape}")
    if shape[0] * shape[1] * shape[2] > limit:
        raise CodecError(f"image of shape {shape} exceeds max_message_bytes={limit} once decoded")
    if fmt == "raw":
        if d.get("dtype") != "|u1":
            raise CodecError(f"a raw image must be uint8 ('|u1'), got {d.get('dtype')!r}")
        return _decode_array({"dtype": "|u1", "shape": shape, "data": data})
    if fmt not in PIL_FORMATS:
        raise CodecError(f"image format must be raw, png or jpeg, got {fmt!r}")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]]) as img:
            if img.size != (shape[1], shape[0]):  # header only: nothing is decompressed yet
                raise CodecError(f"{fmt} image is {img.size[1]}x{img.size[0]}, its shape says {shape}")
            arr = np.asarray(img)
    except CodecError:
        raise
    except Exception as e:  # PIL raises many types for corrupt data
        raise CodecError(f"cannot decode the {fmt} image ({type(e).__name__}: {e})") from e
    if arr.ndim == 2:
        arr = arr[..., None]
    if list(arr.shape) != shape or arr.dtype != np.uint8:
        raise CodecError(f"{fmt} image decodes to {arr.dtype} {list(arr.shape)}, its shape says {shape}")
    return np.ascontiguousarray(arr)


def unpack_message(data: bytes, limit: int) -> dict[str, Any]:
    """Decode one vla-eval frame into ``{type, payload, seq, timestamp}`` (``CodecError`` when malformed)."""

    def hook(d: dict) -> Any:
        if d.get(IMAGE_KEY) is True:
            return _decode_image(d, limit)
        if d.get(NDARRAY_KEY) is True:
            return _decode_array(d)
        return d

    try:
        msg = msgpack.unpackb(bytes(data), raw=False, object_hook=hook, strict_map_key=True)
    except CodecError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for corrupt input
        raise CodecError(f"not a valid msgpack message ({type(e).__name__}: {e})") from e
    if not isinstance(msg, dict):
        raise CodecError(f"a vla-eval message must be a map, got {type(msg).__name__}")
    missing = [k for k in ("type", "payload", "seq", "timestamp") if k not in msg]
    if missing:
        raise CodecError(f"a vla-eval message needs type, payload, seq and timestamp; missing {missing}")
    if msg["type"] not in TYPES:
        raise CodecError(f"unknown vla-eval message type {msg['type']!r} (one of {list(TYPES)})")
    if not isinstance(msg["payload"], dict):
        raise CodecError(f"a vla-eval payload must be a map, got {type(msg['payload']).__name__}")
    return msg


def pack_message(kind: str, payload: dict[str, Any], seq: Any) -> bytes:
    # Our codec writes arrays with the str keys vla-eval's decoder looks for.
    return packb({"type": kind, "payload": payload, "seq": seq, "timestamp": time.time()})


def _dim(name: str, dims: int, fmt: str, low: float | None = None, high: float | None = None, note: str = ""):
    d: dict[str, Any] = {"name": name, "dims": dims, "format": fmt}
    if low is not None:
        d["range"] = [low, high]
    if note:
        d["description"] = note
    return d


# vla-eval's DimSpec dicts (``vla_eval.specs``); its orchestrator compares them with the benchmark's.
ACTION_SPEC = {
    "position": _dim("position", 3, "delta_xyz", -1.0, 1.0, "relative tcp delta / 0.02 m (CALVIN rel_actions)"),
    "rotation": _dim("rotation", 3, "euler_xyz", -1.0, 1.0, "relative euler xyz delta / 0.05 rad"),
    "gripper": _dim("gripper", 1, "binary_close_negative", -1.0, 1.0, "-1 close, +1 open"),
}
IMAGE_SPEC = _dim("image", 0, "rgb_hwc_uint8")


def observation_spec(keys: tuple[str, ...]) -> dict[str, Any]:
    spec: dict[str, Any] = {cam: IMAGE_SPEC for cam in CAMERAS if cam in keys}
    if ROBOT_OBS in keys:
        spec["state"] = _dim("state", 15, "calvin_robot_obs15", note="CALVIN robot_obs")
    if SCENE_OBS in keys:
        spec[SCENE_OBS] = _dim(SCENE_OBS, 24, "calvin_scene_obs24", note="CALVIN scene_obs (privileged)")
    spec["language"] = _dim("language", 0, "language")
    return spec


def observation_params(keys: tuple[str, ...]) -> dict[str, bool]:
    params = {"send_wrist_image": RGB_GRIPPER in keys, "send_state": ROBOT_OBS in keys}
    if SCENE_OBS in keys:
        params["send_scene_obs"] = True
    return params


def to_observation(payload: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """vla-eval's observation payload as our observation map and instruction."""
    obs: dict[str, Any] = {}
    images = payload.get("images")
    if isinstance(images, dict):
        obs.update({cam: images[cam] for cam in CAMERAS if cam in images})
    for key in STATE_KEYS:
        if key in payload:
            obs[ROBOT_OBS] = payload[key]
            break
    if SCENE_OBS in payload:
        obs[SCENE_OBS] = payload[SCENE_OBS]
    return obs, payload.get("task_description")


class VlaEvalAdapter:
    name = "vla-eval"

    def __init__(self, core: Core) -> None:
        self.core = core

    def greeting(self) -> bytes | None:
        return None  # vla-eval's client speaks first

    def _hello(self) -> dict[str, Any]:
        keys = self.core.server.source.observation_keys
        return {
            "harness_version": f"roboflamingo-{__version__}",
            "protocol_version": PROTOCOL_VERSION,
            "model_server": f"roboflamingo:{self.core.server.source.name}",
            "capabilities": {},
            "observation_params": observation_params(keys),
            "action_spec": ACTION_SPEC,
            "observation_spec": observation_spec(keys),
            "roboflamingo": self.core.metadata(),
        }

    async def handle(self, frame: bytes | str) -> bytes | str | None:
        limit = self.core.server.max_message_bytes
        if isinstance(frame, str):
            return pack_message("error", {"error": "bad_request: expected a binary msgpack frame"}, 0)
        if len(frame) > limit:
            return pack_message(
                "error", {"error": f"too_large: message of {len(frame)} bytes exceeds max_message_bytes={limit}"}, 0
            )
        try:
            msg = unpack_message(frame, limit)
        except CodecError as e:
            return pack_message("error", {"error": f"bad_request: {e}"[:1000]}, 0)
        kind, payload, seq = msg["type"], msg["payload"], msg["seq"]
        if kind == "hello":
            return pack_message("hello", self._hello(), seq)
        if kind == "episode_start":
            reply = await self.core.reset()
        elif kind == "observation":
            reply = {}
            if payload.get("episode_restart") is True:  # a chain's next subtask: CALVIN resets the policy
                reply = await self.core.reset()
            if reply.get("type") != "error":
                obs, instruction = to_observation(payload)
                reply = await self.core.step(obs, instruction)
            if reply.get("type") == "action":
                return pack_message("action", {"actions": reply["action"]}, seq)
        elif kind == "error":
            LOG.warning("vla-eval client reported an error in session %d: %.300s", self.core.session.id, payload)
            return None
        else:  # episode_end; "action" from a client has no meaning and is ignored likewise
            return None
        if reply.get("type") == "error":
            return pack_message("error", {"error": f"{reply.get('code')}: {reply.get('error')}"}, seq)
        return None
