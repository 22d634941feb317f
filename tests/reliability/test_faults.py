"""Faults against a real `python -m service`: broken model folders and a missing GPU refuse start-up with a
message naming the problem; clients that vanish mid-request leave the service ready with nothing in flight."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import onnx
import onnxruntime as ort
import pytest
from uvicorn.config import STARTUP_FAILURE

from service.engine import CUDA, cuda_driver_present
from tests.reliability.conftest import StartService, part_files, run_until_exit
from tests.service.fake_model import write_fake_model

# Exit codes of `python -m service`: a model that cannot be served fails the lifespan, and uvicorn then
# exits with its own STARTUP_FAILURE (3) before service.__main__ can return its 1; invalid settings give 2.
START_FAILED = {1, STARTUP_FAILURE}
BAD_SETTINGS = 2


def start_up_errors(log: str) -> list[str]:
    """Messages of the ERROR lines that say why start-up failed."""
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [str(r["message"]) for r in records if r["level"] == "ERROR" and "start-up failed" in str(r["message"])]


def refused(models_dir: Path, tmp_path: Path, **settings: str) -> str:
    """Run the service, expect a start-up failure exit code and error line; return that error's message."""
    code, log = run_until_exit(models_dir, tmp_path, **settings)
    assert code in START_FAILED, log[-3000:]
    errors = start_up_errors(log)
    assert errors, log[-3000:]
    return errors[0]


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (write_fake_model(models, "fake") / "model.onnx").unlink()  # manifest.json stays
    message = refused(models, tmp_path, models="fake")
    assert re.search(r"model 'fake': .*fake/model\.onnx not found", message), message
    # Without an explicit list, a folder without model.onnx is no model at all.
    assert "no model found in" in refused(models, tmp_path)


def test_truncated_model_file_is_named(tmp_path: Path) -> None:
    """The hash is checked before ONNX Runtime parses the file: a truncated file fails that check."""
    onnx_path = write_fake_model(tmp_path / "models", "fake") / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:-200])
    message = refused(tmp_path / "models", tmp_path)
    assert re.search(r"model 'fake': .*model\.onnx sha256 .* does not match manifest\.json", message), message


def test_model_file_swapped_for_another_fails_the_manifest_check(tmp_path: Path) -> None:
    models = tmp_path / "models"
    folder = write_fake_model(models, "fake")
    other = write_fake_model(tmp_path / "elsewhere", "fake", version="2", threshold=0.5)
    shutil.copyfile(other / "model.onnx", folder / "model.onnx")  # a valid model, not the one of manifest.json
    message = refused(models, tmp_path)
    assert re.search(r"model 'fake': .*sha256 .* does not match manifest\.json", message), message


def test_edited_model_fails_the_manifest_check(tmp_path: Path) -> None:
    onnx_path = write_fake_model(tmp_path / "models", "fake") / "model.onnx"
    model = onnx.load(str(onnx_path))
    model.doc_string = "edited after export"
    onnx.save(model, str(onnx_path))
    assert "does not match manifest.json" in refused(tmp_path / "models", tmp_path)


def test_one_bad_model_among_good_ones_is_reported_and_the_others_are_served(
    start_service: StartService, tmp_path: Path
) -> None:
    """One bad folder must not stop a station: it is named (log line, /v1/models, metric), requests naming
    it get 503 model_unavailable, and the default model keeps the station ready."""
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    write_fake_model(models, "good")
    broken = write_fake_model(models, "broken") / "model.onnx"
    broken.write_bytes(broken.read_bytes()[:64])
    service = start_service(models)
    listing = httpx.get(f"{service.url}/v1/models", timeout=10).json()
    assert [m["name"] for m in listing["models"]] == ["fake", "good"]
    assert [m["name"] for m in listing["unavailable"]] == ["broken"]
    answer = httpx.post(f"{service.url}/v1/predict", files=part_files(), data={"model": "broken"}, timeout=10)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_unavailable"
    assert httpx.post(f"{service.url}/v1/predict", files=part_files(), data={"model": "good"}, timeout=10).is_success
    assert 'bridgenet_model_unavailable{model="broken"} 1.0' in httpx.get(f"{service.url}/metrics", timeout=5).text
    errors = [json.loads(line) for line in service.log_text().splitlines() if '"level": "ERROR"' in line]
    assert any("model broken is not served" in str(e["message"]) for e in errors), errors


