"""The results API over HTTP: filters, cursor pages, CSV, evidence files, status, API key, error body.

The app here is the real router, error handlers, settings and Records runtime; predictions are recorded
through `Records.record_prediction` with predict-answer dicts, the call the predict handler makes."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.deps import ServiceState
from service.api.errors import install_error_handlers
from service.api.routes_admin import router as admin_router
from service.api.routes_results import router
from service.config import Settings, decode_limits
from service.engine import Engine
from service.main import engine_options
from service.metrics import Metrics
from service.records.database import SchemaTooNewError
from service.records.runtime import Records
from service.records.store import RecordOutcome
from tests.records.servers import WebhookReceiver, free_port

KEY = "results-test-key-0123456789"  # the results reader's key
LINE_KEY = "line-test-key-0123456789"


def answer(i: int, *, ng: bool, part_id: str | None = None) -> dict[str, Any]:
    """A predict answer in its JSON form, as the handler has it just before answering."""
    return {
        "model": {"name": "demo", "version": "1.2.3"},
        "part_id": part_id or f"line1-{i:04d}",
        "score": 0.8 if ng else 0.2,
        "threshold": 0.5,
        "threshold_source": "manifest",
        "is_anomalous": ng,
        "anomaly_map": None,
        "defect_area_fraction": 0.01 if ng else 0.0,
        "timings_ms": {"queue": 0.1, "decode": 1.0, "inference": 3.0, "total": 5.0},
        "provider": "CPUExecutionProvider",
        "request_id": f"req-{i:03d}",
    }


def record(c: TestClient, ans: dict[str, Any], *, rgb: bytes = b"", xyz: bytes = b"") -> RecordOutcome | None:
    """What the predict handler does before answering, on the app's own event loop."""
    records: Records = c.app.state.service.records  # type: ignore[attr-defined]
    amap = np.full((8, 8), 0.25, np.float32)
    assert c.portal is not None
    sha = "ab" * 32  # the engine's verified SHA-256 of the scoring model file, as the handler passes it
    return c.portal.call(
        partial(records.record_prediction, ans, rgb=rgb, xyz=xyz, anomaly_map=amap, model_sha256=sha, client="10.0.0.7")
    )


