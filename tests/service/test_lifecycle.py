"""Model versions: /v1/models lists the stored ones, promote and rollback switch the active version through
the hot reload (kept across a restart), and every switch is an audit record."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.main import create_app
from service.manifest import MODEL_FILE, sha256_file
from tests.service.fake_model import CALIBRATION, make_part, make_settings, png_bytes, tiff_bytes, write_fake_model
from tests.service.test_api_admission import wait_until

ADMIN = "admin-key-0123456789abcdef"
ADMIN_HEADERS = {"X-Admin-Key": ADMIN}
RGB, XYZ = make_part(seed=5)
FILES = {"rgb": ("p.png", png_bytes(RGB), "image/png"), "xyz": ("p.tiff", tiff_bytes(XYZ), "image/tiff")}


def two_versions(tmp_path: Path) -> Path:
    """models/fake with version "2" active (threshold 0.9, no calibration record) and version "1" (threshold
    0.2, calibrated on 12 parts) stored under history/1/, as `training calibrate` leaves a folder."""
    models = tmp_path / "models"
    old = write_fake_model(
        tmp_path / "staging", "fake", version="1", threshold=0.2, calibration=CALIBRATION, pixel_threshold=0.3
    )
    folder = write_fake_model(models, "fake", version="2", threshold=0.9)
    (folder / "history").mkdir()
    shutil.move(old, folder / "history" / "1")
    return models


def settings(models: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {"admin_key": ADMIN, "data_dir": models.parent / "data"}
    values.update(overrides)
    return make_settings(models, **values)


def model_entry(client: TestClient) -> dict[str, Any]:
    (entry,) = client.get("/v1/models").json()["models"]
    return entry


def test_models_list_the_active_and_the_stored_versions_with_their_calibration(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    with TestClient(create_app(settings(models))) as client:
        entry = model_entry(client)
    assert entry["version"] == "2" and entry["threshold"] == 0.9  # the existing fields stay
    assert entry["calibration"]["threshold"] == 0.9 and entry["calibration"]["n_parts"] == 0
    assert [v["version"] for v in entry["other_versions"]] == ["1"]
    stored = entry["other_versions"][0]
    assert stored["calibration"] == {
        "method": "normal_prediction",
        "n_parts": 12,
        "threshold": 0.2,
        "pixel_threshold": 0.3,
        "target_false_reject_rate": 0.01,
        "expected_false_reject_rate": 0.004,
        "false_reject_rate_interval": [0.0005, 0.02],
        "distribution_free_upper_bound": 0.22,
    }
    assert stored["onnx_sha256"] == sha256_file(models / "fake" / "history" / "1" / MODEL_FILE)
    assert entry["previous_version"] is None


def test_promote_predict_rollback_and_the_audit_trail(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    sha = {"1": sha256_file(models / "fake/history/1" / MODEL_FILE), "2": sha256_file(models / "fake" / MODEL_FILE)}
    with TestClient(create_app(settings(models))) as client:
        before = client.post("/v1/predict", files=FILES).json()
        assert before["model"]["version"] == "2"
        answer = client.post(
            "/v1/admin/models/fake/promote",
            json={"version": "1", "reason": "back to the tighter threshold"},
            headers={**ADMIN_HEADERS, "X-Operator": "ana"},
        )
        assert answer.status_code == 200, answer.text
        event = answer.json()
        assert (event["action"], event["from_version"], event["to_version"]) == ("promote", "2", "1")
        assert (event["from_sha256"], event["to_sha256"]) == (sha["2"], sha["1"])
        assert event["actor"] == "admin:ana" and event["reason"] == "back to the tighter threshold"

        after = client.post("/v1/predict", files=FILES).json()
        assert after["model"]["version"] == "1" and after["threshold"] == 0.2
        record = client.get(f"/v1/results/{after['request_id']}").json()
        assert record["model"] == {"name": "fake", "version": "1", "onnx_sha256": sha["1"]}
        entry = model_entry(client)
        assert entry["version"] == "1" and entry["previous_version"] == "2"
        assert entry["calibration"]["distribution_free_upper_bound"] == 0.22
        assert [v["version"] for v in entry["other_versions"]] == ["2"]

        back = client.post("/v1/admin/models/fake/rollback", json={"reason": "oops"}, headers=ADMIN_HEADERS)
        assert back.status_code == 200, back.text
        assert (back.json()["action"], back.json()["from_version"], back.json()["to_version"]) == ("rollback", "1", "2")
        assert back.json()["actor"] == "admin"
        assert client.post("/v1/predict", files=FILES).json()["model"]["version"] == "2"

        listed = client.get("/v1/admin/models/fake/events", headers=ADMIN_HEADERS).json()["events"]
        assert [(e["action"], e["from_version"], e["to_version"]) for e in listed] == [
            ("rollback", "1", "2"),
            ("promote", "2", "1"),
        ]
    # What the folder holds: the active version on top, the other under history/.
    assert sha256_file(models / "fake" / MODEL_FILE) == sha["2"]
    assert sha256_file(models / "fake/history/1" / MODEL_FILE) == sha["1"]
    assert not (models / "fake/history/2").exists()


def test_a_restart_keeps_the_promoted_version(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    with TestClient(create_app(settings(models))) as client:
        assert client.post("/v1/admin/models/fake/promote", json={"version": "1"}, headers=ADMIN_HEADERS).is_success
    with TestClient(create_app(settings(models))) as client:
        assert model_entry(client)["version"] == "1"
        assert client.post("/v1/predict", files=FILES).json()["model"]["version"] == "1"
        events = client.get("/v1/admin/models/fake/events", headers=ADMIN_HEADERS).json()["events"]
        assert [e["to_version"] for e in events] == ["1"]  # the audit trail survives the restart too
        # and so does what rollback returns to
        back = client.post("/v1/admin/models/fake/rollback", headers=ADMIN_HEADERS)
        assert back.status_code == 200 and back.json()["to_version"] == "2"


def test_refusals_name_the_problem_and_change_nothing(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    top = sha256_file(models / "fake" / MODEL_FILE)
    with TestClient(create_app(settings(models))) as client:
        promote = "/v1/admin/models/fake/promote"
        missing = client.post(promote, json={"version": "7"}, headers=ADMIN_HEADERS)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "version_not_found"
        assert "'7'" in missing.json()["error"]["message"] and "['1']" in missing.json()["error"]["message"]
        no_model = client.post("/v1/admin/models/nope/promote", json={"version": "1"}, headers=ADMIN_HEADERS)
        assert no_model.status_code == 404
        active = client.post(promote, json={"version": "2"}, headers=ADMIN_HEADERS)
        assert active.status_code == 409 and "already active" in active.json()["error"]["message"]
        nothing = client.post("/v1/admin/models/fake/rollback", headers=ADMIN_HEADERS)
        assert nothing.status_code == 409 and "no previous version" in nothing.json()["error"]["message"]
        for body in ({}, {"version": ""}, {"version": "../x"}, {"version": "1", "reason": 5}):
            assert client.post(promote, json=body, headers=ADMIN_HEADERS).status_code == 422, body
        assert client.post(promote, json={"version": "1"}).status_code == 401
        assert client.post(promote, json={"version": "1"}, headers={"X-Admin-Key": "wrong"}).status_code == 401
        assert client.get("/v1/admin/models/fake/events").status_code == 401
        assert client.get("/v1/admin/models/fake/events", headers=ADMIN_HEADERS).json()["events"] == []
        (models / "fake/history/2").mkdir()  # the active version's archive place is taken
        taken = client.post(promote, json={"version": "1"}, headers=ADMIN_HEADERS)
        assert taken.status_code == 409 and "history/2 already exists" in taken.json()["error"]["message"]
        (models / "fake/history/2").rmdir()
        assert model_entry(client)["version"] == "2"
    with TestClient(create_app(settings(models, admin_key=None))) as client:
        refused = client.post("/v1/admin/models/fake/promote", json={"version": "1"}, headers=ADMIN_HEADERS)
        assert refused.status_code == 403
    assert sha256_file(models / "fake" / MODEL_FILE) == top


def test_a_version_that_does_not_load_is_switched_back(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    broken = models / "fake/history/1" / MODEL_FILE
    broken.write_bytes(broken.read_bytes() + b"\0")  # no longer the file its manifest names
    with TestClient(create_app(settings(models))) as client:
        answer = client.post("/v1/admin/models/fake/promote", json={"version": "1"}, headers=ADMIN_HEADERS)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "version_unloadable"
        assert "'2' stays active" in answer.json()["error"]["message"]
        assert client.post("/v1/predict", files=FILES).json()["model"]["version"] == "2"
        assert client.get("/v1/admin/models/fake/events", headers=ADMIN_HEADERS).json()["events"] == []
    assert (models / "fake/history/1" / MODEL_FILE).is_file() and not (models / "fake/history/2").exists()


def test_requests_in_flight_keep_succeeding_through_a_promotion(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()
    with TestClient(create_app(settings(models, batch_max_size=4, batch_wait_ms=1.0))) as client:

        def hammer() -> None:
            while not stop.is_set():
                answer = client.post("/v1/predict", files=FILES)
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    versions.add(answer.json()["model"]["version"])

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(statuses) >= 3, timeout_s=20)
        assert client.post("/v1/admin/models/fake/promote", json={"version": "1"}, headers=ADMIN_HEADERS).is_success
        after = len(statuses)
        wait_until(lambda: len(statuses) >= after + 3, timeout_s=20)
        stop.set()
        for t in threads:
            t.join(30)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert versions == {"1", "2"}
