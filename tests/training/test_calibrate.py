"""Threshold methods (service.lifecycle.thresholds) and `python -m training calibrate` on the bundled demo model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.engine import InvalidModelOutputError
from service.lifecycle import thresholds
from service.lifecycle.calibration import Calibration
from service.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    manifest_to_metadata,
    sha256_file,
    write_manifest_json,
)
from training.calibration.recalibrate import find_good_parts
from training.cli import main as cli
from training.data.layout import load_sample
from training.scoring.engine import open_engine, score_with_engine
from training.synth.generate import generate

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def served_manifest(folder: Path) -> Manifest:
    """The manifest of `folder` as the service's engine loads it (sha256 and embedded manifest verified)."""
    with open_engine(folder) as engine:
        return engine.get(None).manifest


# ---------- methods ----------


def test_empirical_is_the_old_rule_and_says_what_it_can_promise() -> None:
    scores = np.random.default_rng(1).uniform(0.3, 0.6, 12)
    est = thresholds.empirical(scores, 0.01)
    assert est.threshold == np.quantile(scores, 0.99, method="inverted_cdf") == scores.max()
    # An unseen part beats the maximum of 12 exchangeable scores with probability 1/13.
    assert est.expected_false_reject_rate == pytest.approx(1 / 13)
    assert est.distribution_free_upper_bound == pytest.approx(1 - 0.05 ** (1 / 12))


@pytest.mark.parametrize(
    ("scores", "rate", "expected"),
    [
        ([3.0, 1.0, 2.0], 0.01, 3.0),
        (np.arange(1, 101), 0.01, 99.0),
        (np.arange(1, 101), 0.29, 71.0),  # 0.29 · 100 is 28.999999999999996 in floating point
        ([1.0, 1.0, 1.0, 5.0], 0.25, 1.0),
        ([1.0, 1.0, 1.0, 5.0], 0.2, 5.0),
    ],
)
def test_empirical_threshold_exact_values(scores, rate, expected) -> None:
    assert thresholds.empirical(np.asarray(scores, dtype=float), rate).threshold == expected


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.05, 0.1, 0.3, 0.49])
def test_empirical_threshold_is_the_smallest_within_the_rate(rate: float) -> None:
    scores = np.round(np.random.default_rng(15).normal(size=137), 2)  # with ties
    t = thresholds.empirical(scores, rate).threshold
    assert np.mean(scores > t) <= rate
    assert np.mean(scores > np.nextafter(t, -np.inf)) > rate  # any lower threshold rejects too many
    assert t == np.quantile(scores, 1 - rate, method="inverted_cdf")


def test_normal_tolerance_covers_the_quantile_with_its_confidence() -> None:
    rng = np.random.default_rng(2)
    n, rate, conf = 12, 0.01, 0.9
    k = thresholds.normal_tolerance_factor(n, rate, conf)
    z = rng.normal(0, 1, (20000, n))
    bound = z.mean(1) + k * z.std(1, ddof=1)
    covered = (bound >= 2.3263478740408408).mean()  # the true 99 % quantile of N(0, 1)
    assert covered == pytest.approx(conf, abs=0.01)


def test_normal_prediction_averages_the_target_rate() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0.2, 0.3, (600, 12))
    cuts = [thresholds.logit(thresholds.normal_prediction(thresholds.expit(z), 0.02).threshold) for z in logits]
    frr = thresholds.stats.norm.sf(np.array(cuts), 0.2, 0.3)
    assert np.mean(frr) == pytest.approx(0.02, abs=0.003)


def test_fitted_bounds_grow_as_parts_get_fewer() -> None:
    rng = np.random.default_rng(4)
    big = thresholds.expit(rng.normal(0, 0.3, 200))
    small = big[:8]
    for method in ("normal_prediction", "normal_tolerance", "gumbel_tolerance"):
        t_small = thresholds.estimate(method, small, 0.01).threshold
        t_big = thresholds.estimate(method, big, 0.01).threshold
        assert t_small > small.max(), method
        lo, hi = thresholds.estimate(method, big, 0.01).false_reject_rate_interval
        assert 0 <= lo <= hi <= 0.1, method
        if method != "gumbel_tolerance":  # a Gumbel fit to normal data has a heavier tail, by design
            assert t_big == pytest.approx(thresholds.expit(2.33 * 0.3), abs=0.05), method
        assert t_small > t_big - 0.05, method


