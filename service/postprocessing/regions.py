"""Defect regions in the upload's pixel frame and their physical size from the point cloud.

Pure numpy + OpenCV (no torch, no model): the engine hands in the anomaly map already resized to the
upload's H×W, the model's pixel threshold and the uploaded organized point cloud.

- `pixel_areas`: each pixel's footprint on the part's surface in mm², from its 3D neighbours. The grid
  cell between four neighbouring points is split into two triangles (half the cross product of two edge
  vectors each); a pixel's footprint is the mean of the up to four cells around it. A cell with a corner
  without a point, or spanning a depth jump (an occluding edge: its area is far above the cloud's typical
  cell), has no area; a pixel without any valid cell has none either (NaN).
- `label_regions`: the regions' pixels: 8-connected components of `map > pixel_threshold`, each cut to
  its part above half its own height over the threshold (`REGION_PEAK_RATIO`), so that a region covers
  the defect rather than the smoothed map's skirt around it.
- `find_regions`: those regions, largest `max_score` first, at most `MAX_REGIONS`, each with bounding
  box, pixel count, mm², length in mm and scores; plus the share of pixels above the threshold
  (`defect_area_fraction`).
- A region's length is its longest straight extent on the part (a chord, not a path along the surface):
  the largest 3D distance between two of its pixels with a footprint, plus one pixel's side (the square
  root of the region's mean footprint) so that a length counts whole pixels as the area does (one pixel
  is one side long, not zero). The farthest pair is searched among the corners of the convex hull of those
  pixels in the image: exact on a plane (a pinhole maps a plane's convex sets to convex sets, and the
  farthest pair of a set lies on its hull); on a curved part the farthest pair among those corners, which
  can fall slightly short of the farthest pair of all its points; cheap on every answer either way.

The verdict that uses them is `service.postprocessing.verdict.decide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from service.postprocessing.verdict import NonFiniteError

MAX_REGIONS = 16
# A region keeps the pixels of its component above half the component's own height over the pixel threshold
# (`label_regions`). Chosen by `benchmarks/region_rules.py` on the test splits of the puck and toy-brick
# models (docs/RESULTS.md#region-sizes): 0 (every pixel above the threshold) made regions ~2× the defect's
# area, 0.5 brought the median region/defect area to ~1 with every defect type within 0.5-2, and the share of
# detected defective parts with a region over the defect stayed above 90 %.
REGION_PEAK_RATIO = 0.5
M2_TO_MM2 = 1e6  # point clouds are in metres (the service's contract); areas are reported in mm²
M_TO_MM = 1e3  # and lengths in mm
# A grid cell larger than this many times the cloud's median cell spans a depth jump, not a surface: a
# surface would have to be seen at more than ~88° from its normal to stretch a cell that much.
DISCONTINUITY_RATIO = 25.0
# Cells sampled for the typical cell area: the median of ~4k evenly spread cells is a robust estimate (it
# only sets the discontinuity cut above, 25× the typical cell) at under a millisecond per part; 65k cost
# 12 ms on a 256×256 cloud, on every answer.
TYPICAL_CELLS = 4096


@dataclass(frozen=True)
class Region:
    """One connected region above the pixel threshold. Coordinates in the upload's pixels (x right, y down)."""

    x: int
    y: int
    width: int
    height: int
    area_px: int
    # Physical area on the part's surface; None where the cloud has no point under the region. Pixels
    # without a footprint (dropouts) count with the mean footprint of the region's measured pixels.
    area_mm2: float | None
    # Share of the region's pixels with a measured footprint (0 when `area_mm2` is None).
    measured_fraction: float
    max_score: float
    mean_score: float
    # Longest straight extent on the part's surface (module docstring); None where `area_mm2` is None.
    length_mm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
            "area_px": self.area_px,
            "area_mm2": self.area_mm2,
            "length_mm": self.length_mm,
            "measured_fraction": self.measured_fraction,
            "max_score": self.max_score,
            "mean_score": self.mean_score,
        }


