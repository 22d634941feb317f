"""Tests for training.evaluation.metrics against known values, slow brute-force versions and sklearn."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from training.evaluation.metrics import (
    DegenerateCurveError,
    MetricInputError,
    aupro,
    aupro_reference_variant,
    f1_optimal_threshold,
    image_ap,
    image_auroc,
    per_defect_image_auroc,
    pixel_ap,
    pixel_auroc,
    pro_curve,
    summarize,
)

# ----------------------------------------------------------------------------- slow reference versions


def _brute_force_aupro(gt: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Standard AUPRO by an explicit loop over every distinct score, labelling regions per image."""
    gt = gt > 0
    regions = []  # (image index, boolean region mask)
    for i in range(gt.shape[0]):
        labels, n = ndimage.label(gt[i], structure=np.ones((3, 3)))
        regions += [(i, labels == k) for k in range(1, n + 1)]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        fpr = (flagged & ~gt).sum() / (~gt).sum()
        pro = np.mean([flagged[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    # Integrate each linear segment clipped to [0, fpr_limit].
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= fpr_limit or x1 == x0:
            continue
        x_end = min(x1, fpr_limit)
        y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
        area += (x_end - x0) * (y0 + y_end) / 2
    return area / fpr_limit


def _literal_reference_aupro(gt: np.ndarray, maps: np.ndarray, fpr_limit: float, num_th: int) -> float:
    """The reference variant written the way the authors' code does it: dilation per threshold and image."""
    gt = gt > 0
    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    for th in lo + (hi - lo) / num_th * np.arange(num_th):
        binary = maps > th
        overlaps = []
        for b, m in zip(binary, gt, strict=True):
            dilated = ndimage.binary_dilation(b, structure=np.ones((5, 5)))
            for region in measure.regionprops(measure.label(m, connectivity=2)):
                rows, cols = region.coords[:, 0], region.coords[:, 1]
                overlaps.append(dilated[rows, cols].sum() / region.area)
        fprs.append((binary & ~gt).sum() / (~gt).sum())
        pros.append(np.mean(overlaps))
    fpr, pro = np.array(fprs), np.array(pros)
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    return auc((fpr - fpr.min()) / (fpr.max() - fpr.min()), pro)


def _random_case(seed: int, n: int = 3, size: int = 16, levels: int | None = None):
    """Small maps with several regions (of different sizes) in several images, one image defect-free."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n - 1):
        for _ in range(2):
            r, c = rng.integers(0, size - 5, 2)
            h, w = rng.integers(1, 5, 2)
            gt[i, r : r + h, c : c + w] = 255
    maps = rng.random((n, size, size)) + 0.6 * (gt > 0)
    maps = ndimage.gaussian_filter(maps, sigma=(0, 1, 1))
    if levels is not None:  # quantise to create many tied scores
        maps = np.round(maps * levels) / levels
    return gt, maps


# ----------------------------------------------------------------------------- AUPRO


def test_aupro_known_value_one_column_mask():
    maps = (np.arange(2800) / 2800).reshape(1, 400, 7)
    gt = np.zeros_like(maps, dtype=bool)
    gt[0, :, 3] = True
    assert aupro(gt, maps, fpr_limit=1 / 3) == pytest.approx(1 / 6, abs=1e-3)


def test_aupro_perfect_and_reversed_maps():
    gt, maps = _random_case(0)
    perfect = (gt > 0) + 0.1 * maps  # every defective pixel above every good one
    assert aupro(gt, perfect) == pytest.approx(1.0, abs=1e-12)
    assert aupro(gt, -perfect) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("seed", "levels", "fpr_limit"), [(1, None, 0.3), (2, 12, 0.3), (3, 6, 1.0), (4, None, 0.05)])
def test_aupro_matches_brute_force(seed, levels, fpr_limit):
    gt, maps = _random_case(seed, levels=levels)
    assert aupro(gt, maps, fpr_limit) == pytest.approx(_brute_force_aupro(gt, maps, fpr_limit), abs=1e-3)


def test_aupro_invariant_to_monotone_transform():
    gt, maps = _random_case(5, levels=20)
    assert aupro(gt, np.exp(3 * maps) - 7.0) == pytest.approx(aupro(gt, maps), abs=1e-12)


@pytest.mark.parametrize("big_first", [True, False])
def test_regions_count_equally_whatever_their_size(big_first):
    rng = np.random.default_rng(6)
    maps = rng.uniform(0.1, 0.9, (1, 32, 32))
    gt = np.zeros(maps.shape, dtype=bool)
    gt[0, 2:12, 2:12] = True  # 100 px
    gt[0, 20:22, 20:22] = True  # 4 px
    big, small = (0.95, 0.0) if big_first else (0.0, 0.95)
    maps[0, 2:12, 2:12] = big
    maps[0, 20:22, 20:22] = small
    # One of two regions is found before any false positive, the other only after all of them.
    assert aupro(gt, maps) == pytest.approx(0.5, abs=1e-12)
    fpr, pro = pro_curve(gt, maps)
    assert pro[fpr == 0] == pytest.approx([0.0, 0.5], abs=1e-12)


def test_pro_curve_shape_and_ends():
    gt, maps = _random_case(7, levels=10)
    fpr, pro = pro_curve(gt, maps)
    assert fpr.shape == pro.shape == (np.unique(maps).size + 1,)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)


# ----------------------------------------------------------------------------- reference variant


@pytest.mark.parametrize("seed", [8, 9])
def test_reference_variant_matches_literal_implementation(seed):
    gt, maps = _random_case(seed, size=20)
    expected = _literal_reference_aupro(gt, maps, 0.3, 50)
    assert aupro_reference_variant(gt, maps, 0.3, num_thresholds=50) == pytest.approx(expected, abs=1e-9)


def test_reference_variant_exceeds_standard_when_dilation_helps():
    rng = np.random.default_rng(10)
    maps = rng.uniform(0.0, 0.8, (2, 32, 32))
    gt = np.zeros(maps.shape, dtype=bool)
    gt[0, 8:16, 8:16] = True
    gt[1, 20:26, 4:12] = True
    # Only every other defective pixel is detected: a 5×5 dilation covers the rest of each region.
    checker = (np.indices((32, 32)).sum(axis=0) % 2 == 0)[None] & gt
    maps[checker] = 0.95
    standard = aupro(gt, maps)
    assert standard < 0.6
    assert aupro_reference_variant(gt, maps) > standard + 0.3


def test_reference_variant_degenerate_curve_raises():
    gt, _ = _random_case(11)
    with pytest.raises(DegenerateCurveError, match="distinct FPR"):
        aupro_reference_variant(gt, (gt > 0).astype(float))


# ----------------------------------------------------------------------------- AUROC, AP


def test_image_auroc_and_ap_match_sklearn_with_ties():
    rng = np.random.default_rng(12)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # ties across classes
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(labels.astype(int), scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_pixel_auroc_and_ap_match_sklearn():
    gt, maps = _random_case(13, levels=15)
    flat_gt, flat = (gt > 0).ravel(), maps.ravel()
    assert pixel_auroc(gt, maps) == pytest.approx(roc_auc_score(flat_gt, flat), abs=1e-12)
    assert pixel_ap(gt, maps) == pytest.approx(average_precision_score(flat_gt, flat), abs=1e-12)


def test_per_defect_image_auroc_against_sklearn():
    rng = np.random.default_rng(14)
    defects = ["good"] * 10 + ["crack"] * 6 + ["hole"] * 5
    scores = rng.random(21) + np.array([0.0] * 10 + [0.5] * 6 + [0.1] * 5)
    result = per_defect_image_auroc(defects, scores)
    assert list(result) == ["crack", "hole"]
    good = scores[:10]
    for kind, sl in [("crack", slice(10, 16)), ("hole", slice(16, 21))]:
        sub = np.concatenate([good, scores[sl]])
        lab = np.r_[np.zeros(10), np.ones(sub.size - 10)]
        assert result[kind] == pytest.approx(roc_auc_score(lab, sub), abs=1e-12)


# ----------------------------------------------------------------------------- F1 threshold


def test_f1_threshold_separable_case():
    labels = np.array([0, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.3, 0.2, 0.8, 0.7, 0.4, 0.9])
    threshold, f1 = f1_optimal_threshold(labels, scores)
    assert f1 == 1.0
    assert threshold == 0.4  # the highest good score; verdict is score > threshold
    assert np.array_equal(scores > threshold, labels.astype(bool))


def test_f1_threshold_is_best_among_all_cuts():
    rng = np.random.default_rng(16)
    labels = rng.random(40) < 0.5
    scores = np.round(rng.random(40) + 0.4 * labels, 1)
    threshold, f1 = f1_optimal_threshold(labels, scores)

    def f1_at(t: float) -> float:
        flagged = scores > t
        tp = np.sum(flagged & labels)
        return 2 * tp / (flagged.sum() + labels.sum())

    assert f1 == pytest.approx(f1_at(threshold), abs=1e-12)
    assert f1 >= max(f1_at(t) for t in np.r_[scores, scores.min() - 1]) - 1e-12


# ----------------------------------------------------------------------------- summary


def test_summarize_collects_every_metric():
    gt, maps = _random_case(17)
    labels = gt.reshape(gt.shape[0], -1).max(axis=1) > 0
    scores = maps.reshape(maps.shape[0], -1).max(axis=1)
    labels[0], labels[-1] = True, False  # ensure both classes
    result = summarize(labels, scores, gt, maps)
    assert result == {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": image_ap(labels, scores),
        "pixel_auroc": pixel_auroc(gt, maps),
        "pixel_ap": pixel_ap(gt, maps),
        "aupro": aupro(gt, maps),
        "aupro_reference_variant": aupro_reference_variant(gt, maps),
    }


def test_summarize_reports_degenerate_reference_as_nan(caplog):
    gt, _ = _random_case(18)
    perfect = (gt > 0).astype(float)
    labels = np.array([True, True, False])
    with caplog.at_level(logging.WARNING, logger="training.evaluation.metrics"):
        result = summarize(labels, np.array([0.9, 0.8, 0.1]), gt, perfect)
    assert np.isnan(result["aupro_reference_variant"])
    assert result["aupro"] == pytest.approx(1.0, abs=1e-12)
    assert "aupro_reference_variant undefined" in caplog.text


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("metric", [aupro, aupro_reference_variant, pixel_auroc, pixel_ap, pro_curve])
def test_map_metrics_reject_bad_inputs(metric):
    gt, maps = _random_case(19)
    with pytest.raises(MetricInputError, match="same shape"):
        metric(gt[:, :-1], maps)
    with pytest.raises(MetricInputError, match="no positive pixel"):
        metric(np.zeros_like(gt), maps)
    with pytest.raises(MetricInputError, match="no negative pixel"):
        metric(np.ones_like(gt), maps)
    with pytest.raises(MetricInputError, match="3 dimension"):
        metric(gt[0], maps[0])
    for bad in (np.nan, np.inf):
        broken = maps.copy()
        broken[1, 2, 3] = bad
        with pytest.raises(MetricInputError, match="non-finite"):
            metric(gt, broken)


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5, float("nan")])
def test_aupro_rejects_fpr_limit_outside_unit_interval(fpr_limit):
    gt, maps = _random_case(20)
    for metric in (aupro, aupro_reference_variant):
        with pytest.raises(MetricInputError, match="fpr_limit"):
            metric(gt, maps, fpr_limit)


def test_reference_variant_rejects_constant_map_and_bad_grid():
    gt, maps = _random_case(21)
    with pytest.raises(MetricInputError, match="constant"):
        aupro_reference_variant(gt, np.full(maps.shape, 0.5))
    with pytest.raises(MetricInputError, match="num_thresholds"):
        aupro_reference_variant(gt, maps, num_thresholds=1)


def test_score_metrics_reject_bad_inputs():
    with pytest.raises(MetricInputError, match="both classes"):
        image_auroc(np.ones(4), np.arange(4.0))
    with pytest.raises(MetricInputError, match="same shape"):
        image_ap(np.array([0, 1]), np.arange(3.0))
    with pytest.raises(MetricInputError, match="non-finite"):
        f1_optimal_threshold(np.array([0, 1]), np.array([0.2, np.nan]))
    with pytest.raises(MetricInputError, match="'good'"):
        per_defect_image_auroc(["crack", "hole"], np.array([0.1, 0.2]))
    with pytest.raises(MetricInputError, match="no defect type"):
        per_defect_image_auroc(["good", "good"], np.array([0.1, 0.2]))
    gt, maps = _random_case(22)
    with pytest.raises(MetricInputError, match="images"):
        summarize(np.array([0, 1]), np.array([0.1, 0.2]), gt, maps)