def build_app(settings: Settings) -> FastAPI:
    state = ServiceState(
        settings=settings, engine=Engine(engine_options(settings)), metrics=Metrics(), limits=decode_limits(settings)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.records = await Records.start(settings, state.metrics)
        try:
            yield
        finally:
            await state.records.stop()

    app = FastAPI(lifespan=lifespan)
    app.state.service = state
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(admin_router)
    return app


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", api_key=LINE_KEY, results_key=KEY, archive="ng", **extra)  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = build_app(settings_for(tmp_path))
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        rng = np.random.default_rng(0)
        for i in range(12):
            ans = answer(i, ng=i % 3 == 0, part_id="=cmd|' /C calc'!A0" if i == 11 else None)
            record(c, ans, rgb=b"\x89PNG\r\n\x1a\n" + rng.bytes(300), xyz=b"\x93NUMPY" + rng.bytes(300))
        yield c


def test_list_is_newest_first_with_cursor_pages_and_filters(client: TestClient) -> None:
    first = client.get("/v1/results", params={"limit": 5})
    assert first.status_code == 200
    page = first.json()
    assert [r["request_id"] for r in page["results"]] == ["req-011", "req-010", "req-009", "req-008", "req-007"]
    ids = [r["request_id"] for r in page["results"]]
    cursor = page["next_cursor"]
    while cursor:
        page = client.get("/v1/results", params={"limit": 5, "cursor": cursor}).json()
        ids += [r["request_id"] for r in page["results"]]
        cursor = page["next_cursor"]
    assert ids == [f"req-{i:03d}" for i in reversed(range(12))]

    ng = client.get("/v1/results", params={"verdict": "ng"}).json()["results"]
    assert [r["request_id"] for r in ng] == ["req-009", "req-006", "req-003", "req-000"]
    assert ng[0]["client"] == "10.0.0.7" and ng[0]["model"]["name"] == "demo"
    one = client.get("/v1/results", params={"part_id": "line1-0004"}).json()["results"]
    assert [r["request_id"] for r in one] == ["req-004"]
    assert client.get("/v1/results", params={"model": "other"}).json() == {"results": [], "next_cursor": None}


def test_bad_query_values_get_the_error_body(client: TestClient) -> None:
    bad = client.get("/v1/results", params={"cursor": "garbage"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"
    too_many = client.get("/v1/results", params={"limit": 501})
    assert too_many.status_code == 422 and "limit" in too_many.json()["error"]["message"]
    verdict = client.get("/v1/results", params={"verdict": "maybe"})
    assert verdict.status_code == 422


def test_one_record_and_its_evidence(client: TestClient) -> None:
    ng = client.get("/v1/results/req-003")
    assert ng.status_code == 200
    body = ng.json()
    assert body["score"] == 0.8 and body["is_anomalous"] is True and body["evidence"]["status"] == "archived"
    rgb = client.get("/v1/results/req-003/files/rgb")
    assert rgb.status_code == 200 and rgb.headers["content-type"] == "image/png"
    assert rgb.headers["etag"] == f'"{body["evidence"]["rgb_sha256"]}"'
    amap = client.get("/v1/results/req-003/files/map")
    assert amap.status_code == 200 and amap.content.startswith(b"\x89PNG")

    ok = client.get("/v1/results/req-004/files/xyz")  # OK part under BRIDGENET_ARCHIVE=ng
    assert ok.status_code == 404 and ok.json()["error"]["code"] == "not_archived"
    missing = client.get("/v1/results/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_result"
    assert client.get("/v1/results/nope/files/rgb").json()["error"]["code"] == "unknown_result"
    assert client.get("/v1/results/req-003/files/depth").status_code == 422


def test_csv_has_every_match_and_defuses_formulas(client: TestClient) -> None:
    response = client.get("/v1/results.csv", params={"since": "2000-01-01T00:00:00Z"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["request_id"] for r in rows] == [f"req-{i:03d}" for i in reversed(range(12))]
    assert rows[0]["part_id"] == "'=cmd|' /C calc'!A0"
    assert {r["verdict"] for r in rows} == {"ok", "ng"}


def test_api_key_is_required(client: TestClient) -> None:
    for path in ("/v1/results", "/v1/results.csv", "/v1/results/req-001", "/v1/status"):
        response = client.get(path, headers={"X-API-Key": "wrong"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


def test_the_line_key_cannot_read_results(client: TestClient) -> None:
    for path in ("/v1/results", "/v1/results.csv", "/v1/results/req-000", "/v1/results/req-000/files/rgb"):
        response = client.get(path, headers={"X-API-Key": LINE_KEY})
        assert response.status_code == 403, path
        error = response.json()["error"]
        assert error["code"] == "key_not_allowed" and "BRIDGENET_RESULTS_KEY" in error["message"]
    # The service's own state (no part data) is read with either key.
    assert client.get("/v1/status", headers={"X-API-Key": LINE_KEY}).status_code == 200


def test_status_shows_a_down_destination_backlog(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the webhook is down
    app = build_app(settings_for(tmp_path, webhook_url=f"http://127.0.0.1:{port}/hook"))
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        for i in range(3):
            record(c, answer(i, ng=False))
        status = c.get("/v1/status").json()
    assert status["audit"] == "on" and status["database"] == "sqlite"
    assert status["push"]["webhook"]["waiting"] == 3
    assert status["archive"]["policy"] == "ng"


def test_refused_pushes_show_as_dead_letters_and_the_admin_key_requeues_them(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    webhook.script = [400, 400, 400]  # the receiver refuses the first three results for good, then takes all
    admin = "admin-key-for-the-tests-0123"
    app = build_app(settings_for(tmp_path, webhook_url=webhook.url, admin_key=admin))
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        for i in range(3):
            record(c, answer(i, ng=False))
        deadline = time.monotonic() + 20
        while c.get("/v1/status").json()["push"]["webhook"]["dead_letters"] < 3:
            assert time.monotonic() < deadline, "the refused results never reached the dead letters"
            time.sleep(0.05)
        status = c.get("/v1/status").json()["push"]["webhook"]
        assert status["waiting"] == 0 and status["dead_letters"] == 3

        refused = c.post("/v1/admin/push/retry")  # the line's key is not the admin key
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        retried = c.post("/v1/admin/push/retry", headers={"X-Admin-Key": admin})
        assert retried.status_code == 200 and retried.json() == {"requeued": {"webhook": 3}}
        while len(webhook.received) < 6:
            assert time.monotonic() < deadline, "the re-queued results never went out"
            time.sleep(0.05)
        assert c.get("/v1/status").json()["push"]["webhook"]["dead_letters"] == 0
        again = c.post("/v1/admin/push/retry?destination=mqtt", headers={"X-Admin-Key": admin})
        assert again.json() == {"requeued": {}}  # MQTT is not configured here
    sent = [r.headers["Idempotency-Key"] for r in webhook.received]
    assert sent == ["req-000", "req-001", "req-002"] * 2


def test_audit_off_records_nothing(tmp_path: Path) -> None:
    app = build_app(settings_for(tmp_path, audit="off"))
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        assert record(c, answer(1, ng=True)) is None
        assert c.get("/v1/results").json()["error"]["code"] == "audit_off"
        assert c.get("/v1/status").json()["audit"] == "off"
    assert not (tmp_path / "data").exists()


def test_start_refuses_a_newer_schema(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    async def start_twice() -> None:
        records = await Records.start(settings, Metrics())
        assert records.recorder is not None
        with records.recorder.db_engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
        await records.stop()
        with pytest.raises(SchemaTooNewError, match="newer BridgeNet version"):
            await Records.start(settings, Metrics())

    anyio.run(start_twice)


def test_openapi_lists_the_results_routes(client: TestClient) -> None:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for path in ("/v1/results", "/v1/results.csv", "/v1/results/{request_id}", "/v1/status"):
        assert path in paths
    assert "/v1/results/{request_id}/files/{kind}" in paths
    schema = paths["/v1/results"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/ResultsPage")


def test_compose_keeps_records_in_a_volume_and_passes_the_settings_through() -> None:
    import yaml

    from tests.deploy.tools import DOCKER_DIR

    common = yaml.safe_load((DOCKER_DIR / "compose.common.yml").read_text())["services"]["bridgenet-service"]
    assert "bridgenet-data:/data" in common["volumes"]
    env = common["environment"]
    assert env["BRIDGENET_DATA_DIR"] == "/data"
    records_fields = ("audit", "archive", "retention_days", "archive_max_gb", "database_url", "push_on")
    for field in (*records_fields, "mqtt_url", "mqtt_topic", "webhook_url", "webhook_secret"):
        assert field in Settings.model_fields
        assert f"BRIDGENET_{field.upper()}" in env, f"BRIDGENET_{field.upper()} is not passed to the container"
    assert env["BRIDGENET_WEBHOOK_SECRET"] == "${BRIDGENET_WEBHOOK_SECRET:-}"
    top = yaml.safe_load((DOCKER_DIR.parent / "docker-compose.yml").read_text())
    assert "bridgenet-data" in top["volumes"] and "mosquitto-data" in top["volumes"]
