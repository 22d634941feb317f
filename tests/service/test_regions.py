"""Defect regions and their physical area from the point cloud (service.postprocessing.regions)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from service.postprocessing.regions import MAX_REGIONS, find_regions, pixel_areas, typical_cell
from service.postprocessing.verdict import NonFiniteError

F = 500.0  # focal length in pixels


def rays(h: int, w: int) -> np.ndarray:
    """(H, W, 3) pinhole rays (u', v', 1) through the pixel centres, principal point in the middle."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([(u - (w - 1) / 2) / F, (v - (h - 1) / 2) / F, np.ones((h, w))], axis=-1)


def plane_cloud(h: int, w: int, normal: np.ndarray, d: float) -> np.ndarray:
    """Points where each pixel's ray meets the plane n·X = d (n unit), in metres."""
    r = rays(h, w)
    t = d / (r @ normal)
    return (r * t[..., None]).astype(np.float32)


def analytic_area_mm2(h: int, w: int, normal: np.ndarray, d: float, mask: np.ndarray) -> float:
    """Σ over `mask` of each pixel's footprint d² / |n·r|³ / f² (the area element of a ray-plane map)."""
    r = rays(h, w)
    per_pixel = d**2 / np.abs(r @ normal) ** 3 / F**2
    return float(per_pixel[mask].sum() * 1e6)


def square_map(h: int, w: int, box: tuple[int, int, int, int], value: float = 0.9) -> np.ndarray:
    x, y, bw, bh = box
    amap = np.full((h, w), 0.1, np.float32)
    amap[y : y + bh, x : x + bw] = value
    return amap


def test_plane_at_known_distance_gives_the_pinhole_footprint() -> None:
    h, w, z = 64, 80, 0.4
    xyz = plane_cloud(h, w, np.array([0.0, 0.0, 1.0]), z)
    report = find_regions(square_map(h, w, (20, 10, 12, 8)), 0.5, xyz)
    assert report.n_regions == 1
    region = report.regions[0]
    assert (region.x, region.y, region.width, region.height, region.area_px) == (20, 10, 12, 8, 96)
    # Each pixel sees (z / f)² m² of a fronto-parallel plane: 0.64 mm² here.
    assert region.area_mm2 == pytest.approx(96 * (z / F) ** 2 * 1e6, rel=1e-6)
    assert region.measured_fraction == 1.0
    assert region.max_score == pytest.approx(0.9) and region.mean_score == pytest.approx(0.9)
    assert report.defect_area_fraction == pytest.approx(96 / (h * w))


def test_tilted_plane_matches_the_analytic_area() -> None:
    h, w = 96, 96
    tilt = math.radians(50)
    normal = np.array([0.0, math.sin(tilt), math.cos(tilt)])
    d = 0.35
    xyz = plane_cloud(h, w, normal, d)
    box = (30, 40, 25, 20)
    report = find_regions(square_map(h, w, box), 0.5, xyz)
    mask = np.zeros((h, w), bool)
    mask[40:60, 30:55] = True
    expected = analytic_area_mm2(h, w, normal, d, mask)
    # The tilt stretches each footprint by about 1 / cos(50°) ≈ 1.56 over the fronto-parallel one.
    assert expected > 1.4 * mask.sum() * (d / F) ** 2 * 1e6
    assert report.regions[0].area_mm2 == pytest.approx(expected, rel=0.01)


def test_no_points_under_a_region_gives_no_area() -> None:
    h, w = 48, 48
    xyz = plane_cloud(h, w, np.array([0.0, 0.0, 1.0]), 0.5)
    xyz[8:20, 8:20] = 0.0  # a hole in the cloud, larger than the region
    amap = square_map(h, w, (10, 10, 8, 8))
    amap[30:36, 30:36] = 0.8  # a second region on measured surface
    report = find_regions(amap, 0.5, xyz)
    by_pos = {(r.x, r.y): r for r in report.regions}
    assert by_pos[(10, 10)].area_mm2 is None and by_pos[(10, 10)].measured_fraction == 0.0
    assert by_pos[(30, 30)].area_mm2 == pytest.approx(36 * (0.5 / F) ** 2 * 1e6, rel=1e-6)
    assert report.unmeasured_regions == 1
    assert report.largest_area_mm2 == by_pos[(30, 30)].area_mm2


