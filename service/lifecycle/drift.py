"""The drift watch: per model and version, a rolling window of the line's parts compared with the good-score
distribution the version was calibrated on.

The reference is the calibration's normal fit on the logit scale (`calibration.inputs`: logit_mean, logit_std,
n; a manifest without one falls back to `score_stats`' p50 and p95). The window holds the scores of the last
`size` OK parts; an NG part in the same stretch enters as censored (its score may be a real defect's: only its
count matters, as a value above every OK score). Only low quantiles are read from it, so a few real defects
barely move them, while a shift that makes every part NG still shows:

- location: z = (window median − reference mean) / its standard error, which counts both the window's
  sampling error (π/2 · σ²/n for a median) and the calibration's own (σ²/n_cal: with 12 parts the reference
  is uncertain, and a bound that ignored it would cry wolf on every line that differs from 12 parts by chance);
- the implied false-reject rate: the share of a normal with the window's median and spread (from its 10th
  percentile, so the censored top does not bias it) above the threshold in effect.

Status: `drifting` when |z| ≥ Z_DRIFTING or the implied rate is ≥ RATE_DRIFTING_FACTOR × the calibration's
target; `watch` when |z| ≥ Z_WATCH, the implied rate exceeds the target, or OK parts show defect regions far
more often than the calibration expects; else `ok`. Below `min_parts` the status is `ok`, `judged` false, and
the implied rate the calibration's own expected rate.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from service.manifest import Manifest

Status = Literal["ok", "watch", "drifting"]
STATUS_LEVEL: dict[Status, int] = {"ok": 0, "watch": 1, "drifting": 2}
QUANTILES = (0.1, 0.5, 0.9)
# The false-reject rate compared against when the manifest names none (or 0: a fixed threshold).
DEFAULT_TARGET_RATE = 0.01
Z_WATCH = 3.0
Z_DRIFTING = 4.0
RATE_DRIFTING_FACTOR = 5.0
# OK parts with a defect region: `watch` when their count is this improbable under the calibration's expected
# share (binomial upper tail).
REGION_P_VALUE = 1e-4
_EPS = 1e-6
_NORMAL = NormalDist()
_MEDIAN_VARIANCE = math.pi / 2  # var(sample median) = π/2 · σ²/n for a normal sample


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class Reference:
    """A version's good-score distribution as calibrated: normal on the logit scale, fitted on `n` parts.
    `threshold`: the image threshold in effect (an override included); `target_rate`: the false-reject rate
    the calibration aimed at; `region_share`: the upper end of the calibration's interval for the share of
    good parts with a defect region (None when the calibration does not say)."""

    mean: float
    std: float
    n: int
    threshold: float
    target_rate: float
    expected_rate: float | None
    region_share: float | None

    @classmethod
    def from_manifest(cls, manifest: Manifest, threshold: float) -> Reference:
        cal = manifest.calibration
        inputs = cal.inputs if cal is not None else {}
        if cal is not None and "logit_mean" in inputs and "logit_std" in inputs:
            mean, std, n = float(inputs["logit_mean"]), float(inputs["logit_std"]), int(inputs.get("n", cal.n_parts))
        else:
            stats = manifest.score_stats
            mean = logit(stats.p50)
            std = (logit(stats.p95) - mean) / _NORMAL.inv_cdf(0.95)
            n = stats.n
        target = cal.target_false_reject_rate if cal is not None else manifest.threshold.target_false_reject_rate
        pixel = cal.pixel if cal is not None else {}
        # The upper end of the calibration's interval, not its point estimate: from a dozen parts the share is
        # known only roughly, and a stable line must not sit in `watch` for being at the interval's far end.
        interval = pixel.get("interval") or [None, pixel.get("expected_share_of_good_parts_with_a_region")]
        share = interval[-1] if manifest.pixel_threshold else None
        return cls(
            mean=mean,
            std=max(std, _EPS),
            n=max(n, 1),
            threshold=threshold,
            target_rate=target if target else DEFAULT_TARGET_RATE,
            expected_rate=cal.expected_false_reject_rate if cal is not None else None,
            region_share=float(share) if share is not None else None,
        )


@dataclass(frozen=True)
class DriftReport:
    """The window judged against its reference. Quantiles are of raw scores (None where the quantile falls
    among the censored NG parts)."""

    model: str
    version: str
    status: Status
    judged: bool
    n: int
    n_ng: int
    size: int
    quantiles: dict[str, float | None]
    z: float | None
    implied_false_reject_rate: float | None
    region_share: float | None
    reasons: tuple[str, ...]
    reference: Reference

    def view(self) -> dict[str, Any]:
        ref = self.reference
        return {
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "judged": self.judged,
            "window": {"size": self.size, "n": self.n, "ng_parts": self.n_ng, "quantiles": self.quantiles},
            "n": self.n,
            "z": self.z,
            "implied_false_reject_rate": self.implied_false_reject_rate,
            "ok_parts_with_a_region": self.region_share,
            "reasons": list(self.reasons),
            "reference": {
                "logit_mean": ref.mean,
                "logit_std": ref.std,
                "n": ref.n,
                "median_score": expit(ref.mean),
                "threshold": ref.threshold,
                "target_false_reject_rate": ref.target_rate,
                "expected_false_reject_rate": ref.expected_rate,
                "share_with_a_region_bound": ref.region_share,
            },
        }


def _quantile(sorted_values: list[float], total: int, q: float) -> float | None:
    """The q-quantile of `total` values of which `sorted_values` are the finite lowest (the rest censored
    high); None when it falls among the censored ones. Linear interpolation between order statistics."""
    pos = q * (total - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, total - 1)
    if hi >= len(sorted_values):
        return None if lo >= len(sorted_values) else sorted_values[lo]
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p); 1.0 when k is at or below the mean (never a significant excess).
    Summed from k upwards in log space until the terms no longer count, so a large window costs little."""
    if k <= n * p or p >= 1.0:
        return 1.0
    if p <= 0.0:
        return 0.0
    log_term = (
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
    )
    term, total, ratio = math.exp(log_term), 0.0, p / (1.0 - p)
    for i in range(k, n + 1):
        total += term
        if term <= total * 1e-12:
            break
        term *= (n - i) / (i + 1) * ratio
    return min(1.0, total)


