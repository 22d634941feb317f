"""`Calibration`: what a calibration decided and on what, as a run's `calibration.json` holds it and as the
manifest's `threshold`, `score_stats`, `calibration` and `pixel_threshold` record it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# The keys of a run calibrated before the threshold methods existed: the highest good score for the rate.
_BASE_KEYS = ("threshold", "method", "target_false_reject_rate", "n_parts", "score_stats")


@dataclass(frozen=True)
class Calibration:
    """Image threshold (NG iff score > threshold) and pixel threshold from good parts' scores and maps.

    The fields from `confidence` on are those of the image threshold's `ThresholdEstimate` and the pixel
    threshold's; a run calibrated before they existed has them None (`legacy`)."""

    threshold: float
    method: str
    target_false_reject_rate: float
    n_parts: int
    score_stats: dict[str, float]
    confidence: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    expected_false_reject_rate: float | None = None
    false_reject_rate_interval: tuple[float, float] | None = None
    distribution_free_upper_bound: float | None = None
    notes: list[str] = field(default_factory=list)
    source: str | None = None
    fallback: str | None = None  # why the method asked for was not used (too few parts)
    empirical_threshold: float | None = None  # the highest good score for the rate, for reference
    pixel_threshold: float | None = None
    pixel: dict[str, Any] | None = None  # how the pixel threshold was set and what it expects
    # The review band's upper edge and what it expects (the manifest's `review_band`); None: OK / NG only.
    review_band: dict[str, Any] | None = None

    @property
    def legacy(self) -> bool:
        return self.expected_false_reject_rate is None

    def to_dict(self) -> dict[str, Any]:
        """The `calibration.json` form (a legacy record keeps its five keys)."""
        out = asdict(self)
        if self.legacy:
            return {k: out[k] for k in _BASE_KEYS}
        out["false_reject_rate_interval"] = list(self.false_reject_rate_interval or ())
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """From a `calibration.json`; ValueError naming a missing key."""
        missing = [k for k in _BASE_KEYS if k not in data]
        if missing:
            raise ValueError(f"calibration record without {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("false_reject_rate_interval") is not None:
            lo, hi = values["false_reject_rate_interval"]
            values["false_reject_rate_interval"] = (float(lo), float(hi))
        return cls(**values)

    def with_threshold(self, threshold: float, score_stats: dict[str, float]) -> Calibration:
        # The band was fitted beside the old threshold: it does not carry over to another one.
        return replace(self, threshold=threshold, score_stats=score_stats, review_band=None)

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest's `threshold`, `score_stats` and (schema 2) `calibration` and `pixel_threshold`;
        a legacy record gives the first two only, as a schema-1 manifest has."""
        out: dict[str, Any] = {
            "threshold": {
                "value": self.threshold,
                "method": self.method,
                "target_false_reject_rate": self.target_false_reject_rate,
                "n_parts": self.n_parts,
            },
            "score_stats": self.score_stats,
        }
        if self.legacy:
            return out
        keys = (
            "method",
            "source",
            "n_parts",
            "target_false_reject_rate",
            "confidence",
            "inputs",
            "expected_false_reject_rate",
            "false_reject_rate_interval",
            "distribution_free_upper_bound",
            "pixel",
        )
        record = self.to_dict()
        out = {**out, "calibration": {k: record[k] for k in keys}, "pixel_threshold": self.pixel_threshold}
        if self.review_band is not None:
            out["review_band"] = dict(self.review_band)
        return out
