"""What every protocol translator shares: the send callable, the pre-decode frame check, the map walk.

A module of its own (not the package ``__init__``) so the translators can import it while the
package picks among them without an import circle.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from roboflamingo.deploy.codec import CodecError

MAX_DEPTH = 16  # foreign frames are walked after decoding; real observations nest 3 deep

Send = Callable[[bytes | str], Awaitable[None]]
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def public_text(text: str) -> str:
    """``text`` without the memory addresses Python reprs carry (``<X object at 0x7f..>``): an
    error reply must not hand a client hints about the server's address space."""
    return _ADDRESS.sub("", text)


def frame_problem(frame: bytes | str, limit: int, expected: str = "a binary msgpack frame") -> str | None:
    """Why a foreign protocol's frame is refused before decoding (text, or over ``limit``), or None."""
    if isinstance(frame, str):
        return f"bad_request: expected {expected}, got a text frame"
    if len(frame) > limit:
        return f"too_large: message of {len(frame)} bytes exceeds max_message_bytes={limit}"
    return None


def walk(obj: Any, convert: Callable[[dict], Any], depth: int = 0) -> Any:
    """Apply ``convert`` to every map of a decoded frame, innermost first (``CodecError`` when too deep)."""
    if depth > MAX_DEPTH:
        raise CodecError(f"message nests deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        return convert({k: walk(v, convert, depth + 1) for k, v in obj.items()})
    if isinstance(obj, list):
        return [walk(v, convert, depth + 1) for v in obj]
    return obj
