"""Organized point cloud → foreground mask and normalised, hole-filled depth image at native resolution."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.preprocessing.config import PreprocessConfig
from service.preprocessing.errors import (
    EmptyPointCloudError,
    ImageTooSmallError,
    InvalidPointCloudError,
    NoForegroundError,
)
from service.preprocessing.plane import fit_plane, plane_distance

_DEFAULT_CONFIG = PreprocessConfig()


@dataclass(frozen=True)
class DepthImage:
    """What `point_cloud_to_depth` returns, all at the cloud's own H×W.

    `depth`: (H, W) float32 in [0, 1]; 0 = background; min–max of z over the foreground (larger = farther
        from the camera), holes filled.
    `foreground`: (H, W) bool, the object pixels with a point, before hole filling (as the reference).
    `plane`: (4,) float64 [nx, ny, nz, d], unit normal, n·p = d, d ≥ 0 (n points away from the camera).
    `plane_method`: "corners" or "border_ransac".
    `valid_fraction`: share of pixels with a point. `foreground_fraction`: share of foreground pixels.
    """

    depth: np.ndarray
    foreground: np.ndarray
    plane: np.ndarray
    plane_method: str
    valid_fraction: float
    foreground_fraction: float


def check_min_side(height: int, width: int, min_side: int, what: str) -> None:
    """Raise ImageTooSmallError when H or W is below `min_side`."""
    if min(height, width) < min_side:
        raise ImageTooSmallError(
            f"{what} is {height}×{width} (H×W); both sides must be at least {min_side} px (min_side)"
        )


def validate_xyz(xyz: object) -> np.ndarray:
    """`xyz` in native byte order if it is an (H, W, 3) float32/float64 ndarray, else InvalidPointCloudError."""
    if not isinstance(xyz, np.ndarray):
        raise InvalidPointCloudError(f"xyz must be a numpy array of shape (H, W, 3), got {type(xyz).__name__}")
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise InvalidPointCloudError(f"xyz must have shape (H, W, 3) (an organized point cloud), got shape {xyz.shape}")
    if xyz.dtype.kind != "f" or xyz.dtype.itemsize not in (4, 8):
        raise InvalidPointCloudError(f"xyz must be float32 or float64, got dtype {xyz.dtype} (shape {xyz.shape})")
    if not xyz.dtype.isnative:  # e.g. a big-endian TIFF: OpenCV and fast numpy paths want native order
        xyz = xyz.astype(xyz.dtype.newbyteorder("="))
    return xyz


def valid_points(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split `xyz` ((H, W, 3) float) into a NaN-free cloud and its (H, W) bool validity mask.

    A point is missing when z == 0 (MVTec 3D-AD convention) or any coordinate is NaN/inf. Missing points
    with a non-finite coordinate are set to 0 in the returned cloud (a copy only then), so that arithmetic
    downstream never meets a NaN; every later step reads points through `valid` anyway.
    """
    # Per channel: np.isfinite(xyz).all(axis=2) is ~20× slower (a reduction over a length-3 axis).
    finite = np.isfinite(xyz[..., 0]) & np.isfinite(xyz[..., 1]) & np.isfinite(xyz[..., 2])
    valid = finite & (xyz[..., 2] != 0)
    if not finite.all():
        xyz = np.where(finite[..., None], xyz, xyz.dtype.type(0))
    return xyz, valid


