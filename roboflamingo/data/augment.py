"""Window-consistent image augmentation on uint8 (T, 3, H, W) arrays, drawn from a per-sample RNG.

The original RoboFlamingo draws a fresh random shift for every frame of a window (its
``forward_traj`` samples ``(n*t, 1, 1, 2)`` offsets), so the camera appears to jitter inside one
trajectory. Here one shift and one set of colour factors is drawn per window and camera and applied
to all T frames. Shifts are whole pixels with replicate padding, i.e. DrQ's RandomShiftsAug without
the sub-pixel bilinear part; being integer crops they are exact on uint8 and identical on every read
path.
"""

from __future__ import annotations

import numpy as np


def shift_pad(pixels_at_declared: int, size: int, declared_size: int) -> int:
    """Scale a pad given at a camera's declared resolution (its robot description; CALVIN: 200 px
    static, 84 px gripper) to an image side of ``size`` pixels."""
    return int(round(pixels_at_declared * size / declared_size))


def draw_shift(rng: np.random.Generator, pad_h: int, pad_w: int) -> tuple[int, int]:
    """(dy, dx) offsets in [-pad, pad]."""
    return int(rng.integers(-pad_h, pad_h + 1)), int(rng.integers(-pad_w, pad_w + 1))


def shift_window(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the content of every frame by (dy, dx), replicating the border: (..., H, W) -> same shape.

    ``out[..., r, c] = images[..., clip(r + dy), clip(c + dx)]``: the same as replicate-padding by
    ``pad`` and cropping at offset ``(pad + dy, pad + dx)``, done with slices (no padded copy).
    """
    h, w = images.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"shift ({dy}, {dx}) must be smaller than the image ({h}x{w})")
    out = np.empty_like(images)
    r0, r1 = max(0, -dy), min(h, h - dy)
    c0, c1 = max(0, -dx), min(w, w - dx)
    out[..., r0:r1, c0:c1] = images[..., r0 + dy : r1 + dy, c0 + dx : c1 + dx]
    out[..., r0:r1, :c0] = out[..., r0:r1, c0 : c0 + 1]
    out[..., r0:r1, c1:] = out[..., r0:r1, c1 - 1 : c1]
    out[..., :r0, :] = out[..., r0 : r0 + 1, :]
    out[..., r1:, :] = out[..., r1 - 1 : r1, :]
    return out


def draw_jitter(rng: np.random.Generator, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """(brightness, contrast, saturation) factors, each uniform in [1 - x, 1 + x]."""
    widths = np.asarray([brightness, contrast, saturation], dtype=np.float64)
    return (1.0 + rng.uniform(-1.0, 1.0, size=3) * widths).astype(np.float32)


def jitter_window(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Apply colour factors to uint8 (T, 3, H, W), torchvision-style, returning uint8."""
    b, c, s = (float(f) for f in factors)
    x = images.astype(np.float32) * b
    weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)
    gray = (x * weights).sum(axis=-3, keepdims=True)
    # Contrast blends towards each frame's mean grey level, saturation towards its grey image.
    x = (x - gray.mean(axis=(-2, -1), keepdims=True)) * c + gray.mean(axis=(-2, -1), keepdims=True)
    gray = (x * weights).sum(axis=-3, keepdims=True)
    x = gray + (x - gray) * s
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
