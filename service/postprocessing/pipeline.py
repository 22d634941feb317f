"""The post-processing steps in order: the model's raw score and map → the map at the upload's size, its
defect regions and the verdict. Pure (numpy + OpenCV); the engine calls it once per part and builds its
`Prediction` from the result."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.postprocessing.maps import defect_area_fraction, map_to_input_size
from service.postprocessing.regions import RegionReport, find_regions
from service.postprocessing.roi import apply_roi
from service.postprocessing.verdict import Decision, NonFiniteError, check_finite, decide


@dataclass(frozen=True)
class PostProcessed:
    """`anomaly_map`: (H, W) float32 at the upload's size. `report`: the defect regions, None for a model
    without a pixel threshold. `defect_area_fraction`: the share of pixels above the pixel threshold (the
    image threshold without one)."""

    anomaly_map: np.ndarray
    report: RegionReport | None
    defect_area_fraction: float
    decision: Decision
    score: float  # the score that decided: the model's, or with a mask the one inside it (service.postprocessing.roi)
    model_map: np.ndarray  # (S, S) float32, with a mask 0 outside it


def postprocess_outputs(
    score: float,
    model_map: np.ndarray,
    xyz: np.ndarray,
    threshold: float,
    pixel_threshold: float | None,
    min_defect_area_mm2: float | None,
    min_defect_length_mm: float | None = None,
    review_threshold: float | None = None,
    roi: np.ndarray | None = None,
) -> PostProcessed:
    """`score`: the raw image score; `model_map`: (S, S) float32 at the model's resolution; `xyz`: the
    uploaded (H, W, 3) cloud in metres (the decoded array itself, not a copy). The map goes back to the
    upload's H × W; the regions come from `pixel_threshold` and their mm² from `xyz`; the verdict from
    `decide` with `threshold`, the review band's upper edge and the size rules in effect. A model without a
    pixel threshold (schema 1) gets no regions and the share above the image threshold. `roi`: a (h, w) bool
    mask of the upload's frame (a recipe's region of interest): the map is 0 outside it and the score is the
    one inside it (service.postprocessing.roi); MaskMismatchError when its aspect is not the upload's.

    Raises NonFiniteError on a non-finite score, threshold or map: never an answer, never an OK.
    """
    check_finite(score, threshold)
    if not np.isfinite(model_map).all():  # checked at the model's resolution: resizing spreads NaN
        bad = int(np.count_nonzero(~np.isfinite(model_map)))
        raise NonFiniteError(f"the anomaly map holds {bad} non-finite value(s)")
    height, width = xyz.shape[:2]
    if roi is not None:
        score, model_map, inside = apply_roi(score, model_map, roi, (height, width))
    anomaly_map = map_to_input_size(model_map, height, width)
    if roi is not None:
        anomaly_map[~inside] = 0.0  # bilinear resizing spreads the border a pixel outward
    if pixel_threshold is None:
        report, fraction = None, defect_area_fraction(anomaly_map, threshold)
    else:
        report = find_regions(anomaly_map, pixel_threshold, xyz)
        fraction = report.defect_area_fraction
    decision = decide(score, threshold, report, min_defect_area_mm2, min_defect_length_mm, review_threshold)
    return PostProcessed(anomaly_map, report, fraction, decision, score, model_map)
