"""Decision thresholds from a few good parts' scores, with the sample size accounted for (numpy/scipy only).

With a dozen good parts, the empirical 1 % quantile is the largest of them, and an unseen good part exceeds
the largest of n seen ones with probability 1/(n+1) (8 % for n = 12) whatever the target: the verdict
then rejects far more good parts than asked. The methods here fit the good scores' distribution and put
the threshold at an upper confidence bound of its (1 − rate) quantile, so the threshold grows as fewer
parts are available. Scores live in [0, 1] (sigmoid outputs crowding towards 1), so the fits are made
on their logits, where a good part's score is close to normal (docs/RESULTS.md, calibration section).

Every method returns a `ThresholdEstimate`: the threshold, the method's inputs, and the false-reject rate
it expects on unseen good parts with an interval (parametric bootstrap of the fit), plus the
distribution-free upper bound that the calibration parts alone support.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from service.lifecycle.calibration import Calibration
from service.lifecycle.rate import check_false_reject_rate

log = logging.getLogger(__name__)

Method = Literal["empirical", "normal_prediction", "normal_tolerance", "gumbel_tolerance", "synthetic_margin"]
METHODS: tuple[Method, ...] = (
    "empirical",
    "normal_prediction",
    "normal_tolerance",
    "gumbel_tolerance",
    "synthetic_margin",
)
DEFAULT_METHOD: Method = "normal_tolerance"
DEFAULT_CONFIDENCE = 0.95  # one-sided confidence of the quantile bound
INTERVAL = 0.90  # two-sided coverage of the reported false-reject-rate interval
# Pixel threshold: a point estimate (normal prediction limit) on the per-part map maxima, aiming at 5 % of
# good parts showing any region. Regions locate defects on parts the image score already rejected; a
# bound as cautious as the image threshold's leaves rejected parts without any region (measured:
# docs/RESULTS.md, calibration section).
PIXEL_RATE = 0.05
PIXEL_METHOD: Method = "normal_prediction"
# The review band's upper edge: the same method at this false-reject rate. Parts between the threshold (at
# the run's rate) and this edge go to a person (REVIEW) instead of the scrap bin: at most this share of good
# parts is rejected outright. No band when the run's own rate is at or below it.
REVIEW_RATE = 0.005
_BOOTSTRAP = 2000
MIN_PARTS_FOR_A_FIT = 3  # the parametric and tail methods need a spread to fit
_EPS = 1e-6  # scores are clipped to [eps, 1 − eps] before the logit


class CalibrationInputError(ValueError):
    """Too few, or non-finite, scores for the method asked for."""


@dataclass(frozen=True)
class ThresholdEstimate:
    """A threshold (NG iff score > threshold) and what it is expected to do on unseen good parts."""

    method: str
    threshold: float
    target_false_reject_rate: float
    confidence: float | None
    n_parts: int
    inputs: dict[str, Any]
    expected_false_reject_rate: float  # under the fit (or the empirical share for "empirical")
    false_reject_rate_interval: tuple[float, float]  # INTERVAL coverage
    # One-sided 95 % upper bound on the false-reject rate from the calibration parts alone (Clopper-Pearson):
    # with n parts and k above the threshold, what any distribution could still do.
    distribution_free_upper_bound: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["false_reject_rate_interval"] = list(self.false_reject_rate_interval)
        return out


def _check(scores: np.ndarray, name: str, minimum: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size < minimum:
        raise CalibrationInputError(f"{name}: {s.size} score(s); this method needs at least {minimum}")
    if not np.isfinite(s).all():
        raise CalibrationInputError(f"{name}: {int((~np.isfinite(s)).sum())} non-finite score(s)")
    return s


def _check_rate(rate: float) -> None:
    try:
        check_false_reject_rate(rate)
    except ValueError as exc:
        raise CalibrationInputError(f"target {exc}") from None


def logit(x: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(x, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def expit(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def binomial_upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen k times in n trials."""
    if n <= 0:
        return 1.0
    return 1.0 if k >= n else float(stats.beta.ppf(confidence, k + 1, n - k))


