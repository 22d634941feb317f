"""The verdict: OK or NG from the score, the threshold and, with an area rule, the defect regions.

Never OK on a non-finite score, threshold or region score (`NonFiniteError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from service.postprocessing.regions import Region, RegionReport

Rule = Literal["score", "area"]


class NonFiniteError(ValueError):
    """A model output (score or map) or a threshold is NaN or infinite: no verdict may be given."""


@dataclass(frozen=True)
class Decision:
    """The verdict and the rule that decided it; `details` is JSON-able."""

    is_anomalous: bool
    rule: Rule
    details: dict[str, Any] = field(default_factory=dict)


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


def decide(
    score: float, threshold: float, report: RegionReport | None = None, min_defect_area_mm2: float | None = None
) -> Decision:
    """NG iff score > threshold ("score" rule). With `min_defect_area_mm2` set (the "area" rule), a part
    above the score threshold is NG only if some region is at least that large; a region whose area is
    unknown (no points under it, e.g. a hole) counts as large enough, so missing data never passes a part.

    `rule` names the rule that decided: "score" when the score alone did (always without an area rule),
    "area" when the area rule was consulted. Raises NonFiniteError on any non-finite input.
    """
    check_finite(float(score), float(threshold), report.regions if report is not None else ())
    details: dict[str, Any] = {"score": float(score), "threshold": float(threshold)}
    over = float(score) > float(threshold)
    if min_defect_area_mm2 is None:
        return Decision(over, "score", details)
    if not (math.isfinite(min_defect_area_mm2) and min_defect_area_mm2 >= 0):
        raise ValueError(f"min_defect_area_mm2 must be a finite number ≥ 0, got {min_defect_area_mm2}")
    details["min_defect_area_mm2"] = float(min_defect_area_mm2)
    if not over:
        return Decision(False, "score", details)
    if report is None:
        raise ValueError("the area rule needs the regions: pass the RegionReport of this part")
    largest, unknown = report.largest_area_mm2, report.unmeasured_regions
    details.update({"largest_area_mm2": largest, "unmeasured_regions": unknown, "n_regions": report.n_regions})
    large = unknown > 0 or (largest is not None and largest >= min_defect_area_mm2)
    return Decision(large, "area", details)
