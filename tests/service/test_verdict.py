"""The verdict rule: score and area rules, never OK on non-finite inputs (service.postprocessing.verdict)."""

from __future__ import annotations

import pytest

from service.postprocessing.regions import Region, RegionReport
from service.postprocessing.verdict import NonFiniteError, decide


def _report(*areas: float | None) -> RegionReport:
    regions = tuple(Region(0, 0, 1, 1, 1, a, 0.0 if a is None else 1.0, 0.9, 0.8) for a in areas)
    known = [a for a in areas if a is not None]
    return RegionReport(regions, len(regions), 0.01, max(known) if known else None, areas.count(None), 0.5)


def test_decide_score_rule() -> None:
    assert decide(0.7, 0.6).is_anomalous and decide(0.7, 0.6).rule == "score"
    ok = decide(0.6, 0.6)  # NG iff strictly above
    assert not ok.is_anomalous and ok.details == {"score": 0.6, "threshold": 0.6}


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -float("inf")])
def test_decide_never_answers_on_a_non_finite_score(score: float) -> None:
    with pytest.raises(NonFiniteError):
        decide(score, 0.6)
    with pytest.raises(NonFiniteError):
        decide(score, 0.6, _report(5.0), min_defect_area_mm2=1.0)


def test_decide_refuses_non_finite_threshold_and_region_scores() -> None:
    with pytest.raises(NonFiniteError):
        decide(0.7, float("nan"))
    bad = RegionReport((Region(0, 0, 1, 1, 1, 1.0, 1.0, float("nan"), 0.5),), 1, 0.1, 1.0, 0, 0.5)
    with pytest.raises(NonFiniteError, match="regions"):
        decide(0.7, 0.6, bad)


def test_decide_area_rule() -> None:
    small = decide(0.9, 0.6, _report(0.5, 1.5), min_defect_area_mm2=2.0)
    assert not small.is_anomalous and small.rule == "area" and small.details["largest_area_mm2"] == 1.5
    large = decide(0.9, 0.6, _report(0.5, 2.5), min_defect_area_mm2=2.0)
    assert large.is_anomalous and large.rule == "area"
    # A region over a hole in the cloud has an unknown area: it must not let the part pass.
    unknown = decide(0.9, 0.6, _report(None, 0.5), min_defect_area_mm2=2.0)
    assert unknown.is_anomalous and unknown.details["unmeasured_regions"] == 1
    below = decide(0.5, 0.6, _report(10.0), min_defect_area_mm2=2.0)
    assert not below.is_anomalous and below.rule == "score"
    with pytest.raises(ValueError, match="min_defect_area_mm2"):
        decide(0.9, 0.6, _report(1.0), min_defect_area_mm2=float("nan"))