def test_dropouts_under_a_region_are_filled_with_the_region_mean_footprint() -> None:
    h, w, z = 48, 48, 0.3
    xyz = plane_cloud(h, w, np.array([0.0, 0.0, 1.0]), z)
    xyz[10:18:2, 10:18:3] = np.nan  # scattered missing points (NaN counts as no point too)
    report = find_regions(square_map(h, w, (10, 10, 8, 8)), 0.5, xyz)
    region = report.regions[0]
    assert 0.5 < region.measured_fraction < 1.0  # dropped points and neighbours whose cells all touch one
    assert region.area_mm2 == pytest.approx(64 * (z / F) ** 2 * 1e6, rel=1e-6)


def test_a_depth_jump_inside_a_region_does_not_count_as_surface() -> None:
    h, w = 40, 40
    xyz = plane_cloud(h, w, np.array([0.0, 0.0, 1.0]), 0.4)
    top = plane_cloud(h, w, np.array([0.0, 0.0, 1.0]), 0.3)
    xyz[:, 20:] = top[:, 20:]  # a 10 cm step: the cells across it are walls seen edge-on
    report = find_regions(square_map(h, w, (15, 10, 10, 10)), 0.5, xyz)
    expected = 10 * 5 * (0.4 / F) ** 2 * 1e6 + 10 * 5 * (0.3 / F) ** 2 * 1e6
    assert report.regions[0].area_mm2 == pytest.approx(expected, rel=0.05)


def test_pixel_areas_are_nan_without_points() -> None:
    xyz = plane_cloud(8, 8, np.array([0.0, 0.0, 1.0]), 0.2)
    xyz[0, 0] = 0.0
    areas = pixel_areas(xyz)
    assert np.isnan(areas[0, 0]) and np.isfinite(areas[1:, 1:]).all()
    with pytest.raises(ValueError, match="point cloud"):
        pixel_areas(np.zeros((8, 8), np.float32))


