"""The engine's speed paths give the answers of the plain ones: the RGB decode overlapped with the point
cloud's preprocessing (byte for byte, errors included), IO binding with reused outputs (run here on the CPU
provider), the provider choice with TensorRT asked for, and the micro-batch size left to the engine."""

from __future__ import annotations

import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.transformers.float16 import convert_float_to_float16

from service.codecs import CodecError
from service.engine import Engine, PartUpload
from service.engine import loading as engine_loading
from service.engine.binding import BoundRunner
from service.manifest import MANIFEST_FILE, Manifest, manifest_to_metadata, sha256_file, write_manifest_json
from service.preprocessing import (
    ImageTooSmallError,
    NoForegroundError,
    PreprocessConfig,
    SizeMismatchError,
    preprocess_cloud,
    preprocess_image,
    preprocess_part,
)
from tests.service.fake_model import SIZE, make_part, png_bytes, tiff_bytes, write_fake_model
from tests.service.test_engine import started


def answer_bytes(engine: Engine, upload: PartUpload) -> tuple[Any, ...]:
    """Everything an answer holds except the timings, as bytes where it is an array."""
    result = engine.predict_upload(upload)
    p = result.prediction
    encoded = result.anomaly_map.data if result.anomaly_map is not None else None
    maps = ("anomaly_map", "model_map")
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name not in ("timings_ms", *maps)}
    return fields, *((getattr(p, m).tobytes(), getattr(p, m).shape) for m in maps), encoded


def uploads() -> list[PartUpload]:
    parts = [make_part(40, 48, seed=s) for s in range(3)] + [make_part(90, 70, seed=9)]
    return [PartUpload(rgb=png_bytes(rgb), xyz=tiff_bytes(xyz), return_map="npy") for rgb, xyz in parts]


def test_the_halves_of_preprocessing_compute_preprocess_part() -> None:
    rgb, xyz = make_part(40, 48, seed=4)
    config = PreprocessConfig(image_size=SIZE)
    whole = preprocess_part(rgb, xyz, config)
    halves = preprocess_image(rgb, preprocess_cloud(xyz, config), config)
    for name in ("rgb", "depth", "foreground"):
        assert getattr(whole, name).tobytes() == getattr(halves, name).tobytes(), name
    assert whole.info == halves.info


def test_overlapped_decode_gives_the_sequential_answers_byte_for_byte(models_dir: Path) -> None:
    with started(models_dir, decode_threads=0) as sequential, started(models_dir, decode_threads=2) as overlapped:
        assert overlapped._decoder is not None and sequential._decoder is None
        for upload in uploads():
            assert answer_bytes(overlapped, upload) == answer_bytes(sequential, upload)
        # Many requests at once through the shared decode pool: still the same answers.
        batch = uploads() * 3
        expected = [answer_bytes(sequential, u) for u in batch]
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda u: answer_bytes(overlapped, u), batch))
        assert got == expected
        timings = overlapped.predict_upload(batch[0]).timings_ms
        assert set(timings) == {"decode", "preprocess", "batch_wait", "inference", "postprocess"}


def refusal(engine: Engine, upload: PartUpload) -> tuple[type, str]:
    with pytest.raises(Exception) as raised:
        engine.predict_upload(upload)
    return type(raised.value), str(raised.value)


def test_overlapped_decode_refuses_as_the_sequential_path_does(models_dir: Path) -> None:
    rgb, xyz = make_part(40, 48, seed=1)
    flat_rgb, flat_xyz = make_part(40, 48, seed=2, flat=True)
    small_rgb, small_xyz = make_part(8, 8, seed=3)
    other_rgb, _ = make_part(42, 48, seed=1)
    cases = {
        "both files bad: the RGB is named": PartUpload(rgb=b"not an image", xyz=b"nor a cloud"),
        "bad cloud": PartUpload(rgb=png_bytes(rgb), xyz=b"nor a cloud"),
        "unknown model": PartUpload(rgb=png_bytes(rgb), xyz=tiff_bytes(xyz), model="nope"),
        "flat cloud": PartUpload(rgb=png_bytes(flat_rgb), xyz=tiff_bytes(flat_xyz)),
        "too small": PartUpload(rgb=png_bytes(small_rgb), xyz=tiff_bytes(small_xyz)),
        "grids differ": PartUpload(rgb=png_bytes(other_rgb), xyz=tiff_bytes(xyz)),
        "grids differ and flat cloud": PartUpload(rgb=png_bytes(other_rgb), xyz=tiff_bytes(flat_xyz)),
    }
    with started(models_dir, decode_threads=0) as sequential, started(models_dir, decode_threads=2) as overlapped:
        for name, upload in cases.items():
            assert refusal(overlapped, upload) == refusal(sequential, upload), name
        kinds = {name: refusal(overlapped, upload)[0] for name, upload in cases.items()}
        both_bad = overlapped.predict_upload  # the error names the RGB file, as the sequential path does
        with pytest.raises(CodecError) as named:
            both_bad(cases["both files bad: the RGB is named"])
        assert named.value.field == "rgb"
    assert issubclass(kinds["bad cloud"], CodecError)
    assert kinds["flat cloud"] is NoForegroundError and kinds["too small"] is ImageTooSmallError
    assert kinds["grids differ"] is SizeMismatchError and kinds["grids differ and flat cloud"] is SizeMismatchError


