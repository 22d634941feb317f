"""POST /v1/predict over the real app and the tiny fake ONNX model: answers, maps, and refused inputs."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.fake_model import (
    THRESHOLD,
    make_part,
    make_settings,
    npy_bytes,
    png_bytes,
    tiff_bytes,
)

RGB, XYZ = make_part(40, 48, seed=1)
FLAT_RGB, FLAT_XYZ = make_part(40, 48, seed=2, flat=True)
Files = dict[str, tuple[str, bytes, str]]


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(models_dir))) as c:
        yield c


def files(rgb: bytes | None = None, xyz: bytes | None = None, *, xyz_name: str = "xyz.tiff") -> Files:
    out: Files = {}
    if rgb is not None:
        out["rgb"] = ("rgb.png", rgb, "application/octet-stream")
    if xyz is not None:
        out["xyz"] = (xyz_name, xyz, "application/octet-stream")
    return out


def expected(client: TestClient, rgb: np.ndarray, xyz: np.ndarray) -> Any:
    """The engine's own answer for the same arrays, bypassing HTTP and the codecs."""
    return client.app.state.service.engine.predict(rgb, xyz)  # type: ignore[attr-defined]


def assert_still_ready(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("xyz_encoder", [tiff_bytes, npy_bytes], ids=["tiff", "npy"])
def test_predict_answers_score_verdict_and_timings(client: TestClient, xyz_encoder: Callable[..., bytes]) -> None:
    response = client.post("/v1/predict", files=files(png_bytes(RGB), xyz_encoder(XYZ)), data={"part_id": "line1-0042"})
    assert response.status_code == 200, response.text
    body = response.json()
    want = expected(client, RGB, XYZ)
    assert body["model"] == {"name": "fake", "version": "1"}
    assert body["part_id"] == "line1-0042"
    assert body["score"] == pytest.approx(want.score, abs=1e-6)
    assert 0.0 < body["score"] < 1.0
    assert body["threshold"] == pytest.approx(THRESHOLD)
    assert body["threshold_source"] == "manifest"
    assert body["is_anomalous"] is (body["score"] > body["threshold"])
    assert body["defect_area_fraction"] == pytest.approx(want.defect_area_fraction)
    assert body["anomaly_map"] is None
    assert body["provider"] == want.provider
    assert body["request_id"] == response.headers["X-Request-ID"]
    timings = body["timings_ms"]
    assert set(timings) == {"queue", "decode", "preprocess", "batch_wait", "inference", "postprocess", "total"}
    assert all(v >= 0 for v in timings.values())
    assert timings["total"] >= timings["decode"] + timings["preprocess"] + timings["inference"]


def encode_rgb_variant(kind: str) -> bytes:
    """The test image in the other accepted RGB encodings."""
    gray = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
    if kind == "gray16_png":
        ok, buf = cv2.imencode(".png", gray.astype(np.uint16) * 257)
    elif kind == "rgba_png":
        ok, buf = cv2.imencode(".png", np.dstack([RGB[:, :, ::-1], np.full(gray.shape, 255, np.uint8)]))
    elif kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", RGB[:, :, ::-1])
    else:
        return tiff_bytes(RGB)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("kind", ["gray16_png", "rgba_png", "jpeg", "tiff"])
def test_other_rgb_encodings_and_float64_cloud_are_accepted(client: TestClient, kind: str) -> None:
    xyz64 = npy_bytes(XYZ.astype(np.float64))
    response = client.post("/v1/predict", files=files(encode_rgb_variant(kind), xyz64, xyz_name="xyz.npy"))
    assert response.status_code == 200, response.text
    assert 0.0 < response.json()["score"] < 1.0


def test_low_threshold_flags_the_part_and_its_area(models_dir: Path) -> None:
    settings = make_settings(models_dir, threshold_overrides={"fake": 0.01})
    with TestClient(create_app(settings)) as c:
        body = c.post("/v1/predict", files=files(png_bytes(RGB), npy_bytes(XYZ))).json()
    assert body["threshold"] == pytest.approx(0.01) and body["threshold_source"] == "override"
    assert body["is_anomalous"] is True
    assert body["defect_area_fraction"] == pytest.approx(1.0)  # sigmoid > 0.01 everywhere


def test_png_map_is_16_bit_at_upload_size(client: TestClient) -> None:
    response = client.post("/v1/predict", files=files(png_bytes(RGB), tiff_bytes(XYZ)), data={"return_map": "png"})
    assert response.status_code == 200, response.text
    amap = response.json()["anomaly_map"]
    assert (amap["width"], amap["height"], amap["encoding"]) == (48, 40, "png")
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(amap["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None and pixels.dtype == np.uint16 and pixels.shape == (40, 48)
    want = expected(client, RGB, XYZ).anomaly_map
    np.testing.assert_allclose(pixels / 65535.0, want, atol=0.6 / 65535)


def test_npy_map_is_float32_at_upload_size(client: TestClient) -> None:
    response = client.post("/v1/predict", files=files(png_bytes(RGB), npy_bytes(XYZ)), data={"return_map": "npy"})
    assert response.status_code == 200, response.text
    amap = response.json()["anomaly_map"]
    assert (amap["width"], amap["height"], amap["encoding"]) == (48, 40, "npy")
    array = np.load(io.BytesIO(base64.b64decode(amap["data"])), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (40, 48)
    np.testing.assert_array_equal(array, expected(client, RGB, XYZ).anomaly_map)


def png_header_only(height: int, width: int) -> bytes:
    """A PNG signature + IHDR declaring height×width RGB8, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    """An NPY header declaring `shape` float32, followed by only a few bytes of data."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return out.getvalue() + b"\x00" * 64


GOOD_PNG, GOOD_TIFF = png_bytes(RGB), tiff_bytes(XYZ)
PICKLED = npy_bytes(np.array([{"x": 1}], dtype=object), allow_pickle=True)
REFUSED: list[tuple[str, Files, dict[str, str], int, str, str]] = [
    # (case, files, form data, status, code, a word the message must contain)
    ("missing rgb", files(None, GOOD_TIFF), {}, 422, "missing_field", "rgb"),
    ("missing xyz", files(GOOD_PNG, None), {}, 422, "missing_field", "xyz"),
    ("empty rgb", files(b"", GOOD_TIFF), {}, 400, "empty", "rgb"),
    ("corrupt png", files(GOOD_PNG[:60] + b"\x00garbage" * 20, GOOD_TIFF), {}, 400, "corrupt", "PNG"),
    ("gif rgb", files(b"GIF89a" + b"\x00" * 64, GOOD_TIFF), {}, 400, "unsupported_format", "rgb"),
    ("png as xyz", files(GOOD_PNG, GOOD_PNG), {}, 400, "unsupported_format", "xyz"),
    ("xyz wrong shape", files(GOOD_PNG, npy_bytes(XYZ[:, :, :2].copy())), {}, 400, "bad_shape", "(H, W, 3)"),
    ("size mismatch", files(GOOD_PNG, tiff_bytes(XYZ[:32])), {}, 422, "size_mismatch", "40×48"),
    ("flat cloud", files(png_bytes(FLAT_RGB), tiff_bytes(FLAT_XYZ)), {}, 422, "no_foreground", "plane"),
    ("huge declared png", files(png_header_only(100_000, 100_000), GOOD_TIFF), {}, 413, "too_large", "100000"),
    ("huge declared npy", files(GOOD_PNG, npy_header_only((90_000, 90_000, 3))), {}, 413, "too_large", "90000"),
    (
        "pickled npy",
        files(GOOD_PNG, PICKLED),
        {},
        400,
        "bad_dtype",
        "pickle",
    ),
    ("unknown model", files(GOOD_PNG, GOOD_TIFF), {"model": "nope"}, 404, "unknown_model", "nope"),
    ("bad return_map", files(GOOD_PNG, GOOD_TIFF), {"return_map": "jpeg"}, 422, "invalid_field", "return_map"),
]


@pytest.mark.parametrize(("case", "upload", "data", "status", "code", "word"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_inputs_get_one_error_shape(
    client: TestClient, case: str, upload: Files, data: dict[str, str], status: int, code: str, word: str
) -> None:
    response = client.post("/v1/predict", files=upload, data=data)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code
    assert word.lower() in body["error"]["message"].lower()
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    assert_still_ready(client)


@pytest.fixture(scope="module")
def small_client(models_dir: Path) -> Iterator[TestClient]:
    """Uploads limited to 20 kB per file (the body limit is then 2 × 20 kB + 1 MiB of form overhead)."""
    with TestClient(create_app(make_settings(models_dir, max_upload_bytes=20_000))) as c:
        yield c


def test_oversized_part_is_413(small_client: TestClient) -> None:
    xyz = npy_bytes(XYZ)  # 40 × 48 × 3 × 4 bytes ≈ 23 kB
    assert len(xyz) > 20_000
    response = small_client.post("/v1/predict", files=files(GOOD_PNG, xyz))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "xyz" in response.json()["error"]["message"]
    assert_still_ready(small_client)


def test_declared_content_length_over_the_limit_is_413_before_reading(small_client: TestClient) -> None:
    body = b"x" * (2 * 20_000 + 1024 * 1024 + 1)
    response = small_client.post(
        "/v1/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=zz"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "Content-Length" in response.json()["error"]["message"]
    assert_still_ready(small_client)


def test_streamed_body_over_the_limit_is_413(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it arrives
        for _ in range(20):
            yield b"y" * 100_000

    response = small_client.post(
        "/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=zz"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert_still_ready(small_client)