def test_synthetic_margin_never_goes_below_the_good_bound() -> None:
    good = thresholds.expit(np.random.default_rng(5).normal(0, 0.2, 12))
    near = thresholds.synthetic_margin(good, good + 0.01, 0.01)
    far = thresholds.synthetic_margin(good, np.full(12, 0.99) - np.linspace(0, 0.02, 12), 0.01)
    bound = thresholds.normal_tolerance(good, 0.01).threshold
    assert near.threshold == pytest.approx(bound) and far.threshold > bound


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(thresholds.CalibrationInputError, match="non-finite"):
        thresholds.normal_prediction(np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(thresholds.CalibrationInputError, match="at least 3"):
        thresholds.normal_tolerance(np.array([0.1, 0.2]))
    with pytest.raises(thresholds.CalibrationInputError, match="rate"):
        thresholds.empirical(np.array([0.1, 0.2]), 0.0)
    with pytest.raises(thresholds.CalibrationInputError, match="unknown"):
        thresholds.estimate("magic", np.array([0.1, 0.2, 0.3]))  # type: ignore[arg-type]


def test_calibrate_scores_records_method_inputs_and_pixel_threshold() -> None:
    rng = np.random.default_rng(6)
    maps = rng.uniform(0.0, 0.3, (10, 16, 16))
    maps[:, 4, 4] = rng.uniform(0.35, 0.45, 10)  # each good part's hottest pixel
    scores = rng.uniform(0.4, 0.5, 10)
    cal = thresholds.calibrate_scores(scores, maps, rate=0.01, source="10 parts")
    assert cal.method == thresholds.DEFAULT_METHOD and cal.n_parts == 10 and cal.source == "10 parts"
    assert cal.threshold > cal.empirical_threshold == pytest.approx(scores.max())
    assert cal.inputs["n"] == 10 and {"logit_mean", "logit_std"} <= set(cal.inputs)
    # About PIXEL_RATE of good parts may show a region: above most good parts' hottest pixel, below 0.6.
    maxima = maps.reshape(10, -1).max(1)
    assert cal.pixel_threshold is not None and np.median(maxima) < cal.pixel_threshold < 0.6
    assert cal.pixel is not None and cal.pixel["target_share_of_good_parts_with_a_region"] == thresholds.PIXEL_RATE
    assert cal.false_reject_rate_interval is not None and cal.expected_false_reject_rate is not None
    lo, hi = cal.false_reject_rate_interval
    assert lo <= cal.expected_false_reject_rate <= hi
    # calibration.json is plain JSON and reads back to the same record.
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    fields = cal.manifest_fields()
    assert fields["threshold"] == {"value": cal.threshold, "method": cal.method, "target_false_reject_rate": 0.01,
                                   "n_parts": 10}  # fmt: skip
    assert fields["pixel_threshold"] == cal.pixel_threshold and fields["calibration"]["method"] == cal.method


def test_a_run_calibrated_before_the_methods_keeps_its_five_keys() -> None:
    old = {"threshold": 0.5, "method": "validation_good_false_reject_rate", "target_false_reject_rate": 0.01,
           "n_parts": 4, "score_stats": {"max": 0.5}}  # fmt: skip
    cal = Calibration.from_dict(old)
    assert cal.legacy and cal.to_dict() == old
    assert set(cal.manifest_fields()) == {"threshold", "score_stats"}  # a schema-1 manifest's
    with pytest.raises(ValueError, match="without n_parts"):
        Calibration.from_dict({k: v for k, v in old.items() if k != "n_parts"})


def test_binomial_upper_bound() -> None:
    assert thresholds.binomial_upper_bound(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert thresholds.binomial_upper_bound(5, 5) == 1.0


# ---------- python -m training calibrate ----------


@pytest.fixture(scope="module")
def good_parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("line")
    generate(root, ["puck"], seed=11, size=96, n_train=0, n_validation=6, n_test_per_defect=0, progress=False)
    return root / "puck" / "validation"  # an MVTec-layout split folder: good/rgb + good/xyz


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    shutil.copytree(DEMO, folder)
    return folder


def test_calibrate_writes_a_new_version_and_keeps_the_old(demo_copy: Path, good_parts: Path) -> None:
    old_manifest = json.loads((demo_copy / MANIFEST_FILE).read_text())
    old_sha = sha256_file(demo_copy / MODEL_FILE)
    # The bundled demo is itself a calibrated version (its history in the manifest, the archive not bundled).
    old, earlier = old_manifest["version"], [h["version"] for h in old_manifest.get("history", [])]
    assert cli(["calibrate", "--model", str(demo_copy), "--good", str(good_parts), "--no-progress"]) == 0
    new = served_manifest(demo_copy)  # verifies sha256 and the embedded manifest
    assert new.version == str(int(old) + 1) and new.schema_version == 4  # written as the current schema
    # The review band: the same method at the band's lower false-reject rate, above the threshold.
    assert new.review_band is not None and new.review_band.upper > new.threshold.value
    assert new.review_band.method == new.threshold.method and new.review_band.target_false_reject_rate == 0.005
    assert new.calibration is not None and new.calibration.n_parts == 6 and new.threshold.n_parts == 6
    assert new.threshold.method == new.calibration.method == thresholds.DEFAULT_METHOD
    assert new.pixel_threshold is not None and new.min_defect_area_mm2 is None and new.min_defect_length_mm is None
    assert [h.version for h in new.history] == [*earlier, old] and new.history[-1].onnx_sha256 == old_sha
    assert new.history[-1].threshold == old_manifest["threshold"]["value"]
    archived = demo_copy / "history" / old
    assert sha256_file(archived / MODEL_FILE) == old_sha
    assert json.loads((archived / MANIFEST_FILE).read_text()) == old_manifest
    assert served_manifest(archived).version == old  # the old version still loads as it was
    assert sha256_file(demo_copy / MODEL_FILE) != old_sha
    assert not list(demo_copy.glob(".calibrate-*"))

    # Again, with the parts' own folder layout and size rules: the next version, one more history entry.
    args = ["--model", str(demo_copy), "--good", str(good_parts / "good"), "--false-reject-rate", "0.05"]
    rules = ["--min-defect-area-mm2", "4", "--min-defect-length-mm", "2.5"]
    assert cli(["calibrate", *args, *rules, "--method", "empirical", "--no-progress"]) == 0
    newer = served_manifest(demo_copy)
    assert newer.version == str(int(old) + 2) and [h.version for h in newer.history] == [*earlier, old, new.version]
    assert newer.min_defect_area_mm2 == 4.0 and newer.min_defect_length_mm == 2.5
    assert newer.threshold.method == "empirical"
    assert newer.threshold.target_false_reject_rate == 0.05


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--good", "{missing}"], "is not a folder"),
        (["--good", "{empty}"], "expected rgb/ + xyz/"),
        (["--good", "{parts}", "--version", "../x"], "plain name"),
        (["--good", "{parts}", "--min-defect-length-mm", "0"], "--min-defect-length-mm must be > 0, got 0.0"),
    ],
)
def test_calibrate_refuses_bad_arguments_and_changes_nothing(
    demo_copy: Path, good_parts: Path, tmp_path: Path, args: list[str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "parts": good_parts}
    before = sha256_file(demo_copy / MODEL_FILE)
    filled = [a.format(**paths) for a in args]
    assert cli(["calibrate", "--model", str(demo_copy), *filled, "--no-progress"]) == 2
    assert message in caplog.text
    assert sha256_file(demo_copy / MODEL_FILE) == before and not (demo_copy / "history").exists()


def test_calibrate_names_a_part_without_its_point_cloud(demo_copy: Path, good_parts: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    broken = tmp_path / "broken"
    shutil.copytree(good_parts / "good", broken)
    next(iter(sorted((broken / "xyz").iterdir()))).unlink()
    assert cli(["calibrate", "--model", str(demo_copy), "--good", str(broken), "--no-progress"]) == 2
    assert "has no point cloud" in caplog.text and not (demo_copy / "history").exists()


def nan_model(folder: Path) -> Path:
    """A model folder with the demo's manifest whose graph answers NaN scores and maps (onnx.helper)."""
    manifest = served_manifest(DEMO)
    nodes = [
        helper.make_node("ReduceMean", ["rgb", "axis1"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "nan"], ["maps"]),
        helper.make_node("ReduceMax", ["maps", "axes12"], ["scores"], keepdims=0),
        helper.make_node("ReduceMean", ["depth", "axis1"], ["unused"], keepdims=0),
    ]
    size = manifest.image_size
    graph = helper.make_graph(
        nodes,
        "nan_model",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, size, size]) for n in ("rgb", "depth")],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", size, size]),
        ],
        [
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    helper.set_model_props(proto, manifest_to_metadata(manifest))
    folder.mkdir()
    onnx.save(proto, str(folder / MODEL_FILE))
    write_manifest_json(manifest, folder, sha256_file(folder / MODEL_FILE))
    return folder


def test_a_model_answering_nan_is_refused(tmp_path: Path, good_parts: Path, caplog: pytest.LogCaptureFixture) -> None:
    part = load_sample(find_good_parts(good_parts)[0])
    assert part.xyz is not None
    with open_engine(nan_model(tmp_path / "nan")) as engine:  # it loads: its outputs have the right shapes
        with pytest.raises(InvalidModelOutputError, match="non-finite"):
            engine.predict(part.rgb, part.xyz)  # what `calibrate` scores each part with
        model = engine.get(None)
        zeros = np.zeros((2, 3, model.manifest.image_size, model.manifest.image_size), np.float32)
        with pytest.raises(InvalidModelOutputError, match="non-finite"):
            score_with_engine(engine, model, zeros, zeros, batch_size=1)  # evaluate --model, calibration_study
    before = sha256_file(tmp_path / "nan" / MODEL_FILE)
    assert cli(["calibrate", "--model", str(tmp_path / "nan"), "--good", str(good_parts), "--no-progress"]) == 2
    assert "non-finite" in caplog.text and sha256_file(tmp_path / "nan" / MODEL_FILE) == before


def test_synth_makes_a_larger_good_test_split_without_changing_the_first_parts(tmp_path: Path) -> None:
    small = generate(tmp_path / "a", ["puck"], size=64, n_train=1, n_validation=1, n_test_per_defect=1, progress=False)
    large = generate(tmp_path / "b", ["puck"], size=64, n_train=1, n_validation=1, n_test_per_defect=1,
                     n_test_good=4, progress=False)  # fmt: skip
    assert small.counts["puck"]["test/good"] == 1 and large.counts["puck"]["test/good"] == 4
    assert large.counts["puck"]["test/dent"] == 1
    good = "puck/test/good/xyz"
    assert len(list((tmp_path / "b" / good).iterdir())) == 4
    assert (tmp_path / "a" / good / "000.tiff").read_bytes() == (tmp_path / "b" / good / "000.tiff").read_bytes()


def test_calibrate_does_not_import_torch() -> None:
    code = "import sys, training.calibration.recalibrate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_too_few_good_parts_fall_back_to_the_largest_score_and_say_so() -> None:
    """A run with two validation parts still ends with a threshold (the training must not be lost)."""
    scores = np.array([0.31, 0.42])
    maps = np.stack([np.full((8, 8), 0.2), np.full((8, 8), 0.3)])
    out = thresholds.calibrate_scores(scores, maps, method="normal_tolerance", source="validation")
    assert out.method == "empirical" and out.threshold == pytest.approx(0.42)
    assert out.fallback is not None and "too few" in out.fallback and out.n_parts == 2
    enough = thresholds.calibrate_scores(np.array([0.31, 0.42, 0.37, 0.35]), np.stack([maps[0]] * 4), source="v")
    assert enough.fallback is None and enough.method == thresholds.DEFAULT_METHOD
