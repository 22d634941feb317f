"""What the API tells a client about the service's insides: a record that cannot be written is a generic
503 (the database's text goes to the log only), and /v1/status names no internal host without the admin key.
Both run the real app on the fake model; the database that goes away is a real PostgreSQL, stopped."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.routes_results import HIDDEN_ERROR
from service.main import create_app
from tests.records.servers import Postgres, free_port
from tests.service.fake_model import make_part, make_settings, png_bytes, tiff_bytes, write_fake_model

ADMIN_KEY = "status-admin-key-0123456789"
RGB, XYZ = make_part(40, 48, seed=1)
FILES = {"rgb": ("rgb.png", png_bytes(RGB), "image/png"), "xyz": ("xyz.tiff", tiff_bytes(XYZ), "image/tiff")}


def test_a_stopped_database_gets_a_generic_503_and_the_detail_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    server = Postgres()
    server.start()
    try:
        url = server.new_database()
        settings = make_settings(models, data_dir=tmp_path / "data", database_url=url)
        with TestClient(create_app(settings)) as client:
            assert client.post("/v1/predict", files=FILES).status_code == 200
            assert server.proc is not None
            server.proc.send_signal(signal.SIGINT)  # fast shutdown: the service's pooled sessions are cut
            server.proc.wait(30)
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                answers = [
                    client.post("/v1/predict", files=FILES),  # the record's INSERT fails
                    client.post("/v1/predict", files=FILES, headers={"X-Request-ID": "plc-7"}),  # its id lookup
                ]
            for response in answers:
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "audit_unavailable" and response.headers["Retry-After"] == "5"
                for internal in ("127.0.0.1", str(server.port), "bridgenet", "psycopg", "SQL", "INSERT", "SELECT"):
                    assert internal not in response.text, internal
                assert "retry" in error["message"]
            logged = [r for r in caplog.records if r.getMessage().startswith("record not written")]
            assert len(logged) == 2
            assert all(str(server.port) in r.getMessage() for r in logged)  # the operator's detail is there
    finally:
        server.stop()


def _status(client: TestClient, **headers: str) -> Any:
    return client.get("/v1/status", headers=headers)


def test_status_names_internal_hosts_only_to_the_admin_key(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    port = free_port()  # nothing listens there: deliveries fail and the error names the host
    hook = f"http://127.0.0.1:{port}/plant-internal/hook"
    settings = make_settings(models, data_dir=tmp_path / "data", webhook_url=hook, admin_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/predict", files=FILES).status_code == 200
        deadline = time.monotonic() + 20
        while _status(client, **{"X-Admin-Key": ADMIN_KEY}).json()["push"]["webhook"]["last_error"] is None:
            assert time.monotonic() < deadline, "no delivery attempt within 20 s"
            time.sleep(0.1)
        admin = _status(client, **{"X-Admin-Key": ADMIN_KEY})
        assert admin.status_code == 200 and str(port) in admin.json()["push"]["webhook"]["last_error"]
        plain = _status(client)
        assert plain.status_code == 200
        assert plain.json()["push"]["webhook"]["last_error"] == HIDDEN_ERROR
        assert plain.json()["push"]["webhook"]["waiting"] == 1
        for internal in ("127.0.0.1", str(port), "plant-internal"):
            assert internal not in plain.text, internal
        wrong = _status(client, **{"X-Admin-Key": "not-the-admin-key-at-all"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"


def test_an_admin_key_sent_to_a_service_without_one_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    with TestClient(create_app(make_settings(models, data_dir=tmp_path / "data"))) as client:
        assert _status(client).status_code == 200
        refused = _status(client, **{"X-Admin-Key": ADMIN_KEY})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_disabled"