def test_sighup_reloads_the_model_folders(start_service: StartService, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    service = start_service(models)
    write_fake_model(models, "added")
    os.kill(service.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "added" not in [m["name"] for m in httpx.get(f"{service.url}/v1/models", timeout=5).json()["models"]]:
        assert time.monotonic() < deadline and service.proc.poll() is None, service.log_text()[-3000:]
        time.sleep(0.1)
    answer = httpx.post(f"{service.url}/v1/predict", files=part_files(), data={"model": "added"}, timeout=10)
    assert answer.is_success, answer.text


@pytest.mark.skipif(
    CUDA in ort.get_available_providers() and cuda_driver_present(), reason="this machine has CUDA: nothing refuses"
)
def test_required_cuda_absent_refuses_start_up(tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models", "fake")
    message = refused(tmp_path / "models", tmp_path, require_cuda="1", providers="auto")
    assert "BRIDGENET_REQUIRE_CUDA is set but CUDA is not usable here" in message
    assert "NVIDIA driver not found" in message or "CUDAExecutionProvider" not in message


@pytest.mark.skipif(
    not (CUDA in ort.get_available_providers() and cuda_driver_present()), reason="needs a machine with CUDA"
)
def test_required_cuda_present_serves_on_cuda(start_service: StartService, tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models", "fake")
    service = start_service(tmp_path / "models", require_cuda="1", providers="auto")
    (model,) = httpx.get(f"{service.url}/v1/models", timeout=10).json()["models"]
    assert model["provider"] == CUDA
    answer = httpx.post(f"{service.url}/v1/predict", files=part_files(seed=2), timeout=30)
    assert answer.status_code == 200 and answer.json()["provider"] == CUDA


def test_required_cuda_with_cpu_providers_is_a_settings_error(tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models", "fake")
    code, log = run_until_exit(tmp_path / "models", tmp_path, require_cuda="1")  # providers=cpu from the fixture
    assert code == BAD_SETTINGS, log[-3000:]
    assert "BRIDGENET_REQUIRE_CUDA contradicts BRIDGENET_PROVIDERS=cpu" in log


# --- clients that go away ------------------------------------------------------------------------------


def multipart_head(url: str, boundary: str, content_length: int) -> bytes:
    host = urlsplit(url).netloc
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


def gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{name} (\S+)$", text, flags=re.MULTILINE)
    assert match, f"{name} not exposed"
    return float(match.group(1))


def settled(url: str, timeout_s: float = 10.0) -> None:
    """Nothing in flight (the gauge back at 0), /readyz 200, and a normal prediction answers 200."""
    deadline = time.monotonic() + timeout_s
    while gauge(url, "bridgenet_inflight_requests") != 0:
        assert time.monotonic() < deadline, "bridgenet_inflight_requests did not return to 0"
        time.sleep(0.05)
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    assert httpx.post(f"{url}/v1/predict", files=part_files(seed=7), timeout=10).status_code == 200


def test_clients_disconnecting_mid_upload_and_mid_prediction_leave_nothing_behind(
    start_service: StartService, tmp_path: Path
) -> None:
    write_fake_model(tmp_path / "models", "fake")
    service = start_service(tmp_path / "models")
    upload = part_files(seed=3)
    address = urlsplit(service.url)
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="rgb"; filename="p.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + upload["rgb"][1]
    # 1. Headers announce 1 MB; a third of the first file arrives; the client vanishes.
    for _ in range(5):
        with socket.create_connection((address.hostname, address.port), timeout=5) as s:
            s.sendall(multipart_head(service.url, boundary, 1_000_000) + part[: len(part) // 3])
            time.sleep(0.05)
    # 2. A whole, valid request is sent; the client vanishes before the answer.
    request = httpx.Request("POST", service.url, files=upload)
    body, content_type = request.read(), request.headers["content-type"]
    whole = multipart_head(service.url, content_type.split("boundary=")[1], len(body)) + body
    for _ in range(5):
        with socket.create_connection((address.hostname, address.port), timeout=5) as s:
            s.sendall(whole)
    settled(service.url)
    log = service.log_text()
    assert '"level": "ERROR"' not in log, [line for line in log.splitlines() if '"ERROR"' in line][:3]
    # The abandoned whole requests were scored (their answers went nowhere), plus settled()'s own one.
    assert log.count('"message": "scored part"') == 5 + 1
    # The vanished uploads are counted as the client's doing (499), not as refusals of bad input.
    metrics = httpx.get(f"{service.url}/metrics", timeout=5).text
    assert 'bridgenet_rejected_requests_total{reason="client_disconnected"} 5.0' in metrics
    # Every refusal reason is exposed from start-up at 0; the disconnects must not count as bad requests.
    assert 'bridgenet_rejected_requests_total{reason="bad_request"} 0.0' in metrics
    assert 'bridgenet_requests_total{endpoint="/v1/predict",status="499"} 5.0' in metrics
    assert service.proc.poll() is None
