"""The integrity findings, tried live against a real `python -m service` (API key set, every part archived):
a repeated X-Request-ID, a crafted TIFF, and what /v1/status tells a line client."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.reliability.conftest import StartService, free_port, part_files
from tests.service.fake_model import write_fake_model
from tests.service.test_codecs_segments import MB, tiled_float_tiff

API_KEY = "line-key-for-the-live-integrity-test"
ADMIN_KEY = "admin-key-for-the-live-integrity-test"
RESULTS_KEY = "results-key-for-the-live-integrity-test"
AUTH = {"X-API-Key": API_KEY}
READER = {"X-API-Key": RESULTS_KEY}


def test_repeated_ids_crafted_tiffs_and_status_on_a_live_service(start_service: StartService, tmp_path: Path) -> None:
    models, data = tmp_path / "models", tmp_path / "data"
    write_fake_model(models, "fake")
    hook_port = free_port()  # nothing listens: the webhook's error names this port
    service = start_service(
        models,
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        results_key=RESULTS_KEY,
        archive="all",
        data_dir=str(data),
        webhook_url=f"http://127.0.0.1:{hook_port}/mes-internal",
        max_upload_bytes=str(40 * MB),
        max_image_side="4096",
        max_image_pixels=str(4096 * 4096),
    )
    url = service.url

    def predict(part: str, seed: int, request_id: str) -> httpx.Response:
        headers = {**AUTH, "X-Request-ID": request_id}
        return httpx.post(f"{url}/v1/predict", files=part_files(seed=seed), data={"part_id": part}, headers=headers)

    assert predict("A", 1, "counter-1").status_code == 200
    second = predict("B", 2, "counter-1")  # the PLC's counter restarted
    assert second.status_code == 409 and second.json()["error"]["code"] == "duplicate_request_id"
    assert httpx.get(f"{url}/v1/results", params={"part_id": "B"}, headers=READER).json()["results"] == []
    assert httpx.get(f"{url}/v1/results/counter-1", headers=READER).json()["part_id"] == "A"
    assert len([p for p in (data / "archive").rglob("*") if p.is_file()]) == 3  # part A's rgb, xyz, map only

    rgb = part_files()["rgb"]
    for size_mb in (8, 30):
        crafted = {"rgb": rgb, "xyz": ("xyz.tiff", tiled_float_tiff(size_mb * MB), "image/tiff")}
        start = time.perf_counter()
        answer = httpx.post(f"{url}/v1/predict", files=crafted, headers=AUTH, timeout=30)
        seconds = time.perf_counter() - start
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "corrupt", answer.text
        assert seconds < 1.0, f"{size_mb} MB crafted TIFF: {seconds:.2f} s"
    assert predict("C", 3, "counter-2").status_code == 200  # the line goes on at once

    deadline = time.monotonic() + 20
    admin = {**AUTH, "X-Admin-Key": ADMIN_KEY}
    while httpx.get(f"{url}/v1/status", headers=admin).json()["push"]["webhook"]["last_error"] is None:
        assert time.monotonic() < deadline, "no delivery attempt within 20 s"
        time.sleep(0.1)
    assert str(hook_port) in httpx.get(f"{url}/v1/status", headers=admin).text
    plain = httpx.get(f"{url}/v1/status", headers=AUTH)
    assert plain.status_code == 200
    assert str(hook_port) not in plain.text and "mes-internal" not in plain.text
