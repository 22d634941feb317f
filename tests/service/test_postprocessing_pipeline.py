"""The post-processing steps in order (service.postprocessing.pipeline): map back to the upload's size,
regions or the share above the image threshold, the verdict; never an answer on non-finite outputs."""

from __future__ import annotations

import numpy as np
import pytest

from service.postprocessing.pipeline import postprocess_outputs
from service.postprocessing.verdict import NonFiniteError

XYZ = np.dstack([*np.meshgrid(np.linspace(0, 0.03, 40), np.linspace(0, 0.02, 20)), np.full((20, 40), 0.3)])


def hot_corner(value: float = 0.9) -> np.ndarray:
    """(8, 8) float32 map, 0.1 everywhere but `value` in its top-left 4×4 quarter."""
    amap = np.full((8, 8), 0.1, np.float32)
    amap[:4, :4] = value
    return amap


def test_with_a_pixel_threshold_the_regions_decide_the_share_and_the_area_rule() -> None:
    out = postprocess_outputs(0.8, hot_corner(), XYZ.astype(np.float32), 0.5, 0.5, min_defect_area_mm2=None)
    assert out.anomaly_map.shape == (20, 40) and out.anomaly_map.dtype == np.float32
    assert out.report is not None and out.report.n_regions == 1
    region = out.report.regions[0]
    assert region.x == 0 and region.y == 0 and region.area_mm2 is not None and region.area_mm2 > 0
    assert out.defect_area_fraction == out.report.defect_area_fraction > 0
    assert out.decision.is_anomalous and out.decision.rule == "score"
    # The same part under an area rule larger than its one region: OK, decided by the area.
    small = postprocess_outputs(0.8, hot_corner(), XYZ.astype(np.float32), 0.5, 0.5, min_defect_area_mm2=1e6)
    assert not small.decision.is_anomalous and small.decision.rule == "area"
    # Cut at half its height over the pixel threshold (0.7), its region spans 19 × 9 pixels of 0.77 × 1.05 mm:
    # its corners are about 16.2 mm apart, plus a pixel (0.9 mm). Under a length rule it meets as well: NG,
    # decided by both rules.
    assert (region.width, region.height) == (19, 9)
    assert region.length_mm is not None and 16.9 < region.length_mm < 17.4
    both = postprocess_outputs(0.8, hot_corner(), XYZ.astype(np.float32), 0.5, 0.5, 1e6, region.length_mm)
    assert both.decision.is_anomalous and both.decision.rule == "area_or_length"


def test_without_a_pixel_threshold_no_regions_and_the_share_above_the_image_threshold() -> None:
    out = postprocess_outputs(0.3, hot_corner(), XYZ.astype(np.float32), 0.5, None, None)
    assert out.report is None and not out.decision.is_anomalous
    assert out.defect_area_fraction == float(np.count_nonzero(out.anomaly_map > 0.5)) / out.anomaly_map.size


@pytest.mark.parametrize("where", ["score", "map"])
def test_non_finite_outputs_are_refused(where: str) -> None:
    amap = hot_corner()
    score = float("nan") if where == "score" else 0.8
    if where == "map":
        amap[5, 5] = np.inf
    with pytest.raises(NonFiniteError):
        postprocess_outputs(score, amap, XYZ.astype(np.float32), 0.5, 0.5, None)