@dataclass(frozen=True)
class RegionReport:
    """`regions`: at most `MAX_REGIONS`, largest max_score first. `n_regions`: all of them. The area
    summary covers every region (not only the ones listed): what the size rules of the verdict need."""

    regions: tuple[Region, ...]
    n_regions: int
    defect_area_fraction: float
    largest_area_mm2: float | None  # over the regions whose area is known
    unmeasured_regions: int  # regions with no point of the cloud under them (area and length unknown)
    pixel_threshold: float
    largest_length_mm: float | None = None  # over the regions whose length is known


def _valid(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A point exists where its coordinates are finite and z ≠ 0 (the preprocessing's rule)."""
    return np.isfinite(x) & np.isfinite(y) & np.isfinite(z) & (z != 0)


def _coordinates(xyz: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, z of the points at flat pixel indices `at` (row * W + col), each a contiguous 1-D array in the
    cloud's own float precision (float32 for uploads: differences of neighbouring float32 points are exact,
    and the cross products keep ~1e-7 relative error, far below what a footprint in mm² needs). Gathering
    each coordinate on its own keeps the arithmetic below on contiguous arrays."""
    dtype = np.result_type(xyz.dtype, np.float32)
    # Whole points first (np.take on one strided coordinate would copy the entire cloud), then one transposed
    # copy of just these points.
    picked = np.take(xyz.reshape(-1, 3), at, axis=0)
    x, y, z = np.ascontiguousarray(picked.T, dtype=dtype)
    return x, y, z


def _cell_areas(xyz: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """Areas of the grid cells whose top-left corner is at flat pixel index `corner`: corners a b / c d at
    (i, j), (i, j+1), (i+1, j), (i+1, j+1), split into the triangles abd + adc; NaN where a corner has no
    point. The cross products are written out per component: np.cross and np.linalg.norm cost several
    times more, and this runs on every answered part."""
    w = xyz.shape[1]
    (ax, ay, az), (bx, by, bz), (cx, cy, cz), (dx, dy, dz) = (
        _coordinates(xyz, corner + offset) for offset in (0, 1, w, w + 1)
    )
    ux, uy, uz = bx - ax, by - ay, bz - az
    vx, vy, vz = dx - ax, dy - ay, dz - az
    tx, ty, tz = cx - ax, cy - ay, cz - az
    first = np.sqrt((uy * vz - uz * vy) ** 2 + (uz * vx - ux * vz) ** 2 + (ux * vy - uy * vx) ** 2)
    second = np.sqrt((vy * tz - vz * ty) ** 2 + (vz * tx - vx * tz) ** 2 + (vx * ty - vy * tx) ** 2)
    areas = 0.5 * (first + second)
    missing = ~(_valid(ax, ay, az) & _valid(bx, by, bz) & _valid(cx, cy, cz) & _valid(dx, dy, dz))
    areas[missing] = np.nan
    return areas


def typical_cell(xyz: np.ndarray) -> float | None:
    """The median area of the cloud's grid cells (m²), from at most ~`TYPICAL_CELLS` cells spread evenly
    over it (every k-th row and column); None when no cell has four points."""
    h, w = xyz.shape[:2]
    step = max(1, math.ceil(math.sqrt((h - 1) * (w - 1) / TYPICAL_CELLS)))
    i, j = np.meshgrid(np.arange(0, h - 1, step), np.arange(0, w - 1, step), indexing="ij")
    cells = _cell_areas(xyz, (i * w + j).ravel())
    finite = cells[np.isfinite(cells)]
    return float(np.median(finite)) if finite.size else None


def _footprints(xyz: np.ndarray, rows: np.ndarray, cols: np.ndarray, typical: float | None) -> np.ndarray:
    """The footprints (mm², float64, NaN where unknown) of the pixels (rows, cols) of the (H, W, 3) cloud.

    Only the cells around these pixels are computed: a region is usually a small share of the image, and on
    an 800×800 cloud computing every cell took ~45 ms. `typical`: the cloud's typical cell in m² (None: the
    median of the cells computed here)."""
    h, w = xyz.shape[:2]
    # Pixel (r, c) touches the cells with top-left corners (r-1..r, c-1..c) that exist; cells are numbered
    # i * (W - 1) + j.
    touched = np.zeros((h - 1) * (w - 1), dtype=bool)
    for di in (0, 1):
        for dj in (0, 1):
            i, j = rows - di, cols - dj
            inside = (i >= 0) & (i < h - 1) & (j >= 0) & (j < w - 1)
            touched[i[inside] * (w - 1) + j[inside]] = True
    ci, cj = np.divmod(np.flatnonzero(touched), w - 1)
    cells = _cell_areas(xyz, ci * w + cj)
    finite = np.isfinite(cells)
    if typical is None and finite.any():
        typical = float(np.median(cells[finite]))
    if typical is not None:
        cells[finite & (cells > DISCONTINUITY_RATIO * typical)] = np.nan
    # The cell grid padded by one NaN cell on every side, flat: cell (i, j) sits at (i + 1) * (W + 1) + j + 1,
    # so pixel (r, c)'s four cells are at r * (W + 1) + c + {0, 1, W + 1, W + 2}.
    grid = np.full((h + 1) * (w + 1), np.nan, dtype=cells.dtype)
    grid[(ci + 1) * (w + 1) + cj + 1] = cells
    first = rows * (w + 1) + cols
    around = np.stack([np.take(grid, first + offset) for offset in (0, 1, w + 1, w + 2)])
    known = np.isfinite(around)
    count = known.sum(axis=0)
    total = np.where(known, around, 0.0).sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        area = np.where((count > 0) & _valid(*_coordinates(xyz, rows * w + cols)), total / count, np.nan)
    return area * M2_TO_MM2


def pixel_areas(xyz: np.ndarray, typical: float | None = None) -> np.ndarray:
    """(H, W, 3) organized cloud in metres → (H, W) float64 footprint per pixel in mm², NaN where unknown.

    `typical`: the cloud's typical cell area in m² (`typical_cell`); None: the median of all its cells."""
    if xyz.ndim != 3 or xyz.shape[2] != 3 or min(xyz.shape[:2]) < 2:
        raise ValueError(f"expected an (H, W, 3) point cloud with H, W ≥ 2, got shape {xyz.shape}")
    h, w = xyz.shape[:2]
    rows, cols = np.divmod(np.arange(h * w), w)
    return _footprints(xyz, rows, cols, typical).reshape(h, w)


def _longest_chord_m(xyz: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    """The largest 3D distance (m) between the points at pixels (rows, cols) of the (H, W, 3) cloud, all with
    a point, searched among the corners of the pixels' convex hull in the image (see the module docstring)."""
    if rows.size > 2:
        hull = cv2.convexHull(np.stack([cols, rows], axis=1).astype(np.int32), returnPoints=False)
        corners = hull.ravel()
        rows, cols = rows[corners], cols[corners]
    points = xyz[rows, cols].astype(np.float64)
    gaps = points[:, None, :] - points[None, :, :]
    return float(np.sqrt(np.max(np.einsum("ijk,ijk->ij", gaps, gaps))))


def _row_ends(region: np.ndarray, rows: np.ndarray, height: int) -> np.ndarray:
    """Indices of the first and last pixel of every (region, row) run of pixels sorted by region, then row,
    then column: each row's leftmost and rightmost pixel, among which lie all corners of the hull."""
    key = region * height + rows
    change = np.flatnonzero(np.diff(key)) + 1
    return np.unique(np.concatenate(([0], change, change - 1, [key.size - 1])))


def _lengths_mm(
    xyz: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    known: np.ndarray,
    sizes: np.ndarray,
    side: np.ndarray,
    listed: np.ndarray,
) -> tuple[dict[int, float], float | None]:
    """Lengths (mm) of the `listed` regions with a footprint, and the largest length over every region.

    The pixels (rows, cols) are sorted by region (the `sizes[k]` pixels of region k follow those of k - 1),
    then row, then column; `known`: which have a footprint; `side`: each region's pixel side in mm (NaN
    without a footprint). Only each row's end pixels are searched (the hull's corners are among them): a
    400 × 400 pixel region then adds about 2 ms. A noisy map can hold a thousand regions and a hull
    costs ~15 µs each, so regions that are not listed are measured only while their 3D bounding box's
    diagonal (an upper bound of the length) could beat the largest so far.
    """
    n = sizes.size
    region = np.repeat(np.arange(n), sizes)[known]
    if region.size == 0:
        return {}, None
    ends = _row_ends(region, rows[known], xyz.shape[0])
    region, rows, cols = region[ends], rows[known][ends], cols[known][ends]
    first = np.searchsorted(region, np.arange(n))
    last = np.searchsorted(region, np.arange(n), side="right")

    def length(k: int) -> float:
        span = slice(first[k], last[k])
        return _longest_chord_m(xyz, rows[span], cols[span]) * M_TO_MM + float(side[k])

    measured = last > first
    lengths = {int(k): length(int(k)) for k in listed if measured[k]}
    largest = max(lengths.values(), default=-math.inf)
    if np.count_nonzero(measured) > len(lengths):  # regions not listed: measure only those that could be longer
        with_points = np.flatnonzero(measured)
        coords = _coordinates(xyz, rows * xyz.shape[1] + cols)
        spans = [
            np.maximum.reduceat(c, first[with_points]).astype(np.float64) - np.minimum.reduceat(c, first[with_points])
            for c in coords
        ]
        bound = np.sqrt(sum(d**2 for d in spans)) * M_TO_MM + side[with_points]
        for j in np.argsort(-bound):
            if bound[j] <= largest:
                break
            k = int(with_points[j])
            if k not in lengths:
                largest = max(largest, length(k))
    return lengths, (float(largest) if math.isfinite(largest) else None)


def label_regions(amap: np.ndarray, pixel_threshold: float, peak_ratio: float = 0.0) -> tuple[int, np.ndarray]:
    """The pixels of the regions: `amap` (H, W) float32 → (n, labels), labels (H, W) int32 with 0 outside
    every region and 1..n-1 for the 8-connected regions (n - 1 of them).

    A pixel belongs to a region when it is above `pixel_threshold` = t and, with p the peak of its component
    of `map > t`, at least t + `peak_ratio` · (p − t): `peak_ratio` 0 keeps every pixel above t, 0.5 the
    part of each component above half its own height over t. The map is smoothed, so one global threshold
    also keeps a defect's blurred skirt, the wider the stronger the defect; a cut relative to each
    component's own height keeps its core. Measured on the height over t, not on the raw peak, because the
    maps' values sit in a narrow band (t ≈ 0.6, peaks ≈ 0.7 on the demo model), where a share of the raw
    peak is below t for any useful share. A cut can split a component, so the kept pixels are labelled
    again. Raises NonFiniteError on a non-finite map or threshold, ValueError on
    a map that is not 2-D or a `peak_ratio` outside [0, 1].
    """
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {amap.shape}")
    if not math.isfinite(pixel_threshold):
        raise NonFiniteError(f"pixel threshold is {pixel_threshold}")
    if not (math.isfinite(peak_ratio) and 0.0 <= peak_ratio <= 1.0):
        raise ValueError(f"peak_ratio must be in [0, 1], got {peak_ratio}")
    if not np.isfinite(amap).all():
        raise NonFiniteError(f"anomaly map holds {int((~np.isfinite(amap)).sum())} non-finite value(s)")
    above = amap > pixel_threshold
    # Labels only: OpenCV's statistics pass costs 15× the labelling itself (3.5 against 0.24 ms at 800×800);
    # the boxes come from the pixels of each region in `find_regions`, which are needed anyway.
    n, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    if n <= 1 or peak_ratio == 0.0:
        return n, labels
    # Each component's peak: its pixels sorted by label, one maximum per run (every label 1..n-1 has pixels).
    inside = np.flatnonzero(above)
    order = np.argsort(labels.ravel()[inside], kind="stable")
    inside = inside[order]
    starts = np.searchsorted(labels.ravel()[inside], np.arange(1, n))
    peaks = np.zeros(n, dtype=np.float64)
    peaks[1:] = np.maximum.reduceat(amap.ravel()[inside], starts)
    keep = above & (amap >= pixel_threshold + peak_ratio * (peaks[labels] - pixel_threshold))
    return cv2.connectedComponents(keep.astype(np.uint8), connectivity=8)


def find_regions(
    amap: np.ndarray,
    pixel_threshold: float,
    xyz: np.ndarray | None,
    *,
    limit: int = MAX_REGIONS,
    peak_ratio: float = REGION_PEAK_RATIO,
) -> RegionReport:
    """The regions of `label_regions(amap, pixel_threshold, peak_ratio)`, measured.

    `amap`: (H, W) anomaly map at the upload's resolution. `xyz`: the uploaded (H, W, 3) cloud in metres,
    or None (every `area_mm2` is then None). Raises NonFiniteError on a non-finite map or threshold and
    ValueError on mismatched shapes.
    """
    n, labels = label_regions(amap, pixel_threshold, peak_ratio)
    if xyz is not None and xyz.shape[:2] != amap.shape:
        raise ValueError(f"anomaly map is {amap.shape} but the point cloud is {xyz.shape[:2]} (H, W)")
    above = labels > 0
    fraction = float(np.count_nonzero(amap > pixel_threshold)) / float(amap.size)
    if n <= 1:
        return RegionReport((), 0, fraction, None, 0, float(pixel_threshold))
    # Only the pixels of a region: sort those by label (not the whole image);
    # label k (1..n-1) is then the `sizes[k-1]` sorted pixels from `starts[k-1]` on.
    inside = np.flatnonzero(above)
    inside_labels = labels.ravel()[inside]
    order = np.argsort(inside_labels, kind="stable")
    inside = inside[order]
    starts = np.searchsorted(inside_labels[order], np.arange(1, n))
    sizes = np.diff(np.append(starts, inside.size))
    rows, cols = np.divmod(inside, amap.shape[1])
    left, top = np.minimum.reduceat(cols, starts), np.minimum.reduceat(rows, starts)
    right, bottom = np.maximum.reduceat(cols, starts), np.maximum.reduceat(rows, starts)
    values = amap.ravel()[inside]
    max_scores = np.maximum.reduceat(values, starts)
    mean_scores = np.add.reduceat(values, starts, dtype=np.float64) / sizes
    # Listed regions: the `limit` highest max_scores (a stable sort: ties keep label order).
    listed = np.argsort(-max_scores, kind="stable")[:limit]
    areas_mm2: list[float | None] = [None] * (n - 1)
    lengths_mm: dict[int, float] = {}
    largest_length: float | None = None
    measured = np.zeros(n - 1)
    if xyz is not None and min(xyz.shape[:2]) >= 2:
        foot = _footprints(xyz, rows, cols, typical_cell(xyz))
        known = np.isfinite(foot)
        n_known = np.add.reduceat(known, starts, dtype=np.int64)
        known_sum = np.add.reduceat(np.where(known, foot, 0.0), starts)
        measured = n_known / sizes
        # Pixels without a footprint (dropouts) count with the mean footprint of the region's measured ones.
        areas_mm2 = [float(t / c * size) if c else None for t, c, size in zip(known_sum, n_known, sizes, strict=True)]
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN for regions without a footprint
            side = np.sqrt(known_sum / n_known)
        lengths_mm, largest_length = _lengths_mm(xyz, rows, cols, known, sizes, side, listed)
    regions = [
        Region(
            int(left[k]),
            int(top[k]),
            int(right[k] - left[k] + 1),
            int(bottom[k] - top[k] + 1),
            int(sizes[k]),
            areas_mm2[k],
            float(measured[k]) if areas_mm2[k] is not None else 0.0,
            float(max_scores[k]),
            float(mean_scores[k]),
            lengths_mm.get(int(k)),
        )
        for k in listed
    ]
    known_areas = [a for a in areas_mm2 if a is not None]
    return RegionReport(
        regions=tuple(regions),
        n_regions=n - 1,
        defect_area_fraction=fraction,
        largest_area_mm2=max(known_areas) if known_areas else None,
        unmeasured_regions=(n - 1) - len(known_areas),
        pixel_threshold=float(pixel_threshold),
        largest_length_mm=largest_length,
    )
