"""Point cloud → plane, foreground and depth: behaviour on synthetic clouds, errors, and parity with the
reference's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from service.preprocessing import (
    EmptyPointCloudError,
    ImageTooSmallError,
    InvalidPointCloudError,
    NoForegroundError,
    PlaneFitError,
    PreprocessConfig,
    fill_holes,
    normalise_depth,
    point_cloud_to_depth,
)
from tests.service.golden.synthetic import make_part


def plane_error(found: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(angle between normals in degrees, offset difference in metres)."""
    cosine = float(np.clip(abs(found[:3] @ true[:3]), 0.0, 1.0))
    return float(np.degrees(np.arccos(cosine))), abs(float(found[3] - true[3]))


def naive_fill(depth: np.ndarray, iterations: int) -> np.ndarray:
    """The reference definition, pixel by pixel: each 0 becomes the mean of its positive 3×3 neighbours,
    every pass reading the previous pass's image."""
    out = depth.astype(np.float64)
    height, width = out.shape
    for _ in range(iterations):
        previous = out.copy()
        for i in range(height):
            for j in range(width):
                if previous[i, j] != 0:
                    continue
                window = previous[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
                if (window > 0).any():
                    out[i, j] = window[window > 0].mean()
    return out


def test_corner_plane_is_the_true_plane_and_the_box_is_the_foreground() -> None:
    part = make_part()
    result = point_cloud_to_depth(part.xyz)
    assert result.plane_method == "corners"
    angle, offset = plane_error(result.plane, part.plane)
    assert angle < 1e-4 and offset < 1e-6
    assert np.linalg.norm(result.plane[:3]) == pytest.approx(1.0)
    assert result.plane[3] > 0  # oriented away from the camera
    expected = part.box & (part.xyz[..., 2] != 0)  # the box minus its 2×2 hole
    np.testing.assert_array_equal(result.foreground, expected)
    assert result.valid_fraction == pytest.approx(1 - 4 / (40 * 48))
    assert result.foreground_fraction == pytest.approx(expected.sum() / (40 * 48))


def test_depth_is_z_min_max_over_the_foreground_then_filled() -> None:
    part = make_part()
    result = point_cloud_to_depth(part.xyz)
    z = part.xyz[..., 2].astype(np.float64)
    fg = result.foreground
    expected = (z - z[fg].min()) / (z[fg].max() - z[fg].min())
    # Interior foreground pixels other than the nearest point are untouched by hole filling.
    keep = fg & (expected > 0)
    np.testing.assert_allclose(result.depth[keep], expected[keep], atol=1e-6)
    assert result.depth.dtype == np.float32 and result.depth.shape == (40, 48)
    assert result.depth.min() >= 0.0 and result.depth.max() == pytest.approx(1.0)
    # The 2×2 hole (rows 18-19, cols 20-21) is filled, and depth grows 2 px into the background, no more.
    assert (result.depth[18:20, 20:22] > 0).all()
    assert result.depth[12 - 2, 20] > 0 and result.depth[12 - 3, 20] == 0
    assert result.depth[0, 0] == 0


def test_empty_corner_falls_back_to_border_ransac_and_still_finds_the_object() -> None:
    part = make_part(empty_corner=3)
    result = point_cloud_to_depth(part.xyz)
    assert result.plane_method == "border_ransac"
    angle, offset = plane_error(result.plane, part.plane)
    assert angle < 0.01 and offset < 1e-5
    np.testing.assert_array_equal(result.foreground, part.box & (part.xyz[..., 2] != 0))


def test_ransac_ignores_an_object_that_reaches_into_the_border_band() -> None:
    # The box covers the whole left border and the top-left corner (so the corner fit is off the table).
    part = make_part(box_rows=(0, 30), box_cols=(0, 20), hole=None, empty_corner=0, noise=0.0003, seed=1)
    xyz = part.xyz.copy()
    xyz[:3, -3:] = 0  # empty the top-right patch: forces the fallback
    result = point_cloud_to_depth(xyz)
    assert result.plane_method == "border_ransac"
    angle, offset = plane_error(result.plane, part.plane)
    assert angle < 0.5 and offset < 5e-4
    iou = (result.foreground & part.box).sum() / (result.foreground | part.box).sum()
    assert iou > 0.95


def test_nan_and_inf_points_are_missing_points() -> None:
    part = make_part()
    xyz = part.xyz.copy()
    xyz[0, 0, 0] = np.nan  # one point of the top-left patch
    xyz[5, 5] = np.inf
    xyz[20, 25, 1] = -np.inf  # on the box
    result = point_cloud_to_depth(xyz)
    assert result.plane_method == "corners"
    assert plane_error(result.plane, part.plane)[0] < 1e-3
    assert not result.foreground[20, 25]
    assert np.isfinite(result.depth).all()
    assert result.depth[20, 25] > 0  # filled from its neighbours
    assert result.valid_fraction == pytest.approx(1 - 7 / (40 * 48))


def test_all_nan_corner_falls_back() -> None:
    part = make_part()
    xyz = part.xyz.copy()
    xyz[:3, -3:] = np.nan
    result = point_cloud_to_depth(xyz)
    assert result.plane_method == "border_ransac"
    assert result.foreground.sum() == part.box.sum() - 4


def test_non_square_cloud_keeps_its_own_size() -> None:
    part = make_part(64, 48, box_rows=(20, 44), box_cols=(12, 36))
    result = point_cloud_to_depth(part.xyz)
    assert result.depth.shape == (64, 48) and result.foreground.shape == (64, 48)
    np.testing.assert_array_equal(result.foreground, part.box & (part.xyz[..., 2] != 0))


def test_closing_joins_a_dent_but_not_a_hole_without_points() -> None:
    part = make_part(hole=None)
    xyz = part.xyz.copy()
    xyz[20, 24] = xyz[20, 5]  # a box pixel that sees the table far away: a 1 px "dent"
    xyz[22, 22] = 0  # a box pixel without a point
    result = point_cloud_to_depth(xyz)
    assert result.foreground[20, 24]  # the closing brings it back
    assert not result.foreground[22, 22]  # no point, so not foreground (the reference's z·mask ≠ 0)


def test_float64_input_gives_the_same_result() -> None:
    part = make_part()
    a = point_cloud_to_depth(part.xyz)
    b = point_cloud_to_depth(part.xyz.astype(np.float64))
    np.testing.assert_array_equal(a.foreground, b.foreground)
    np.testing.assert_allclose(a.depth, b.depth, atol=1e-6)


def test_repeated_calls_are_identical_and_do_not_touch_the_input() -> None:
    part = make_part(empty_corner=4, noise=0.0005, seed=2)
    xyz = part.xyz.copy()
    xyz[30, 30, 0] = np.nan
    before = xyz.copy()
    first, second = point_cloud_to_depth(xyz), point_cloud_to_depth(xyz)
    np.testing.assert_array_equal(xyz, before)
    np.testing.assert_array_equal(first.depth, second.depth)
    np.testing.assert_array_equal(first.plane, second.plane)


def test_fill_holes_matches_the_pixel_by_pixel_definition() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.1, 1.0, (12, 15)).astype(np.float32)
    depth[rng.uniform(size=depth.shape) < 0.45] = 0
    depth[4:10, 5:12] = 0  # a hole too wide to close in two passes
    depth[0, :] = 0  # border: zero padding outside
    for iterations in (0, 1, 2, 3):
        np.testing.assert_allclose(fill_holes(depth, iterations), naive_fill(depth, iterations), atol=1e-6)
    assert (fill_holes(depth, 2)[6:8, 8:9] == 0).all()  # the middle of the wide hole stays empty


