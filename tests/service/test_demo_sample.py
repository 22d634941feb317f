"""The bundled demo model and its sample parts through the real app: the NG sample's regions lie on its
ground-truth defect (models/demo/sample/gt.png) with a physical area; the good sample is answered OK."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.postprocessing.regions import REGION_PEAK_RATIO
from tests.service.fake_model import make_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "models" / "demo" / "sample"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(
        REPO_ROOT / "models",
        default_model="demo",
        data_dir=tmp_path_factory.mktemp("data"),
        max_upload_bytes=8 * 1024 * 1024,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def predict(client: TestClient, prefix: str) -> dict[str, Any]:
    response = client.post(
        "/v1/predict",
        files={
            "rgb": ("rgb.png", (SAMPLE / f"{prefix}rgb.png").read_bytes(), "image/png"),
            "xyz": ("xyz.tiff", (SAMPLE / f"{prefix}xyz.tiff").read_bytes(), "image/tiff"),
        },
        data={"return_map": "npy"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_ng_sample_has_a_region_on_its_defect_with_its_area(client: TestClient) -> None:
    answer = predict(client, "")
    assert answer["is_anomalous"] is True and answer["decision"]["rule"] == "score"
    assert answer["pixel_threshold"] is not None and answer["regions"]
    amap = np.load(io.BytesIO(base64.b64decode(answer["anomaly_map"]["data"])))
    gt = cv2.imread(str(SAMPLE / "gt.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert gt.shape == amap.shape and gt.any()
    top = answer["regions"][0]
    assert top["area_mm2"] is not None and top["area_mm2"] > 0 and top["measured_fraction"] > 0.9
    box = np.zeros_like(gt)
    box[top["y"] : top["y"] + top["height"], top["x"] : top["x"] + top["width"]] = True
    # The region's own pixels (inside its box, the map above the pixel threshold and above half the region's
    # height over it) cover most of the defect.
    threshold = answer["pixel_threshold"]
    cut = threshold + REGION_PEAK_RATIO * (top["max_score"] - threshold)
    region = box & (amap > threshold) & (amap >= cut)
    assert region.sum() == top["area_px"]
    assert (region & gt).sum() >= 0.5 * gt.sum()


def test_the_good_sample_is_ok_without_regions(client: TestClient) -> None:
    answer = predict(client, "good_")
    assert answer["is_anomalous"] is False and answer["regions"] == [] and answer["defect_area_fraction"] == 0.0