def _interval(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
    return float(lo), float(hi)


def _summary(s: np.ndarray) -> dict[str, float]:
    z = logit(s)
    return {
        "mean": float(s.mean()),
        "std": float(s.std(ddof=1)) if s.size > 1 else 0.0,
        "max": float(s.max()),
        "logit_mean": float(z.mean()),
        "logit_std": float(z.std(ddof=1)) if s.size > 1 else 0.0,
    }


def _finish(method: str, s: np.ndarray, t: float, rate: float, confidence: float | None, inputs: dict,
            expected: float, interval: tuple[float, float], notes: list[str]) -> ThresholdEstimate:  # fmt: skip
    k = int((s > t).sum())
    return ThresholdEstimate(
        method=method,
        threshold=float(t),
        target_false_reject_rate=rate,
        confidence=confidence,
        n_parts=int(s.size),
        inputs={"n": int(s.size), **_summary(s), **inputs},
        expected_false_reject_rate=float(expected),
        false_reject_rate_interval=interval,
        distribution_free_upper_bound=binomial_upper_bound(k, s.size),
        notes=notes,
    )


def empirical(scores: np.ndarray, rate: float = 0.01) -> ThresholdEstimate:
    """The (1 − rate) empirical quantile (numpy "inverted_cdf"): the maximum when rate · n < 1."""
    _check_rate(rate)
    s = _check(scores, "good scores", 1)
    # The epsilon keeps e.g. 0.29 · 100 = 28.999999999999996 from losing an allowed reject.
    allowed = min(math.floor(rate * s.size + 1e-9), s.size - 1)
    t = float(np.partition(s, s.size - 1 - allowed)[s.size - 1 - allowed])
    k = int((s > t).sum())
    # An unseen part exceeds the (n − k)-th of n exchangeable scores with probability (k + 1)/(n + 1).
    expected = (k + 1) / (s.size + 1)
    interval = (float(stats.beta.ppf(0.05, k + 1, s.size - k)), float(stats.beta.ppf(0.95, k + 1, s.size - k)))
    notes = [f"{s.size} parts: the threshold is the maximum good score"] if allowed == 0 else []
    return _finish("empirical", s, t, rate, None, {}, expected, interval, notes)


def normal_tolerance_factor(n: int, rate: float, confidence: float) -> float:
    """k such that mean + k·sd (sample sd) bounds the (1 − rate) quantile of a normal with `confidence`."""
    z = stats.norm.ppf(1 - rate)
    return float(stats.nct.ppf(confidence, n - 1, z * math.sqrt(n)) / math.sqrt(n))


def _bootstrap_normal(z: np.ndarray, t_logit: float, seed: int) -> np.ndarray:
    """False-reject rates at `t_logit` of normal fits to samples drawn from the fit of `z`."""
    rng = np.random.default_rng(seed)
    m, sd = z.mean(), z.std(ddof=1)
    draws = rng.normal(m, sd, size=(_BOOTSTRAP, z.size))
    return stats.norm.sf(t_logit, draws.mean(1), draws.std(1, ddof=1))


def normal_tolerance(
    scores: np.ndarray, rate: float = 0.01, confidence: float = DEFAULT_CONFIDENCE, *, seed: int = 0
) -> ThresholdEstimate:
    """Upper `confidence` bound on the (1 − rate) quantile of a normal fitted to the logits of the scores
    (a one-sided normal tolerance limit: mean + k(n)·sd, k from the noncentral t)."""
    _check_rate(rate)
    s = _check(scores, "good scores", 3)
    z = logit(s)
    m, sd = float(z.mean()), float(z.std(ddof=1))
    k = normal_tolerance_factor(s.size, rate, confidence)
    t_logit = m + k * sd
    expected = float(stats.norm.sf(t_logit, m, sd)) if sd > 0 else 0.0
    boot = _bootstrap_normal(z, t_logit, seed) if sd > 0 else np.zeros(1)
    notes = [] if sd > 0 else ["all good scores are equal: the threshold is that score"]
    inputs = {"tolerance_factor": k, "scale": "logit"}
    return _finish("normal_tolerance", s, float(expit(t_logit)), rate, confidence, inputs, expected,
                   _interval(boot), notes)  # fmt: skip


def normal_prediction(scores: np.ndarray, rate: float = 0.01, *, seed: int = 0) -> ThresholdEstimate:
    """Upper (1 − rate) prediction limit for the next part's logit under a normal fit:
    mean + t(n−1, 1 − rate)·sd·√(1 + 1/n). Averaged over calibration samples its false-reject rate is
    exactly `rate` (for normal logits); any one calibration may land above or below it."""
    _check_rate(rate)
    s = _check(scores, "good scores", 3)
    z = logit(s)
    m, sd = float(z.mean()), float(z.std(ddof=1))
    factor = float(stats.t.ppf(1 - rate, s.size - 1) * math.sqrt(1 + 1 / s.size))
    t_logit = m + factor * sd
    expected = float(stats.norm.sf(t_logit, m, sd)) if sd > 0 else 0.0
    boot = _bootstrap_normal(z, t_logit, seed) if sd > 0 else np.zeros(1)
    inputs = {"prediction_factor": factor, "scale": "logit"}
    return _finish("normal_prediction", s, float(expit(t_logit)), rate, None, inputs, expected, _interval(boot), [])


def _gumbel_fit(z: np.ndarray) -> tuple[float, float]:
    """Method-of-moments Gumbel (max) fit: stable for a dozen points where the MLE can wander."""
    beta = float(z.std(ddof=1) * math.sqrt(6) / math.pi)
    return float(z.mean() - np.euler_gamma * beta), beta


def gumbel_tolerance(
    scores: np.ndarray, rate: float = 0.01, confidence: float = DEFAULT_CONFIDENCE, *, seed: int = 0
) -> ThresholdEstimate:
    """Upper `confidence` bound (parametric bootstrap) on the (1 − rate) quantile of a Gumbel fitted to the
    logits: the image score is a maximum over patches, and maxima tend to a Gumbel law."""
    _check_rate(rate)
    s = _check(scores, "good scores", 3)
    z = logit(s)
    loc, scale = _gumbel_fit(z)
    if scale <= 0:
        return normal_tolerance(s, rate, confidence, seed=seed)
    rng = np.random.default_rng(seed)
    draws = stats.gumbel_r.rvs(loc, scale, size=(_BOOTSTRAP, z.size), random_state=rng)
    b_scale = draws.std(1, ddof=1) * math.sqrt(6) / math.pi
    b_loc = draws.mean(1) - np.euler_gamma * b_scale
    q_hat = float(stats.gumbel_r.ppf(1 - rate, loc, scale))
    # Percentile bootstrap bound of the quantile estimate, never below the point estimate.
    t_logit = max(q_hat, float(np.quantile(stats.gumbel_r.ppf(1 - rate, b_loc, b_scale), confidence)))
    expected = float(stats.gumbel_r.sf(t_logit, loc, scale))
    boot = stats.gumbel_r.sf(t_logit, b_loc, b_scale)
    inputs = {"location": loc, "scale_param": scale, "scale": "logit"}
    return _finish("gumbel_tolerance", s, float(expit(t_logit)), rate, confidence, inputs, expected,
                   _interval(boot), [])  # fmt: skip


def synthetic_margin(
    scores: np.ndarray,
    anomaly_scores: np.ndarray,
    rate: float = 0.01,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    seed: int = 0,
) -> ThresholdEstimate:
    """Between the good parts and the run's synthetic validation anomalies: the logit where both normal
    fits are equally many standard deviations away, but never below the good parts' tolerance bound."""
    good = normal_tolerance(scores, rate, confidence, seed=seed)
    a = _check(anomaly_scores, "synthetic anomaly scores", 3)
    z, za = logit(_check(scores, "good scores", 3)), logit(a)
    mg, sg, ma, sa = z.mean(), z.std(ddof=1), za.mean(), za.std(ddof=1)
    middle = float((mg * sa + ma * sg) / (sg + sa)) if sg + sa > 0 else float((mg + ma) / 2)
    t_logit = max(float(logit(good.threshold)), middle)
    expected = float(stats.norm.sf(t_logit, mg, sg)) if sg > 0 else 0.0
    boot = _bootstrap_normal(z, t_logit, seed) if sg > 0 else np.zeros(1)
    inputs = {"anomaly_n": int(a.size), "anomaly_logit_mean": float(ma), "anomaly_logit_std": float(sa),
              "equal_z_logit": middle, "scale": "logit"}  # fmt: skip
    return _finish("synthetic_margin", np.asarray(scores, np.float64), float(expit(t_logit)), rate, confidence,
                   inputs, expected, _interval(boot), [])  # fmt: skip


def estimate(
    method: Method,
    scores: np.ndarray,
    rate: float = 0.01,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    anomaly_scores: np.ndarray | None = None,
    seed: int = 0,
) -> ThresholdEstimate:
    """Dispatch by name; `anomaly_scores` only for "synthetic_margin"."""
    if method == "empirical":
        return empirical(scores, rate)
    if method == "normal_prediction":
        return normal_prediction(scores, rate, seed=seed)
    if method == "normal_tolerance":
        return normal_tolerance(scores, rate, confidence, seed=seed)
    if method == "gumbel_tolerance":
        return gumbel_tolerance(scores, rate, confidence, seed=seed)
    if method == "synthetic_margin":
        if anomaly_scores is None:
            raise CalibrationInputError("synthetic_margin needs the synthetic anomalies' scores")
        return synthetic_margin(scores, anomaly_scores, rate, confidence, seed=seed)
    raise CalibrationInputError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")


def map_maxima(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) anomaly maps → (N,) per-part maxima: a good part shows a region iff its maximum is above
    the pixel threshold, so bounding the maxima bounds the share of good parts that show any region."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3 or m.shape[0] == 0:
        raise CalibrationInputError(f"expected (N, H, W) maps, got shape {m.shape}")
    return m.reshape(m.shape[0], -1).max(axis=1)


def pixel_quantile(maps: np.ndarray, quantile: float = 0.999) -> float:
    """The `quantile` of every good pixel pooled (the simple alternative; pixels of one part are correlated,
    so this says little about how many good parts show a region)."""
    m = np.asarray(maps, dtype=np.float64)
    if not np.isfinite(m).all():
        raise CalibrationInputError("non-finite values in the good parts' maps")
    return float(np.quantile(m, quantile))


def score_stats(scores: np.ndarray) -> dict[str, float]:
    """Summary of good parts' scores: stored in the manifest so drift can be spotted in production."""
    s = np.asarray(scores, dtype=np.float64)
    return {
        "n": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std()),
        "min": float(s.min()),
        "max": float(s.max()),
        "p50": float(np.percentile(s, 50)),
        "p95": float(np.percentile(s, 95)),
        "p99": float(np.percentile(s, 99)),
    }