def foreground_mask(xyz: np.ndarray, valid: np.ndarray, plane: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(H, W) bool: valid points farther than `plane_distance` from `plane`, closed as in the reference.

    `xyz`: (H, W, 3) float, no NaN/inf. `valid`: (H, W) bool. `plane`: (4,) float64.
    Morphology (docs/METHOD.md#foreground): a k×k closing run `small_close_iterations` times (all dilations,
    then all erosions), then `large_closings` K×K closings. The closing may bridge holes; those pixels have
    no point and are dropped again, because the reference's foreground is `z * mask != 0`.
    """
    mask = ((plane_distance(xyz, plane) > config.plane_distance) & valid).astype(np.uint8)
    small = np.ones((config.small_close_size, config.small_close_size), np.uint8)
    large = np.ones((config.large_close_size, config.large_close_size), np.uint8)
    if config.small_close_iterations:
        mask = cv2.dilate(mask, small, iterations=config.small_close_iterations)
        mask = cv2.erode(mask, small, iterations=config.small_close_iterations)
    for _ in range(config.large_closings):
        mask = cv2.erode(cv2.dilate(mask, large), large)
    return mask.astype(bool) & valid


def normalise_depth(z: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(H, W) float32: z min–max normalised over `foreground` into [0, 1], 0 elsewhere.

    `z`: (H, W) float, cloud units. `foreground`: (H, W) bool with at least one True.
    As the reference, the nearest foreground point maps to 0 like the background (hole filling then gives
    it its neighbours' mean). Deviation: a foreground of one single z (the reference divides by zero and
    yields NaN) maps to 1.
    """
    values = z[foreground].astype(np.float64)
    low, high = float(values.min()), float(values.max())
    depth = np.zeros(z.shape, dtype=np.float32)
    depth[foreground] = (values - low) / (high - low) if high > low else 1.0
    return depth


def fill_holes(depth: np.ndarray, iterations: int) -> np.ndarray:
    """(H, W) float32 copy of `depth` where, `iterations` times, each 0 pixel becomes the mean of the
    strictly positive values among its 3×3 neighbours (zero padding); a 0 pixel with none stays 0.

    `depth`: (H, W) float, unitless. docs/METHOD.md#hole-filling, vectorised: one box filter sums the positive
    values, another counts them; every pass reads the previous pass's image only.
    """
    out = depth.astype(np.float32, copy=True)
    for _ in range(iterations):
        holes = out == 0
        if not holes.any():
            break
        _, positive = cv2.threshold(out, 0, 1, cv2.THRESH_BINARY)  # 1.0 where > 0, else 0.0
        # The value where > 0, else 0.0: np.maximum(out, 0) for every finite value, and 1-2 ms less at 800×800.
        _, kept = cv2.threshold(out, 0, 0, cv2.THRESH_TOZERO)
        total = cv2.boxFilter(kept, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter(positive, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        # Writing into `out` is safe: `total` and `count` were computed from the previous pass.
        np.divide(total, count, out=out, where=holes & (count > 0.5))
    return out


def point_cloud_to_depth(xyz: np.ndarray, config: PreprocessConfig = _DEFAULT_CONFIG) -> DepthImage:
    """Background plane, foreground mask and normalised, hole-filled depth of one organized cloud.

    `xyz`: (H, W, 3) float32/float64, camera frame, metres; z == 0 or any NaN/inf coordinate = no point.
    Raises InvalidPointCloudError, ImageTooSmallError, EmptyPointCloudError, PlaneFitError or
    NoForegroundError, each naming the problem.
    """
    xyz = validate_xyz(xyz)
    height, width = xyz.shape[:2]
    check_min_side(height, width, config.min_side, "xyz")
    clean, valid = valid_points(xyz)
    valid_count = int(valid.sum())
    if valid_count == 0:
        raise EmptyPointCloudError(f"xyz ({height}×{width}) holds no valid point: every z is 0, NaN or inf")
    plane, method = fit_plane(clean, valid, config)
    foreground = foreground_mask(clean, valid, plane, config)
    foreground_count = int(foreground.sum())
    if foreground_count == 0:
        raise NoForegroundError(
            f"no point lies more than plane_distance={config.plane_distance:g} from the background plane "
            f"(plane {np.round(plane, 6).tolist()} by {method}, {valid_count} valid points of "
            f"{height * width}): the cloud is flat or holds no object"
        )
    depth = normalise_depth(clean[..., 2], foreground)
    depth = fill_holes(depth, config.fill_iterations)
    pixels = float(height * width)
    return DepthImage(
        depth=depth,
        foreground=foreground,
        plane=plane,
        plane_method=method,
        valid_fraction=valid_count / pixels,
        foreground_fraction=foreground_count / pixels,
    )
