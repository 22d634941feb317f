"""POST /v1/predict leaves a record, its evidence and its push, through the real app and the fake model."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from service.main import create_app
from service.manifest import MODEL_FILE, sha256_file
from service.postprocessing.maps import decode_png_map, map_to_input_size
from tests.records.servers import WebhookReceiver, free_port
from tests.service.fake_model import SIZE as FAKE_SIZE
from tests.service.fake_model import make_part, make_settings, png_bytes, tiff_bytes, write_fake_model


def test_predict_is_recorded_archived_and_pushed(tmp_path: Path, webhook: WebhookReceiver) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    settings = make_settings(models, data_dir=tmp_path / "data", archive="all", webhook_url=webhook.url)
    rgb, xyz = make_part(40, 48, seed=1)
    rgb_bytes, xyz_bytes = png_bytes(rgb), tiff_bytes(xyz)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/predict",
            files={"rgb": ("rgb.png", rgb_bytes, "image/png"), "xyz": ("xyz.tiff", xyz_bytes, "image/tiff")},
            data={"part_id": "line1-0042", "return_map": "npy"},
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        record = client.get(f"/v1/results/{answer['request_id']}")
        assert record.status_code == 200, record.text
        body = record.json()
        for field in ("part_id", "score", "threshold", "threshold_source", "is_anomalous", "provider"):
            assert body[field] == answer[field], field
        assert body["model"]["name"] == "fake" and len(body["model"]["onnx_sha256"]) == 64
        # The SHA-256 the engine verified at load: the model file that scored the part.
        assert body["model"]["onnx_sha256"] == sha256_file(models / "fake" / MODEL_FILE)
        assert body["client"] == "testclient"
        assert client.get(f"/v1/results/{answer['request_id']}/files/rgb").content == rgb_bytes
        assert client.get(f"/v1/results/{answer['request_id']}/files/xyz").content == xyz_bytes
        # The archived map is the model's (S × S); resized bilinearly to the part it is the answer's map.
        archived = decode_png_map(client.get(f"/v1/results/{answer['request_id']}/files/map").content)
        assert archived.shape == (FAKE_SIZE, FAKE_SIZE) != rgb.shape[:2]
        answered = np.load(io.BytesIO(base64.b64decode(answer["anomaly_map"]["data"])))
        assert answered.shape == rgb.shape[:2]
        np.testing.assert_allclose(map_to_input_size(archived, *rgb.shape[:2]), answered, atol=1 / 65535)
        deadline = time.monotonic() + 20
        while not webhook.received and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(webhook.received) == 1
    pushed = json.loads(webhook.received[0].body)
    assert pushed["request_id"] == answer["request_id"] and pushed["score"] == answer["score"]
    assert "anomaly_map" not in pushed and "created" in pushed


def test_a_down_destination_leaves_the_service_ready(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    settings = make_settings(models, data_dir=tmp_path / "data", webhook_url=down)
    rgb, xyz = make_part(40, 48, seed=1)
    with TestClient(create_app(settings)) as client:
        for _ in range(2):
            response = client.post(
                "/v1/predict",
                files={
                    "rgb": ("rgb.png", png_bytes(rgb), "image/png"),
                    "xyz": ("xyz.tiff", tiff_bytes(xyz), "image/tiff"),
                },
            )
            assert response.status_code == 200, response.text
        assert client.get("/readyz").status_code == 200
        status = client.get("/v1/status").json()
        assert status["push"]["webhook"]["waiting"] == 2
