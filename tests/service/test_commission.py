"""Commissioning from recorded parts: POST /v1/admin/models/{name}/calibrations proposes a threshold from the
line's records and reviews, .../save stores it as a version that promote then serves; the guard rails."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.lifecycle import thresholds
from service.lifecycle.calibration import Calibration
from service.lifecycle.commission import Proposal, ProposalNotFoundError, ProposalStore
from service.lifecycle.writing import next_version
from service.main import create_app
from service.manifest import MODEL_FILE, read_manifest_json, sha256_file
from service.records.reviews import add_review
from service.records.store import Recorder
from tests.records.conftest import decision
from tests.service.fake_model import CALIBRATION, fake_manifest, write_fake_model
from tests.service.test_lifecycle import ADMIN_HEADERS, FILES, settings

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
URL = "/v1/admin/models/fake/calibrations"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """models/fake, version "1": threshold 0.5, calibrated on 12 parts, pixel threshold 0.3."""
    root = tmp_path / "models"
    write_fake_model(root, "fake", version="1", threshold=0.5, calibration=CALIBRATION, pixel_threshold=0.3)
    return root


def recorder_of(client: TestClient) -> Recorder:
    recorder = client.app.state.service.records.recorder  # type: ignore[attr-defined]
    assert recorder is not None
    return recorder


def record(
    recorder: Recorder, i: int, score: float, *, sha: str, version: str = "1", outcome: str | None = None
) -> str:
    """Record part i (received i minutes after T0) of model fake, NG iff score > 0.5, with a review."""
    row = replace(
        decision(i, ng=score > 0.5, model="fake", at=T0 + timedelta(minutes=i)),
        model_version=version,
        model_sha256=sha,
        score=score,
    )
    recorder.record(row)
    if outcome is not None:
        add_review(recorder.db_engine, row.request_id, outcome, operator="ana")
    return row.request_id


def line(recorder: Recorder, sha: str, seed: int = 0) -> dict[str, np.ndarray]:
    """60 good parts (logit-normal scores; those above 0.5 are NG reviewed as false rejects), 8 confirmed
    defects, 2 NG parts nobody reviewed; returns the scores by kind."""
    rng = np.random.default_rng(seed)
    good = np.asarray(thresholds.expit(rng.normal(-0.8, 0.5, 60)))
    defects = np.asarray(thresholds.expit(rng.normal(1.5, 0.6, 8)))
    defects = np.maximum(defects, 0.55)  # NG, so that they can be confirmed
    for i, s in enumerate(good):
        record(recorder, i, float(s), sha=sha, outcome="false_reject" if s > 0.5 else None)
    for j, s in enumerate(defects):
        record(recorder, 100 + j, float(s), sha=sha, outcome="confirmed")
    for k in range(2):
        record(recorder, 200 + k, 0.7, sha=sha)
    return {"good": good, "defects": defects}


def test_a_proposal_from_the_line_then_save_and_promote_serves_it(models: Path) -> None:
    sha = sha256_file(models / "fake" / MODEL_FILE)
    with TestClient(create_app(settings(models, commission_min_parts=20))) as client:
        scores = line(recorder_of(client), sha)
        answer = client.post(URL, json={"false_reject_rate": 0.05}, headers=ADMIN_HEADERS)
        assert answer.status_code == 200, answer.text
        proposal = answer.json()
        expected = thresholds.normal_tolerance(scores["good"], 0.05)
        proposed = proposal["proposed"]
        assert proposal["good_sample"]["n"] == 60 and proposal["defect_sample"]["n"] == 8
        assert proposal["good_sample"]["false_rejects"] == int((scores["good"] > 0.5).sum())
        assert proposed["threshold"] == pytest.approx(expected.threshold)
        assert proposed["expected_false_reject_rate"] == pytest.approx(expected.expected_false_reject_rate)
        assert proposed["distribution_free_upper_bound"] == pytest.approx(expected.distribution_free_upper_bound)
        assert proposed["pixel_threshold"] == 0.3 and "kept" in proposed["pixel_threshold_source"]
        caught = int((scores["defects"] > expected.threshold).sum())
        assert proposed["on_the_line"]["defects_detected"] == caught
        assert proposed["on_the_line"]["good_above"] == int((scores["good"] > expected.threshold).sum())
        active = proposal["active"]
        assert active["version"] == "1" and active["threshold"] == 0.5 and active["n_parts"] == 12
        assert active["distribution_free_upper_bound"] == 0.22
        assert active["on_the_line"]["good_above"] == int((scores["good"] > 0.5).sum())
        assert active["on_the_line"]["detection_rate"] == 1.0  # every confirmed defect was NG at 0.5
        assert sum(proposal["histogram"]["good"]) == 60 and sum(proposal["histogram"]["defects"]) == 8
        assert any("2 NG part(s)" in w and "not reviewed" in w for w in proposal["warnings"])

        saved = client.post(
            f"{URL}/{proposal['id']}/save", json={"reason": "line data"}, headers={**ADMIN_HEADERS, "X-Operator": "li"}
        )
        assert saved.status_code == 200, saved.text
        body = saved.json()
        assert body["version"] == "2" and body["calibration"]["threshold"] == pytest.approx(expected.threshold)
        event = body["event"]
        assert (event["action"], event["from_version"], event["to_version"]) == ("save", "1", "2")
        assert event["actor"] == "admin:li" and event["reason"] == "line data"
        # Stored beside the active version, which still answers.
        stored, stored_sha = read_manifest_json(models / "fake" / "history" / "2")
        assert stored.threshold.value == pytest.approx(expected.threshold) and stored.pixel_threshold == 0.3
        assert stored.calibration is not None and stored.calibration.n_parts == 60
        # The review band comes with it: the same rule at 0.5 %, above the new threshold.
        assert stored.review_band is not None and stored.review_band.upper > stored.threshold.value
        assert stored.review_band.target_false_reject_rate == 0.005
        assert "60 good line parts" in str(stored.calibration.source)
        assert [h.version for h in stored.history] == ["1"] and stored.history[0].onnx_sha256 == sha
        assert "commissioned from 60 good line parts" in str(stored.history[0].note)
        assert client.post("/v1/predict", files=FILES).json()["model"]["version"] == "1"
        again = client.post(f"{URL}/{proposal['id']}/save", headers=ADMIN_HEADERS)
        assert again.status_code == 404 and again.json()["error"]["code"] == "proposal_not_found"

        promoted = client.post("/v1/admin/models/fake/promote", json={"version": "2"}, headers=ADMIN_HEADERS)
        assert promoted.status_code == 200, promoted.text
        served = client.post("/v1/predict", files=FILES).json()
        assert served["model"]["version"] == "2" and served["threshold"] == pytest.approx(expected.threshold)
        assert client.get(f"/v1/results/{served['request_id']}").json()["model"]["onnx_sha256"] == stored_sha
        events = client.get("/v1/admin/models/fake/events", headers=ADMIN_HEADERS).json()["events"]
        assert [(e["action"], e["to_version"]) for e in events] == [("promote", "2"), ("save", "2")]


def test_a_window_and_the_last_parts_choose_the_sample(models: Path) -> None:
    sha = sha256_file(models / "fake" / MODEL_FILE)
    with TestClient(create_app(settings(models, commission_min_parts=10))) as client:
        line(recorder_of(client), sha)
        start, end = (T0 + timedelta(minutes=10)).isoformat(), (T0 + timedelta(minutes=40)).isoformat()
        windowed = client.post(URL, json={"start": start, "end": end}, headers=ADMIN_HEADERS).json()
        assert windowed["good_sample"]["n"] == 30 and windowed["defect_sample"]["n"] == 0
        assert windowed["window"]["start"].startswith("2026-12-01T08:10")
        assert any("no confirmed defects" in w for w in windowed["warnings"])
        last = client.post(URL, json={"last": 25}, headers=ADMIN_HEADERS).json()
        # The newest 25: 2 unreviewed NG, 8 defects and the last 15 good parts.
        assert (last["good_sample"]["n"], last["defect_sample"]["n"]) == (15, 8)


def test_guard_rails_refuse_with_the_reason(models: Path) -> None:
    sha = sha256_file(models / "fake" / MODEL_FILE)
    with TestClient(create_app(settings(models, commission_min_parts=20))) as client:
        recorder = recorder_of(client)
        line(recorder, sha)
        few = client.post(URL, json={"last": 15}, headers=ADMIN_HEADERS)
        assert few.status_code == 422 and few.json()["error"]["code"] == "too_few_parts"
        assert "at least 20" in few.json()["error"]["message"]
        # Parts of another version: left out, and said so.
        for i in range(30):
            record(recorder, 300 + i, 0.3, sha="cd" * 32, version="0")
        mixed = client.post(URL, json={}, headers=ADMIN_HEADERS).json()
        assert mixed["good_sample"]["n"] == 60
        assert any("mixes model versions" in w and "30 of 0" in w for w in mixed["warnings"])
        only_old = client.post(URL, json={"last": 30}, headers=ADMIN_HEADERS)
        assert only_old.status_code == 422 and "30 part(s) of other versions" in only_old.json()["error"]["message"]
        # An OK part later found defective: refused.
        missed = record(recorder, 400, 0.2, sha=sha, outcome="missed_defect")
        dirty = client.post(URL, json={}, headers=ADMIN_HEADERS)
        assert dirty.status_code == 409 and dirty.json()["error"]["code"] == "good_sample_has_defects"
        assert missed in dirty.json()["error"]["message"]
        before = T0 + timedelta(minutes=399)
        clean = client.post(URL, json={"end": before.isoformat()}, headers=ADMIN_HEADERS)
        assert clean.status_code == 200, clean.text
        bodies: list[dict[str, Any]] = [
            {"end": T0.isoformat(), "start": T0.isoformat()},
            {"start": "2026-12-01T08:00:00"},  # no time zone
            {"method": "synthetic_margin"},
            {"false_reject_rate": 0.5},
            {"last": 0},
        ]
        for body in bodies:
            assert client.post(URL, json=body, headers=ADMIN_HEADERS).status_code == 422, body
        assert client.post(URL, json={}).status_code == 401
        assert client.post(f"{URL}/{'0' * 32}/save", headers=ADMIN_HEADERS).status_code == 404
        assert client.post("/v1/admin/models/nope/calibrations", json={}, headers=ADMIN_HEADERS).status_code == 404


def test_saving_after_the_active_version_changed_is_refused(models: Path, tmp_path: Path) -> None:
    old = write_fake_model(tmp_path / "staging", "fake", version="0", threshold=0.4)
    (models / "fake" / "history").mkdir()
    old.rename(models / "fake" / "history" / "0")
    sha = sha256_file(models / "fake" / MODEL_FILE)
    with TestClient(create_app(settings(models, commission_min_parts=20))) as client:
        line(recorder_of(client), sha)
        proposal = client.post(URL, json={}, headers=ADMIN_HEADERS).json()
        assert client.post("/v1/admin/models/fake/promote", json={"version": "0"}, headers=ADMIN_HEADERS).is_success
        refused = client.post(f"{URL}/{proposal['id']}/save", headers=ADMIN_HEADERS)
        assert refused.status_code == 409 and "make the proposal again" in refused.json()["error"]["message"]
    assert sorted(p.name for p in (models / "fake" / "history").iterdir()) == ["1", "PREVIOUS"]


def test_with_the_audit_trail_off_there_is_nothing_to_calibrate_on(models: Path) -> None:
    with TestClient(create_app(settings(models, audit="off"))) as client:
        answer = client.post(URL, json={}, headers=ADMIN_HEADERS)
    assert answer.status_code == 409 and "BRIDGENET_AUDIT=off" in answer.json()["error"]["message"]


def test_the_next_version_skips_the_versions_already_stored() -> None:
    numbered = fake_manifest("fake", version="2")
    assert next_version(numbered) == "3" and next_version(numbered, {"3", "4"}) == "5"
    named = fake_manifest("fake", version="v1")
    assert next_version(named) == "v1-cal1" and next_version(named, {"v1-cal1"}) == "v1-cal2"


def test_proposals_expire_and_belong_to_their_model() -> None:
    store = ProposalStore(kept=2, ttl_s=60)
    made = [Proposal(f"{i:032x}", "fake", T0, "1", "ab" * 32, Calibration(0.5, "empirical", 0.01, 3, {}), {})
            for i in range(3)]  # fmt: skip
    for p in made:
        store.put(p)
    assert store.get(made[2].id, "fake", now=T0 + timedelta(seconds=59)) is made[2]
    with pytest.raises(ProposalNotFoundError):
        store.get(made[0].id, "fake", now=T0)  # the oldest fell out
    with pytest.raises(ProposalNotFoundError):
        store.get(made[2].id, "other", now=T0)
    with pytest.raises(ProposalNotFoundError, match="make it again"):
        store.get(made[2].id, "fake", now=T0 + timedelta(seconds=61))
