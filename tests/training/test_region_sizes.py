"""The evaluation's region-size columns (training.evaluation.region_sizes) on tiny parts of known sizes."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.region_sizes import PartRegions, part_regions, summarize_parts, true_size

PITCH_M = 1e-3  # 1 mm per pixel: a pixel's footprint is 1 mm²
H = W = 32


def flat() -> np.ndarray:
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.dstack([cols * PITCH_M, rows * PITCH_M, np.full((H, W), 0.3, np.float32)]).astype(np.float32)


def square(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_the_truth_is_measured_on_the_cloud() -> None:
    xyz = flat()
    area, length = true_size(square(4, 4, 6), xyz)
    assert area == pytest.approx(36.0, rel=1e-4)
    # Corner to corner of 6 × 6 pixels: 5 √2 mm apart, plus one pixel's side.
    assert length == pytest.approx(5 * np.sqrt(2) + 1, rel=1e-4)
    # A pixel without a point counts with the mean footprint of the others.
    xyz[5, 5] = 0.0
    assert true_size(square(4, 4, 6), xyz)[0] == pytest.approx(36.0, rel=1e-4)


def test_a_region_over_the_defect_is_measured_against_it() -> None:
    gt = square(4, 4, 6)
    # The map at the model's resolution equals the upload's here (no resize): a hot 8 × 8 square over the
    # defect and a 2 × 2 one elsewhere, both flat-topped so that the peak-relative cut keeps them whole.
    amap = np.full((H, W), 0.1, np.float32)
    amap[3:11, 3:11] = 0.9
    amap[20:22, 20:22] = 0.9
    part = part_regions(amap, flat(), gt, defect="dent", detected=True, pixel_threshold=0.5)
    assert part.on_defect and part.has_region
    assert part.region_area_mm2 == pytest.approx(64.0, rel=1e-4) and part.true_area_mm2 == pytest.approx(36.0)
    assert part.iou == pytest.approx(36 / (64 + 4))
    assert part.region_length_mm == pytest.approx(7 * np.sqrt(2) + 1, rel=1e-4)


def test_a_region_beside_the_defect_is_not_over_it() -> None:
    amap = np.full((H, W), 0.1, np.float32)
    amap[20:24, 20:24] = 0.9
    part = part_regions(amap, flat(), square(4, 4, 6), defect="crack", detected=True, pixel_threshold=0.5)
    assert part.has_region and not part.on_defect
    assert part.iou == 0.0 and part.region_area_mm2 is None and part.true_area_mm2 == pytest.approx(36.0)


def test_the_summary_per_defect_type() -> None:
    def part(defect: str, detected: bool, region: float | None, truth: float | None, iou: float | None) -> PartRegions:
        on = region is not None
        return PartRegions(defect, detected, on, on, iou, region, truth, region, truth)

    parts = [
        part("dent", True, 2.0, 1.0, 0.5),
        part("dent", True, 4.0, 1.0, 0.25),
        part("dent", True, None, 1.0, 0.0),  # detected, no region over the defect
        part("dent", False, 8.0, 1.0, 0.1),  # not detected: not in the ratios
        part("crack", True, 1.0, 2.0, 0.3),
        PartRegions("good", False, True, False, None, None, None, None, None),
        PartRegions("good", False, False, False, None, None, None, None, None),
    ]
    summary = summarize_parts(parts)
    dent = summary["per_defect"]["dent"]
    assert (dent["parts"], dent["detected"], dent["detected_with_region_on_defect"]) == (4, 3, 2)
    assert dent["share_detected_with_region_on_defect"] == pytest.approx(2 / 3)
    assert dent["area_ratio"]["median"] == pytest.approx(3.0) and dent["area_ratio"]["n"] == 2
    assert dent["length_ratio"]["median"] == pytest.approx(3.0)
    assert dent["iou"]["median"] == pytest.approx(0.25)  # over the three detected parts
    everything = summary["per_defect"]["all"]
    assert everything["detected"] == 4 and everything["area_ratio"]["median"] == pytest.approx(2.0)
    assert summary["per_defect"]["crack"]["area_ratio"]["median"] == pytest.approx(0.5)
    assert summary["good_parts_with_a_region"] == pytest.approx(0.5)