def calibrate_scores(
    scores: np.ndarray,
    maps: np.ndarray,
    *,
    rate: float = 0.01,
    method: Method = DEFAULT_METHOD,
    pixel_rate: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    source: str,
    anomaly_scores: np.ndarray | None = None,
    review_rate: float | None = REVIEW_RATE,
) -> Calibration:
    """Image and pixel thresholds from good parts' scores (N,) and anomaly maps (N, H, W): the image
    threshold by `method` for `rate`, the pixel threshold by `PIXEL_METHOD` on the per-part map maxima, so
    that about `pixel_rate` (default `PIXEL_RATE`) of good parts show a region at all; and the review band
    (`review_band`): its upper edge by the same method for `review_rate`, its lower edge the threshold.
    No band with `review_rate` None, at or above `rate`, or where the edge does not lie above the threshold
    (too few parts for the fit: both are the highest good score).
    """
    s = _check(scores, "good scores", 1)
    if np.asarray(maps).shape[0] != s.size:
        raise CalibrationInputError(f"{s.size} scores but {np.asarray(maps).shape[0]} maps")
    fallback = None
    if s.size < MIN_PARTS_FOR_A_FIT and method != "empirical":
        # A run with one or two good validation parts must still finish with a threshold: the largest good
        # score, flagged, rather than an error after hours of training. Recalibrate on more parts later.
        fallback = f"{s.size} good part(s): too few for {method!r} (needs {MIN_PARTS_FOR_A_FIT}); used 'empirical'"
        log.warning("calibration: %s", fallback)
        method = "empirical"
    image = estimate(method, s, rate, confidence, anomaly_scores=anomaly_scores)
    maxima = map_maxima(maps)
    if not np.isfinite(maxima).all():
        raise CalibrationInputError("non-finite values in the good parts' maps")
    p_rate = PIXEL_RATE if pixel_rate is None else pixel_rate
    pixel_method: Method = PIXEL_METHOD if s.size >= MIN_PARTS_FOR_A_FIT else "empirical"
    pixel = estimate(pixel_method, maxima, p_rate, confidence)
    return calibration_from(
        image,
        s,
        review_band=review_band(image, method, s, rate, review_rate, confidence, anomaly_scores),
        source=source,
        fallback=fallback,
        pixel_threshold=pixel.threshold,
        pixel={
            "method": f"{pixel.method} on the per-part maxima of the good parts' maps",
            "target_share_of_good_parts_with_a_region": p_rate,
            "inputs": pixel.inputs,
            "expected_share_of_good_parts_with_a_region": pixel.expected_false_reject_rate,
            "interval": list(pixel.false_reject_rate_interval),
        },
    )


