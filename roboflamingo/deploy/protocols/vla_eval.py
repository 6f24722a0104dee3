"""vla-eval's model-server protocol (vla-eval 0.8.0, ``vla_eval.connection.Connection``), on ``/vla-eval``.

Every frame is a msgpack map ``{type, payload, seq, timestamp}``::

    client -> server   hello           {harness_version, protocol_version, benchmark?}
    server -> client   hello           {harness_version, protocol_version, model_server, capabilities,
                                        observation_params, action_spec, observation_spec, roboflamingo}
    client -> server   episode_start   {task: {...}}          -> the session's policy is reset
    client -> server   observation     {images: {<camera>: HWC uint8, ...}, states: (state dim,),
                                        scene_obs?: (24,), task_description: str,
                                        episode_restart?: true (a chain's next subtask: reset first)}
    server -> client   action          {actions: float32 (action dim,)}, seq = the observation's seq

Cameras and state are the served robot's (``PolicyServer.robot``): CALVIN's ``rgb_static``,
``rgb_gripper`` and 15-d ``robot_obs`` for our tabletop, a checkpoint's own otherwise.
    client -> server   episode_end     {...}                   -> nothing
    server -> client   error           {error: "<code>: <reason>"}, seq = the failing message's seq

``observation_params`` tells a benchmark what this policy needs (vla-eval's orchestrator passes
them to the benchmark's constructor): ``send_wrist_image``, ``send_state`` and, for the scripted
expert, which reads the privileged scene state, ``send_scene_obs``. ``roboflamingo`` is our own
handshake (``PolicyServer.metadata``).

Images arrive as vla-eval's ``{"__image__": True, "format": raw | png | jpeg, "data", "shape"}``
(PNG by default). They are decoded under our codec's rules: the declared shape must be HWC, all the
images of one frame together hold at most ``max_message_bytes`` bytes once decoded (a 0.76 MB frame
of small PNGs once decoded to 750 MB), checked against each image's header before any pixel is
decompressed, and the decoded array must have exactly that shape. Frames are decoded on the server's
decode threads, never on the event loop, so a client sending large images delays only itself.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np

from roboflamingo import __version__
from roboflamingo.deploy.codec import CodecError, _decode_array, packb, unpackb
from roboflamingo.deploy.protocols.frames import Send, frame_problem, public_text, walk
from roboflamingo.robot import RobotDescription
from roboflamingo.robots import calvin
from roboflamingo.robots.calvin import ROBOT_OBS_DIM, SCENE_OBS, SCENE_OBS_DIM

if TYPE_CHECKING:
    from roboflamingo.deploy.server import PolicyServer

LOG = logging.getLogger("roboflamingo.serve")

PROTOCOL_VERSION = 1
TYPES = ("hello", "observation", "action", "episode_start", "episode_end", "error")
IMAGE_KEY = "__image__"
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
STATE_KEYS = ("states", "state")  # vla-eval's CALVIN benchmark sends "states"; its docs say "state"


class DecodeBudget:
    """Bytes the images of one frame may still decode to (their total is bounded, not only each one)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit

    def take(self, shape: list[int]) -> None:
        n = shape[0] * shape[1] * shape[2]
        if n > self.left:
            used = self.limit - self.left
            raise CodecError(
                f"image of shape {shape} ({n} bytes) would take the frame's images past "
                f"max_message_bytes={self.limit} once decoded ({used} bytes already)"
            )
        self.left -= n


def declared_shape(d: dict) -> list[int]:
    """An image map's HWC ``shape``, checked to be 3 positive ints (``data`` must be bytes)."""
    shape = d.get("shape")
    if not isinstance(d.get("data"), bytes) or not isinstance(shape, list) or len(shape) != 3:
        raise CodecError("an image needs 'format', 'data' (bytes) and an HWC 'shape' of 3 ints")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise CodecError(f"image shape must be 3 positive ints, got {shape}")
    return shape


