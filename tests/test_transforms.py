"""The shared image preprocessing: layout, size, normalization and errors."""

import pytest
import torch

from roboflamingo.transforms import CLIP_MEAN, CLIP_STD, preprocess_images


def test_uint8_hwc_and_chw_give_the_same_result():
    images = torch.randint(0, 256, (2, 5, 40, 40, 3), dtype=torch.uint8)
    a = preprocess_images(images, 32)
    b = preprocess_images(images.movedim(-1, -3), 32)
    assert a.shape == (2, 5, 3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_normalization_of_a_constant_image():
    images = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    out = preprocess_images(images, 8)
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_float_input_passes_through_but_is_size_checked():
    x = torch.randn(2, 3, 16, 16)
    assert preprocess_images(x, 16) is x
    with pytest.raises(ValueError, match="16x16"):
        preprocess_images(torch.randn(2, 3, 8, 8), 16)


def test_wrong_channels_and_dtype():
    with pytest.raises(ValueError, match="3 channels"):
        preprocess_images(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), 8)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(torch.zeros(2, 3, 8, 8, dtype=torch.int32), 8)
