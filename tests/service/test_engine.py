"""The engine without HTTP, over the tiny fake ONNX model: the complete predict and its typed result, the
stage errors, and an ONNX Runtime failure surfacing as InferenceError with micro-batching off and on."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from service.codecs import CodecError, DecodeLimits
from service.engine import (
    Engine,
    EngineOptions,
    InferenceError,
    PartUpload,
    PredictResult,
    UnknownModelError,
)
from service.postprocessing.maps import PNG_SCALE
from service.preprocessing import NoForegroundError
from tests.service.fake_model import (
    SIZE,
    THRESHOLD,
    build_graph,
    make_part,
    png_bytes,
    tiff_bytes,
    write_fake_model,
)

RGB, XYZ = make_part(40, 48, seed=5)
STAGES = {"decode", "preprocess", "batch_wait", "inference", "postprocess"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_fake_model(root, "fake")
    write_fake_model(root, "failing", graph=build_graph(SIZE, fails_on_parts=True))
    return root


@contextmanager
def started(models_dir: Path, **options: Any) -> Iterator[Engine]:
    engine = Engine(EngineOptions(models_dir=models_dir, default_model="fake", providers="cpu", **options))
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Iterator[Engine]:
    with started(models_dir) as engine:
        yield engine


def upload(return_map: Any = "none", model: str | None = None, rgb: bytes | None = None) -> PartUpload:
    return PartUpload(rgb=rgb or png_bytes(RGB), xyz=tiff_bytes(XYZ), model=model, return_map=return_map)


def test_predict_upload_returns_the_prediction_of_the_decoded_part(engine: Engine) -> None:
    result = engine.predict_upload(upload())
    assert isinstance(result, PredictResult) and result.anomaly_map is None
    p, direct = result.prediction, engine.predict(RGB, XYZ)
    # Decoding the PNG and the TIFF gives back the arrays: the same prediction, bit for bit.
    assert p.score == direct.score and np.array_equal(p.anomaly_map, direct.anomaly_map)
    assert (p.model, p.version, p.threshold, p.threshold_source) == ("fake", "1", THRESHOLD, "manifest")
    assert p.is_anomalous == (p.score > THRESHOLD) and p.anomaly_map.shape == RGB.shape[:2]
    assert p.defect_area_fraction == pytest.approx(float(np.mean(p.anomaly_map > THRESHOLD)))
    assert (p.batch_size, p.first_in_batch) == (1, True) and p.provider == "CPUExecutionProvider"
    assert p.info["input_hw"] == [40, 48]
    assert set(result.timings_ms) == STAGES and all(v >= 0 for v in result.timings_ms.values())
    assert result.timings_ms["batch_wait"] == 0.0


def test_the_map_is_encoded_as_asked(engine: Engine) -> None:
    as_npy = engine.predict_upload(upload("npy"))
    assert as_npy.anomaly_map is not None
    assert (as_npy.anomaly_map.encoding, as_npy.anomaly_map.width, as_npy.anomaly_map.height) == ("npy", 48, 40)
    np.testing.assert_array_equal(np.load(io.BytesIO(as_npy.anomaly_map.data)), as_npy.prediction.anomaly_map)
    as_png = engine.predict_upload(upload("png"))
    assert as_png.anomaly_map is not None and as_png.anomaly_map.encoding == "png"
    pixels = cv2.imdecode(np.frombuffer(as_png.anomaly_map.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None and pixels.dtype == np.uint16 and pixels.shape == (40, 48)
    np.testing.assert_allclose(pixels / PNG_SCALE, as_png.prediction.anomaly_map, atol=1 / PNG_SCALE)


def test_input_refusals_keep_their_types(engine: Engine) -> None:
    with pytest.raises(UnknownModelError, match="'nope' is not loaded"):
        engine.predict_upload(upload(model="nope"))
    with pytest.raises(CodecError) as refused:
        engine.predict_upload(upload(rgb=b"not an image"))
    assert refused.value.field == "rgb"
    flat_rgb, flat_xyz = make_part(40, 48, seed=2, flat=True)
    with pytest.raises(NoForegroundError):
        engine.predict_upload(PartUpload(rgb=png_bytes(flat_rgb), xyz=tiff_bytes(flat_xyz)))


def test_decoding_follows_the_engine_limits(models_dir: Path) -> None:
    with started(models_dir, decode_limits=DecodeLimits(max_side=32)) as small:
        with pytest.raises(CodecError) as refused:
            small.predict_upload(upload())
        assert refused.value.reason == "too_large"


@pytest.mark.parametrize("batch_max_size", [1, 4])
def test_an_onnx_runtime_failure_is_an_inference_error(models_dir: Path, batch_max_size: int) -> None:
    with started(models_dir, batch_max_size=batch_max_size, batch_wait_ms=50.0) as engine:
        with ThreadPoolExecutor(3) as pool:  # with batching on, several parts share the failed run
            futures = [pool.submit(engine.predict_upload, upload(model="failing")) for _ in range(3)]
            errors = [f.exception(10) for f in futures]
        wrapped = [e for e in errors if isinstance(e, InferenceError)]
        assert len(wrapped) == 3, errors
        assert all("model 'failing'" in str(e) and "Gather" in str(e.__cause__) for e in wrapped), errors
        # The failure was the run's, not the engine's: the same engine still scores parts of a working model.
        assert engine.predict_upload(upload(model="fake")).prediction.model == "fake"
