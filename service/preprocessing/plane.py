"""Background (table) plane of an organized point cloud: three corner patches, else RANSAC on the border."""

from __future__ import annotations

import logging

import numpy as np

from service.preprocessing.config import PreprocessConfig
from service.preprocessing.errors import PlaneFitError

log = logging.getLogger(__name__)

# The one source of randomness in the package; fixed, so the same cloud always gives the same plane.
# Changing it can change outputs, so it falls under the PREPROCESSING_VERSION bump rule.
_RANSAC_SEED = 0
# A border point within this share of `plane_distance` counts as a RANSAC inlier: tighter than the
# foreground threshold, so that the low edge of an object touching the border does not tilt the fit.
_INLIER_SHARE = 0.5
# Two edges whose sine of the angle between them is below this span no plane.
_MIN_SINE = 1e-6
# Least-squares refinement rounds after RANSAC (inliers are re-selected with each refined plane).
_REFINE_ROUNDS = 2
_SCORE_ROWS = 256  # sample points scored per block against all RANSAC hypotheses (256 × 128 float64: 256 KB)

METHOD_CORNERS = "corners"
METHOD_BORDER_RANSAC = "border_ransac"


def _hesse(normal: np.ndarray, offset: float) -> np.ndarray:
    """(4,) float64 plane [nx, ny, nz, d] with unit n and n·p = d, oriented so that d ≥ 0.

    The camera sits at the origin, so d ≥ 0 makes n point away from the camera (towards the table) and d
    the camera-to-plane distance; a fixed orientation makes planes comparable between methods.
    """
    length = float(np.linalg.norm(normal))
    n = normal / length
    d = offset / length
    if d < 0 or (d == 0 and n[2] < 0):
        n, d = -n, -d
    return np.array([n[0], n[1], n[2], d], dtype=np.float64)


