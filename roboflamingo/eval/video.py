"""Rollout videos: frames streamed into an mp4 as they come, so a 1800-step chain never sits in memory.

H.264 (``libx264``) where the PyAV build has it, MPEG-4 Part 2 otherwise. A chain's outcome is known
only at its end, so the file is written under a temporary name and renamed (see ``finish``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CODECS = ("libx264", "mpeg4")


def pick_codec() -> str:
    import av

    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # PyAV raises its own UnknownCodecError, whose module moved between versions
            continue
    raise RuntimeError(f"this PyAV build can encode none of {list(CODECS)}; reinstall av from PyPI")


class VideoWriter:
    """Encode RGB uint8 frames into ``path``."""

    def __init__(self, path: str | os.PathLike, fps: int = 30):
        self.path = Path(path)
        self.fps = fps
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None

    def _open(self, height: int, width: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._stream = self._container.add_stream(pick_codec(), rate=self.fps)
        # yuv420p halves the chroma resolution, so both sides must be even.
        self._size = (height + height % 2, width + width % 2)
        self._stream.height, self._stream.width = self._size
        self._stream.pix_fmt = "yuv420p"

    def add(self, frame: np.ndarray) -> None:
        import av

        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"video frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._container is None:
            self._open(*frame.shape[:2])
        h, w = self._size
        if frame.shape[:2] != (h, w):
            pad_h, pad_w = h - frame.shape[0], w - frame.shape[1]
            if pad_h < 0 or pad_w < 0:
                raise ValueError(f"frame size changed mid-video: {frame.shape[:2]} after {self._size}")
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(packet_frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def finish(self, final_path: str | os.PathLike) -> Path:
        """Close and move the video to its final (outcome-bearing) name."""
        self.close()
        final_path = Path(final_path)
        if not self.path.exists():
            raise RuntimeError(f"{self.path}: no frames were written")
        os.replace(self.path, final_path)
        return final_path

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
