"""Verdicts through the real app: never an OK on a non-finite model output, defect regions in the answer (mm²
and mm from the uploaded cloud, holes under a region), the area and length rules, and the record keeping
regions and rule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.engine import ModelLoadError
from service.main import create_app
from service.records.runtime import decision_from_answer
from service.records.store import DEFAULT_DECISION_RULE
from tests.service.fake_model import (
    make_part,
    make_settings,
    png_bytes,
    tiff_bytes,
    with_hot_spot,
    with_nan_on_parts,
    write_fake_model,
)

# A 2 cm box (rows 10-29, columns 12-35) on a table, both in a 1 mm grid: a pixel is 1 mm² on either.
RGB, XYZ = make_part(40, 48, seed=1)
# The hot spot at the model's 32×32 resolution: rows 12-19, columns 14-19 → about rows 15-24 and columns
# 21-29 of the 40×48 upload (the map is resized back to the upload, bilinear): on the box's flat top, away
# from its walls (a wall's cells are 20 mm² each, seen from above).
HOT_ROWS, HOT_COLS = slice(12, 20), slice(14, 20)
HOLE = (slice(12, 29), slice(18, 34))  # covers the region and its neighbours
LEFT_HALF = (slice(12, 29), slice(18, 26))
PIXEL_THRESHOLD = 0.5
THRESHOLD = 0.9  # the fake manifest's image threshold: the hot spot's 0.95 is above it


def post(client: TestClient, xyz: np.ndarray = XYZ, **data: str) -> Any:
    return client.post(
        "/v1/predict",
        files={"rgb": ("rgb.png", png_bytes(RGB), "image/png"), "xyz": ("xyz.tiff", tiff_bytes(xyz), "image/tiff")},
        data=data,
    )


def metric(client: TestClient, line_start: str) -> float:
    text = client.get("/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(line_start)))


def hot_model(models: Path, name: str = "fake", **fields: Any) -> Path:
    return write_fake_model(
        models, name, graph=with_hot_spot(HOT_ROWS, HOT_COLS), pixel_threshold=PIXEL_THRESHOLD, **fields
    )


# --- never fail open --------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["scores", "maps"])
def test_a_model_answering_nan_is_a_500_never_a_verdict(
    tmp_path: Path, output: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_fake_model(tmp_path / "models", "fake", graph=with_nan_on_parts(output))
    settings = make_settings(tmp_path / "models", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        counter = 'bridgenet_rejected_requests_total{reason="invalid_model_output"}'
        assert metric(client, counter) == 0  # pre-initialised at start
        with caplog.at_level(logging.ERROR):
            response = post(client)
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_model_output" and "non-finite" in error["message"]
        assert "is_anomalous" not in response.json()
        assert metric(client, counter) == 1
        assert metric(client, 'bridgenet_predictions_total{model="fake",verdict="ok"}') == 0
        logged = [r for r in caplog.records if r.getMessage().startswith("invalid model output")]
        assert logged and logged[0].levelno == logging.ERROR
        assert client.get("/v1/results", params={"limit": 10}).json()["results"] == []  # nothing recorded


# --- regions ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hot_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("hot")
    hot_model(root / "models")
    with TestClient(create_app(make_settings(root / "models", data_dir=root / "data"))) as client:
        yield client


def test_the_hot_spot_comes_back_as_one_region_in_the_uploads_frame_with_its_mm2(hot_client: TestClient) -> None:
    response = post(hot_client, return_map="npy")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["is_anomalous"] is True and answer["decision"] == {
        "rule": "score",
        "min_defect_area_mm2": None,
        "min_defect_length_mm": None,
        "largest_area_mm2": None,
        "largest_length_mm": None,
        "unmeasured_regions": None,
        "n_regions": None,
    }
    assert answer["pixel_threshold"] == PIXEL_THRESHOLD and answer["n_regions"] == 1
    (region,) = answer["regions"]
    # Box of the hot block scaled by 48/32 (x) and 40/32 (y), give or take the bilinear edge.
    assert abs(region["x"] - 21) <= 1 and abs(region["y"] - 15) <= 1
    assert abs(region["width"] - 9) <= 2 and abs(region["height"] - 10) <= 2
    assert region["area_px"] <= region["width"] * region["height"]
    assert region["area_mm2"] == pytest.approx(region["area_px"], rel=0.05)
    assert region["measured_fraction"] == pytest.approx(1.0, abs=0.05)
    # On the flat top's 1 mm grid the longest extent spans at least the box's longer side and at most its
    # diagonal (pixel centres one side apart, plus one pixel).
    assert max(region["width"], region["height"]) - 0.05 <= region["length_mm"]
    assert region["length_mm"] <= np.hypot(region["width"], region["height"])
    assert region["max_score"] == pytest.approx(0.95, abs=1e-4) and 0.5 < region["mean_score"] <= 0.95
    assert answer["defect_area_fraction"] == pytest.approx(region["area_px"] / (40 * 48))


def test_a_hole_in_the_cloud_under_the_region_leaves_its_area_unknown_or_partial(hot_client: TestClient) -> None:
    whole = post(hot_client).json()["regions"][0]
    holed = XYZ.copy()
    holed[HOLE] = np.nan  # no point anywhere under (or near) the region
    region = post(hot_client, holed).json()["regions"][0]
    assert region["area_mm2"] is None and region["measured_fraction"] == 0.0
    assert region["area_px"] == whole["area_px"]  # the map, not the cloud, makes the region
    half = XYZ.copy()
    half[LEFT_HALF] = 0.0  # zero z = no point: the left part of the region has no cloud under it
    region = post(hot_client, half).json()["regions"][0]
    assert 0.0 < region["measured_fraction"] < 1.0
    # Unmeasured pixels count with the measured ones' mean footprint: about the whole region's area.
    assert region["area_mm2"] == pytest.approx(whole["area_mm2"], rel=0.15)


def test_regions_and_decision_are_in_the_openapi_contract_with_examples(hot_client: TestClient) -> None:
    schemas = hot_client.get("/openapi.json").json()["components"]["schemas"]
    response = schemas["PredictResponse"]["properties"]
    assert {"regions", "decision", "pixel_threshold", "n_regions"} <= set(response)
    region = schemas["DefectRegion"]
    required = {"x", "y", "width", "height", "area_px", "area_mm2", "length_mm", "max_score", "mean_score"}
    assert required <= set(region["required"])
    assert region["examples"][0]["area_mm2"] > 0 and region["examples"][0]["length_mm"] > 0
    rules = ["score", "area", "length", "area_or_length"]
    assert schemas["VerdictRule"]["properties"]["rule"]["enum"] == rules
    assert {e["rule"] for e in schemas["VerdictRule"]["examples"]} == set(rules) - {"length"}


def test_a_schema_1_model_answers_no_regions_and_the_old_area(tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models", "fake", graph=with_hot_spot(HOT_ROWS, HOT_COLS))  # no pixel threshold
    with TestClient(create_app(make_settings(tmp_path / "models", data_dir=tmp_path / "data"))) as client:
        answer = post(client).json()
    assert answer["regions"] == [] and answer["n_regions"] == 0 and answer["pixel_threshold"] is None
    assert answer["is_anomalous"] is True and answer["decision"]["rule"] == "score"
    assert 0 < answer["defect_area_fraction"] < 0.1  # pixels above the image threshold 0.9: the block's core


# --- the area rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "min_area", "verdict"),
    [("manifest", 5.0, True), ("manifest", 5000.0, False), ("override", 5.0, True), ("override", 5000.0, False)],
)
def test_the_area_rule_decides(tmp_path: Path, source: str, min_area: float, verdict: bool) -> None:
    if source == "manifest":
        hot_model(tmp_path / "models", min_defect_area_mm2=min_area)
        settings = make_settings(tmp_path / "models", data_dir=tmp_path / "data")
    else:  # the operator's setting wins over the manifest's
        hot_model(tmp_path / "models", min_defect_area_mm2=1e6)
        settings = make_settings(
            tmp_path / "models", data_dir=tmp_path / "data", min_defect_area_mm2={"fake": min_area}
        )
    with TestClient(create_app(settings)) as client:
        answer = post(client).json()
        holed = XYZ.copy()
        holed[HOLE] = np.nan
        unmeasured = post(client, holed).json()
    decision = answer["decision"]
    assert answer["is_anomalous"] is verdict and decision["rule"] == "area"
    assert decision["min_defect_area_mm2"] == min_area and decision["n_regions"] == 1
    assert decision["largest_area_mm2"] == pytest.approx(answer["regions"][0]["area_mm2"])
    # A region without points under it is never passed by the area rule: missing data is not a small defect.
    assert unmeasured["is_anomalous"] is True and unmeasured["decision"]["unmeasured_regions"] == 1


# The hot spot's region is about 9 × 10 mm on the box's top: about 70 mm², about 12 mm long.
@pytest.mark.parametrize(
    ("source", "rules", "verdict", "rule"),
    [
        ("manifest", {"min_defect_length_mm": 5.0}, True, "length"),
        ("manifest", {"min_defect_length_mm": 50.0}, False, "length"),
        ("override", {"min_defect_length_mm": 5.0}, True, "length"),
        # Both rules: either minimum met is a defect (a long thin scratch, a short wide dent).
        ("manifest", {"min_defect_length_mm": 5.0, "min_defect_area_mm2": 5000.0}, True, "area_or_length"),
        ("override", {"min_defect_length_mm": 50.0, "min_defect_area_mm2": 5.0}, True, "area_or_length"),
        ("manifest", {"min_defect_length_mm": 50.0, "min_defect_area_mm2": 5000.0}, False, "area_or_length"),
    ],
)
def test_the_length_rule_decides_alone_and_beside_the_area_rule(
    tmp_path: Path, source: str, rules: dict[str, float], verdict: bool, rule: str
) -> None:
    if source == "manifest":
        hot_model(tmp_path / "models", **rules)
        settings = make_settings(tmp_path / "models", data_dir=tmp_path / "data")
    else:  # the operator's settings win over the manifest's (which would pass every part)
        hot_model(tmp_path / "models", **{k: 1e6 for k in rules})
        overrides = {k: {"fake": v} for k, v in rules.items()}
        settings = make_settings(tmp_path / "models", data_dir=tmp_path / "data", **overrides)
    with TestClient(create_app(settings)) as client:
        answer = post(client).json()
        holed = XYZ.copy()
        holed[HOLE] = np.nan
        unmeasured = post(client, holed).json()
        record = client.get(f"/v1/results/{answer['request_id']}").json()
    decision, (region,) = answer["decision"], answer["regions"]
    assert 8 < region["length_mm"] < 16 and 40 < region["area_mm2"] < 110  # what the minima above straddle
    assert answer["is_anomalous"] is verdict and decision["rule"] == rule
    assert decision["min_defect_length_mm"] == rules["min_defect_length_mm"]
    assert decision["min_defect_area_mm2"] == rules.get("min_defect_area_mm2")
    assert decision["largest_length_mm"] == pytest.approx(region["length_mm"])
    assert unmeasured["is_anomalous"] is True and unmeasured["regions"][0]["length_mm"] is None
    assert record["decision_rule"] == rule and record["regions"][0]["length_mm"] == region["length_mm"]


@pytest.mark.parametrize("rule", ["min_defect_area_mm2", "min_defect_length_mm"])
def test_a_size_rule_without_a_pixel_threshold_refuses_the_model(tmp_path: Path, rule: str) -> None:
    write_fake_model(tmp_path / "models", "fake")
    settings = make_settings(tmp_path / "models", data_dir=tmp_path / "data", **{rule: {"fake": 5.0}})
    app = create_app(settings)
    with (
        pytest.raises(
            ModelLoadError, match=rf"{rule} 5\) needs defect regions, but the manifest has no pixel_threshold"
        ),
        TestClient(app),
    ):
        pass


# --- the record -------------------------------------------------------------------------------------


def test_the_record_keeps_the_regions_and_the_rule(tmp_path: Path) -> None:
    hot_model(tmp_path / "models", min_defect_area_mm2=5.0)
    with TestClient(create_app(make_settings(tmp_path / "models", data_dir=tmp_path / "data"))) as client:
        answer = post(client).json()
        record = client.get(f"/v1/results/{answer['request_id']}").json()
    assert record["decision_rule"] == "area"
    assert record["regions"] == answer["regions"] and len(record["regions"]) == 1


def test_records_of_answers_before_the_decision_field_keep_their_rule() -> None:
    answer = {
        "request_id": "r1",
        "model": {"name": "m", "version": "1"},
        "threshold": 0.5,
        "threshold_source": "manifest",
        "score": 0.7,
        "is_anomalous": True,
        "provider": "CPUExecutionProvider",
        "timings_ms": {"total": 1.0},
    }
    assert decision_from_answer(answer, model_sha256="0" * 64).decision_rule == DEFAULT_DECISION_RULE
    assert decision_from_answer({**answer, "decision_rule": "area"}, model_sha256="0" * 64).decision_rule == "area"
    new = {**answer, "decision": {"rule": "area"}, "regions": [{"x": 1}]}
    record = decision_from_answer(new, model_sha256="0" * 64)
    assert record.decision_rule == "area" and list(record.regions) == [{"x": 1}]


# --- OK / REVIEW / NG -------------------------------------------------------------------------------------


def test_the_manifests_review_band_answers_review_and_an_old_manifest_two_outcomes(tmp_path: Path) -> None:
    band = {"upper": 0.97, "method": "normal_tolerance", "target_false_reject_rate": 0.005}
    hot_model(tmp_path / "models", "fake", review_band=band)
    hot_model(tmp_path / "models", "old")  # no band: a manifest of schema 3 and before reads the same
    hot_model(tmp_path / "models", "narrow", review_band={**band, "upper": 0.94})  # the score 0.95 is above it
    settings = make_settings(tmp_path / "models", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        review = post(client).json()
        assert review["verdict"] == "review" and review["is_anomalous"] and review["review_threshold"] == 0.97
        old = post(client, model="old").json()
        assert old["verdict"] == "ng" and old["is_anomalous"] and old["review_threshold"] is None
        assert post(client, model="narrow").json()["verdict"] == "ng"
        assert metric(client, 'bridgenet_predictions_total{model="fake",verdict="review"}') == 1
        assert metric(client, 'bridgenet_predictions_total{model="old",verdict="ng"}') == 1
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["fake"]["review_threshold"] == 0.97 and models["old"]["review_threshold"] is None
        assert client.get(f"/v1/results/{review['request_id']}").json()["verdict"] == "review"
        ng = client.get("/v1/results", params={"verdict": "ng"}).json()["results"]
        assert {r["model"]["name"] for r in ng} == {"old", "narrow"}
