"""End to end on a tiny synthetic category: train → evaluate → export, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.lifecycle import thresholds
from tests.training.tiny_run import TRAIN_ARGS, tiny_run
from training import runs
from training.cli import main as cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(data, tmp_path_factory.mktemp("run") / "run", epochs=2)


def test_train_writes_a_complete_run(trained: Path) -> None:
    for name in ("config.json", "model.pt", "calibration.json", "report.json", "report.md", "history.csv",
                 "losses.png", "samples.npz", "checkpoints/last.pt"):  # fmt: skip
        assert (trained / name).is_file(), name
    report = json.loads((trained / "report.json").read_text())
    assert report["selection"]["method"] == "validation"
    assert report["selection"]["epoch"] in (1, 2)
    assert "test split is never read" in report["selection"]["criterion"]
    cal = report["calibration"]
    assert cal["n_parts"] == 3 and cal["method"] == thresholds.DEFAULT_METHOD
    # With 3 good parts the fitted bound lies above the highest good score (the old method stopped there).
    assert cal["threshold"] > cal["score_stats"]["max"] == pytest.approx(cal["empirical_threshold"])
    assert 0.0 < cal["pixel_threshold"] < 1.0 and cal["expected_false_reject_rate"] < 0.05
    history = (trained / "history.csv").read_text().splitlines()
    # Lite0's default: MGAG without its input level (training.config.MGAG_INPUT_DEFAULTS).
    assert len(history) == 3 and "focal" in history[0] and "bce_features" in history[0]
    assert "bce_input" not in history[0]
    assert json.loads((trained / "config.json").read_text())["mgag_input"] is False


def test_refuses_to_overwrite_a_run(trained: Path, data: Path) -> None:
    with pytest.raises(FileExistsError, match="--resume"):
        cli(["train", "--data", str(data), "--category", "puck", "--out", str(trained), "--epochs", "2", *TRAIN_ARGS])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    common = ["--data", str(data), "--category", "puck", "--selection", "last", "--seed", "5", *TRAIN_ARGS]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli(["train", *common, "--out", str(straight), "--epochs", "2"]) == 0
    assert cli(["train", *common, "--out", str(split), "--epochs", "1"]) == 0
    # Extending a run may change the epoch count, nothing else.
    with pytest.raises(ValueError, match="different config"):
        cli(["train", *common, "--out", str(split), "--epochs", "2", "--resume", "--lr-adaptor", "1e-3"])
    assert cli(["train", *common, "--out", str(split), "--epochs", "2", "--resume"]) == 0
    a = torch.load(straight / runs.MODEL_FILE, weights_only=True)["state"]
    b = torch.load(split / runs.MODEL_FILE, weights_only=True)["state"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_evaluate_writes_metrics_table_and_pictures(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    assert cli(["evaluate", "--run", str(trained), "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["n_test"] == 12 and result["n_defective"] == 10
    assert set(result["per_defect_image_auroc"]) == {"dent", "bump", "stain", "crack", "hole"}
    assert len(result["parts"]) == 12
    assert result["threshold"]["calibrated"] == pytest.approx(
        json.loads((trained / "calibration.json").read_text())["threshold"]
    )
    th = result["threshold"]
    assert th["test_good_parts"] == 2 and th["test_defective_parts"] == 10
    assert th["test_false_reject_rate"] == th["test_false_rejects"] / 2
    assert set(th["test_detection_rate_per_defect"]) == {"dent", "bump", "stain", "crack", "hole"}
    cal = json.loads((trained / "calibration.json").read_text())
    assert result["pixel_threshold"]["value"] == pytest.approx(cal["pixel_threshold"])
    table = out.with_suffix(".md").read_text()
    assert "| AUPRO@0.3 |" in table and "| puck |" in table
    assert "| false rejects (good parts judged NG) |" in table and "| detection: dent |" in table
    figures = tmp_path / "metrics_figures"
    assert (figures / "score_histogram.png").stat().st_size > 1000
    assert len(list(figures.glob("*_*.png"))) >= 6


def test_modality_and_switches_change_what_is_trained(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rgb"
    args = ["--data", str(data), "--category", "puck", "--epochs", "1", "--modality", "rgb", "--no-mgag", *TRAIN_ARGS]
    assert cli(["train", *args, "--out", str(out)]) == 0
    history = (out / "history.csv").read_text().splitlines()[0]
    assert "focal" in history and "bce_input" not in history
    state = torch.load(out / runs.MODEL_FILE, weights_only=True)["state"]
    # One modality: the adaptor works on feature_dim channels, not 2 × feature_dim.
    assert state["adaptor.weight"].shape == (256, 256)


def test_few_shot_replicates_the_chosen_parts(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "shots"
    args = ["--data", str(data), "--category", "puck", "--epochs", "1", "--shots", "2", "--shot-repeats", "3"]
    assert cli(["train", *args, *TRAIN_ARGS, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_train_parts"] == 2 and report["n_train_items_per_epoch"] == 6


def test_samples_saved_for_export_are_real_validation_parts(trained: Path) -> None:
    samples = np.load(trained / runs.SAMPLES_FILE)
    assert samples["rgb"].shape == (3, 3, 64, 64) and samples["depth"].shape == (3, 3, 64, 64)
    assert np.isfinite(samples["rgb"]).all() and samples["depth"].std() > 0.1


def test_export_and_service_parity(trained: Path, data: Path, tmp_path: Path) -> None:
    """The service's answer for a part equals what the training pipeline computes for the same files."""
    from service.engine import Engine, EngineOptions
    from service.postprocessing.maps import map_to_input_size
    from service.preprocessing import preprocess_part
    from training.data.layout import discover, load_sample
    from training.runs import load_run
    from training.scoring.torch_model import score_with_torch

    models = tmp_path / "models"
    assert cli(["export", "--run", str(trained), "--out", str(models / "tiny"), "--version", "7"]) == 0
    manifest = json.loads((models / "tiny" / "manifest.json").read_text())
    assert manifest["name"] == "tiny" and manifest["version"] == "7" and manifest["opset"] == 18
    assert manifest["threshold"]["value"] == pytest.approx(
        json.loads((trained / "calibration.json").read_text())["threshold"]
    )

    engine = Engine(EngineOptions(models_dir=models, default_model="tiny"))
    engine.start()
    run = load_run(trained)
    config = run.config.preprocessing
    for sample in [s for s in discover(data, "puck", "test") if s.defect in ("good", "crack")][:3]:
        part = load_sample(sample)
        answer = engine.predict(part.rgb, part.xyz)
        pre = preprocess_part(part.rgb, part.xyz, config)
        scores, maps = score_with_torch(run.model, pre.rgb[None], pre.depth[None])
        assert answer.score == pytest.approx(float(scores[0]), abs=1e-4)
        expected_map = map_to_input_size(maps[0], *part.rgb.shape[:2])
        assert answer.anomaly_map.shape == part.rgb.shape[:2]
        np.testing.assert_allclose(answer.anomaly_map, expected_map, atol=1e-4)
        assert answer.is_anomalous == (answer.score > manifest["threshold"]["value"])


def test_single_modality_trains_with_every_anomaly_generator(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "depth"
    args = ["--data", str(data), "--category", "puck", "--epochs", "1", "--modality", "depth", *TRAIN_ARGS]
    assert cli(["train", *args, "--mgag-input", "--out", str(out)]) == 0
    header = (out / "history.csv").read_text().splitlines()[0]
    for loss in ("bce_input", "bce_features", "bce_adapted", "focal"):
        assert loss in header
