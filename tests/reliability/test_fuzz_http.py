"""HTTP fuzz of the upload path: seeded random and mutated PNG/JPEG/TIFF/NPY uploads through /v1/predict
answer 200 or a clean 4xx with the error body — never a 5xx, never a hang — and the service stays ready."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.reliability.conftest import StartService, part_files
from tests.service.fake_model import make_part, make_settings, npy_bytes, png_bytes, tiff_bytes, write_fake_model

SEED = 20250611
ALLOWED = {200, 400, 413, 422}
Files = dict[str, tuple[str, bytes, str]]


def seed_uploads() -> tuple[list[bytes], list[bytes]]:
    """Valid files to mutate: RGB images (PNG 8/16-bit/gray, JPEG, TIFF) and point clouds (TIFF, NPY)."""
    rgb, xyz = make_part(40, 48, seed=1)
    ok, jpeg = cv2.imencode(".jpg", rgb)
    assert ok
    images = [png_bytes(rgb), png_bytes(rgb.astype(np.uint16) * 257), png_bytes(rgb[:, :, :1].repeat(3, axis=2))]
    images += [jpeg.tobytes(), tiff_bytes(rgb)]
    clouds = [tiff_bytes(xyz), npy_bytes(xyz), npy_bytes(xyz.astype(np.float64))]
    return images, clouds


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One seeded byte-level mutation: overwrite, truncate, insert, extreme header byte, or splice."""
    out = bytearray(data)
    kind = int(rng.integers(5))
    if kind == 0:
        for i in rng.integers(0, len(out), size=int(rng.integers(1, 17))):
            out[i] = int(rng.integers(256))
    elif kind == 1:
        del out[int(rng.integers(0, len(out))) :]
    elif kind == 2:
        i = int(rng.integers(0, len(out)))
        out[i:i] = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
    elif kind == 3:  # sizes, counts and offsets live in the first bytes of every format here
        for _ in range(int(rng.integers(1, 4))):
            out[int(rng.integers(0, min(len(out), 160)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
    else:  # duplicate a slice elsewhere: repeated chunks, tags pointing into data
        a, b = sorted(int(x) for x in rng.integers(0, len(out), 2))
        i = int(rng.integers(0, len(out)))
        out[i:i] = out[a : min(b, a + 512)]
    return bytes(out)


def odd_cloud(rng: np.random.Generator) -> bytes:
    """A well-formed point cloud with hostile values or shapes: inf, huge, all-NaN, all-zero, tiny, 1-wide."""
    h, w = (int(rng.integers(1, 64)), int(rng.integers(1, 64))) if rng.random() < 0.3 else (40, 48)
    _, xyz = make_part(max(h, 2), max(w, 2), seed=int(rng.integers(1000)))
    xyz = xyz[:h, :w].copy()
    value = rng.choice([np.inf, -np.inf, np.nan, 0.0, 1e38, -1e38, 1e-42, -0.5])
    mask = rng.random(xyz.shape[:2]) < rng.choice([0.01, 0.5, 1.0])
    xyz[mask, int(rng.integers(3))] = value
    return npy_bytes(xyz) if rng.random() < 0.5 else tiff_bytes(xyz)


def fuzz_cases(seed: int) -> Iterator[Files]:
    """An endless seeded stream of uploads: mutated RGB, mutated cloud, both, random bytes, hostile values."""
    rng = np.random.default_rng(seed)
    images, clouds = seed_uploads()
    magics = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"\x93NUMPY\x01\x00", b""]
    while True:
        rgb, xyz = images[int(rng.integers(len(images)))], clouds[int(rng.integers(len(clouds)))]
        kind = int(rng.integers(6))
        if kind in (0, 2):
            rgb = mutate(rgb, rng)
        if kind in (1, 2):
            xyz = mutate(xyz, rng)
        if kind == 3:
            junk = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
            magic = magics[int(rng.integers(len(magics)))]
            if rng.random() < 0.5:
                rgb = magic + junk
            else:
                xyz = magic + junk
        if kind == 4:
            xyz = odd_cloud(rng)
        if kind == 5:  # a valid RGB image of another size than the cloud
            side = int(rng.integers(1, 80))
            rgb = png_bytes(rng.integers(0, 256, (side, int(rng.integers(1, 80)), 3), dtype=np.uint8))
        yield {"rgb": ("rgb.bin", rgb, "application/octet-stream"), "xyz": ("xyz.bin", xyz, "application/octet-stream")}


def check_answer(status: int, body: dict[str, object], headers: Mapping[str, str]) -> str:
    """The error code (or "ok"); fails on a status outside ALLOWED or an error without the one body shape."""
    assert status in ALLOWED, (status, body)
    if status == 200:
        assert isinstance(body["score"], float) and "timings_ms" in body
        return "ok"
    error = body["error"]
    assert isinstance(error, dict) and error["code"] and error["message"], body
    assert headers["content-type"].startswith("application/json")
    return str(error["code"])


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_fake_model(root, "fake")
    return root


@pytest.mark.timeout(120)
def test_fuzzed_uploads_in_process_never_5xx(models_dir: Path) -> None:
    settings = make_settings(models_dir, max_upload_bytes=256 * 1024, request_timeout_s=5.0)
    codes: Counter[str] = Counter()
    slowest = 0.0
    deadline = time.monotonic() + 15.0
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for n, files in enumerate(fuzz_cases(SEED)):
            if n >= 1500 or time.monotonic() > deadline:
                break
            started = time.monotonic()
            response = client.post("/v1/predict", files=files)
            slowest = max(slowest, time.monotonic() - started)
            codes[check_answer(response.status_code, response.json(), response.headers)] += 1
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/predict", files=part_files()).status_code == 200
    total = sum(codes.values())
    assert total >= 200, f"only {total} cases ran in the time budget: {codes}"
    # The decoders, their refusals and preprocessing's were all reached, and some uploads still scored.
    assert codes["ok"] > 0 and codes["corrupt"] > 0 and codes["unsupported_format"] > 0, codes
    assert sum(v for k, v in codes.items() if k not in {"ok", "corrupt", "unsupported_format"}) > 0, codes
    assert slowest < 3.0, f"one fuzz case took {slowest:.2f} s"


@pytest.mark.timeout(120)
def test_fuzzed_uploads_over_real_http_leave_the_service_ready(start_service: StartService, models_dir: Path) -> None:
    service = start_service(models_dir, max_upload_bytes=str(256 * 1024), request_timeout_s="5")
    codes: Counter[str] = Counter()
    deadline = time.monotonic() + 8.0
    # The client timeout is the hang detector: beyond request_timeout_s the service itself answers 503.
    with httpx.Client(base_url=service.url, timeout=10.0) as client:
        for n, files in enumerate(fuzz_cases(SEED + 1)):
            if n >= 150 or time.monotonic() > deadline:
                break
            response = client.post("/v1/predict", files=files)
            codes[check_answer(response.status_code, response.json(), response.headers)] += 1
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/predict", files=part_files()).status_code == 200
    assert sum(codes.values()) >= 30, codes
    assert service.proc.poll() is None
    assert '"level": "ERROR"' not in service.log_text()