@dataclass
class Window:
    """The last `size` parts of one model version: OK parts' (score, share of pixels above the pixel
    threshold) and NG parts as None."""

    reference: Reference
    size: int
    min_parts: int
    parts: deque[tuple[float, float] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.parts = deque(maxlen=self.size)

    def add(self, score: float, is_anomalous: bool, area_fraction: float) -> None:
        self.parts.append(None if is_anomalous else (score, area_fraction))

    def report(self, model: str, version: str) -> DriftReport:
        ref = self.reference
        parts = list(self.parts)
        ok = sorted(p[0] for p in parts if p is not None)
        total = len(parts)
        quantiles = {f"{q:g}": (_quantile(ok, total, q) if total else None) for q in QUANTILES}
        z = rate = region = None
        reasons: list[str] = []
        status: Status = "ok"
        judged = total >= self.min_parts
        median, low = quantiles["0.5"], quantiles["0.1"]
        if total:
            with_region = sum(1 for p in parts if p is not None and p[1] > 0.0)
            region = with_region / len(ok) if ok else None
        if judged:
            m = logit(median) if median is not None else math.inf
            se = ref.std * math.sqrt(1.0 / ref.n + _MEDIAN_VARIANCE / total)
            z = (m - ref.mean) / se if math.isfinite(m) else math.inf
            if median is None or low is None:  # half the window (or more) answered NG
                rate = 1.0
            else:
                spread = max((m - logit(low)) / -_NORMAL.inv_cdf(0.1), _EPS)
                rate = 1.0 - _NORMAL.cdf((logit(ref.threshold) - m) / spread)
            if abs(z) >= Z_DRIFTING:
                reasons.append(f"median score {'above' if z > 0 else 'below'} the calibration's by |z| = {abs(z):.1f}")
            elif abs(z) >= Z_WATCH:
                reasons.append(f"median score off the calibration's by |z| = {abs(z):.1f}")
            if rate >= RATE_DRIFTING_FACTOR * ref.target_rate:
                reasons.append(f"implied false-reject rate {rate:.3g} ≥ {RATE_DRIFTING_FACTOR:g} × target")
            elif rate > ref.target_rate:
                reasons.append(f"implied false-reject rate {rate:.3g} above the target {ref.target_rate:g}")
            if abs(z) >= Z_DRIFTING or rate >= RATE_DRIFTING_FACTOR * ref.target_rate:
                status = "drifting"
            elif reasons:
                status = "watch"
            if ref.region_share is not None and ok:
                k = sum(1 for p in parts if p is not None and p[1] > 0.0)
                if _binomial_tail(k, len(ok), ref.region_share) < REGION_P_VALUE:
                    reasons.append(
                        f"{k} of {len(ok)} OK parts show a defect region; the calibration expects at most "
                        f"{ref.region_share:.1%}"
                    )
                    status = "watch" if status == "ok" else status
        return DriftReport(
            model=model,
            version=version,
            status=status,
            judged=judged,
            n=total,
            n_ng=total - len(ok),
            size=self.size,
            quantiles=quantiles,
            z=None if z is None else (z if math.isfinite(z) else 1e9),
            # Until the window is judged, the rate the calibration itself expects: no evidence against it yet.
            implied_false_reject_rate=rate if rate is not None else (ref.expected_rate or ref.target_rate),
            region_share=region,
            reasons=tuple(reasons),
            reference=ref,
        )


class DriftWatch:
    """Windows by (model, version), fed after every prediction. Thread-safe: predictions run in worker
    threads. `on_report` (e.g. the Prometheus gauges) sees each model's report after it changed."""

    def __init__(self, size: int = 200, min_parts: int = 50) -> None:
        if size < 1 or not 1 <= min_parts <= size:
            raise ValueError(f"expected 1 ≤ min_parts ≤ size, got size {size}, min_parts {min_parts}")
        self.size = size
        self.min_parts = min_parts
        self._windows: dict[tuple[str, str], Window] = {}
        self._lock = threading.Lock()

    def track(self, model: str, version: str, reference: Reference) -> Window:
        """The window of this model version, made (empty) on first use; a changed reference (a threshold
        override, a recalibration under the same version name) replaces it."""
        with self._lock:
            window = self._windows.get((model, version))
            if window is None or window.reference != reference:
                window = Window(reference, self.size, self.min_parts)
                self._windows[(model, version)] = window
            return window

    def observe(self, model: str, version: str, score: float, is_anomalous: bool, area_fraction: float) -> bool:
        """Add one part to its version's window; False when that version is not tracked."""
        with self._lock:
            window = self._windows.get((model, version))
            if window is None:
                return False
            window.add(score, is_anomalous, area_fraction)
            return True

    def window(self, model: str, version: str) -> Window:
        """The tracked window of this model version (KeyError when it is not tracked)."""
        with self._lock:
            return self._windows[(model, version)]

    def report(self, model: str, version: str) -> DriftReport | None:
        with self._lock:
            window = self._windows.get((model, version))
            if window is None:
                return None
            return window.report(model, version)