def _spanned_normal(p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray | None:
    """cross(p3 − p1, p2 − p1) as in the reference, or None when the three points are (nearly) collinear."""
    a, b = p3 - p1, p2 - p1
    normal = np.cross(a, b)
    scale = float(np.linalg.norm(a) * np.linalg.norm(b))
    if scale == 0.0 or float(np.linalg.norm(normal)) <= _MIN_SINE * scale:
        return None
    return normal


def corner_plane(xyz: np.ndarray, valid: np.ndarray, corner_size: int) -> tuple[np.ndarray | None, str]:
    """The reference plane through the mean points of the top-left, top-right and bottom-left patches.

    `xyz`: (H, W, 3) float, camera frame, no NaN/inf. `valid`: (H, W) bool.
    Returns ((4,) float64 plane, "") or (None, reason) when a patch has no valid point or the normal is
    degenerate; the reference would then go on with a meaningless plane (docs/METHOD.md#background-plane).
    """
    c = corner_size
    patches = {
        "top-left": (slice(0, c), slice(0, c)),
        "top-right": (slice(0, c), slice(-c, None)),
        "bottom-left": (slice(-c, None), slice(0, c)),
    }
    means = []
    for name, (rows, cols) in patches.items():
        mask = valid[rows, cols]
        count = int(mask.sum())
        if count == 0:
            return None, f"the {name} {c}×{c} corner patch has no valid point"
        means.append(xyz[rows, cols][mask].astype(np.float64).mean(axis=0))
    p1, p2, p3 = means
    normal = _spanned_normal(p1, p2, p3)
    if normal is None:
        return None, "the three corner points are collinear"
    return _hesse(normal, float(normal @ p3)), ""


def _border_points(xyz: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
    """(N, 3) float64 valid points of the band `width` px wide along the image border, each pixel once."""
    height, full_width = valid.shape
    if 2 * width >= min(height, full_width):
        return xyz[valid].astype(np.float64)
    # Four strips instead of a full-image boolean mask: the band is ~4 % of an 800×800 cloud.
    strips = [
        (slice(0, width), slice(None)),
        (slice(height - width, height), slice(None)),
        (slice(width, height - width), slice(0, width)),
        (slice(width, height - width), slice(full_width - width, full_width)),
    ]
    return np.concatenate([xyz[rows, cols][valid[rows, cols]] for rows, cols in strips]).astype(np.float64)


def _least_squares_plane(points: np.ndarray) -> np.ndarray:
    """Total least squares: the normal is the direction of least spread of the centred points."""
    centroid = points.mean(axis=0)
    centred = points - centroid
    _, vectors = np.linalg.eigh(centred.T @ centred)
    normal = vectors[:, 0]  # eigh sorts eigenvalues ascending
    return _hesse(normal, float(normal @ centroid))


def _inlier_counts(sample: np.ndarray, normals: np.ndarray, offsets: np.ndarray, threshold: float) -> np.ndarray:
    """(K,) int64: how many of `sample`'s (N, 3) float64 points lie within `threshold` of each of the K
    planes n·p = d (`normals` (K, 3) unit, `offsets` (K,)).

    Each distance is |(x·nx + y·ny) + z·nz - d|, the same float64 operations in the same order for every
    block of rows, so the counts do not depend on `_SCORE_ROWS`. Blocks of rows keep the working arrays in
    the CPU cache (all N × K at once is megabytes: 3× the CPU time); broadcast products rather than
    `sample @ normals.T`, a tiny product that a threaded BLAS makes slower and noisier under load.
    """
    counts = np.zeros(len(normals), np.int64)
    nx, ny, nz = (np.ascontiguousarray(normals[:, i]) for i in range(3))
    rows = min(_SCORE_ROWS, len(sample))
    distances = np.empty((rows, len(normals)))
    term = np.empty_like(distances)
    for start in range(0, len(sample), rows):
        block = sample[start : start + rows]
        d, t = distances[: len(block)], term[: len(block)]
        np.multiply(block[:, None, 0], nx, out=d)
        np.multiply(block[:, None, 1], ny, out=t)
        d += t
        np.multiply(block[:, None, 2], nz, out=t)
        d += t
        d -= offsets
        np.abs(d, out=d)
        counts += np.count_nonzero(d <= threshold, axis=0)
    return counts


def border_ransac_plane(xyz: np.ndarray, valid: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """RANSAC (fixed seed) on the valid points of the border band, refined by least squares on inliers.

    `xyz`: (H, W, 3) float, camera frame, no NaN/inf. `valid`: (H, W) bool.
    The border band is `config.border_width` pixels wide; the object rarely fills it, so the table is the
    dominant plane there. Raises PlaneFitError when too few points (or inliers) are left.
    Returns the (4,) float64 plane.
    """
    height, width = valid.shape
    points = _border_points(xyz, valid, config.border_width)
    need = config.min_plane_points
    if len(points) < need:
        raise PlaneFitError(
            f"cannot fit the background plane: the corner patches failed and the {config.border_width} px "
            f"border band of the {height}×{width} cloud holds {len(points)} valid point(s), "
            f"{need} needed (min_plane_points)"
        )
    threshold = _INLIER_SHARE * config.plane_distance
    # A regular stride (not a random draw) keeps the scored subset deterministic and spread along the band.
    step = -(-len(points) // config.ransac_max_points)
    sample = points[::step]
    rng = np.random.default_rng(_RANSAC_SEED)
    picks = rng.integers(0, len(sample), size=(config.ransac_iterations, 3))
    p1, p2, p3 = sample[picks[:, 0]], sample[picks[:, 1]], sample[picks[:, 2]]
    a, b = p3 - p1, p2 - p1
    normals = np.cross(a, b)
    lengths = np.linalg.norm(normals, axis=1)
    ok = lengths > _MIN_SINE * np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if not ok.any():
        raise PlaneFitError(
            f"cannot fit the background plane: all {config.ransac_iterations} RANSAC samples of the "
            f"{len(points)} border points are collinear"
        )
    normals = normals[ok] / lengths[ok, None]
    offsets = np.einsum("ij,ij->i", normals, p1[ok])
    inlier_counts = _inlier_counts(sample, normals, offsets, threshold)
    best = int(np.argmax(inlier_counts))  # ties go to the first hypothesis: deterministic
    plane = _hesse(normals[best], float(offsets[best]))
    for _ in range(_REFINE_ROUNDS):
        inliers = np.abs(points @ plane[:3] - plane[3]) <= threshold
        count = int(inliers.sum())
        if count < need:
            raise PlaneFitError(
                f"cannot fit the background plane: the best border plane has {count} inlier(s) within "
                f"{threshold:g} of it, {need} needed (min_plane_points)"
            )
        plane = _least_squares_plane(points[inliers])
    return plane


def fit_plane(xyz: np.ndarray, valid: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, str]:
    """The background plane and the method that found it ("corners" or "border_ransac").

    `xyz`: (H, W, 3) float, camera frame, no NaN/inf. `valid`: (H, W) bool.
    Returns ((4,) float64 [nx, ny, nz, d] with unit n, n·p = d, d ≥ 0; method).
    """
    plane, reason = corner_plane(xyz, valid, config.corner_size)
    if plane is not None:
        return plane, METHOD_CORNERS
    log.debug("corner plane fit failed (%s); falling back to RANSAC on the border band", reason)
    return border_ransac_plane(xyz, valid, config), METHOD_BORDER_RANSAC


def plane_distance(xyz: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """(H, W) float32 unsigned distance of every point of `xyz` ((H, W, 3), cloud units) to `plane`."""
    normal = plane[:3].astype(xyz.dtype)
    return np.abs(xyz @ normal - xyz.dtype.type(plane[3])).astype(np.float32, copy=False)
