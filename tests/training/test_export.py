"""training.export.exporter: a run folder → model.onnx + manifest.json that the service's loader accepts, or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.lifecycle.thresholds import score_stats
from service.manifest import MANIFEST_FILE, MODEL_FILE, load_model_dir
from training import runs
from training.config import TrainConfig
from training.export import exporter as export_module
from training.export.exporter import ExportError, export
from training.scoring.torch_model import score_with_torch

SIZE = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run as `train` leaves it, made directly: tiny model, random weights of its heads."""
    folder = tmp_path_factory.mktemp("run")
    config = TrainConfig(data="d", category="tiny", image_size=SIZE, feature_dim=16, selection="last")
    config.save(folder / runs.CONFIG_FILE)
    torch.manual_seed(0)
    model = runs.build_model(config).eval()
    torch.save({"state": runs.trainable_state(model), "epoch": 1}, folder / runs.MODEL_FILE)
    rng = np.random.default_rng(0)
    rgb = rng.normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    depth = rng.normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    np.savez_compressed(folder / runs.SAMPLES_FILE, rgb=rgb, depth=depth)
    scores, _ = score_with_torch(model, rgb, depth)
    calibration = {
        "threshold": float(scores.max()),
        "method": "empirical",  # a calibration from before the small-sample methods (export must still take it)
        "target_false_reject_rate": 0.01,
        "n_parts": 3,
        "score_stats": score_stats(scores),
    }
    (folder / runs.CALIBRATION_FILE).write_text(json.dumps(calibration))
    (folder / runs.REPORT_FILE).write_text(json.dumps({"selection": {"method": "last", "epoch": 1}}))
    return folder


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("models") / "tiny"
    result = export(run_dir, out, version="3")
    return out, result


def test_export_writes_a_model_folder_the_service_accepts(run_dir: Path, exported: tuple[Path, dict]) -> None:
    out, result = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, MANIFEST_FILE])
    assert result["n_parity_parts"] == 3
    assert max(result["parity_max_abs_diff"].values()) <= export_module.PARITY_TOLERANCE
    session = ort.InferenceSession(str(out / MODEL_FILE), providers=["CPUExecutionProvider"])
    manifest = load_model_dir(out, session.get_modelmeta().custom_metadata_map)
    config = TrainConfig.load(run_dir / runs.CONFIG_FILE)
    calibration = json.loads((run_dir / runs.CALIBRATION_FILE).read_text())
    assert (manifest.name, manifest.version, manifest.category) == ("tiny", "3", "tiny")
    assert manifest.image_size == SIZE and manifest.feature_dim == 16 and manifest.opset == export_module.OPSET
    assert manifest.preprocessing == config.preprocessing
    assert manifest.threshold.value == calibration["threshold"]
    assert manifest.inputs["rgb"] == ["batch", 3, SIZE, SIZE] and manifest.outputs["maps"] == ["batch", SIZE, SIZE]
    assert "preprocessing" not in manifest.training and manifest.training["feature_dim"] == 16


def test_exported_graph_computes_what_pytorch_does_at_any_batch(run_dir: Path, exported: tuple[Path, dict]) -> None:
    out, _ = exported
    trained = runs.load_run(run_dir)
    session = ort.InferenceSession(str(out / MODEL_FILE), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        rgb = rng.normal(size=(batch, 3, SIZE, SIZE)).astype(np.float32)
        depth = rng.normal(size=(batch, 3, SIZE, SIZE)).astype(np.float32)
        scores, maps = session.run(["scores", "maps"], {"rgb": rgb, "depth": depth})
        expected_scores, expected_maps = score_with_torch(trained.model, rgb, depth)
        assert scores.shape == (batch,) and maps.shape == (batch, SIZE, SIZE)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
        np.testing.assert_allclose(maps, expected_maps, atol=1e-4)


def test_a_failed_parity_check_writes_nothing(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)  # no graph can pass: the refusal path
    with pytest.raises(ExportError, match="nothing written"):
        export(run_dir, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_run_without_saved_parts_is_refused(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / runs.SAMPLES_FILE).unlink()
    with pytest.raises(ExportError, match=r"samples\.npz"):
        export(copy, tmp_path / "m")
    assert not (tmp_path / "m").exists()
