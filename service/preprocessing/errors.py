"""Exceptions raised by the shared preprocessing; every message names the offending value."""

from __future__ import annotations


class PreprocessingError(ValueError):
    """Base class: the input (or the configuration) cannot be preprocessed.

    It subclasses ValueError so that callers that only know "bad input" still catch it; the service maps
    the input subclasses to a 4xx answer.
    """


class InvalidPointCloudError(PreprocessingError):
    """`xyz` is not an (H, W, 3) float32/float64 array."""


class EmptyPointCloudError(PreprocessingError):
    """`xyz` holds no valid point (all z == 0, NaN or inf)."""


class PlaneFitError(PreprocessingError):
    """Neither the corner patches nor the border band hold enough points to fit the background plane."""


class NoForegroundError(PreprocessingError):
    """No valid point lies farther than `plane_distance` from the background plane."""


class InvalidImageError(PreprocessingError):
    """`rgb` is not an (H, W, 3) uint8 array, or a depth image is not (H, W) float."""


class SizeMismatchError(PreprocessingError):
    """`rgb` and `xyz` do not share the same H×W."""


class ImageTooSmallError(PreprocessingError):
    """An input's height or width is below `PreprocessConfig.min_side`."""


class ConfigError(PreprocessingError):
    """A `PreprocessConfig` value is out of range, or a stored config does not match this version."""
