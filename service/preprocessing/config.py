"""Preprocessing version and the frozen configuration that travels with every model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from service.preprocessing.errors import ConfigError

# Bump rule: any change that alters the output of `preprocess_part` (or `point_cloud_to_depth`) for the
# same input and the same config bumps this string, including changes of a default value, of the RANSAC
# seed or of an OpenCV interpolation flag. A model trained on one version is refused by a service that
# runs another (the manifest stores `PreprocessConfig.to_dict()`, and `from_dict` checks the version).
# History: "1" – first version (corner plane with border-RANSAC fallback, fill at native size, no
# 8-bit quantisation of depth, straight resize to S×S).
PREPROCESSING_VERSION = "1"

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """Every setting that changes what the model sees. Lengths are in pixels, distances in cloud units.

    Defaults follow the reference (docs/METHOD.md#depth-image) except `image_size` (the reference runs at 576).
    """

    # Model input side S: every output is S×S.
    image_size: int = 256
    # A point farther than this from the background plane is foreground (reference: 0.005, ~5 mm).
    plane_distance: float = 0.005
    # Side of the three corner patches whose mean points define the reference plane.
    corner_size: int = 3
    # Width of the image-border band used by the robust fallback fit when a corner patch fails.
    border_width: int = 8
    # RANSAC on the border band: hypotheses, and the most points each hypothesis is scored on.
    ransac_iterations: int = 128
    ransac_max_points: int = 2048
    # Fewest background (inlier) points the fallback fit accepts.
    min_plane_points: int = 30
    # Morphology on the foreground (reference): a k×k closing repeated n times (OpenCV: n dilations, then n
    # erosions), then `large_closings` single closings with a K×K kernel.
    small_close_size: int = 3
    small_close_iterations: int = 3
    large_close_size: int = 5
    large_closings: int = 2
    # Passes of "a 0 pixel becomes the mean of its positive 3×3 neighbours" (reference: 2).
    fill_iterations: int = 2
    # Inputs whose height or width is below this are refused.
    min_side: int = 16
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Lists (e.g. from JSON) become tuples so the config stays hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        checks = [
            (self.image_size >= 8, "image_size must be ≥ 8"),
            (self.plane_distance > 0, "plane_distance must be > 0"),
            (self.corner_size >= 1, "corner_size must be ≥ 1"),
            (self.border_width >= 1, "border_width must be ≥ 1"),
            (self.ransac_iterations >= 1, "ransac_iterations must be ≥ 1"),
            (self.ransac_max_points >= 3, "ransac_max_points must be ≥ 3"),
            (self.min_plane_points >= 3, "min_plane_points must be ≥ 3"),
            (self.small_close_size >= 1 and self.large_close_size >= 1, "closing kernel sizes must be ≥ 1"),
            (self.small_close_iterations >= 0 and self.large_closings >= 0, "closing counts must be ≥ 0"),
            (self.fill_iterations >= 0, "fill_iterations must be ≥ 0"),
            (self.min_side >= 2 * self.corner_size, "min_side must be ≥ 2 × corner_size"),
            (len(self.mean) == 3 and len(self.std) == 3, "mean and std must have 3 values"),
            (all(s > 0 for s in self.std), "std values must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid PreprocessConfig: {message} (got {self})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field plus `version` (= PREPROCESSING_VERSION)."""
        out: dict[str, Any] = {"version": PREPROCESSING_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of `to_dict`. Missing fields take their defaults; unknown fields are refused.

        Raises ConfigError when `d["version"]` differs from PREPROCESSING_VERSION: a model trained on other
        preprocessing would get inputs it has never seen.
        """
        values = dict(d)
        version = values.pop("version", PREPROCESSING_VERSION)
        if str(version) != PREPROCESSING_VERSION:
            raise ConfigError(
                f"preprocessing version {version!r} of the stored config is not the one this code implements, "
                f"version {PREPROCESSING_VERSION!r}: re-export the model with this code, or serve it with the "
                "code version it was trained with"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown PreprocessConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)
