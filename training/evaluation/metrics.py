"""Evaluation metrics for anomaly scores and maps: AUROC, AP, AUPRO and the F1-optimal threshold (pure numpy)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "DegenerateCurveError",
    "MetricInputError",
    "aupro",
    "aupro_reference_variant",
    "f1_optimal_threshold",
    "image_ap",
    "image_auroc",
    "per_defect_image_auroc",
    "pixel_ap",
    "pixel_auroc",
    "pro_curve",
    "summarize",
]

logger = logging.getLogger(__name__)

# Verdict convention used by every function here: a part / pixel is anomalous iff score > threshold.

# 8-connectivity inside each image and none across images, so one `ndimage.label` call labels the whole
# (N, H, W) stack and regions come out pooled over images with distinct labels.
_PER_IMAGE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_PER_IMAGE_8_CONNECTIVITY[1] = True


class MetricInputError(ValueError):
    """Inputs from which a metric cannot be computed (shape, values, class balance, parameters)."""


class DegenerateCurveError(MetricInputError):
    """The reference-variant PRO curve keeps fewer than two distinct FPR values below the limit."""


# --------------------------------------------------------------------------- input checks


def _check_scores(name: str, scores: np.ndarray, ndim: int = 1) -> np.ndarray:
    """Return `scores` as a float array after checking its rank and finiteness."""
    arr = np.asarray(scores)
    if arr.ndim != ndim:
        raise MetricInputError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise MetricInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.size == 0:
        raise MetricInputError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise MetricInputError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite value(s)")
    return arr


def _check_labels(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (bool labels, float scores), both (N,), with both classes present."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise MetricInputError(f"labels must be 1-D, got shape {lab.shape}")
    sc = _check_scores("scores", scores)
    if lab.shape != sc.shape:
        raise MetricInputError(f"labels {lab.shape} and scores {sc.shape} must have the same shape")
    lab = lab > 0
    n_pos = int(lab.sum())
    if n_pos == 0 or n_pos == lab.size:
        raise MetricInputError(f"labels need both classes, got {n_pos} anomalous of {lab.size}")
    return lab, sc


def _check_maps(gt_masks: np.ndarray, anomaly_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (bool gt, float maps), both (N, H, W), with positive and negative pixels present."""
    maps = _check_scores("anomaly_maps", anomaly_maps, ndim=3)
    gt = np.asarray(gt_masks)
    if gt.shape != maps.shape:
        raise MetricInputError(f"gt_masks {gt.shape} and anomaly_maps {maps.shape} must have the same shape")
    gt = gt > 0
    n_pos = int(gt.sum())
    if n_pos == 0:
        raise MetricInputError("gt_masks holds no positive pixel (gt > 0); pixel metrics are undefined")
    if n_pos == gt.size:
        raise MetricInputError("gt_masks holds no negative pixel; pixel metrics are undefined")
    return gt, maps


def _check_fpr_limit(fpr_limit: float) -> float:
    if not (math.isfinite(fpr_limit) and 0.0 < fpr_limit <= 1.0):
        raise MetricInputError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return float(fpr_limit)


# --------------------------------------------------------------------------- rank statistics


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U / (P·N), ties count one half) from the two classes' scores.

    Sorting only the negatives and binary-searching the positives keeps memory at one copy of the data,
    where sklearn builds several full-length arrays (it matters for 200 maps at 576²).
    """
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    not_above = np.searchsorted(neg_sorted, pos, side="right")
    wins = below.sum(dtype=np.float64) + 0.5 * (not_above - below).sum(dtype=np.float64)
    return float(wins / (float(pos.size) * float(neg.size)))


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision Σ (R_k − R_{k−1}) · P_k over descending thresholds, as sklearn defines it.

    Recall only changes at a positive's score, so the distinct positive scores are the only thresholds
    that add to the sum.
    """
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    thresholds = np.unique(pos_sorted)[::-1]
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    recall_steps = np.diff(tp, prepend=0) / pos.size
    return float(np.sum(recall_steps * tp / (tp + fp)))


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level ROC AUC.

    `labels`: (N,) bool or int, nonzero = anomalous part. `scores`: (N,) float, any unit, higher = more
    anomalous. Both classes must be present.
    """
    lab, sc = _check_labels(labels, scores)
    return _auroc(sc[lab], sc[~lab])


def image_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level average precision (anomalous = positive class); arguments as in `image_auroc`."""
    lab, sc = _check_labels(labels, scores)
    return _average_precision(sc[lab], sc[~lab])


def pixel_auroc(gt_masks: np.ndarray, anomaly_maps: np.ndarray) -> float:
    """ROC AUC over all pixels of all images, good and defective, with no foreground restriction.

    `gt_masks`: (N, H, W) bool or int, gt > 0 = defective pixel. `anomaly_maps`: (N, H, W) float, any unit.
    """
    gt, maps = _check_maps(gt_masks, anomaly_maps)
    return _auroc(maps[gt], maps[~gt])


