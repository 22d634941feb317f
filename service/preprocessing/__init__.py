"""Shared, versioned preprocessing (numpy + OpenCV): RGB + organized point cloud → model inputs."""

# Deliberate deviations from the reference (docs/METHOD.md#depth-image, #model-inputs and #departures),
# each for robustness or for serving; everything else follows the reference step by step.
# 1. Missing points: z == 0 *or any NaN/inf coordinate* (the reference knows only z == 0, so a NaN
#    would poison its corner means and its min–max).
# 2. Plane: the reference's three-corner plane is kept whenever each patch has a point and the normal is
#    not degenerate; otherwise (an empty corner gives it a meaningless plane, docs/METHOD.md#background-plane)
#    RANSAC with a fixed seed on the image-border band, refined by least squares on its inliers;
#    `plane_method` says which.
# 3. Errors instead of garbage: no valid point, no plane, no foreground (flat cloud) and a foreground of
#    one single depth (the reference divides by zero; we map it to 1) are explicit.
# 4. Depth is not quantised to 8 bits before normalisation (the reference's ToPILImage truncates it to
#    256 levels, a side effect rather than a choice).
# 5. Resize: straight to S×S, aspect ratio not kept, no centre crop (the reference resizes the shorter
#    side, then centre-crops: the same for its square 576 px use, but on a non-square input a crop would
#    leave part of the input without an anomaly map). RGB shrinks with OpenCV's INTER_AREA, a box filter,
#    where the reference uses PIL's antialiased bilinear, a triangle filter: both antialias, the values
#    differ slightly. Depth and mask keep the reference's plain bilinear (OpenCV INTER_LINEAR samples the
#    same points as F.interpolate with align_corners=False).
# 6. The ImageNet mean/std live in the config, so they travel with the model's manifest.
# Order as the reference: hole filling at native resolution, then resize (resizing first is faster but
# changes which holes get filled; benchmarks/bench_preprocessing.py measures both).

from service.preprocessing.config import IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING_VERSION, PreprocessConfig
from service.preprocessing.errors import (
    ConfigError,
    EmptyPointCloudError,
    ImageTooSmallError,
    InvalidImageError,
    InvalidPointCloudError,
    NoForegroundError,
    PlaneFitError,
    PreprocessingError,
    SizeMismatchError,
)
from service.preprocessing.image import prepare_depth, prepare_rgb, resize_depth, resize_mask
from service.preprocessing.pipeline import (
    PreprocessedPart,
    preprocess_cloud,
    preprocess_image,
    preprocess_part,
    validate_part,
)
from service.preprocessing.plane import fit_plane
from service.preprocessing.pointcloud import (
    DepthImage,
    fill_holes,
    foreground_mask,
    normalise_depth,
    point_cloud_to_depth,
    valid_points,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESSING_VERSION",
    "ConfigError",
    "DepthImage",
    "EmptyPointCloudError",
    "ImageTooSmallError",
    "InvalidImageError",
    "InvalidPointCloudError",
    "NoForegroundError",
    "PlaneFitError",
    "PreprocessConfig",
    "PreprocessedPart",
    "PreprocessingError",
    "SizeMismatchError",
    "fill_holes",
    "fit_plane",
    "foreground_mask",
    "normalise_depth",
    "point_cloud_to_depth",
    "prepare_depth",
    "prepare_rgb",
    "preprocess_cloud",
    "preprocess_image",
    "preprocess_part",
    "resize_depth",
    "resize_mask",
    "valid_points",
    "validate_part",
]