def test_normalise_depth_of_a_single_depth_is_one_not_nan() -> None:
    z = np.full((4, 4), 0.5, np.float32)
    fg = np.zeros((4, 4), bool)
    fg[1:3, 1:3] = True
    depth = normalise_depth(z, fg)
    assert (depth[fg] == 1.0).all() and (depth[~fg] == 0).all()


@pytest.mark.parametrize(
    ("xyz", "message"),
    [
        (np.zeros((40, 48), np.float32), r"shape \(40, 48\)"),
        (np.zeros((40, 48, 4), np.float32), r"shape \(40, 48, 4\)"),
        (np.zeros((40, 48, 3), np.uint16), "dtype uint16"),
        ([[[0.0, 0.0, 1.0]]], "got list"),
    ],
)
def test_invalid_point_cloud_names_its_shape_or_type(xyz: object, message: str) -> None:
    with pytest.raises(InvalidPointCloudError, match=message):
        point_cloud_to_depth(xyz)  # type: ignore[arg-type]


def test_all_missing_cloud_is_empty() -> None:
    xyz = np.full((40, 48, 3), np.nan, np.float32)
    with pytest.raises(EmptyPointCloudError, match="no valid point"):
        point_cloud_to_depth(xyz)
    with pytest.raises(EmptyPointCloudError):
        point_cloud_to_depth(np.zeros((40, 48, 3), np.float32))


