"""Start-up: a model that cannot be served stops the app with a message naming the problem; `python -m service`
exits non-zero on it, and serves, then stops cleanly on SIGTERM, with a good model."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import onnx
import pytest
from fastapi.testclient import TestClient

from service.__main__ import build_server
from service.engine import ModelLoadError
from service.main import create_app, engine_options
from tests.service.fake_model import GatedEngine, make_part, make_settings, png_bytes, tiff_bytes, write_fake_model

REPO = Path(__file__).resolve().parents[2]
RGB, XYZ = make_part(40, 48, seed=5)


def start_app(models_dir: Path) -> None:
    with TestClient(create_app(make_settings(models_dir))):
        pass


def test_truncated_model_file_stops_start_up_before_onnx_runtime_parses_it(tmp_path: Path) -> None:
    onnx_path = write_fake_model(tmp_path, "fake") / "model.onnx"
    data = onnx_path.read_bytes()
    onnx_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model 'fake'.*model\.onnx sha256 .* does not match manifest\.json"):
        start_app(tmp_path)


def test_a_file_matching_its_manifest_that_onnx_runtime_cannot_parse_is_named(tmp_path: Path) -> None:
    folder = write_fake_model(tmp_path, "fake")
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["onnx_sha256"] = hashlib.sha256(data[: len(data) // 2]).hexdigest()  # "re-signed"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"model 'fake'.*model\.onnx is not a loadable ONNX model"):
        start_app(tmp_path)


def test_manifest_sha_mismatch_stops_start_up(tmp_path: Path) -> None:
    onnx_path = write_fake_model(tmp_path, "fake") / "model.onnx"
    model = onnx.load(str(onnx_path))
    model.doc_string = "edited after export"  # still a valid model, with the same embedded manifest
    onnx.save(model, str(onnx_path))
    with pytest.raises(ModelLoadError, match=r"sha256 .* does not match manifest\.json"):
        start_app(tmp_path)


def test_missing_default_model_stops_start_up(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "other")
    with pytest.raises(ModelLoadError, match="default model 'fake' cannot be served: not among the loaded models"):
        start_app(tmp_path)


def service_env(models_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGENET_")}
    env.update(
        BRIDGENET_MODELS_DIR=str(models_dir),
        BRIDGENET_DEFAULT_MODEL="fake",
        BRIDGENET_PROVIDERS="cpu",
        BRIDGENET_INTRA_OP_THREADS="1",
        BRIDGENET_DATA_DIR=str(models_dir / "service-data"),  # the audit trail, never in the working directory
        PYTHONPATH=str(REPO),
    )
    return env


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_python_m_service_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    onnx_path = write_fake_model(tmp_path, "fake") / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:100])
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        env=service_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    failures = [r for r in json_lines(result.stderr) if "start-up failed" in str(r["message"])]
    assert failures, result.stderr
    assert "does not match manifest.json" in str(failures[0]["message"])
    assert failures[0]["level"] == "ERROR"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_python_m_service_serves_then_stops_on_sigterm(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "fake")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        env=service_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        if ready is None or ready.status_code != 200:
            proc.kill()
            pytest.fail(f"the service did not get ready: {proc.communicate()[1]}")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # uvicorn re-raises the captured SIGTERM once shutdown is complete, so a clean stop reads as -SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    messages = [str(r["message"]) for r in json_lines(stderr)]
    assert "ready" in messages and "stopped" in messages
    access = [r for r in json_lines(stderr) if r["logger"] == "service.access"]
    assert access and access[-1]["status"] == 200


def test_shutdown_finishes_the_in_flight_request_before_stopping_the_engine(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "fake")
    settings = make_settings(tmp_path)
    engine = GatedEngine(engine_options(settings))
    port = free_port()
    server = build_server(create_app(settings, engine=engine), settings, "127.0.0.1", port)
    serving = threading.Thread(target=server.run)  # off the main thread: no signal handlers installed
    serving.start()
    results: list[httpx.Response] = []
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and serving.is_alive(), "the server did not start"
            time.sleep(0.02)
        files = {"rgb": ("p.png", png_bytes(RGB), "image/png"), "xyz": ("p.tiff", tiff_bytes(XYZ), "image/tiff")}
        client = threading.Thread(
            target=lambda: results.append(httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=files, timeout=10))
        )
        client.start()
        assert engine.entered.acquire(timeout=5)
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        time.sleep(0.3)
        assert engine.ready, "the engine stopped while a request was in flight"
        engine.gate.set()
        client.join(10)
        serving.join(10)
    finally:
        engine.gate.set()
        server.should_exit = True
        serving.join(10)
    assert results and results[0].status_code == 200
    assert not serving.is_alive() and not engine.ready
