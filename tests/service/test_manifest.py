"""Tests for service.manifest: schema rules, metadata/JSON round trips, and every load_model_dir refusal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service import manifest as manifest_module
from service.manifest import (
    LATER_FIELDS,
    MANIFEST_FILE,
    METADATA_KEY,
    MODEL_FILE,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    load_model_dir,
    manifest_from_metadata,
    manifest_to_metadata,
    sha256_file,
    write_manifest_json,
)
from service.preprocessing import PREPROCESSING_VERSION, PreprocessConfig
from tests.service.fake_model import CALIBRATION

SIZE = 64


def manifest_data(**overrides: Any) -> dict[str, Any]:
    """A valid manifest as training.export.exporter builds it; `overrides` replace top-level fields."""
    data: dict[str, Any] = {
        "name": "bagel",
        "version": "3",
        "created": "2025-06-01T12:30:00+02:00",
        "git_sha": "a" * 40,
        "category": "bagel",
        "modality": "both",
        "backbone": "tf_efficientnet_lite0",
        "image_size": SIZE,
        "feature_dim": 256,
        "inputs": {"rgb": ["batch", 3, SIZE, SIZE], "depth": ["batch", 3, SIZE, SIZE]},
        "outputs": {"scores": ["batch"], "maps": ["batch", SIZE, SIZE]},
        "opset": 18,
        "preprocessing": PreprocessConfig(image_size=SIZE).to_dict(),
        "threshold": {
            "value": 0.1 + 0.2,  # not exactly representable: the round trips must keep every bit
            "method": "validation_good_false_reject_rate",
            "target_false_reject_rate": 0.01,
            "n_parts": 22,
        },
        "score_stats": {
            "n": 22,
            "mean": 0.11,
            "std": 0.02,
            "min": 0.07,
            "max": 0.3,
            "p50": 0.1,
            "p95": 0.15,
            "p99": 0.29,
        },
        "metrics": {"i_auroc": 0.97, "aupro_0.3": 0.91},
        "selection": '{"method": "validation", "epoch": 17}',
        "training": {"epochs": 20, "seed": 0, "lr": 1e-4},
    }
    data.update(overrides)
    return data


def invalid(data: dict[str, Any]) -> str:
    """The ManifestError message for data that must be refused."""
    with pytest.raises(ManifestError) as info:
        manifest_module.parse_manifest(data, "test.json")
    assert str(info.value).startswith("test.json is not a valid manifest: ")
    return str(info.value)


def write_model_dir(folder: Path, data: dict[str, Any] | None = None, onnx_bytes: bytes = b"fake onnx") -> Manifest:
    """model.onnx (opaque bytes: load_model_dir never parses it) + manifest.json with the matching sha."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(onnx_bytes)
    m = Manifest.model_validate(data or manifest_data())
    write_manifest_json(m, folder, sha256_file(folder / MODEL_FILE))
    return m


def refused(folder: Path, embedded: dict[str, str]) -> str:
    with pytest.raises(ManifestError) as info:
        load_model_dir(folder, embedded)
    return str(info.value)


# ---------- schema ----------


def test_valid_manifest_fields() -> None:
    m = Manifest.model_validate(manifest_data())
    assert m.schema_version == SCHEMA_VERSION and m.threshold.value == 0.1 + 0.2 and m.precision == "fp32"
    assert m.created.utcoffset() is not None and m.created.hour == 12
    assert m.preprocessing == PreprocessConfig(image_size=SIZE) and m.image_size == SIZE
    with pytest.raises(ValueError, match="frozen"):
        m.version = "4"  # type: ignore[misc]


def test_unknown_fields_refused_at_every_level() -> None:
    assert "treshold: Extra inputs are not permitted" in invalid(manifest_data(treshold=0.3))
    data = manifest_data()
    data["threshold"] = {**data["threshold"], "note": "x"}
    assert "threshold.note" in invalid(data)


def test_newer_schema_version_refused_with_its_own_message() -> None:
    message = invalid(manifest_data(schema_version=99, new_field=1))
    assert "schema_version 99 is not supported" in message and "schema 1, 2, 3" in message
    assert "new_field" not in message


