"""Resize and normalisation of RGB, depth and masks: values, filters, shapes and errors."""

from __future__ import annotations

import numpy as np
import pytest

from service.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InvalidImageError,
    prepare_depth,
    prepare_rgb,
    resize_depth,
    resize_mask,
)
from service.preprocessing.image import resize_antialiased

MEAN = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
STD = np.array(IMAGENET_STD, np.float32)[:, None, None]


def test_prepare_rgb_normalises_a_constant_image_exactly() -> None:
    rgb = np.empty((30, 50, 3), np.uint8)
    rgb[...] = (255, 128, 0)
    out = prepare_rgb(rgb, 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32 and out.flags.c_contiguous
    expected = (np.array([255, 128, 0], np.float32)[:, None, None] / 255 - MEAN) / STD
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


def test_shrinking_rgb_antialiases_a_fine_pattern() -> None:
    # A one-pixel checkerboard: a box filter averages it to grey, plain bilinear sampling would not.
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[(np.indices((64, 64)).sum(axis=0) % 2) == 1] = 255
    out = prepare_rgb(rgb, 16) * STD + MEAN
    np.testing.assert_allclose(out, 0.5, atol=0.01)


def test_enlarging_uses_bilinear_interpolation() -> None:
    image = np.array([[0, 255]], np.uint8).repeat(2, axis=0)
    out = resize_antialiased(image, 4)
    # Half-pixel centres, as PIL / F.interpolate: the ramp between the two source pixels.
    np.testing.assert_array_equal(out[0], [0, 64, 191, 255])


def test_mixed_axes_shrink_one_way_and_grow_the_other() -> None:
    # 8 rows grow to 16; 64 columns of alternating stripes shrink to 16 with antialiasing.
    image = np.zeros((8, 64), np.float32)
    image[:, 1::2] = 1.0
    out = resize_antialiased(image, 16)
    assert out.shape == (16, 16)
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_same_size_is_a_copy() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = resize_antialiased(rgb, 16)
    np.testing.assert_array_equal(out, rgb)
    assert out is not rgb


def test_prepare_depth_replicates_and_keeps_more_than_eight_bits() -> None:
    depth = np.full((20, 20), 0.5 / 255, np.float32)  # below one 8-bit step: the reference would give 0
    out = prepare_depth(depth, 10)
    assert out.shape == (3, 10, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out * STD + MEAN, 0.5 / 255, atol=1e-6)
    assert not np.allclose(out[0], out[1])  # per-channel normalisation of the same values


def test_resize_depth_is_the_model_inputs_depth_before_normalisation() -> None:
    depth = np.random.default_rng(3).random((37, 23)).astype(np.float64)  # any float dtype, any aspect
    resized = resize_depth(depth, 16)
    assert resized.shape == (16, 16) and resized.dtype == np.float32
    np.testing.assert_allclose(prepare_depth(depth, 16) * STD + MEAN, np.repeat(resized[None], 3, axis=0), atol=1e-6)
    with pytest.raises(InvalidImageError, match=r"depth .* shape \(2, 3, 3\)"):
        resize_depth(np.zeros((2, 3, 3), np.float32), 8)


def test_prepare_depth_and_mask_match_torch_bilinear() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    depth = rng.uniform(0, 1, (40, 30)).astype(np.float32)
    depth[rng.uniform(size=depth.shape) < 0.3] = 0
    for size in (16, 25, 32, 64):
        ours = prepare_depth(depth, size)[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(depth)[None, None], size=(size, size), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        mask = depth > 0.8
        reference = torch.nn.functional.interpolate(
            torch.from_numpy(mask.astype(np.float32))[None, None], size=(size, size), mode="bilinear"
        )[0, 0].numpy()
        np.testing.assert_array_equal(resize_mask(mask, size), reference > 0)


def test_resize_mask_binarises_everything_touched() -> None:
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    out = resize_mask(mask, 20)
    assert out.dtype == bool and out.shape == (20, 20)
    assert out[5:10, 5:10].all()
    assert out.sum() >= 25  # binarising "> 0" never shrinks the mask
    assert not out[0].any() and not out[:, -1].any()


@pytest.mark.parametrize(
    ("rgb", "message"),
    [
        (np.zeros((20, 20), np.uint8), r"shape \(20, 20\)"),
        (np.zeros((20, 20, 4), np.uint8), r"shape \(20, 20, 4\)"),
        (np.zeros((20, 20, 3), np.float32), "dtype float32"),
        ("image.png", "got str"),
    ],
)
def test_invalid_rgb_names_what_it_got(rgb: object, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        prepare_rgb(rgb, 16)  # type: ignore[arg-type]


def test_invalid_depth_mask_and_size_are_refused() -> None:
    with pytest.raises(InvalidImageError, match=r"depth .* shape \(2, 3, 3\)"):
        prepare_depth(np.zeros((2, 3, 3), np.float32), 8)
    with pytest.raises(InvalidImageError, match=r"mask .* shape \(0, 4\)"):
        resize_mask(np.zeros((0, 4), bool), 8)
    with pytest.raises(InvalidImageError, match="size must be a positive int, got 0"):
        prepare_depth(np.zeros((4, 4), np.float32), 0)
