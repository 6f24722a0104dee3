"""Image preprocessing shared by the dataset (in its workers) and the policy (at ``step`` time).

One function is used on both paths so that training and closed-loop inference see exactly the same
pixels: uint8 camera images are resized to the vision encoder's input size and normalized with its
mean and standard deviation.

Two resizes (``model.vision.resize``, so the choice travels with a checkpoint):

- ``bilinear``: torch bilinear with antialiasing, batched on the tensor's device (policies trained here);
- ``pil_bicubic``: PIL bicubic on the shorter side, then a center crop, which is open_clip's
  ``image_transform`` for evaluation and so what the original RoboFlamingo fed its released weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

RESIZES = ("bilinear", "pil_bicubic")

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
    resize: str = "bilinear",
) -> torch.Tensor:
    """uint8 (..., 3, H, W) or (..., H, W, 3) -> float32 (..., 3, size, size), normalized.

    Float input is taken to be preprocessed already and is only checked for its size.
    """
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {list(RESIZES)}, got {resize!r}")
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
    flat = images.reshape(-1, *images.shape[-3:])
    if resize == "pil_bicubic":
        x = torch.stack([_pil_bicubic_center_crop(im, size) for im in flat.cpu()]).to(images.device)
    else:
        x = flat.float().div_(255.0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.reshape(*lead, 3, size, size)


def _pil_bicubic_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> float (3, size, size) in [0, 1]: torchvision's ``Resize(size)`` (shorter side,
    PIL bicubic) then ``CenterCrop(size)`` on a PIL image, as open_clip's eval transform does."""
    import numpy as np
    from PIL import Image

    h, w = int(image.shape[1]), int(image.shape[2])
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    if (new_w, new_h) != (w, h):
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    pil = pil.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
