"""Reduced-precision exports (int8, fp16) of a tiny trained run, and evaluating an exported model without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.engine import Engine, EngineOptions
from service.manifest import MANIFEST_FILE, MODEL_FILE
from tests.training.tiny_run import tiny_run
from training.cli import main as cli
from training.export import precision
from training.export.exporter import ExportError, export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(data, tmp_path_factory.mktemp("run") / "run", epochs=1)


@pytest.fixture(scope="module")
def models(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32, int8 and fp16 exports of the same run, through the CLI."""
    root = tmp_path_factory.mktemp("models")
    for name in ("fp32", "int8", "fp16"):
        assert cli(["export", "--run", str(trained), "--out", str(root / name), "--precision", name]) == 0
    return root


def manifest(models: Path, name: str) -> dict:
    return json.loads((models / name / MANIFEST_FILE).read_text())


def test_int8_export_is_quantised_calibrated_on_training_parts_and_checked(models: Path, data: Path) -> None:
    m = manifest(models, "int8")
    assert m["precision"] == "int8" and m["schema_version"] == 4
    check = m["precision_check"]
    train_stems = sorted(p.stem for p in (data / "puck" / "train" / "good" / "rgb").iterdir())
    assert check["calibration_data"]["split"] == "train (good parts)"
    assert sorted(check["calibration_data"]["stems"]) == train_stems[: len(check["calibration_data"]["stems"])]
    # every training part: the data has a validation split, so none is held out of train
    assert check["calibration_parts"] == len(check["calibration_data"]["stems"]) == 6
    against = check["against_fp32"]
    assert against["n_parts"] >= 1 and against["verdict_flips"] == []
    assert against["score_max_abs_diff"] <= precision.TOLERANCES["int8"].score
    graph = onnx.load(str(models / "int8" / MODEL_FILE))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") > 10 and "DequantizeLinear" in ops
    counts = precision.quantised_op_counts(graph)
    assert counts["Conv"]["int8"] > 0
    # The score head stays float: the sigmoid reads a float tensor, and so does the head's last Gemm.
    assert counts["Sigmoid"] == {"int8": 0, "float": counts["Sigmoid"]["float"]}
    assert set(check["float_nodes"]) <= {n.name for n in graph.graph.node}
    assert (models / "int8" / MODEL_FILE).stat().st_size < 0.5 * (models / "fp32" / MODEL_FILE).stat().st_size


def test_reduced_models_are_calibrated_by_the_runs_rule_on_their_own_scores(models: Path) -> None:
    """Each reduced model's threshold is the run's method on that model's own validation scores (not the
    fp32 model's statistics with another rule's threshold)."""
    fp32 = manifest(models, "fp32")
    for name in ("int8", "fp16"):
        m = manifest(models, name)
        assert m["threshold"]["method"] == fp32["threshold"]["method"] == "normal_tolerance", name
        assert m["calibration"]["source"].endswith(f"scored by the {name} model")
        assert m["calibration"]["inputs"]["mean"] == pytest.approx(m["score_stats"]["mean"]), name
        assert m["score_stats"]["mean"] != fp32["score_stats"]["mean"]
        assert m["threshold"]["value"] > m["score_stats"]["max"]  # normal tolerance: above the good parts


def test_int8_keeps_the_backbones_first_convolutions_float(models: Path) -> None:
    """The default keeps the first `float_stem_convs` convolutions float (their inputs and weights are not
    dequantised int8) and quantises the next one."""
    graph = onnx.load(str(models / "int8" / MODEL_FILE))
    dequantised = {out for n in graph.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    keep = precision.Int8Options().float_stem_convs
    assert keep == 12 and len(convs) > keep
    assert not any(i in dequantised for n in convs[:keep] for i in n.input)
    assert all(n.input[1] in dequantised for n in convs[keep : keep + 1]), "the next convolution is int8"
    assert {n.name for n in convs[:keep]} <= set(manifest(models, "int8")["precision_check"]["float_nodes"])


def test_reduced_models_serve_close_to_fp32_through_the_engine(models: Path, data: Path) -> None:
    from training.data.layout import discover, load_sample

    engine = Engine(EngineOptions(models_dir=models, default_model="fp32", providers="cpu"))
    engine.start()
    try:
        parts = [load_sample(s) for s in discover(data, "puck", "test")[:4]]
        for name in ("int8", "fp16"):
            assert engine.get(name).manifest.precision == name
            for part in parts:
                assert part.xyz is not None
                ref = engine.predict(part.rgb, part.xyz, model_name="fp32")
                got = engine.predict(part.rgb, part.xyz, model_name=name)
                assert abs(got.score - ref.score) <= precision.TOLERANCES[name].score, name
                assert got.anomaly_map.shape == ref.anomaly_map.shape
    finally:
        engine.stop()
    fp16 = onnx.load(str(models / "fp16" / MODEL_FILE))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)