def test_io_binding_on_the_cpu_gives_session_run_answers(models_dir: Path) -> None:
    rng = np.random.default_rng(0)
    with started(models_dir, io_binding="on", batch_max_size=4) as bound, started(models_dir) as plain:
        model = bound.get(None)
        runner = model.runner
        assert runner is not None and runner.device == "cpu" and plain.get(None).runner is None
        kept = []
        for batch in (1, 3, 1, 4):  # the output buffers are reused per batch size: results must not alias them
            rgb = rng.normal(size=(batch, 3, SIZE, SIZE)).astype(np.float32)
            depth = rng.normal(size=(batch, 3, SIZE, SIZE)).astype(np.float32)
            scores, maps = bound.infer(model, rgb, depth)
            ref_scores, ref_maps = plain.infer(plain.get(None), rgb, depth)
            assert scores.tobytes() == ref_scores.tobytes() and maps.tobytes() == ref_maps.tobytes()
            kept.append((scores, ref_scores))
        for scores, ref_scores in kept:
            assert scores.tobytes() == ref_scores.tobytes()
        for upload in uploads()[:2]:
            assert answer_bytes(bound, upload)[1] == answer_bytes(plain, upload)[1]


def test_io_binding_per_thread_buffers(models_dir: Path) -> None:
    session = ort.InferenceSession(str(models_dir / "fake" / "model.onnx"), providers=["CPUExecutionProvider"])
    runner = BoundRunner(session, SIZE, "cpu")
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(2, 3, SIZE, SIZE)).astype(np.float32) for _ in range(12)]
    expected = [session.run(["scores", "maps"], {"rgb": x, "depth": x})[1].tobytes() for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: runner.run(x, x)[1].tobytes(), inputs))
    assert got == expected


def test_auto_io_binding_stays_off_on_the_cpu(models_dir: Path) -> None:
    with started(models_dir, io_binding="auto") as auto, started(models_dir, io_binding="off") as off:
        assert auto.get(None).runner is None and off.get(None).runner is None


def test_provider_choice_with_tensorrt(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The machine's CUDA and TensorRT are what varies: those two probes are replaced, the logic is real."""
    gpu_build = [engine_loading.TENSORRT, engine_loading.CUDA, engine_loading.CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu_build)
    monkeypatch.setattr(engine_loading, "cuda_driver_present", lambda: True)
    monkeypatch.setattr(engine_loading, "tensorrt_present", lambda: True)
    choose = engine_loading.session_providers
    assert choose(False, "auto", tensorrt=True) == gpu_build
    assert choose(False, "auto") == [engine_loading.CUDA, engine_loading.CPU]
    assert choose(False, "cpu", tensorrt=True) == [engine_loading.CPU]
    monkeypatch.setattr(engine_loading, "tensorrt_present", lambda: False)
    with caplog.at_level(logging.WARNING, logger="service.engine.loading"):
        assert choose(False, "auto", tensorrt=True) == [engine_loading.CUDA, engine_loading.CPU]
    assert "TensorRT asked for but not usable here" in caplog.text and "libnvinfer not found" in caplog.text
    monkeypatch.setattr(engine_loading, "cuda_driver_present", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.engine.loading"):
        assert choose(False, "auto", tensorrt=True) == [engine_loading.CPU]
    assert "CUDA is not usable here" in caplog.text


def test_tensorrt_asked_for_on_this_machine_still_starts(models_dir: Path) -> None:
    with started(models_dir, tensorrt=True) as engine:
        assert engine.get(None).provider == "CPUExecutionProvider"


def test_unset_batch_size_is_one_on_the_cpu(models_dir: Path) -> None:
    with started(models_dir, batch_max_size=None) as engine:
        assert engine.batch_max_size(engine.get(None)) == 1 and engine._served["fake"].batcher is None
    with started(models_dir, batch_max_size=4) as engine:
        assert engine.batch_max_size(engine.get(None)) == 4 and engine._served["fake"].batcher is not None


def test_fp16_model_on_the_cpu_is_served_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:

    write_fake_model(tmp_path, "fake")
    write_fake_model(tmp_path, "half")
    folder = tmp_path / "half"
    half = convert_float_to_float16(onnx.load(str(folder / "model.onnx")), keep_io_types=True)
    data = json.loads((folder / MANIFEST_FILE).read_text())
    data.pop("onnx_sha256", None)
    manifest = Manifest.model_validate({**data, "precision": "fp16"})
    del half.metadata_props[:]
    onnx.helper.set_model_props(half, manifest_to_metadata(manifest))
    onnx.save(half, str(folder / "model.onnx"))
    write_manifest_json(manifest, folder, sha256_file(folder / "model.onnx"))
    rgb, xyz = make_part(40, 48, seed=6)
    with caplog.at_level(logging.WARNING, logger="service.engine.engine"), started(tmp_path) as engine:
        assert engine.get("half").manifest.precision == "fp16"
        half_answer = engine.predict(rgb, xyz, model_name="half")
        full_answer = engine.predict(rgb, xyz)
    assert "model half is fp16 on the CPU provider" in caplog.text
    assert abs(half_answer.score - full_answer.score) < 2e-3
