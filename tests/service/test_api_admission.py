"""Admission control over the real app: a full queue answers 429 at once, a slow request answers 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.api.deps import ServiceState
from service.main import create_app, engine_options
from tests.service.fake_model import GatedEngine, make_part, make_settings, png_bytes, tiff_bytes

RGB, XYZ = make_part(40, 48, seed=4)
FILES = {"rgb": ("p.png", png_bytes(RGB), "image/png"), "xyz": ("p.tiff", tiff_bytes(XYZ), "image/tiff")}


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_full_queue_is_refused_at_once_with_retry_after(models_dir: Path) -> None:
    settings = make_settings(models_dir, max_inflight=1, max_queue=1)
    engine = GatedEngine(engine_options(settings))
    app = create_app(settings, engine=engine)
    state: ServiceState = app.state.service
    results: dict[str, Any] = {}  # key → the client's response
    with TestClient(app) as client:

        def post(key: str) -> None:
            results[key] = client.post("/v1/predict", files=FILES)

        running = threading.Thread(target=post, args=("running",))
        running.start()
        assert engine.entered.acquire(timeout=5)  # the first request holds the only slot
        queued = threading.Thread(target=post, args=("queued",))
        queued.start()
        assert state.admission is not None
        wait_until(lambda: state.admission is not None and state.admission.waiting == 1)
        started = time.perf_counter()
        refused = client.post("/v1/predict", files=FILES)
        refused_after = time.perf_counter() - started
        engine.gate.set()
        running.join(10)
        queued.join(10)
        metrics_text = client.get("/metrics").text
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused_after < 2.0  # refused without waiting for the running request
    assert results["running"].status_code == 200 and results["queued"].status_code == 200
    assert 'bridgenet_rejected_requests_total{reason="queue_full"} 1.0' in metrics_text


def test_slow_request_times_out_with_503_and_the_slot_comes_back(models_dir: Path) -> None:
    settings = make_settings(models_dir, max_inflight=1, max_queue=0, request_timeout_s=0.3)
    engine = GatedEngine(engine_options(settings))
    with TestClient(create_app(settings, engine=engine)) as client:
        started = time.perf_counter()
        response = client.post("/v1/predict", files=FILES)
        elapsed = time.perf_counter() - started
        # The abandoned work still holds the only slot: the next request is refused, not piled up.
        assert client.post("/v1/predict", files=FILES).status_code == 429
        engine.gate.set()
        state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
        wait_until(lambda: state.admission is not None and state.admission.running == 0)
        assert client.post("/v1/predict", files=FILES).status_code == 200
        assert client.get("/readyz").status_code == 200
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "timeout"
    assert "request_timeout_s" in response.json()["error"]["message"]
    assert int(response.headers["Retry-After"]) >= 1
    assert 0.25 < elapsed < 3.0
