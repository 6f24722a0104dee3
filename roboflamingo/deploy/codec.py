"""msgpack wire format for the policy server, with a numpy codec that never unpickles.

Arrays travel as a map ``{"__ndarray__": True, "dtype": "<f4", "shape": [..], "data": <bytes>}``
(openpi's layout). msgpack-numpy falls back to pickle for object arrays, which lets a client run code
on the server; here only plain numeric and bool dtypes are accepted and the byte count must match the
shape, so a decoded message is data and nothing else.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

NDARRAY_KEY = "__ndarray__"
# Kinds a policy observation or action can legitimately use: bool, signed/unsigned int, float.
ALLOWED_KINDS = frozenset("biuf")
MAX_NDIM = 8
# A request is a few maps, short lists (shapes, a 15-float robot_obs) and ndarrays; real messages
# stay far below these limits, hostile ones are refused within milliseconds.
MAX_ITEMS = 4096
MAX_STR_LEN = 64 * 1024


class CodecError(ValueError):
    """A message could not be decoded; the text says what was wrong."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(
                f"cannot send an array of dtype {obj.dtype} (allowed kinds: bool, int, uint, float)"
            )
        # not ascontiguousarray: it turns 0-d arrays into 1-d ones
        arr = obj if obj.flags.c_contiguous else obj.copy(order="C")
        return {NDARRAY_KEY: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def _decode_array(d: dict) -> np.ndarray:
    dtype_str, shape, data = d.get("dtype"), d.get("shape"), d.get("data")
    if not isinstance(dtype_str, str) or not isinstance(data, bytes) or not isinstance(shape, list):
        raise CodecError("ndarray needs 'dtype' (str), 'shape' (list of int) and 'data' (bytes)")
    try:
        dtype = np.dtype(dtype_str)
    except TypeError as e:
        raise CodecError(f"ndarray has an unknown dtype '{dtype_str}'") from e
    # Structured and object dtypes report kind 'V' / 'O' and are refused here.
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"ndarray dtype '{dtype_str}' is not allowed (bool, int, uint and float only)")
    if len(shape) > MAX_NDIM or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise CodecError(f"ndarray shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(data):
        raise CodecError(
            f"ndarray of shape {shape} and dtype {dtype_str} needs {expected} bytes, got {len(data)}"
        )
    # frombuffer gives a read-only view on the message; copy so policies may write into it.
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape)).copy()


def _object_hook(d: dict) -> Any:
    if d.get(NDARRAY_KEY) is True:
        return _decode_array(d)
    return d


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


class _Budget:
    """Counts decoded containers and their items; raising from a hook aborts the C decoder at once.

    Decode time grows with the number of Python objects built, not with bytes: 8 MB of small ints is
    8 million objects and ~0.7 s on the event loop, while 8 MB of image bytes is one object. Arrays
    and maps are counted as they complete, so a frame is refused after at most ``max_items`` plus
    one container's worth of objects.
    """

    def __init__(self, max_items: int) -> None:
        self.left = max_items

    def take(self, n: int) -> None:
        self.left -= n + 1
        if self.left < 0:
            raise CodecError(
                "message holds too many values; send arrays as ndarrays (the codec's __ndarray__ maps), "
                "not as lists of numbers"
            )

    def list_hook(self, items: list) -> list:
        self.take(len(items))
        return items

    def object_hook(self, d: dict) -> Any:
        self.take(len(d))
        return _object_hook(d)


def unpackb(data: bytes, max_items: int = MAX_ITEMS, max_str_len: int = MAX_STR_LEN) -> Any:
    """Decode one message; any failure becomes a ``CodecError`` with the reason.

    ``max_items`` bounds the values in lists and maps together (and so the decode time); one string
    may hold at most ``max_str_len`` bytes. Binary payloads (ndarray data) are bounded by the frame.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected a binary msgpack frame, got {type(data).__name__}")
    budget = _Budget(max_items)
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            object_hook=budget.object_hook,
            list_hook=budget.list_hook,
            strict_map_key=True,
            max_str_len=max_str_len,
            max_array_len=max_items,
            max_map_len=max_items,
            max_ext_len=0,  # no msgpack extension types in this protocol
        )
    except CodecError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for corrupt input
        raise CodecError(f"not a valid msgpack message ({type(e).__name__}: {e})"[:300]) from e