def decode_image(d: dict, limit: int | DecodeBudget) -> np.ndarray:
    """One vla-eval image; ``limit``: the frame's ``DecodeBudget`` (or a byte limit for this image alone)."""
    budget = limit if isinstance(limit, DecodeBudget) else DecodeBudget(limit)
    fmt, data = d.get("format"), d.get("data")
    shape = declared_shape(d)
    budget.take(shape)  # before anything is decompressed
    if fmt == "raw":
        if d.get("dtype") != "|u1":
            raise CodecError(f"a raw image must be uint8 ('|u1'), got {d.get('dtype')!r}")
        return _decode_array({"dtype": "|u1", "shape": shape, "data": data})
    if fmt not in PIL_FORMATS:
        raise CodecError(f"image format must be raw, png or jpeg, got {fmt!r}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]]) as img:
            if img.size != (shape[1], shape[0]):  # from the header: nothing is decompressed yet
                raise CodecError(f"{fmt} image is {img.size[1]}x{img.size[0]}, its shape says {shape}")
            arr = np.asarray(img)
    except CodecError:
        raise
    except UnidentifiedImageError as e:  # its text quotes the BytesIO's repr, a memory address
        raise CodecError(f"cannot decode the {fmt} image: the data is not a {fmt} file") from e
    except Exception as e:  # PIL raises many types for corrupt data
        raise CodecError(public_text(f"cannot decode the {fmt} image ({type(e).__name__}: {e})")[:300]) from e
    if arr.ndim == 2:
        arr = arr[..., None]
    if list(arr.shape) != shape or arr.dtype != np.uint8:
        raise CodecError(f"{fmt} image decodes to {arr.dtype} {list(arr.shape)}, its shape says {shape}")
    return np.ascontiguousarray(arr)


def unpack_message(data: bytes, limit: int) -> dict[str, Any]:
    """Decode one vla-eval frame into ``{type, payload, seq, timestamp}`` (``CodecError`` when malformed).

    ``limit`` bounds the frame's encoded size and the decoded size of all its images together.
    """
    raw = unpackb(data)
    # First the declared sizes of all the frame's images together: a frame of a hundred small PNGs that
    # each claim 8 MB is refused before a single one is decompressed.
    declared = DecodeBudget(limit)
    walk(raw, lambda d: declared.take(declared_shape(d)) if d.get(IMAGE_KEY) is True else d)
    budget = DecodeBudget(limit)
    msg = walk(raw, lambda d: decode_image(d, budget) if d.get(IMAGE_KEY) is True else d)
    if not isinstance(msg, dict):
        raise CodecError(f"a vla-eval message must be a map, got {type(msg).__name__}")
    missing = [k for k in ("type", "payload", "seq", "timestamp") if k not in msg]
    if missing:
        raise CodecError(f"a vla-eval message needs type, payload, seq and timestamp; missing {missing}")
    if msg["type"] not in TYPES:
        raise CodecError(f"unknown vla-eval message type {str(msg['type'])[:50]!r} (one of {list(TYPES)})")
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
# A robot's whole action as one DimSpec: its format says what the numbers are (vla-eval's own words
# where it has them: ``absolute_joint_positions``, ``delta_xyz``-style ``delta_``).
ACTION_FORMATS = {
    ("absolute", "joint"): "absolute_joint_positions",
    ("relative", "joint"): "delta_joint_positions",
    ("absolute", "end_effector"): "absolute_end_effector",
    ("relative", "end_effector"): "delta_end_effector",
}


def _is_calvin(robot: RobotDescription) -> bool:
    return robot.shapes() == calvin.CALVIN.shapes()


def action_spec(robot: RobotDescription = calvin.CALVIN) -> dict[str, Any]:
    """vla-eval's action spec of ``robot``: CALVIN's three parts, else one ``actions`` entry."""
    if _is_calvin(robot):
        return ACTION_SPEC
    a = robot.action
    finite = all(math.isfinite(v) for v in (*a.low, *a.high))
    note = f"{robot.name}: {', '.join(a.names)}" + (f"; binary grippers {list(a.grippers)} "
                                                    f"({a.close} close, {a.open} open)" if a.grippers else "")
    low, high = (min(a.low), max(a.high)) if finite else (None, None)
    return {"actions": _dim("actions", a.dim, ACTION_FORMATS[a.mode, a.space], low, high, note)}


def observation_spec(keys: tuple[str, ...], robot: RobotDescription = calvin.CALVIN) -> dict[str, Any]:
    spec: dict[str, Any] = {cam: IMAGE_SPEC for cam in robot.camera_names if cam in keys}
    if robot.state.key in keys:
        if _is_calvin(robot):
            spec["state"] = _dim("state", ROBOT_OBS_DIM, f"calvin_robot_obs{ROBOT_OBS_DIM}", note="CALVIN robot_obs")
        else:
            spec["state"] = _dim("state", robot.state.dim, f"{robot.name}_state{robot.state.dim}",
                                 note=", ".join(robot.state.names))
    if SCENE_OBS in keys:
        spec[SCENE_OBS] = _dim(SCENE_OBS, SCENE_OBS_DIM, f"calvin_scene_obs{SCENE_OBS_DIM}",
                               note="CALVIN scene_obs (privileged)")
    spec["language"] = _dim("language", 0, "language")
    return spec


def observation_params(keys: tuple[str, ...], robot: RobotDescription = calvin.CALVIN) -> dict[str, bool]:
    # vla-eval's benchmarks know one main camera and a wrist camera; any camera past the first counts.
    params = {"send_wrist_image": any(cam in keys for cam in robot.camera_names[1:]),
              "send_state": robot.state.key in keys}
    if SCENE_OBS in keys:
        params["send_scene_obs"] = True
    return params


def to_observation(payload: dict[str, Any], robot: RobotDescription = calvin.CALVIN) -> tuple[dict[str, Any], Any]:
    """vla-eval's observation payload as our observation map and instruction."""
    obs: dict[str, Any] = {}
    images = payload.get("images")
    if isinstance(images, dict):
        obs.update({cam: images[cam] for cam in robot.camera_names if cam in images})
    for key in STATE_KEYS:
        if key in payload:
            obs[robot.state.key] = payload[key]
            break
    if SCENE_OBS in payload:
        obs[SCENE_OBS] = payload[SCENE_OBS]
    return obs, payload.get("task_description")


class VlaEvalTranslator:
    name = "vla-eval"
    speaks_first = True  # HELLO comes from the client

    def __init__(self, server: PolicyServer, send: Send) -> None:
        self.server, self.send = server, send
        self.metadata: dict[str, Any] = {}
        # Per native frame handed to the server: (what it was, the vla-eval seq its reply answers).
        self.pending: deque[tuple[str, Any]] = deque()
        self.failed = False  # the last reset before a step failed: that step is not taken

    def hello(self) -> dict[str, Any]:
        keys, robot = self.server.source.observation_keys, self.server.robot
        return {
            "harness_version": f"roboflamingo-{__version__}",
            "protocol_version": PROTOCOL_VERSION,
            "model_server": f"roboflamingo:{self.server.source.name}",
            "capabilities": {},
            "observation_params": observation_params(keys, robot),
            "action_spec": action_spec(robot),
            "observation_spec": observation_spec(keys, robot),
            "roboflamingo": self.metadata,
        }

    async def error(self, message: str, seq: Any = 0) -> None:
        await self.send(pack_message("error", {"error": public_text(message)}, seq))

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        # Decoding PNGs of up to max_message_bytes takes tens of ms (Pillow releases the GIL meanwhile):
        # on the event loop that would stall every other session.
        pool = getattr(self.server, "decode_pool", None)
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def incoming(self, frame: bytes | str) -> AsyncIterator[bytes | str]:
        limit = self.server.config.max_message_bytes
        problem = frame_problem(frame, limit)
        if problem:
            await self.error(problem)
            return
        try:
            msg = await self._off_loop(unpack_message, frame, limit)
        except CodecError as e:
            await self.error(f"bad_request: {e}"[:1000])
            return
        kind, payload, seq = msg["type"], msg["payload"], msg["seq"]
        if kind == "hello":
            await self.send(pack_message("hello", self.hello(), seq))
        elif kind == "episode_start":
            self.pending.append(("reset", seq))
            yield packb({"type": "reset"})
        elif kind == "observation":
            if payload.get("episode_restart") is True:  # a chain's next subtask: CALVIN resets the policy
                self.pending.append(("reset", seq))
                yield packb({"type": "reset"})
                if self.failed:
                    return
            obs, instruction = to_observation(payload, self.server.robot)
            try:  # copies the decoded images: off the loop too
                step = await self._off_loop(packb, {"type": "step", "obs": obs, "instruction": instruction})
            except (TypeError, ValueError, OverflowError) as e:
                await self.error(f"bad_request: {e}"[:1000], seq)
                return
            self.pending.append(("step", seq))
            yield step
        elif kind == "error":
            LOG.warning("a vla-eval client reported an error: %.300s", payload)
        # episode_end needs nothing; an "action" from a client means nothing and is ignored likewise.

    def outgoing(self, frame: bytes | str) -> bytes | str | None:
        reply = unpackb(frame)
        if not self.pending:  # our greeting (kept for HELLO), or a refusal before the session started
            if reply.get("type") == "metadata":
                self.metadata = reply
                return None
            return pack_message("error", {"error": f"{reply.get('code')}: {reply.get('error')}"}, 0)
        what, seq = self.pending.popleft()
        self.failed = reply.get("type") == "error"
        if self.failed:
            return pack_message("error", {"error": f"{reply.get('code')}: {reply.get('error')}"}, seq)
        if what == "step":
            return pack_message("action", {"actions": reply["action"]}, seq)
        return None
