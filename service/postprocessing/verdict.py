"""The verdict: OK, REVIEW or NG from the score, the threshold, the review band's upper edge and, with size
rules, the defect regions.

Never OK on a non-finite score, threshold or region score (`NonFiniteError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from service.postprocessing.regions import Region, RegionReport

Rule = Literal["score", "area", "length", "area_or_length"]
# OK: accepted; REVIEW: a person decides (a score in the review band); NG: rejected.
Verdict = Literal["ok", "review", "ng"]
VERDICTS: tuple[Verdict, ...] = ("ok", "review", "ng")


class NonFiniteError(ValueError):
    """A model output (score or map) or a threshold is NaN or infinite: no verdict may be given."""


@dataclass(frozen=True)
class Decision:
    """The verdict and the rule that decided it; `details` is JSON-able. `review`: the part is not accepted
    (`is_anomalous`) but its score lies in the review band, so a person decides instead of the line."""

    is_anomalous: bool
    rule: Rule
    details: dict[str, Any] = field(default_factory=dict)
    review: bool = False

    @property
    def verdict(self) -> Verdict:
        if not self.is_anomalous:
            return "ok"
        return "review" if self.review else "ng"


def check_finite(score: float, threshold: float, regions: Sequence[Region] = ()) -> None:
    """Raise NonFiniteError unless the score, the threshold and every region's scores are finite."""
    bad = [name for name, v in (("score", score), ("threshold", threshold)) if not math.isfinite(v)]
    bad += [
        f"regions[{i}]"
        for i, r in enumerate(regions)
        if not (math.isfinite(r.max_score) and math.isfinite(r.mean_score))
    ]
    if bad:
        raise NonFiniteError(f"non-finite {', '.join(bad)} (score {score}, threshold {threshold}): no verdict")


def _minimum(name: str, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    return None if value is None else float(value)


def decide(
    score: float,
    threshold: float,
    report: RegionReport | None = None,
    min_defect_area_mm2: float | None = None,
    min_defect_length_mm: float | None = None,
    review_threshold: float | None = None,
) -> Decision:
    """NG iff score > threshold ("score" rule). With size rules set (`min_defect_area_mm2`, the "area" rule;
    `min_defect_length_mm`, the "length" rule; both: "area_or_length"), a part above the score threshold is
    NG only if some region meets a minimum that is set: at least that many mm², or at least that many mm
    long. Either suffices, so a long thin scratch fails the length rule even when its area is small, and a
    round dent fails the area rule however short. A region whose size is unknown (no points under it, e.g.
    a hole) counts as large enough, so missing data never passes a part.

    With a review band (`review_threshold`, its upper edge), a part that the rules above reject is REVIEW
    instead of NG while threshold < score ≤ review_threshold: the size rules still decide whether it is
    accepted, the band only says who decides about a rejected part. A review_threshold at or below the
    threshold is an empty band (no REVIEW).

    `rule` names the rule that decided: "score" when the score alone did (always without a size rule), else
    the size rules consulted. Raises NonFiniteError on any non-finite input.
    """
    check_finite(float(score), float(threshold), report.regions if report is not None else ())
    if review_threshold is not None and not math.isfinite(review_threshold):
        raise NonFiniteError(f"non-finite review_threshold {review_threshold}: no verdict")
    details: dict[str, Any] = {"score": float(score), "threshold": float(threshold)}
    over = float(score) > float(threshold)
    review = review_threshold is not None and float(score) <= float(review_threshold)
    if review_threshold is not None:
        details["review_threshold"] = float(review_threshold)
    min_area = _minimum("min_defect_area_mm2", min_defect_area_mm2)
    min_length = _minimum("min_defect_length_mm", min_defect_length_mm)
    if min_area is None and min_length is None:
        return Decision(over, "score", details, review=over and review)
    if min_area is not None:
        details["min_defect_area_mm2"] = min_area
    if min_length is not None:
        details["min_defect_length_mm"] = min_length
    if not over:
        return Decision(False, "score", details)
    if report is None:
        raise ValueError("the size rules need the regions: pass the RegionReport of this part")
    area, length, unknown = report.largest_area_mm2, report.largest_length_mm, report.unmeasured_regions
    details.update({"largest_area_mm2": area, "unmeasured_regions": unknown, "n_regions": report.n_regions})
    if min_length is not None:
        details["largest_length_mm"] = length
    large = (
        unknown > 0
        or (min_area is not None and area is not None and area >= min_area)
        or (min_length is not None and length is not None and length >= min_length)
    )
    rule: Rule = "length" if min_area is None else "area" if min_length is None else "area_or_length"
    return Decision(large, rule, details, review=large and review)