def test_schema_1_manifest_loads_without_the_schema_2_fields() -> None:
    m = Manifest.model_validate(manifest_data(schema_version=1))
    assert m.calibration is None and m.pixel_threshold is None and m.min_defect_area_mm2 is None and m.history == []


def test_schema_2_calibration_fields() -> None:
    calibration = {**CALIBRATION, "pixel": {"method": "normal_prediction on map maxima"}}
    history = [{"version": "1", "created": "2026-01-01T00:00:00Z", "onnx_sha256": "a" * 64, "threshold": 0.6,
                "calibration_method": "validation_good_false_reject_rate"}]  # fmt: skip
    m = Manifest.model_validate(
        manifest_data(calibration=calibration, pixel_threshold=0.45, min_defect_area_mm2=2.5, history=history)
    )
    assert m.calibration is not None and m.calibration.false_reject_rate_interval == (0.0005, 0.02)
    assert m.pixel_threshold == 0.45 and m.history[0].pixel_threshold is None
    assert "min_defect_area_mm2" in invalid(manifest_data(min_defect_area_mm2=0))
    assert "min_defect_length_mm" in invalid(manifest_data(min_defect_length_mm=-1.0))
    assert "calibration.expected_false_reject_rate" in invalid(
        manifest_data(calibration={**calibration, "expected_false_reject_rate": 2.0})
    )


def test_schema_1_reads_as_fp32_and_cannot_carry_the_later_fields() -> None:
    old = Manifest.model_validate(manifest_data(schema_version=1))
    assert old.schema_version == 1 and old.precision == "fp32" and old.precision_check == {}
    assert "schema_version 1 has no field precision" in invalid(manifest_data(schema_version=1, precision="int8"))
    message = invalid(manifest_data(schema_version=1, pixel_threshold=0.4, history=[HISTORY]))
    assert "schema_version 1 has no field pixel_threshold, history (added in schema 2)" in message
    # Written back as it was read: without the later fields, even where they were present at their defaults.
    nulls = Manifest.model_validate(manifest_data(schema_version=1, calibration=None, history=[]))
    written = json.loads(nulls.model_dump_json())
    assert written["schema_version"] == 1 and not set(LATER_FIELDS) & set(written)
    assert Manifest.model_validate(written) == nulls == old
    new = Manifest.model_validate(manifest_data(precision="int8", precision_check={"calibration_parts": 4}))
    assert new.precision == "int8" and new.precision_check == {"calibration_parts": 4}
    assert "precision" in invalid(manifest_data(precision="int4"))


HISTORY = {
    "version": "1",
    "created": "2026-01-01T00:00:00Z",
    "onnx_sha256": "a" * 64,
    "threshold": 0.6,
    "calibration_method": "validation_good_false_reject_rate",
}


@pytest.mark.parametrize(
    "later",
    [
        {"pixel_threshold": 0.45, "min_defect_area_mm2": 2.5, "history": [HISTORY]},  # the calibrating exporter's
        {"precision": "int8", "precision_check": {"calibration_parts": 4}},  # the reduced-precision exporter's
        {"pixel_threshold": 0.45, "precision": "fp16"},  # both
    ],
    ids=["calibration", "precision", "both"],
)
def test_schema_2_manifests_of_either_exporter_load_and_write_back_as_schema_2(later: dict[str, Any]) -> None:
    m = Manifest.model_validate(manifest_data(schema_version=2, **later))
    assert m.schema_version == 2
    assert m.pixel_threshold == later.get("pixel_threshold") and m.precision == later.get("precision", "fp32")
    assert len(m.history) == len(later.get("history", []))
    written = json.loads(m.model_dump_json())
    assert written["schema_version"] == 2
    assert Manifest.model_validate(written) == m


