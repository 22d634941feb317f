"""One part (RGB image + organized point cloud) → the model's inputs; training and serving both call this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.preprocessing.config import PREPROCESSING_VERSION, PreprocessConfig
from service.preprocessing.errors import SizeMismatchError
from service.preprocessing.image import prepare_depth, prepare_rgb, resize_mask, validate_rgb
from service.preprocessing.pointcloud import DepthImage, check_min_side, point_cloud_to_depth, validate_xyz

_DEFAULT_CONFIG = PreprocessConfig()


@dataclass(frozen=True)
class PreprocessedPart:
    """Model inputs of one part at S = `config.image_size`.

    `rgb`: (3, S, S) float32, ImageNet-normalised. `depth`: (3, S, S) float32, the depth image replicated
    3× and ImageNet-normalised. `foreground`: (S, S) bool, the object mask.
    `info`: JSON-able facts about the part: `plane_method` (str), `plane` (4 floats), `valid_fraction`,
    `foreground_fraction` (float), `input_hw` ([H, W]) and `version` (PREPROCESSING_VERSION).
    """

    rgb: np.ndarray
    depth: np.ndarray
    foreground: np.ndarray
    info: dict[str, Any]


def preprocess_part(rgb: np.ndarray, xyz: np.ndarray, config: PreprocessConfig = _DEFAULT_CONFIG) -> PreprocessedPart:
    """Preprocess one part for the model.

    `rgb`: (H, W, 3) uint8, RGB order. `xyz`: (H, W, 3) float32/float64, camera frame, metres; z == 0
    or any NaN/inf coordinate = no point. Both must share H×W, each side ≥ `config.min_side`.
    The depth image is built and hole-filled at H×W, then everything is resized straight to S×S (no
    crop), so a map over the S×S grid covers the whole input and maps back onto its H×W.
    Raises a PreprocessingError subclass naming the problem.
    """
    validate_part(rgb, xyz, config)
    return preprocess_image(rgb, preprocess_cloud(xyz, config), config)


def validate_part(rgb: np.ndarray, xyz: np.ndarray, config: PreprocessConfig = _DEFAULT_CONFIG) -> None:
    """The checks of the whole part, in `preprocess_part`'s order: each array, the shared grid, the size."""
    validate_rgb(rgb)
    validate_xyz(xyz)
    _check_same_grid(rgb.shape, xyz.shape)
    check_min_side(xyz.shape[0], xyz.shape[1], config.min_side, "the part")


def preprocess_cloud(xyz: np.ndarray, config: PreprocessConfig = _DEFAULT_CONFIG) -> DepthImage:
    """The point-cloud half of `preprocess_part`: it needs no RGB, so the service runs it while the RGB
    image is still being decoded (service.engine). Raises as `preprocess_part` does for the cloud."""
    validate_xyz(xyz)
    height, width = xyz.shape[:2]
    check_min_side(height, width, config.min_side, "the part")
    return point_cloud_to_depth(xyz, config)


def preprocess_image(rgb: np.ndarray, depth_image: DepthImage, config: PreprocessConfig) -> PreprocessedPart:
    """The RGB half: the image and `preprocess_cloud`'s depth image → the model inputs. Together the two
    halves compute exactly what `preprocess_part` does."""
    validate_rgb(rgb)
    _check_same_grid(rgb.shape, depth_image.depth.shape)
    height, width = depth_image.depth.shape[:2]
    size = config.image_size
    return PreprocessedPart(
        rgb=prepare_rgb(rgb, size, config.mean, config.std),
        depth=prepare_depth(depth_image.depth, size, config.mean, config.std),
        foreground=resize_mask(depth_image.foreground, size),
        info={
            "plane_method": depth_image.plane_method,
            "plane": [float(v) for v in depth_image.plane],
            "valid_fraction": depth_image.valid_fraction,
            "foreground_fraction": depth_image.foreground_fraction,
            "input_hw": [int(height), int(width)],
            "version": PREPROCESSING_VERSION,
        },
    )


def _check_same_grid(rgb_shape: tuple[int, ...], cloud_shape: tuple[int, ...]) -> None:
    if rgb_shape[:2] != cloud_shape[:2]:
        raise SizeMismatchError(
            f"rgb is {rgb_shape[0]}×{rgb_shape[1]} but xyz is {cloud_shape[0]}×{cloud_shape[1]} (H×W); "
            "the image and the point cloud must come from the same sensor grid"
        )
