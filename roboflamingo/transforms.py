"""Image preprocessing shared by the dataset (in its workers) and the policy (at ``step`` time).

One function is used on both paths so that training and closed-loop inference see exactly the same
pixels: uint8 camera images are resized to the vision encoder's input size and normalized with its
mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# open_clip's OPENAI_DATASET_MEAN / STD, which the CLIP ViT-L-14 weights were trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def hwc_to_chw(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) -> (..., 3, H, W); images already channel-first pass through."""
    if images.shape[-1] == 3 and images.shape[-3] != 3:
        return images.movedim(-1, -3)
    return images


def preprocess_images(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """uint8 (..., 3, H, W) or (..., H, W, 3) -> float32 (..., 3, size, size), normalized.

    Float input is taken to be preprocessed already and is only checked for its size.
    """
    images = hwc_to_chw(images)
    if images.shape[-3] != 3:
        raise ValueError(f"images must have 3 channels, got shape {tuple(images.shape)}")
    if images.is_floating_point():
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"preprocessed float images must be {size}x{size}, got {tuple(images.shape[-2:])}"
            )
        return images
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (raw) or float (preprocessed), got {images.dtype}")
    lead = images.shape[:-3]
    x = images.reshape(-1, *images.shape[-3:]).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.reshape(*lead, 3, size, size)