def test_flat_cloud_has_no_foreground() -> None:
    part = make_part(box_height=0.0, hole=None)
    with pytest.raises(NoForegroundError, match=r"plane_distance=0\.005"):
        point_cloud_to_depth(part.xyz)


def test_no_background_anywhere_is_a_plane_fit_error() -> None:
    part = make_part()
    xyz = np.zeros_like(part.xyz)
    xyz[10:30, 10:38] = part.xyz[10:30, 10:38]  # only the middle: corners and border band empty
    with pytest.raises(PlaneFitError, match=r"border band .* holds 0 valid point"):
        point_cloud_to_depth(xyz)


def test_too_small_cloud_is_refused() -> None:
    part = make_part(12, 48, box_rows=(4, 8), box_cols=(10, 20))
    with pytest.raises(ImageTooSmallError, match=r"12×48.*at least 16"):
        point_cloud_to_depth(part.xyz)
    # A smaller min_side lets it through.
    point_cloud_to_depth(part.xyz, PreprocessConfig(min_side=8, border_width=2))


@pytest.mark.parametrize("n_points", [1, 255, 256, 257, 2048])
def test_ransac_inlier_counts_in_blocks_equal_the_whole_product(n_points: int) -> None:
    """The blocked scoring gives exactly the counts of all points against all hypotheses at once, also with
    points that sit at the threshold to the last bit (the same float64 operations in the same order)."""
    from service.preprocessing.plane import _inlier_counts

    rng = np.random.default_rng(n_points)
    sample = rng.normal(0, 0.05, (n_points, 3)) + np.array([0.0, 0.0, 0.5])
    normals = rng.normal(size=(128, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    offsets = np.einsum("ij,ij->i", normals, sample[rng.integers(0, n_points, 128)])
    whole = sample[:, None, 0] * normals[:, 0] + sample[:, None, 1] * normals[:, 1]
    whole += sample[:, None, 2] * normals[:, 2]
    distances = np.abs(whole - offsets)
    threshold = float(np.sort(distances, axis=None)[distances.size // 2])  # one distance equals it exactly
    expected = (distances <= threshold).sum(axis=0)
    assert (distances == threshold).any() and 0 < expected.sum() < distances.size
    np.testing.assert_array_equal(_inlier_counts(sample, normals, offsets, threshold), expected)


def test_fill_holes_sums_exactly_what_the_clipped_image_sums() -> None:
    """Bit for bit the result of summing np.maximum(depth, 0), negative values and -0.0 included."""
    import cv2

    rng = np.random.default_rng(1)
    depth = rng.uniform(-0.2, 1.0, (64, 80)).astype(np.float32)
    depth[rng.uniform(size=depth.shape) < 0.5] = 0
    depth[rng.uniform(size=depth.shape) < 0.05] = -0.0
    expected = depth.copy()
    for _ in range(2):
        holes = expected == 0
        count = cv2.boxFilter((expected > 0).astype(np.float32), -1, (3, 3), normalize=False, borderType=0)
        total = cv2.boxFilter(np.maximum(expected, 0), -1, (3, 3), normalize=False, borderType=0)
        np.divide(total, count, out=expected, where=holes & (count > 0.5))
    np.testing.assert_array_equal(fill_holes(depth, 2).view(np.uint32), expected.view(np.uint32))
