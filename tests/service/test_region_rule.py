"""The region rule (service.postprocessing.regions.label_regions with REGION_PEAK_RATIO) on synthetic maps of
defects of known size: the area and length of the region measure the defect, not the smoothed map's skirt.

Each map is what a model's smoothed map looks like around one defect: a flat base, plus the defect's mask
blurred by a Gaussian of σ = 2 pixels (0.1 mm) and scaled to its height; the pixel threshold sits low on
the blurred skirt, as a threshold calibrated on good parts does. Tolerances: area within 0.75-1.35 × the
defect's and length within 0.85-1.2 × (both well inside the product's 0.5-2 target), where every pixel above
the threshold (peak ratio 0) gives a larger region: over 1.5 × a thin scratch's area.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from service.postprocessing.regions import REGION_PEAK_RATIO, Region, find_regions, label_regions
from service.postprocessing.verdict import NonFiniteError

PITCH_MM = 0.05  # camera pixel pitch on the part
SIZE = 240  # 12 mm × 12 mm image
BASE, HEIGHT, THRESHOLD = 0.2, 0.6, 0.26  # the threshold is 10 % of the defect's height over the base
BLUR_PX = 2.0


def plane(tilt_deg: float = 0.0) -> tuple[np.ndarray, float]:
    """(SIZE, SIZE, 3) float32 cloud in metres of a plane 0.3 m away, tilted by `tilt_deg` about the x axis,
    with one pixel per 0.05 mm across (x) and per 0.05 mm / cos(tilt) down the slope; and cos(tilt)."""
    cos = math.cos(math.radians(tilt_deg))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    u, v = cols * PITCH_MM, rows * PITCH_MM / cos  # mm on the surface
    sin = math.sin(math.radians(tilt_deg))
    xyz = np.dstack([u, v * cos, 300.0 + v * sin]) * 1e-3
    return xyz.astype(np.float32), cos


def smoothed_map(mask: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), BLUR_PX)
    return (BASE + HEIGHT * blurred / blurred.max()).astype(np.float32)


def only_region(amap: np.ndarray, xyz: np.ndarray, peak_ratio: float = REGION_PEAK_RATIO) -> Region:
    report = find_regions(amap, THRESHOLD, xyz, peak_ratio=peak_ratio)
    assert report.n_regions == 1
    return report.regions[0]


def test_a_2_mm_by_0_3_mm_scratch_measures_its_area_and_length() -> None:
    xyz, _ = plane()
    mask = np.zeros((SIZE, SIZE), bool)
    mask[117:123, 100:140] = True  # 6 × 40 pixels: 0.3 mm × 2 mm
    amap = smoothed_map(mask)
    region = only_region(amap, xyz)
    assert region.area_mm2 is not None and region.length_mm is not None
    assert 0.75 * 0.6 < region.area_mm2 < 1.35 * 0.6
    assert 0.85 * 2.0 < region.length_mm < 1.2 * 2.0
    # Every pixel above the threshold: the skirt doubles the scratch's area.
    skirt = only_region(amap, xyz, peak_ratio=0.0)
    assert skirt.area_mm2 is not None and skirt.area_mm2 > 1.5 * 0.6


def test_a_3_mm_disc_measures_its_area_and_diameter() -> None:
    xyz, _ = plane()
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    mask = (rows - 120) ** 2 + (cols - 120) ** 2 <= 30**2  # radius 30 pixels: 1.5 mm
    true_area = math.pi * 1.5**2
    amap = smoothed_map(mask)
    region = only_region(amap, xyz)
    assert region.area_mm2 is not None and region.length_mm is not None
    assert 0.75 * true_area < region.area_mm2 < 1.35 * true_area
    assert 0.85 * 3.0 < region.length_mm < 1.2 * 3.0
    skirt = only_region(amap, xyz, peak_ratio=0.0)
    assert skirt.area_mm2 is not None and skirt.area_mm2 > 1.1 * region.area_mm2  # a thin skirt on a wide disc


def test_a_disc_on_a_tilted_surface_is_measured_on_the_surface() -> None:
    xyz, cos = plane(tilt_deg=50.0)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    # A 3 mm disc on the slope is an ellipse in the image, squeezed down the slope by cos(tilt).
    mask = ((cols - 120) * PITCH_MM) ** 2 + ((rows - 120) * PITCH_MM / cos) ** 2 <= 1.5**2
    true_area = math.pi * 1.5**2
    region = only_region(smoothed_map(mask), xyz)
    assert region.area_mm2 is not None and region.length_mm is not None
    assert region.area_px * PITCH_MM**2 < 0.75 * true_area  # the image alone would say far less
    assert 0.75 * true_area < region.area_mm2 < 1.35 * true_area
    assert 0.85 * 3.0 < region.length_mm < 1.2 * 3.0


def test_each_region_is_cut_at_its_own_height() -> None:
    """A weak and a strong defect of the same size both keep about their own size: a global cut would keep
    the strong one's skirt and lose the weak one."""
    xyz, _ = plane()
    strong, weak = np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool)
    strong[40:80, 40:80] = True
    weak[160:200, 160:200] = True
    amap = BASE + cv2.GaussianBlur(strong.astype(np.float32), (0, 0), BLUR_PX) * 0.6
    amap += cv2.GaussianBlur(weak.astype(np.float32), (0, 0), BLUR_PX) * 0.15
    report = find_regions(amap.astype(np.float32), THRESHOLD, xyz)
    assert report.n_regions == 2
    for region in report.regions:
        assert region.area_mm2 is not None and 0.8 * 4.0 < region.area_mm2 < 1.25 * 4.0  # 2 mm × 2 mm


def test_a_cut_that_splits_a_component_labels_both_parts() -> None:
    amap = np.full((20, 40), 0.1, np.float32)
    amap[5:15, 2:38] = 0.4  # one component above 0.3 ...
    amap[8:12, 5:10] = 0.9  # ... with two peaks: the cut at 0.3 + 0.5 × 0.6 = 0.6 keeps them apart
    amap[8:12, 30:35] = 0.9
    n, labels = label_regions(amap, 0.3, 0.5)
    assert n - 1 == 2 and np.count_nonzero(labels) == 40
    n, labels = label_regions(amap, 0.3, 0.0)
    assert n - 1 == 1 and np.count_nonzero(labels) == 360
    # The share above the threshold does not depend on the cut.
    assert find_regions(amap, 0.3, None).defect_area_fraction == pytest.approx(360 / 800)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_a_peak_ratio_outside_0_1_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="peak_ratio"):
        label_regions(np.zeros((4, 4), np.float32), 0.5, ratio)


def test_a_non_finite_map_is_refused() -> None:
    amap = np.zeros((4, 4), np.float32)
    amap[1, 1] = np.nan
    with pytest.raises(NonFiniteError):
        label_regions(amap, 0.5, REGION_PEAK_RATIO)
