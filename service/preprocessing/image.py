"""Resizing and ImageNet normalisation of RGB images, depth images and masks to the model's S×S grid."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from service.preprocessing.config import IMAGENET_MEAN, IMAGENET_STD
from service.preprocessing.errors import InvalidImageError


def validate_rgb(rgb: object) -> np.ndarray:
    """Return `rgb` if it is an (H, W, 3) uint8 ndarray, else raise InvalidImageError naming what it got."""
    if not isinstance(rgb, np.ndarray):
        raise InvalidImageError(f"rgb must be a numpy array of shape (H, W, 3), got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidImageError(f"rgb must have shape (H, W, 3) (8-bit RGB), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise InvalidImageError(f"rgb must be uint8, got dtype {rgb.dtype} (shape {rgb.shape})")
    return rgb


def _validate_plane(image: object, name: str) -> np.ndarray:
    """Return `image` if it is a non-empty (H, W) ndarray of a real dtype, else raise InvalidImageError."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"{name} must be a numpy array of shape (H, W), got {type(image).__name__}")
    if image.ndim != 2 or image.size == 0:
        raise InvalidImageError(f"{name} must have shape (H, W) with H, W ≥ 1, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer) or image.dtype == bool):
        raise InvalidImageError(f"{name} must be a real-valued array, got dtype {image.dtype}")
    return image


def _check_size(size: int) -> None:
    if not isinstance(size, int | np.integer) or size < 1:
        raise InvalidImageError(f"size must be a positive int, got {size!r}")


def resize_antialiased(image: np.ndarray, size: int) -> np.ndarray:
    """`image` ((H, W) or (H, W, C), any OpenCV dtype) resized to S×S, aspect ratio not kept.

    INTER_AREA on an axis that shrinks (a box filter: no aliasing, like PIL's antialiased bilinear in the
    reference), INTER_LINEAR on one that grows. When one axis shrinks and the other grows, the two axes
    are resized one after the other, each with its own filter.
    """
    height, width = image.shape[:2]
    shrink_h, shrink_w = size < height, size < width
    grow_h, grow_w = size > height, size > width
    if (shrink_h and grow_w) or (grow_h and shrink_w):
        first = cv2.resize(image, (size, height), interpolation=cv2.INTER_AREA if shrink_w else cv2.INTER_LINEAR)
        return cv2.resize(first, (size, size), interpolation=cv2.INTER_AREA if shrink_h else cv2.INTER_LINEAR)
    if not (shrink_h or shrink_w or grow_h or grow_w):
        return image.copy()
    interpolation = cv2.INTER_AREA if (shrink_h or shrink_w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _normalise_chw(hwc: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, S, S) float32 = (hwc[..., c] · scale − mean[c]) / std[c], written channel-first."""
    out = np.empty((3, *hwc.shape[:2]), dtype=np.float32)
    for c in range(3):
        channel = hwc[..., c] if hwc.ndim == 3 else hwc
        # Folded into one multiply-add per pixel; float32 scalars keep the arithmetic in float32.
        out[c] = channel * np.float32(scale / std[c]) - np.float32(mean[c] / std[c])
    return out


def prepare_rgb(
    rgb: np.ndarray,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Model input from an RGB image: (3, S, S) float32, ImageNet-normalised, channels R, G, B.

    `rgb`: (H, W, 3) uint8, RGB order. Resized straight to S×S (see `resize_antialiased`), then /255 and
    (x − mean) / std per channel.
    """
    validate_rgb(rgb)
    _check_size(size)
    return _normalise_chw(resize_antialiased(rgb, size), 1.0 / 255.0, mean, std)


def prepare_depth(
    depth: np.ndarray,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Model input from a depth image: (3, S, S) float32, the depth replicated to 3 channels and
    ImageNet-normalised per channel.

    `depth`: (H, W) float in [0, 1] (as `DepthImage.depth`). Bilinear resize without antialiasing (the
    reference's F.interpolate, align_corners=False; OpenCV's INTER_LINEAR samples the same points). Unlike
    the reference the values are not quantised to 8 bits on the way.
    """
    return _normalise_chw(resize_depth(depth, size), 1.0, mean, std)


def resize_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """(S, S) float32: `depth` ((H, W) float in [0, 1]) resized as the model sees it, before normalisation:
    bilinear without antialiasing (see `prepare_depth`)."""
    _validate_plane(depth, "depth")
    _check_size(size)
    return cv2.resize(depth.astype(np.float32, copy=False), (size, size), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(S, S) bool: `mask` ((H, W) bool) resized bilinearly as float, then every value > 0 is True.

    As the reference; the binarisation grows the mask by up to one output pixel.
    """
    _validate_plane(mask, "mask")
    _check_size(size)
    resized = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return resized > 0