def review_band(
    image: ThresholdEstimate,
    method: Method,
    scores: np.ndarray,
    rate: float,
    review_rate: float | None,
    confidence: float,
    anomaly_scores: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """The manifest's `review_band` for a threshold `image` set at `rate` by `method` on the good `scores`:
    the same method at `review_rate` for its upper edge; None when there is no band (see calibrate_scores)."""
    if review_rate is None:
        return None
    _check_rate(review_rate)
    if review_rate >= rate:
        log.info("calibration: no review band (its rate %g is not below the threshold's %g)", review_rate, rate)
        return None
    upper = estimate(method, scores, review_rate, confidence, anomaly_scores=anomaly_scores)
    if not upper.threshold > image.threshold:
        log.warning("calibration: no review band (%d parts: its edge is the threshold itself)", scores.size)
        return None
    return {
        "upper": upper.threshold,
        "method": upper.method,
        "target_false_reject_rate": review_rate,
        "expected_false_reject_rate": upper.expected_false_reject_rate,
        "expected_review_rate": max(0.0, image.expected_false_reject_rate - upper.expected_false_reject_rate),
    }


def calibration_from(
    image: ThresholdEstimate,
    scores: np.ndarray,
    *,
    source: str,
    pixel_threshold: float | None,
    pixel: dict[str, Any] | None,
    fallback: str | None = None,
    review_band: dict[str, Any] | None = None,
) -> Calibration:
    """The calibration record of image threshold `image`, fitted on the good `scores` (N,), with the pixel
    threshold and how it was set, and the review band (the manifest's `review_band`; None: OK / NG only)."""
    rate = image.target_false_reject_rate
    return Calibration(
        threshold=image.threshold,
        method=image.method,
        target_false_reject_rate=rate,
        n_parts=int(scores.size),
        score_stats=score_stats(scores),
        confidence=image.confidence,
        inputs=image.inputs,
        expected_false_reject_rate=image.expected_false_reject_rate,
        false_reject_rate_interval=image.false_reject_rate_interval,
        distribution_free_upper_bound=image.distribution_free_upper_bound,
        notes=image.notes,
        source=source,
        fallback=fallback,
        empirical_threshold=empirical(scores, rate).threshold,
        pixel_threshold=pixel_threshold,
        pixel=pixel,
        review_band=review_band,
    )