def test_export_outside_tolerance_writes_nothing(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match="disagrees with fp32 beyond its tolerance"):
        export(trained, out, precision="int8", tolerance=precision.Tolerance(score=1e-9, map_mean=1e-9))
    assert not out.exists()


def test_verdicts_are_compared_each_at_its_own_threshold() -> None:
    class Fixed:
        def __init__(self, scores: list[float]) -> None:
            self.scores = np.array(scores, np.float32)

        def run(self, _names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            n = len(feeds["rgb"])
            return [self.scores[:n], np.zeros((n, 2, 2), np.float32)]

    x = np.zeros((3, 3, 2, 2), np.float32)
    ref, cand = Fixed([0.1, 0.5, 0.9]), Fixed([0.1, 0.52, 0.88])
    same = precision.compare(ref, cand, x, x, (0.5, 0.52))
    assert same["verdict_flips"] == [] and same["score_max_abs_diff"] == pytest.approx(0.02)
    flipped = precision.compare(ref, cand, x, x, (0.5, 0.5))
    assert flipped["verdict_flips"] == [1]
    assert not precision.within(flipped, precision.Tolerance(score=1.0, map_mean=1.0))


def test_evaluate_an_exported_model_without_torch(models: Path, data: Path, tmp_path: Path) -> None:
    """`evaluate --model` runs the ONNX file through the service's engine; torch is never imported."""
    out = tmp_path / "int8.json"
    script = (
        "import sys\n"
        "from training.cli import main\n"
        f"code = main(['evaluate', '--model', {str(models / 'int8')!r}, '--data', {str(data)!r}, "
        f"'--out', {str(out)!r}, '--no-progress', '--figures-per-defect', '1'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["precision"] == "int8" and result["model"] == "int8" and result["provider"] == "CPUExecutionProvider"
    assert result["n_test"] == 12 and len(result["parts"]) == 12
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["threshold"]["calibrated"] == manifest(models, "int8")["threshold"]["value"]
    assert "| AUPRO@0.3 |" in out.with_suffix(".md").read_text()


def test_int8_sweep_compares_variants_with_fp32_on_the_validation_parts(
    trained: Path, models: Path, tmp_path: Path
) -> None:
    """benchmarks/int8_sweep.py: each variant beside fp32 on the validation parts and synthetic anomalies."""
    out = tmp_path / "sweep.json"
    args = ["--run", trained, "--model-dir", models / "fp32", "--float-stem-convs", "2", "12"]
    args += ["--calibration", "minmax", "--anomaly-copies", "2", "--repeats", "2", "--out", out]
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "int8_sweep.py"), *map(str, args)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["validation"] == {"good_parts": 3, "anomalies": 6, "source": "validation split"}
    rows = result["variants"]
    assert list(rows) == ["fp32", "float_stem_convs=2, minmax", "float_stem_convs=12, minmax"]
    assert rows["fp32"]["cpu_speedup_paired"] == 1.0 and "map_mean_abs_diff" not in rows["fp32"]
    for name in list(rows)[1:]:
        row = rows[name]
        assert 0.0 < row["map_mean_abs_diff"] <= precision.TOLERANCES["int8"].map_mean, name
        assert row["map_mean_abs_diff_unshifted"] <= row["map_mean_abs_diff"] + 1e-6
        assert 0.0 <= row["val_aupro"] <= 1.0 and row["cpu_median_ms"] > 0
