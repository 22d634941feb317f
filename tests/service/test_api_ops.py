"""Operations endpoints and cross-cutting behaviour: health, readiness, models, metrics, ids, logs, API key."""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.engine import Engine, PartUpload, PredictResult
from service.logs import JsonFormatter
from service.main import create_app, engine_options
from tests.service.fake_model import (
    THRESHOLD,
    build_graph,
    make_part,
    make_settings,
    png_bytes,
    tiff_bytes,
    write_fake_model,
)

RGB, XYZ = make_part(40, 48, seed=3)
FILES = {"rgb": ("p.png", png_bytes(RGB), "image/png"), "xyz": ("p.tiff", tiff_bytes(XYZ), "image/tiff")}
METRIC_NAMES = (
    "bridgenet_predictions_total",
    "bridgenet_stage_duration_seconds",
    "bridgenet_request_duration_seconds",
    "bridgenet_anomaly_score",
    "bridgenet_model_info",
    "bridgenet_inflight_requests",
    "bridgenet_rejected_requests_total",
    "bridgenet_requests_total",
    "process_cpu_seconds_total",
    "python_info",
)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_fake_model(root, "fake")
    write_fake_model(root, "other", version="7", threshold=0.95)
    return root


@pytest.fixture
def client(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(models_dir))) as c:
        yield c


def metric_value(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, flags=re.MULTILINE)
    assert match, f"{name}{labels} not in the exposition"
    return float(match.group(1))


def test_health_is_alive_and_ready_only_after_start(models_dir: Path) -> None:
    app = create_app(make_settings(models_dir))
    cold = TestClient(app)  # no `with`: the lifespan has not run, so no model is loaded
    assert cold.get("/healthz").json() == {"status": "alive"}
    response = cold.get("/readyz")
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    assert cold.post("/v1/predict", files=FILES).status_code == 503
    with TestClient(app) as warm:
        assert warm.get("/readyz").json() == {"status": "ready", "models": ["fake", "other"]}


def test_models_lists_each_model_with_provider_and_threshold(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["default_model"] == "fake"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"fake", "other"}
    fake, other = by_name["fake"], by_name["other"]
    assert (fake["version"], fake["backbone"], fake["image_size"]) == ("1", "fake_pool", 32)
    assert fake["threshold"] == pytest.approx(THRESHOLD) and fake["threshold_source"] == "manifest"
    assert fake["default"] is True and other["default"] is False
    assert (other["version"], other["threshold"]) == ("7", pytest.approx(0.95))
    assert fake["provider"].endswith("ExecutionProvider")


def test_model_field_selects_the_model(client: TestClient) -> None:
    body = client.post("/v1/predict", files=FILES, data={"model": "other"}).json()
    assert body["model"] == {"name": "other", "version": "7"}
    assert body["threshold"] == pytest.approx(0.95)


def test_metrics_expose_every_collector_after_one_prediction(client: TestClient) -> None:
    body = client.post("/v1/predict", files=FILES).json()
    client.post("/v1/predict", files={"rgb": FILES["rgb"]})  # refused: missing xyz
    text = client.get("/metrics").text
    for name in METRIC_NAMES:
        assert re.search(rf"^{name}", text, flags=re.MULTILINE), name
    verdict = "ng" if body["is_anomalous"] else "ok"
    assert metric_value(text, "bridgenet_predictions_total", f'{{model="fake",verdict="{verdict}"}}') == 1
    assert metric_value(text, "bridgenet_anomaly_score_count", '{model="fake"}') == 1
    assert metric_value(text, "bridgenet_stage_duration_seconds_count", '{stage="inference"}') == 1
    assert metric_value(text, "bridgenet_request_duration_seconds_count") == 2
    assert metric_value(text, "bridgenet_rejected_requests_total", '{reason="missing_field"}') == 1
    assert metric_value(text, "bridgenet_requests_total", '{endpoint="/v1/predict",status="200"}') == 1
    assert metric_value(text, "bridgenet_requests_total", '{endpoint="/v1/predict",status="422"}') == 1
    assert metric_value(text, "bridgenet_inflight_requests") == 0
    provider = body["provider"]
    info = f'{{backbone="fake_pool",model="fake",provider="{provider}",version="1"}}'
    assert metric_value(text, "bridgenet_model_info", info) == 1


def test_two_apps_in_one_process_keep_separate_registries(models_dir: Path, client: TestClient) -> None:
    client.post("/v1/predict", files=FILES)
    with TestClient(create_app(make_settings(models_dir))) as second:
        text = second.get("/metrics").text
    # The second app's series exist from start-up (at 0) and never saw the first app's prediction.
    for verdict in ("ok", "ng"):
        assert metric_value(text, "bridgenet_predictions_total", f'{{model="fake",verdict="{verdict}"}}') == 0


def test_request_id_is_echoed_generated_or_replaced(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "cam-7:0042"}).headers["X-Request-ID"] == "cam-7:0042"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe)
    body = client.post("/v1/predict", files=FILES, headers={"X-Request-ID": "req-1"}).json()
    assert body["request_id"] == "req-1"


