"""The verdict rule: score, area and length rules, never OK on non-finite inputs (service.postprocessing.verdict)."""

from __future__ import annotations

import pytest

from service.postprocessing.regions import Region, RegionReport
from service.postprocessing.verdict import NonFiniteError, decide


def _report(*areas: float | None) -> RegionReport:
    regions = tuple(Region(0, 0, 1, 1, 1, a, 0.0 if a is None else 1.0, 0.9, 0.8) for a in areas)
    known = [a for a in areas if a is not None]
    return RegionReport(regions, len(regions), 0.01, max(known) if known else None, areas.count(None), 0.5)


def _sized(*sizes: tuple[float, float] | None) -> RegionReport:
    """Regions of (area mm², length mm); None: no point under the region (both unknown)."""
    regions = tuple(
        Region(0, 0, 1, 1, 1, None, 0.0, 0.9, 0.8) if s is None else Region(0, 0, 1, 1, 1, s[0], 1.0, 0.9, 0.8, s[1])
        for s in sizes
    )
    known = [s for s in sizes if s is not None]
    largest_area = max((a for a, _ in known), default=None)
    largest_length = max((n for _, n in known), default=None)
    return RegionReport(regions, len(regions), 0.01, largest_area, sizes.count(None), 0.5, largest_length)


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


def test_decide_length_rule() -> None:
    # A 2.1 mm × 0.3 mm scratch (0.6 mm²) and a 1 mm² dent, 1.1 mm across.
    parts = _sized((0.6, 2.1), (1.0, 1.1))
    short = decide(0.9, 0.6, parts, min_defect_length_mm=2.5)
    assert not short.is_anomalous and short.rule == "length" and short.details["largest_length_mm"] == 2.1
    assert short.details["min_defect_length_mm"] == 2.5 and "min_defect_area_mm2" not in short.details
    long = decide(0.9, 0.6, parts, min_defect_length_mm=2.0)
    assert long.is_anomalous and long.rule == "length"
    assert decide(0.9, 0.6, _sized(None, (0.1, 0.3)), min_defect_length_mm=2.0).is_anomalous  # unknown: never OK
    assert decide(0.5, 0.6, parts, min_defect_length_mm=0.1).rule == "score"  # below the score threshold
    with pytest.raises(ValueError, match="min_defect_length_mm"):
        decide(0.9, 0.6, parts, min_defect_length_mm=-1.0)


@pytest.mark.parametrize(
    ("min_area", "min_length", "verdict"),
    [
        (2.0, 2.0, True),  # the scratch is long enough, though no region is 2 mm² large
        (0.8, 5.0, True),  # the dent is large enough, though no region is 5 mm long
        (2.0, 5.0, False),  # neither minimum met by any region
        (1.0, 2.1, True),  # both met: a minimum is met at equality
    ],
)
def test_area_and_length_rules_together_make_a_defect_of_a_region_meeting_either(
    min_area: float, min_length: float, verdict: bool
) -> None:
    decision = decide(0.9, 0.6, _sized((0.6, 2.1), (1.0, 1.1)), min_area, min_length)
    assert decision.is_anomalous is verdict and decision.rule == "area_or_length"
    assert decision.details["largest_area_mm2"] == 1.0 and decision.details["largest_length_mm"] == 2.1


# --- the review band -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "verdict"),
    [(0.6, "ok"), (0.6000001, "review"), (0.8, "review"), (0.8000001, "ng"), (0.95, "ng")],
)
def test_review_band_edges(score: float, verdict: str) -> None:
    """(threshold, upper]: the lower edge is the threshold (still OK), the upper edge itself is REVIEW."""
    d = decide(score, 0.6, review_threshold=0.8)
    assert d.verdict == verdict and d.is_anomalous == (verdict != "ok")
    assert d.details["review_threshold"] == 0.8


def test_without_a_band_there_are_two_outcomes() -> None:
    assert decide(0.7, 0.6).verdict == "ng" and decide(0.5, 0.6).verdict == "ok"
    assert "review_threshold" not in decide(0.7, 0.6).details
    # A band whose upper edge is at or below the threshold is empty: never REVIEW.
    assert decide(0.7, 0.6, review_threshold=0.6).verdict == "ng"


def test_size_rules_still_decide_whether_a_part_in_the_band_is_accepted() -> None:
    small = decide(0.7, 0.6, _report(0.5), min_defect_area_mm2=2.0, review_threshold=0.8)
    assert small.verdict == "ok" and small.rule == "area"
    large = decide(0.7, 0.6, _report(2.5), min_defect_area_mm2=2.0, review_threshold=0.8)
    assert large.verdict == "review" and large.is_anomalous
    above = decide(0.9, 0.6, _report(2.5), min_defect_area_mm2=2.0, review_threshold=0.8)
    assert above.verdict == "ng"


def test_a_non_finite_band_edge_gives_no_verdict() -> None:
    with pytest.raises(NonFiniteError, match="review_threshold"):
        decide(0.7, 0.6, review_threshold=float("nan"))