def pixel_ap(gt_masks: np.ndarray, anomaly_maps: np.ndarray) -> float:
    """Average precision over all pixels of all images; arguments as in `pixel_auroc`."""
    gt, maps = _check_maps(gt_masks, anomaly_maps)
    return _average_precision(maps[gt], maps[~gt])


# --------------------------------------------------------------------------- per-region overlap


def _region_weights(gt: np.ndarray) -> np.ndarray:
    """Weight 1 / (region area · number of regions) for each positive pixel, in `gt[gt]` order.

    Summing these weights over the pixels flagged at a threshold gives PRO: the mean over all connected
    components (pooled across images) of the fraction of the component that is flagged.
    """
    labels, n_regions = ndimage.label(gt, structure=_PER_IMAGE_8_CONNECTIVITY)
    areas = np.bincount(labels.ravel())
    return 1.0 / (areas[labels[gt]].astype(np.float64) * n_regions)


def _tail_mass(scores: np.ndarray, weights: np.ndarray | None, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    """For each threshold, the summed weight of scores >= it (> it if `strict`); weights None = 1/len.

    One sort, then a binary search per threshold: O((n + t) log n) instead of a pass per threshold.
    """
    side: Literal["left", "right"] = "right" if strict else "left"
    if weights is None:
        first_in = np.searchsorted(np.sort(scores), thresholds, side=side)
        # Integer counts keep the FPR exactly monotone, which `_area_up_to` relies on.
        return (scores.size - first_in) / scores.size
    order = np.argsort(scores, kind="stable")
    first_in = np.searchsorted(scores[order], thresholds, side=side)
    w = weights[order]
    # Summing from the top keeps the value at the lowest threshold as close to 1 as float64 allows.
    suffix = np.append(np.cumsum(w[::-1])[::-1], 0.0)
    return np.clip(suffix[first_in], 0.0, 1.0)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid-rule integral of y over x (np.trapezoid is numpy >= 2 only)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


def pro_curve(gt_masks: np.ndarray, anomaly_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-region-overlap curve at every distinct score, thresholds descending.

    `gt_masks`: (N, H, W) bool or int, gt > 0 = defective; regions are its 8-connected components in each
    image. `anomaly_maps`: (N, H, W) float, any unit. A pixel is flagged at threshold t iff score >= t,
    so each point is the curve just below a distinct score; pixels with tied scores enter together.
    Returns (fpr, pro), both (K + 1,) float64 for K distinct scores, starting at (0, 0) and ending at
    (1, 1). FPR = flagged negative pixels / all negative pixels over all images; PRO = mean over all
    regions of the flagged fraction of the region. FPR is non-decreasing.
    """
    gt, maps = _check_maps(gt_masks, anomaly_maps)
    thresholds = np.unique(maps)[::-1]
    fpr = _tail_mass(maps[~gt], None, thresholds, strict=False)
    pro = _tail_mass(maps[gt], _region_weights(gt), thresholds, strict=False)
    return np.append(0.0, fpr), np.append(0.0, pro)


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under pro(fpr) from 0 to exactly `limit`, interpolating the point at `limit`."""
    cut = int(np.searchsorted(fpr, limit, side="right"))  # fpr[:cut] <= limit < fpr[cut:]
    x, y = fpr[:cut], pro[:cut]
    if cut < fpr.size:
        t = (limit - fpr[cut - 1]) / (fpr[cut] - fpr[cut - 1])
        x = np.append(x, limit)
        y = np.append(y, pro[cut - 1] + t * (pro[cut] - pro[cut - 1]))
    return _trapezoid(x, y)


def aupro(gt_masks: np.ndarray, anomaly_maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Standard MVTec 3D-AD AUPRO: area under the exact PRO curve for FPR in [0, fpr_limit], / fpr_limit.

    Arguments as in `pro_curve`; `fpr_limit` in (0, 1]. 1.0 for a map that ranks every defective pixel
    above every good one, about fpr_limit / 2 for random scores. Invariant to any strictly increasing
    transform of the scores. This is the number M3DM, CFM and the MVTec 3D-AD evaluation code report;
    it is not comparable with `aupro_reference_variant`.
    """
    limit = _check_fpr_limit(fpr_limit)
    fpr, pro = pro_curve(gt_masks, anomaly_maps)
    return _area_up_to(fpr, pro, limit) / limit


def aupro_reference_variant(
    gt_masks: np.ndarray,
    anomaly_maps: np.ndarray,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
) -> float:
    """NON-STANDARD AUPRO as computed by the BridgeNet / GLASS code, for comparison with the paper only.

    Arguments as in `aupro`. Differences from the standard metric (docs/METHOD.md#metrics):
    - `num_thresholds` thresholds min + k·(max − min)/num_thresholds, k = 0..num_thresholds−1, over the
      global score range of all maps (the reference min–max normalises first; that is the same grid);
    - a pixel is flagged iff score > threshold; before measuring the per-region overlap the flagged map
      of each image is dilated with a 5×5 square, which inflates PRO; FPR uses the undilated map;
    - only thresholds with FPR < fpr_limit are kept, their FPRs are min–max rescaled to [0, 1] by their
      own range (not divided by fpr_limit, no interpolation at the limit), then trapezoid-integrated.
    Unlike the reference (which casts masks to int and returns 0 on any exception) positives are gt > 0,
    and a constant map or a degenerate curve raises (`DegenerateCurveError` when fewer than two distinct
    FPRs stay below the limit, e.g. for a near-perfect map).
    """
    limit = _check_fpr_limit(fpr_limit)
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 2:
        raise MetricInputError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
    gt, maps = _check_maps(gt_masks, anomaly_maps)
    lo, hi = float(maps.min()), float(maps.max())
    if hi <= lo:
        raise MetricInputError(f"anomaly_maps are constant ({lo}); the threshold grid is empty")
    thresholds = lo + (hi - lo) / num_thresholds * np.arange(num_thresholds)
    # Dilating (map > t) by a 5×5 square equals (5×5 max-filtered map > t) for every t: one filter pass
    # replaces a dilation per threshold and image. cval=-inf mirrors OpenCV's dilate ignoring the border.
    dilated = ndimage.maximum_filter(maps, size=(1, 5, 5), mode="constant", cval=-np.inf)
    fpr = _tail_mass(maps[~gt], None, thresholds, strict=True)
    pro = _tail_mass(dilated[gt], _region_weights(gt), thresholds, strict=True)
    keep = fpr < limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2 or fpr.max() == fpr.min():
        raise DegenerateCurveError(
            f"{fpr.size} of {num_thresholds} thresholds have FPR < {limit}, with "
            f"{np.unique(fpr).size} distinct FPR value(s); the rescaled curve needs at least two"
        )
    scaled = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    # Thresholds ascend, so FPR descends; the area is the integral taken the other way round.
    return -_trapezoid(scaled, pro)


# --------------------------------------------------------------------------- thresholds


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Threshold maximising image-level F1 with verdict score > threshold; returns (threshold, f1).

    `labels`: (N,) bool or int, nonzero = anomalous. `scores`: (N,) float. The threshold returned is
    a score from the input (the highest one still judged good) or, when flagging every part is best,
    the float just below the minimum. Among equal F1 the highest threshold wins (fewer parts flagged).
    """
    lab, sc = _check_labels(labels, scores)
    pos_sorted, neg_sorted = np.sort(sc[lab]), np.sort(sc[~lab])
    n_pos = pos_sorted.size
    candidates = np.unique(sc)
    candidates = np.append(np.nextafter(candidates[0], -np.inf), candidates)
    tp = n_pos - np.searchsorted(pos_sorted, candidates, side="right")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, candidates, side="right")
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = f1.size - 1 - int(np.argmax(f1[::-1]))
    return float(candidates[best]), float(f1[best])


# --------------------------------------------------------------------------- summaries


def summarize(
    labels: np.ndarray,
    scores: np.ndarray,
    gt_masks: np.ndarray,
    anomaly_maps: np.ndarray,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All test-set metrics at once: image/pixel AUROC and AP, standard AUPRO and the reference variant.

    `labels`, `scores`: (N,) as in `image_auroc`; `gt_masks`, `anomaly_maps`: (N, H, W) as in `aupro`,
    same N and order. A degenerate reference-variant curve is reported as NaN with a warning logged,
    so that a near-perfect model does not abort the evaluation; every other problem raises.
    """
    n_images = np.asarray(labels).shape[:1]
    if n_images != np.asarray(anomaly_maps).shape[:1]:
        raise MetricInputError(f"labels cover {n_images} images but anomaly_maps {np.asarray(anomaly_maps).shape[:1]}")
    try:
        reference = aupro_reference_variant(gt_masks, anomaly_maps, fpr_limit)
    except DegenerateCurveError as err:
        logger.warning("aupro_reference_variant undefined, reported as NaN: %s", err)
        reference = float("nan")
    return {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": image_ap(labels, scores),
        "pixel_auroc": pixel_auroc(gt_masks, anomaly_maps),
        "pixel_ap": pixel_ap(gt_masks, anomaly_maps),
        "aupro": aupro(gt_masks, anomaly_maps, fpr_limit),
        "aupro_reference_variant": reference,
    }


def per_defect_image_auroc(defects: Sequence[str], scores: np.ndarray, good_label: str = "good") -> dict[str, float]:
    """Image AUROC of each defect type against the good parts, keyed by defect type (sorted).

    `defects`: N defect-type names, `good_label` for good parts (MVTec folder names). `scores`: (N,) float.
    """
    names = np.asarray(list(defects), dtype=object)
    sc = _check_scores("scores", scores)
    if names.shape != sc.shape:
        raise MetricInputError(f"defects ({names.size}) and scores {sc.shape} must have the same length")
    good = names == good_label
    if not good.any():
        raise MetricInputError(f"no part is labelled {good_label!r}; per-defect AUROC needs good parts")
    kinds = sorted(set(names[~good].tolist()))
    if not kinds:
        raise MetricInputError(f"every part is labelled {good_label!r}; there is no defect type")
    return {kind: _auroc(sc[names == kind], sc[good]) for kind in kinds}
