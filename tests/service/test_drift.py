"""The drift watch (service.lifecycle.drift, .watch): status on synthetic score streams, the endpoint, the
gauges, the window rebuilt from the records after a restart, and a new window for a promoted version."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.lifecycle.drift import Reference, Window, expit, logit
from service.main import create_app
from tests.service.fake_model import CALIBRATION, fake_manifest
from tests.service.test_lifecycle import ADMIN_HEADERS, FILES, settings, two_versions
from tests.service.test_shadow import sample

# The demo model's calibration: logit-normal fit on 12 good parts, threshold 3.7 sd above the mean.
REF = Reference(mean=0.37, std=0.107, n=12, threshold=0.684, target_rate=0.01, expected_rate=9e-5, region_share=0.105)


def stream(rng: np.random.Generator, n: int, shift_sd: float = 0.0, ref: Reference = REF) -> list[float]:
    """`n` scores of good parts whose logit is normal around the reference mean + `shift_sd` sd."""
    return [expit(x) for x in rng.normal(ref.mean + shift_sd * ref.std, ref.std, n)]


def run(window: Window, scores: list[float], area: float = 0.0) -> list[str]:
    statuses: list[str] = []
    for s in scores:
        window.add(s, s > window.reference.threshold, area)
        statuses.append(window.report("m", "1").status)
    return statuses


def test_a_stable_line_stays_ok() -> None:
    window = Window(REF, size=200, min_parts=50)
    statuses = run(window, stream(np.random.default_rng(1), 5000))
    assert "drifting" not in statuses
    assert statuses.count("ok") > 0.99 * len(statuses)


@pytest.mark.parametrize("shift_sd", [2.0, -2.0])
def test_a_shift_of_two_sd_says_drifting_within_the_measured_delay(shift_sd: float) -> None:
    # benchmarks/bench_drift.py: a +2.07 sd shift (brightness ×1.6) is drifting after 96 parts (p90 109).
    rng = np.random.default_rng(2)
    window = Window(REF, size=200, min_parts=50)
    assert run(window, stream(rng, 200))[-1] == "ok"
    statuses = run(window, stream(rng, 400, shift_sd))
    assert "drifting" in statuses
    assert statuses.index("drifting") + 1 <= 150
    report = window.report("m", "1")
    assert report.z is not None and math.copysign(1, report.z) == math.copysign(1, shift_sd)


def test_a_line_where_every_part_goes_ng_is_drifting_though_no_ok_part_enters() -> None:
    rng = np.random.default_rng(3)
    window = Window(REF, size=200, min_parts=50)
    run(window, stream(rng, 200))
    statuses = run(window, [0.9] * 150)  # all above the threshold: censored, only counted
    assert statuses.index("drifting") + 1 <= 110
    report = window.report("m", "1")
    assert report.n_ng == 150 and report.quantiles["0.5"] is None and report.implied_false_reject_rate == 1.0


def test_below_the_minimum_the_window_is_not_judged() -> None:
    window = Window(REF, size=200, min_parts=50)
    run(window, [0.9] * 49)
    report = window.report("m", "1")
    assert (report.status, report.judged, report.z, report.n) == ("ok", False, None, 49)


def test_ok_parts_with_defect_regions_far_more_often_than_calibrated_say_watch() -> None:
    rng = np.random.default_rng(4)
    window = Window(REF, size=200, min_parts=50)
    statuses = run(window, stream(rng, 200), area=0.01)
    assert statuses[-1] == "watch"
    assert any("defect region" in r for r in window.report("m", "1").reasons)


def test_the_reference_comes_from_the_calibration_or_else_the_score_stats() -> None:
    calibrated = fake_manifest(
        "m",
        calibration={
            **CALIBRATION,
            "target_false_reject_rate": 0.02,
            "pixel": {"expected_share_of_good_parts_with_a_region": 0.05, "interval": [0.01, 0.2]},
        },
        pixel_threshold=0.4,
    )
    ref = Reference.from_manifest(calibrated, 0.8)
    assert (ref.mean, ref.std, ref.n, ref.threshold, ref.target_rate, ref.region_share) == (
        -0.1,
        0.3,
        12,
        0.8,
        0.02,
        0.2,
    )
    bare = Reference.from_manifest(fake_manifest("m"), 0.9)  # score_stats: n 8, p50 0.5, p95 0.52
    assert bare.mean == pytest.approx(0.0) and bare.n == 8 and bare.region_share is None
    assert bare.target_rate == 0.01  # a fixed threshold (target 0) is compared with the default 1 %
    assert bare.std == pytest.approx(logit(0.52) / 1.6448536, rel=1e-6)


def test_the_endpoint_and_gauges_follow_the_window_across_a_restart_and_a_promotion(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    config = settings(models, drift_window=10, drift_min_parts=10)
    with TestClient(create_app(config)) as client:
        for _ in range(9):
            assert client.post("/v1/predict", files=FILES).status_code == 200
        early = client.get("/v1/models/fake/drift").json()
        assert (early["status"], early["judged"], early["n"], early["version"]) == ("ok", False, 9, "2")
        assert early["z"] is None and early["implied_false_reject_rate"] == 0.01  # the default target, until judged
        assert sample(client, "bridgenet_drift_window_parts", model="fake", version="2") == 9
        client.post("/v1/predict", files=FILES)
        report = client.get("/v1/models/fake/drift").json()
        # The fake part scores far above the fake manifest's good scores (p50 0.5, sd ~0.05 in logit).
        assert report["judged"] and report["status"] == "drifting" and report["z"] > 4
        assert report["window"]["quantiles"]["0.5"] == pytest.approx(
            client.get("/v1/results").json()["results"][0]["score"]
        )
        assert sample(client, "bridgenet_drift_status", model="fake", version="2") == 2
        # Ten copies of one part: no spread, and its score is below the threshold, so none implied rejected.
        assert sample(client, "bridgenet_drift_implied_false_reject_rate", model="fake", version="2") == 0.0
        assert report["implied_false_reject_rate"] == 0.0
        assert client.get("/v1/models/nut/drift").status_code == 404
    with TestClient(create_app(config)) as client:  # rebuilt from the records
        rebuilt = client.get("/v1/models/fake/drift").json()
        assert (rebuilt["n"], rebuilt["status"]) == (10, "drifting")
        assert client.post("/v1/admin/models/fake/promote", json={"version": "1"}, headers=ADMIN_HEADERS).is_success
        promoted = client.get("/v1/models/fake/drift").json()
        assert (promoted["version"], promoted["n"], promoted["status"]) == ("1", 0, "ok")
        assert promoted["reference"]["n"] == 12  # version 1's calibration
        assert 'model="fake",version="2"' not in client.get("/metrics").text.split("bridgenet_drift_status")[1][:2000]


@pytest.mark.parametrize(("k", "n", "p"), [(12, 200, 0.03), (30, 200, 0.03), (5, 10, 0.2), (60, 200, 0.105)])
def test_the_binomial_tail_matches_the_exact_sum(k: int, n: int, p: float) -> None:
    from service.lifecycle.drift import _binomial_tail

    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
    assert _binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9)
    assert _binomial_tail(2, 200, 0.03) == 1.0  # at or below the mean: never significant