def test_new_manifests_are_written_as_the_current_schema(tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 4 and set(READABLE_SCHEMA_VERSIONS) == {1, 2, 3, 4}
    m = Manifest.model_validate(manifest_data(pixel_threshold=0.45, precision="int8"))  # no schema_version given
    assert m.schema_version == 4
    embedded = json.loads(manifest_to_metadata(m)[METADATA_KEY])
    assert embedded["schema_version"] == 4 and set(LATER_FIELDS) <= set(embedded)  # every field, written out
    write_model_dir(tmp_path / "bagel", json.loads(m.model_dump_json()))
    assert load_model_dir(tmp_path / "bagel", manifest_to_metadata(m)) == m


def test_the_bundled_demo_model_loads_with_its_calibration() -> None:
    ort = pytest.importorskip("onnxruntime")
    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    session = ort.InferenceSession(str(demo / MODEL_FILE), providers=["CPUExecutionProvider"])
    m = load_model_dir(demo, session.get_modelmeta().custom_metadata_map)
    assert m.schema_version == 4 and m.review_band is not None  # OK / REVIEW / NG, as `calibrate` writes it
    assert m.threshold.value < m.review_band.upper
    assert m.pixel_threshold is not None and m.calibration is not None


def test_a_schema_2_model_folder_still_loads(tmp_path: Path) -> None:
    """A calibrated model exported before schema 3 (the demo's manifest as schema 2 wrote it), embedded in a
    real ONNX file, loads through the same checks the service runs at start."""
    ort = pytest.importorskip("onnxruntime")
    stored = json.loads((Path(__file__).resolve().parents[2] / "models" / "demo" / MANIFEST_FILE).read_text())
    data = {k: v for k, v in stored.items() if k not in ("onnx_sha256", "min_defect_length_mm", "review_band")}
    m = Manifest.model_validate({**data, "schema_version": 2})
    folder = save_identity_model(tmp_path / "demo", m)
    assert json.loads((folder / MANIFEST_FILE).read_text())["schema_version"] == 2
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    loaded = load_model_dir(folder, session.get_modelmeta().custom_metadata_map)
    assert loaded == m and loaded.schema_version == 2 and loaded.min_defect_length_mm is None
    assert loaded.pixel_threshold is not None and loaded.calibration is not None


def test_missing_and_mistyped_fields_named() -> None:
    data = manifest_data()
    del data["category"]
    assert "category: Field required" in invalid(data)
    assert "modality" in invalid(manifest_data(modality="rgb+depth"))
    assert "created" in invalid(manifest_data(created="2025-06-01T12:30:00"))  # no timezone
    assert "name" in invalid(manifest_data(name="../etc"))


def test_non_finite_numbers_refused() -> None:
    data = manifest_data(metrics={"i_auroc": float("nan")})
    assert "metrics.i_auroc" in invalid(data)
    data = manifest_data()
    data["threshold"] = {**data["threshold"], "value": float("inf")}
    assert "threshold.value" in invalid(data)


def test_tensor_shapes_must_match_image_size() -> None:
    message = invalid(manifest_data(inputs={"rgb": ["batch", 3, 32, 32], "depth": ["batch", 3, SIZE, SIZE]}))
    assert "inputs.rgb has shape ['batch', 3, 32, 32]" in message and f"'batch', 3, {SIZE}, {SIZE}" in message
    assert "outputs are ['scores']" in invalid(manifest_data(outputs={"scores": ["batch"]}))
    assert "inputs.depth" in invalid(manifest_data(inputs={"rgb": [1, 3, SIZE, SIZE], "depth": [0, 3, SIZE, SIZE]}))
    # A fixed batch of 1 is a valid export too.
    fixed = manifest_data(outputs={"scores": [1], "maps": [1, SIZE, SIZE]})
    assert Manifest.model_validate(fixed).outputs["scores"] == [1]


def test_preprocessing_needs_version_and_matching_size() -> None:
    pre = PreprocessConfig(image_size=SIZE).to_dict()
    del pre["version"]
    assert "preprocessing" in invalid(manifest_data(preprocessing=pre))
    mismatched = PreprocessConfig(image_size=32).to_dict()
    assert "preprocessing.image_size 32 differs from image_size 64" in invalid(manifest_data(preprocessing=mismatched))


def test_score_stats_must_be_ordered() -> None:
    data = manifest_data()
    data["score_stats"] = {**data["score_stats"], "p95": 0.35}
    assert "min ≤ p50 ≤ p95 ≤ p99 ≤ max" in invalid(data)


# ---------- round trips ----------


def test_metadata_round_trip_is_exact() -> None:
    m = Manifest.model_validate(manifest_data())
    meta = manifest_to_metadata(m)
    assert list(meta) == [METADATA_KEY] and all(isinstance(v, str) for v in meta.values())
    again = manifest_from_metadata(meta)
    assert again == m and again.threshold.value == 0.1 + 0.2


def test_json_round_trip_and_sha(tmp_path: Path) -> None:
    m = write_model_dir(tmp_path / "bagel")
    stored = json.loads((tmp_path / "bagel" / MANIFEST_FILE).read_text())
    assert stored["onnx_sha256"] == hashlib.sha256(b"fake onnx").hexdigest()
    assert stored["threshold"]["value"] == 0.1 + 0.2
    assert not list((tmp_path / "bagel").glob(".*tmp"))  # the temporary file was renamed away
    assert load_model_dir(tmp_path / "bagel", manifest_to_metadata(m)) == m


def save_identity_model(folder: Path, m: Manifest) -> Path:
    """A one-node ONNX file carrying `m` as its embedded metadata, with its manifest.json, in `folder`."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, manifest_to_metadata(m))
    folder.mkdir()
    onnx.save(model, str(folder / MODEL_FILE))
    write_manifest_json(m, folder, sha256_file(folder / MODEL_FILE))
    return folder


def test_through_a_real_onnx_file_and_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    m = Manifest.model_validate(manifest_data())
    folder = save_identity_model(tmp_path / "real", m)
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    assert load_model_dir(folder, session.get_modelmeta().custom_metadata_map) == m


def test_sha256_file_and_write_refuses_bad_digest(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 1000)
    assert sha256_file(path) == hashlib.sha256(bytes(range(256)) * 1000).hexdigest()
    m = Manifest.model_validate(manifest_data())
    with pytest.raises(ManifestError, match="64 lowercase hex"):
        write_manifest_json(m, tmp_path, "ABC")


# ---------- load_model_dir refusals ----------


def test_missing_directory_and_files(tmp_path: Path) -> None:
    assert "does not exist" in refused(tmp_path / "nope", {})
    folder = tmp_path / "m"
    folder.mkdir()
    assert f"{folder / MODEL_FILE} not found" in refused(folder, {})
    (folder / MODEL_FILE).write_bytes(b"x")
    assert f"{folder / MANIFEST_FILE} not found" in refused(folder, {})


def test_bad_json_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    m = write_model_dir(folder)
    meta = manifest_to_metadata(m)
    path = folder / MANIFEST_FILE
    path.write_text('{"name": "bagel",\n  oops}')
    message = refused(folder, meta)
    assert str(path) in message and "not valid JSON" in message and "line 2" in message
    path.write_text("[1, 2]")
    assert "holds a JSON list; expected an object" in refused(folder, meta)


def test_missing_sha_and_schema_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    m = write_model_dir(folder)
    meta = manifest_to_metadata(m)
    path = folder / MANIFEST_FILE
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in stored.items() if k != "onnx_sha256"}))
    assert "onnx_sha256 is None" in refused(folder, meta)
    path.write_text(json.dumps({**stored, "image_size": -1}))
    message = refused(folder, meta)
    assert message.startswith(f"{path} is not a valid manifest") and "image_size" in message


def test_replaced_model_file_detected(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    m = write_model_dir(folder)
    (folder / MODEL_FILE).write_bytes(b"another model")
    message = refused(folder, manifest_to_metadata(m))
    actual, recorded = hashlib.sha256(b"another model").hexdigest(), hashlib.sha256(b"fake onnx").hexdigest()
    assert f"sha256 {actual[:12]}… does not match manifest.json ({recorded[:12]}…)" in message
    assert "corrupt or was replaced" in message and str(folder / MODEL_FILE) in message


def test_embedded_manifest_missing_broken_or_different(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_model_dir(folder)
    message = refused(folder, {"producer": "x"})
    assert f"{folder / MODEL_FILE} has no 'bridgenet_manifest' entry" in message and "producer" in message
    assert "not valid JSON" in refused(folder, {METADATA_KEY: "{nope"})
    assert "not a valid manifest" in refused(folder, {METADATA_KEY: "{}"})
    other = Manifest.model_validate(
        manifest_data(version="4", threshold={**manifest_data()["threshold"], "value": 0.5})
    )
    message = refused(folder, manifest_to_metadata(other))
    assert "differs from" in message and "['version', 'threshold']" in message


def with_preprocessing(folder: Path, **changes: Any) -> None:
    """Edit manifest.json's preprocessing dict by hand, as a manifest from other code would hold it."""
    path = folder / MANIFEST_FILE
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "preprocessing": {**stored["preprocessing"], **changes}}))