def test_log_lines_are_json_with_request_fields(client: TestClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("service")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        client.post("/v1/predict", files=FILES, data={"part_id": "P-9"}, headers={"X-Request-ID": "log-1"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [r for r in lines if r["logger"] == "service.access"]
    assert len(access) == 1
    record = access[0]
    assert {"time", "level", "logger", "message", "request_id", "part_id", "model", "status", "duration_ms"} <= set(
        record
    )
    assert (record["request_id"], record["part_id"], record["model"], record["status"]) == ("log-1", "P-9", "fake", 200)
    assert record["duration_ms"] > 0
    scored = [r for r in lines if r["message"] == "scored part"]
    assert scored and scored[0]["request_id"] == "log-1" and "score" in scored[0]
    assert scored[0]["verdict"] in ("ok", "ng") and scored[0]["recipe"] is None


def test_api_key_guards_v1_routes_only(models_dir: Path) -> None:
    with TestClient(create_app(make_settings(models_dir, api_key="s3cret"))) as c:
        for headers in ({}, {"X-API-Key": "wrong"}):
            response = c.get("/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        assert c.post("/v1/predict", files=FILES).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/predict", files=FILES, headers={"X-API-Key": "s3cret"}).status_code == 200
        for path in ("/healthz", "/readyz"):
            assert c.get(path).status_code == 200, path
        assert c.get("/metrics").status_code == 401  # without a metrics port, /metrics needs the key too
        text = c.get("/metrics", headers={"X-API-Key": "s3cret"}).text
    assert metric_value(text, "bridgenet_rejected_requests_total", '{reason="unauthorized"}') == 4


def test_without_api_key_v1_routes_are_open(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200


class BrokenEngine(Engine):
    def predict_upload(self, upload: PartUpload) -> PredictResult:
        raise RuntimeError("boom: a bug in the engine")


def test_unexpected_error_is_500_with_the_same_body_and_a_logged_traceback(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(models_dir)
    with TestClient(create_app(settings, engine=BrokenEngine(engine_options(settings)))) as c:
        with caplog.at_level(logging.ERROR, logger="service"):
            response = c.post("/v1/predict", files=FILES, headers={"X-Request-ID": "bug-1"})
        assert c.get("/readyz").status_code == 200
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal server error; the request id is in the log",
            "request_id": "bug-1",
        }
    }
    assert "boom" not in response.text  # internals stay in the log
    logged = [r for r in caplog.records if r.exc_info and "boom" in str(r.exc_info[1])]
    assert logged, "the traceback was not logged"


def test_openapi_documents_the_predict_form(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404  # off unless BRIDGENET_DOCS=1 (test_api_exposure.py)
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert "429" in spec["paths"]["/v1/predict"]["post"]["responses"]


def test_unknown_route_uses_the_error_body(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("spin", [True, False])
def test_onnx_runtime_spin_wait_follows_the_setting(models_dir: Path, spin: bool) -> None:
    with TestClient(create_app(make_settings(models_dir, ort_spin_wait=spin))) as c:
        engine = c.app.state.service.engine  # type: ignore[attr-defined]
        options = engine.models["fake"].session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")


def test_uploads_over_one_megabyte_are_parsed_in_memory(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Starlette's own form reading would spool each file over 1 MB to disk (a thread hand-off per chunk);
    # the predict form keeps its uploads in memory. A rollover is the moment a spooled file moves to disk.
    rolled: list[int] = []
    original = tempfile.SpooledTemporaryFile.rollover

    def rollover(self: tempfile.SpooledTemporaryFile[bytes]) -> None:
        rolled.append(1)
        original(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", rollover)
    rgb, xyz = make_part(300, 320, seed=4)
    xyz_file = tiff_bytes(xyz)
    assert len(xyz_file) > 1024 * 1024
    settings = make_settings(models_dir, max_upload_bytes=4 * 1024 * 1024)
    with TestClient(create_app(settings)) as c:
        files = {"rgb": ("p.png", png_bytes(rgb), "image/png"), "xyz": ("p.tiff", xyz_file, "image/tiff")}
        response = c.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    assert rolled == []


def test_after_prediction_hooks_see_the_result_and_the_request_before_the_answer(models_dir: Path) -> None:
    app = create_app(make_settings(models_dir))
    seen: list[tuple[float, str, str | None, str | None]] = []
    app.state.service.after_prediction.append(
        lambda result, request: seen.append(
            (result.prediction.score, request.request_id, request.part_id, request.model)
        )
    )
    with TestClient(app) as c:
        body = c.post("/v1/predict", files=FILES, data={"part_id": "P-1"}, headers={"X-Request-ID": "hook-1"}).json()
        assert seen == [(body["score"], "hook-1", "P-1", "fake")]
        app.state.service.after_prediction.append(lambda result, request: 1 / 0)  # a hook that fails
        failed = c.post("/v1/predict", files=FILES)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"


@pytest.mark.parametrize("batch_max_size", [1, 4])
def test_an_onnx_runtime_failure_answers_500_with_batching_off_and_on(tmp_path: Path, batch_max_size: int) -> None:
    write_fake_model(tmp_path, "fake", graph=build_graph(fails_on_parts=True))
    settings = make_settings(tmp_path, batch_max_size=batch_max_size, batch_wait_ms=1.0)
    with TestClient(create_app(settings)) as c:
        response = c.post("/v1/predict", files=FILES, headers={"X-Request-ID": "ort-1"})
        assert c.get("/readyz").status_code == 200
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error; the request id is in the log",
        "request_id": "ort-1",
    }
