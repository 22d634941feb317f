"""Admission before the body (service.api.gate): the predict paths are refused from their headers, without
one call to `receive`, and an admitted request's place comes back however it ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.deps import ServiceState
from service.main import create_app, max_body_bytes
from tests.service.fake_model import make_settings

KEY = "gate-test-key-0123456789"
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    @property
    def code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


def scope_for(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def call(app: Any, path: str, headers: dict[str, str], receive: Receive) -> Answer:
    answer = Answer()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    await app(scope_for(path, headers), receive, send)
    return answer


class CountingReceive:
    """A receive() that counts its calls; it never delivers a body (a refusal must not ask for one)."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await self.release.wait()  # the body "stalls" until released, then the client disconnects
        return {"type": "http.disconnect"}


@pytest.fixture
def client(models_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(models_dir, api_key=KEY, max_inflight=1, max_queue=1)
    with TestClient(create_app(settings)) as client:
        yield client


def multipart_headers(**extra: str) -> dict[str, str]:
    return {"content-type": "multipart/form-data; boundary=xyz", "content-length": "1000", **extra}


@pytest.mark.parametrize("path", ["/v1/predict", "/predict"])
def test_refusals_come_from_the_headers_without_reading_the_body(client: TestClient, path: str) -> None:
    app = client.app
    state: ServiceState = app.state.service  # type: ignore[attr-defined]
    limit = max_body_bytes(state.settings)
    cases = [
        (multipart_headers(), 401, "unauthorized"),
        (multipart_headers(**{"x-api-key": "wrong"}), 401, "unauthorized"),
        (multipart_headers(**{"x-api-key": KEY, "content-length": str(limit + 1)}), 413, "too_large"),
    ]
    for headers, status, code in cases:
        receive = CountingReceive()
        answer = client.portal.call(call, app, path, headers, receive)  # type: ignore[union-attr]
        assert (answer.status, answer.code, receive.calls) == (status, code, 0), headers
        assert answer.headers["connection"] == "close"
    assert state.admission is not None and state.admission.admitted == 0


def test_not_ready_is_refused_before_the_body_with_retry_after(client: TestClient) -> None:
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    admission, state.admission = state.admission, None  # as while loading or stopping
    try:
        receive = CountingReceive()
        answer = client.portal.call(  # type: ignore[union-attr]
            call, client.app, "/v1/predict", multipart_headers(**{"x-api-key": KEY}), receive
        )
    finally:
        state.admission = admission
    assert (answer.status, answer.code, receive.calls) == (503, "not_ready", 0)
    assert int(answer.headers["retry-after"]) >= 1


def test_a_slot_is_held_while_the_body_streams_and_released_on_disconnect(client: TestClient) -> None:
    app = client.app
    state: ServiceState = app.state.service  # type: ignore[attr-defined]
    assert state.admission is not None
    portal = client.portal
    assert portal is not None
    headers = multipart_headers(**{"x-api-key": KEY})
    stalled = [CountingReceive(), CountingReceive()]  # max_inflight 1 + max_queue 1: two bodies may stream in
    futures = [portal.start_task_soon(call, app, "/v1/predict", headers, r) for r in stalled]
    portal.call(asyncio.sleep, 0.2)
    assert state.admission.admitted == 2 and all(r.calls == 1 for r in stalled)
    third = CountingReceive()
    refused = portal.call(call, app, "/v1/predict", headers, third)
    assert (refused.status, refused.code, third.calls) == (429, "queue_full", 0)
    assert int(refused.headers["retry-after"]) >= 1
    for receive in stalled:  # the clients leave mid-body: their places come back
        portal.call(receive.release.set)
    for future in futures:
        future.result(timeout=5)
    assert state.admission.admitted == 0
    metrics = client.get("/metrics", headers={"X-API-Key": KEY}).text
    assert 'bridgenet_requests_total{endpoint="/v1/predict",status="429"} 1.0' in metrics
    assert "bridgenet_inflight_requests 0.0" in metrics


def test_a_body_that_stops_arriving_gets_408_and_its_slot_back(models_dir: Path) -> None:
    settings = make_settings(models_dir, api_key=KEY, max_inflight=1, max_queue=0, body_timeout_s=0.3)
    with TestClient(create_app(settings)) as client:
        state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
        receive = CountingReceive()  # never releases: the client stalls
        answer = client.portal.call(  # type: ignore[union-attr]
            call, client.app, "/v1/predict", multipart_headers(**{"x-api-key": KEY}), receive
        )
        assert (answer.status, answer.code) == (408, "body_timeout")
        assert answer.headers["connection"] == "close"
        assert state.admission is not None and state.admission.admitted == 0