def test_preprocessing_version_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    m = write_model_dir(folder)
    with_preprocessing(folder, version="0-old")
    message = refused(folder, manifest_to_metadata(m))
    assert "preprocessing version '0-old'" in message and repr(PREPROCESSING_VERSION) in message
    assert str(folder / MANIFEST_FILE) in message


def test_unloadable_preprocessing_config(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    m = write_model_dir(folder)
    with_preprocessing(folder, blur=3)
    message = refused(folder, manifest_to_metadata(m))
    assert "preprocessing config is invalid" in message and "blur" in message


# The optional fields of schemas 2 and 3 (calibration record, pixel threshold, area and length rules, version
# history, numeric precision and its check) at their defaults.
NEW_OPTIONAL_FIELDS = {
    "calibration": None,
    "pixel_threshold": None,
    "min_defect_area_mm2": None,
    "min_defect_length_mm": None,
    "history": [],
    "precision": "fp32",
    "precision_check": {},
}


def test_bundled_demo_manifest_reads_and_writes_back_unchanged() -> None:
    """The typed preprocessing keeps the JSON format: the demo's manifest.json round-trips to the same fields,
    top-level keys in the same order."""
    path = Path(__file__).resolve().parents[2] / "models" / "demo" / MANIFEST_FILE
    stored = json.loads(path.read_text(encoding="utf-8"))
    m = Manifest.model_validate({k: v for k, v in stored.items() if k != "onnx_sha256"})
    assert m.preprocessing.image_size == m.image_size == stored["image_size"]
    written = {**m.model_dump(mode="json"), "onnx_sha256": stored["onnx_sha256"]}
    # Fields a later schema added and an older manifest lacks come back at their defaults, nothing else differs.
    added = {k: written.pop(k) for k in list(written) if k not in stored}
    assert added == {k: v for k, v in NEW_OPTIONAL_FIELDS.items() if k in added}
    assert written == stored and list(written) == list(stored)


def test_the_review_band_is_a_schema_4_field_above_the_threshold() -> None:
    band = {"upper": 0.5, "method": "normal_tolerance", "target_false_reject_rate": 0.005}
    m = Manifest.model_validate(manifest_data(review_band=band))
    assert m.schema_version == 4 and m.review_band is not None and m.review_band.upper == 0.5
    assert Manifest.model_validate(json.loads(m.model_dump_json())) == m
    with pytest.raises(ValidationError, match=r"schema_version 3 has no field review_band \(added in schema 4\)"):
        Manifest.model_validate(manifest_data(schema_version=3, review_band=band))
    with pytest.raises(ValidationError, match=r"review_band\.upper 0\.2 must be above threshold\.value"):
        Manifest.model_validate(manifest_data(review_band={**band, "upper": 0.2}))
    # An old manifest has no band (two outcomes) and writes back without the field.
    old = Manifest.model_validate(manifest_data(schema_version=3))
    assert old.review_band is None and "review_band" not in json.loads(old.model_dump_json())