def test_regions_are_sorted_by_max_score_and_capped() -> None:
    h, w = 64, 64
    amap = np.zeros((h, w), np.float32)
    rng = np.random.default_rng(0)
    peaks = rng.permutation(np.linspace(0.55, 0.99, 20))
    for k, peak in enumerate(peaks):
        y, x = 3 * (k // 5) * 4, 3 * (k % 5) * 4
        amap[y : y + 3, x : x + 3] = 0.6
        amap[y + 1, x + 1] = peak
    report = find_regions(amap, 0.5, None)
    assert report.n_regions == 20 and len(report.regions) == MAX_REGIONS
    maxima = [r.max_score for r in report.regions]
    assert maxima == sorted(maxima, reverse=True)
    assert maxima[0] == pytest.approx(peaks.max())
    assert all(r.area_mm2 is None for r in report.regions)  # no cloud given


def test_nothing_above_the_threshold_gives_no_region() -> None:
    report = find_regions(np.full((16, 16), 0.2, np.float32), 0.5, None)
    assert report.regions == () and report.n_regions == 0 and report.defect_area_fraction == 0.0


def test_non_finite_map_or_threshold_is_refused() -> None:
    amap = np.full((16, 16), 0.2, np.float32)
    with pytest.raises(NonFiniteError):
        find_regions(amap, float("nan"), None)
    amap[3, 3] = np.nan
    with pytest.raises(NonFiniteError, match="1 non-finite"):
        find_regions(amap, 0.5, None)
    with pytest.raises(ValueError, match="point cloud"):
        find_regions(np.zeros((16, 16), np.float32), 0.5, np.zeros((8, 8, 3), np.float32))


def test_region_areas_from_the_regions_pixels_equal_the_whole_clouds() -> None:
    # A tilted, bumpy cloud with a step and holes; two regions far apart: find_regions computes footprints
    # only for the cells around the regions' pixels, with the typical cell from an even sample of the cloud.
    rng = np.random.default_rng(3)
    v, u = np.mgrid[0:300, 0:400].astype(np.float64)
    z = 0.5 + 0.2 * u * 1e-3 + 1e-4 * rng.standard_normal(u.shape)
    z[:, 200:] += 0.03
    xyz = np.stack([u * 1e-3, v * 1e-3, z], axis=-1).astype(np.float32)
    xyz[50:60, 30:35] = np.nan
    amap = np.zeros((300, 400), np.float32)
    amap[45:70, 20:40] = 0.9
    amap[250:290, 190:215] = 0.8  # across the step
    full = pixel_areas(xyz)
    report = find_regions(amap, 0.5, xyz)
    for region, window in zip(
        report.regions, [(slice(45, 70), slice(20, 40)), (slice(250, 290), slice(190, 215))], strict=True
    ):
        foot = full[window].ravel()
        known = np.isfinite(foot)
        assert region.area_mm2 == pytest.approx(foot[known].mean() * foot.size, rel=1e-12)
        assert region.measured_fraction == pytest.approx(known.mean())


def test_many_regions_match_a_per_label_reference() -> None:
    # A noisy map with dozens of blobs over a cloud with holes: every region's box, pixel count, scores and
    # mm² must equal what OpenCV's own statistics and a per-label mask over the whole cloud's footprints give.
    rng = np.random.default_rng(7)
    h, w = 120, 170
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    xyz = np.stack([u * 1e-3, v * 1e-3, 0.4 + 0.1 * v * 1e-3 + 2e-5 * rng.standard_normal(u.shape)], -1)
    xyz = xyz.astype(np.float32)
    xyz[rng.random((h, w)) < 0.05] = np.nan
    amap = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    threshold = float(np.quantile(amap, 0.9))
    report = find_regions(amap, threshold, xyz, limit=10_000, peak_ratio=0.0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((amap > threshold).astype(np.uint8), connectivity=8)
    assert report.n_regions == n - 1 > 20
    full = pixel_areas(xyz, typical_cell(xyz))
    expected = {}
    for k in range(1, n):
        mask = labels == k
        foot = full[mask]
        known = np.isfinite(foot)
        area = float(foot[known].mean() * foot.size) if known.any() else None
        x, y, bw, bh = (int(s) for s in stats[k, :4])
        expected[(x, y, bw, bh)] = (int(mask.sum()), float(amap[mask].max()), float(amap[mask].mean()), area)
    for r in report.regions:
        pixels, max_score, mean_score, area = expected[(r.x, r.y, r.width, r.height)]
        assert r.area_px == pixels and r.max_score == max_score
        assert r.mean_score == pytest.approx(mean_score, rel=1e-5)
        assert (r.area_mm2 is None) == (area is None)
        if area is not None:
            assert r.area_mm2 == pytest.approx(area, rel=1e-9)


# --- sizes of defects drawn on the surface -----------------------------------------------------------


def surface_frame(h: int, w: int, normal: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray]:
    """The plane's cloud (H, W, 3) in metres and each pixel's coordinates on the plane itself, (H, W, 2) in mm:
    along x, and along the plane's own down direction, from the point seen at the image centre."""
    xyz = plane_cloud(h, w, normal, d)
    across = np.array([1.0, 0.0, 0.0])
    down = np.cross(normal, across)
    down /= np.linalg.norm(down)
    offset = xyz.astype(np.float64) - xyz[h // 2, w // 2]
    return xyz, np.stack([offset @ across, offset @ down], axis=-1) * 1e3


def defect_map(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 0.9, 0.1).astype(np.float32)


def scratch(surface: np.ndarray, length: float, width: float, angle_deg: float) -> np.ndarray:
    """Pixels whose point lies in a `length` × `width` mm rectangle on the surface, its long side at `angle`."""
    a = math.radians(angle_deg)
    along = surface[..., 0] * math.cos(a) + surface[..., 1] * math.sin(a)
    across = -surface[..., 0] * math.sin(a) + surface[..., 1] * math.cos(a)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def disc(surface: np.ndarray, diameter: float) -> np.ndarray:
    return np.hypot(surface[..., 0], surface[..., 1]) <= diameter / 2


FACING = np.array([0.0, 0.0, 1.0])
TILTED = np.array([0.0, math.sin(math.radians(45)), math.cos(math.radians(45))])


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0])
def test_a_2_mm_by_0_3_mm_scratch_measures_2_mm_and_0_6_mm2(angle: float) -> None:
    # 3 cm from the camera: a pixel is 0.06 mm on the part, the scratch 33 × 5 pixels.
    xyz, surface = surface_frame(128, 128, FACING, 0.03)
    mask = scratch(surface, 2.0, 0.3, angle)
    report = find_regions(defect_map(mask), 0.5, xyz)
    (region,) = report.regions
    assert region.area_px == mask.sum()
    # Within one pixel (0.06 mm) of the drawn length, and the drawn area to the pixels' rounding.
    assert region.length_mm == pytest.approx(2.0, abs=0.06)
    assert region.area_mm2 == pytest.approx(0.6, rel=0.15)
    assert report.largest_length_mm == region.length_mm


def test_a_3_mm_disc_measures_3_mm_across_and_its_area() -> None:
    xyz, surface = surface_frame(128, 128, FACING, 0.03)
    report = find_regions(defect_map(disc(surface, 3.0)), 0.5, xyz)
    (region,) = report.regions
    assert region.length_mm == pytest.approx(3.0, abs=0.06)
    assert region.area_mm2 == pytest.approx(math.pi * 1.5**2, rel=0.03)


def test_defects_on_a_45_degree_surface_measure_the_surface_not_its_projection() -> None:
    # Seen at 45°, the plane's down direction is foreshortened to cos 45° ≈ 0.71 in the image: a scratch
    # along it looks 1.41 mm long and 0.42 mm² large; the cloud gives it back its 2 mm and 0.6 mm².
    xyz, surface = surface_frame(160, 160, TILTED, 0.02)
    mask = scratch(surface, 2.0, 0.3, 90.0)
    (region,) = find_regions(defect_map(mask), 0.5, xyz).regions
    rows = np.flatnonzero(mask.any(axis=1))
    pitch_mm = float(xyz[80, 80, 2]) / F * 1e3  # a pixel at the image centre's depth, as if facing the camera
    assert (rows[-1] - rows[0] + 1) * pitch_mm < 1.5  # the projection is much shorter than 2 mm
    assert region.length_mm == pytest.approx(2.0, abs=0.08)  # a pixel along the tilt is 0.08 mm
    assert region.area_mm2 == pytest.approx(0.6, rel=0.15)
    (round_one,) = find_regions(defect_map(disc(surface, 3.0)), 0.5, xyz).regions
    assert round_one.length_mm == pytest.approx(3.0, abs=0.08)
    assert round_one.area_mm2 == pytest.approx(math.pi * 1.5**2, rel=0.03)


def test_lengths_equal_the_farthest_pair_of_all_measured_pixels() -> None:
    # Blobs on a tilted plane with holes: each listed region's length and the largest over every region (also
    # the ones not listed) must equal a brute-force search over all pairs of pixels with a footprint.
    rng = np.random.default_rng(11)
    h, w = 90, 120
    xyz = plane_cloud(h, w, np.array([0.3, 0.4, math.sqrt(1 - 0.25)]), 0.3)
    xyz[rng.random((h, w)) < 0.04] = 0.0
    amap = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    threshold = float(np.quantile(amap, 0.85))
    report = find_regions(amap, threshold, xyz, limit=5, peak_ratio=0.0)
    n, labels = cv2.connectedComponents((amap > threshold).astype(np.uint8), connectivity=8)
    assert report.n_regions == n - 1 > 10
    foot = pixel_areas(xyz, typical_cell(xyz))
    lengths = {}
    for k in range(1, n):
        mine = (labels == k) & np.isfinite(foot)
        if not mine.any():
            continue
        points = xyz[mine].astype(np.float64)
        chord = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max() * 1e3
        ys, xs = np.nonzero(labels == k)
        lengths[(int(xs.min()), int(ys.min()))] = chord + math.sqrt(foot[mine].mean())
    for r in report.regions:
        assert r.length_mm == pytest.approx(lengths[(r.x, r.y)], rel=1e-6)
    assert report.largest_length_mm == pytest.approx(max(lengths.values()), rel=1e-6)
    assert max(lengths.values()) > max(r.length_mm or 0.0 for r in report.regions)  # the longest is not listed
