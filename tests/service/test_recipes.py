"""Recipes (service.recipes): files validated at load and reload, the catalog's active recipe, and a recipe
chosen per request through the real app: its model, threshold, review band and mask decide, and the record
says which recipe and version did."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.recipes import RecipeCatalog, RecipeFileError, RecipeUnavailableError, UnknownRecipeError, load_recipe
from tests.service.fake_model import make_settings, write_fake_model
from tests.service.test_api_verdicts import hot_model, post

# The hot model's map: 0.95 on the hot spot (rows 12-19, columns 14-19 of 32×32), 0.1 elsewhere; its score
# is that 0.95, above the fake manifest's threshold of 0.9.
HOT, COLD = 0.95, 0.1


def write_recipe(folder: Path, recipe_id: str, **fields: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{recipe_id}.json"
    path.write_text(json.dumps({"id": recipe_id, "version": "1", "model": "hot", **fields}))
    return path


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


# --- files and the catalog --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "holds a JSON list; expected an object"),
        ('{"id": "a", "version": "1"}', "model: Field required"),
        ('{"id": "a", "version": "1", "model": "hot", "treshold": 0.5}', "treshold: Extra inputs are not permitted"),
        ('{"id": "b", "version": "1", "model": "hot"}', "id 'b' differs from the file name"),
        ('{"id": "a", "version": "1", "model": "hot", "threshold": 0.9, "review_threshold": 0.8}', "must be above"),
        ('{"id": "a", "version": "1", "model": "hot", "roi_mask": "gone.png"}', "gone.png not found"),
        ('{"id": "a", "version": "1", "model": "hot", "roi_mask": "../a.png"}', "in the recipes folder itself"),
        ('{"id": "a", "version": "1", "model": "hot", "threshold": NaN}', "threshold"),
    ],
)
def test_a_bad_recipe_file_is_refused_naming_it(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(RecipeFileError, match=message) as caught:
        load_recipe(path)
    assert str(path) in str(caught.value)


def test_an_empty_mask_is_refused(tmp_path: Path) -> None:
    write_mask(tmp_path / "m.png", np.zeros((4, 4), bool))
    with pytest.raises(RecipeFileError, match="no non-zero pixel"):
        load_recipe(write_recipe(tmp_path, "a", roi_mask="m.png"))


def test_the_catalog_serves_the_good_files_and_lists_the_bad_ones(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_recipe(folder, "good", threshold=0.5)
    (folder / "bad.json").write_text("{")
    catalog = RecipeCatalog(folder)
    report = catalog.load()
    assert catalog.ids() == ["good"] and report.loaded == ["good"] and "not valid JSON" in report.failed["bad"]
    assert catalog.get("good").spec.threshold == 0.5
    with pytest.raises(RecipeUnavailableError, match="bad"):
        catalog.get("bad")
    with pytest.raises(UnknownRecipeError, match=r"'nope' is not known; available: \['good'\]"):
        catalog.get("nope")
    with pytest.raises(UnknownRecipeError):
        catalog.set_active("nope")
    assert catalog.active_id is None  # nothing changed


def test_a_changed_file_that_fails_keeps_its_previous_version(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    path = write_recipe(folder, "line2", threshold=0.5)
    catalog = RecipeCatalog(folder, active="line2")
    catalog.load()
    path.write_text('{"id": "line2", "version": "2", "model": "hot", "threshold": "high"}')
    report = catalog.reload()
    assert report.kept == ["line2"] and "previous version is served" in report.failed["line2"]
    assert catalog.get("line2").version == "1" and catalog.get("line2").spec.threshold == 0.5
    write_recipe(folder, "line2", version="2", threshold=0.6)
    assert catalog.reload().loaded == ["line2"] and catalog.get("line2").version == "2"
    path.unlink()  # the active recipe's file removed: its last version stays, reported
    report = catalog.reload()
    assert (
        catalog.active_id == "line2"
        and catalog.get("line2").version == "2"
        and "file is gone" in report.failed["line2"]
    )


def test_an_active_recipe_that_does_not_load_fails_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    (folder / "x.json").parent.mkdir(parents=True)
    (folder / "x.json").write_text("{}")
    with pytest.raises(RecipeFileError, match=r"the active recipe 'x' \(BRIDGENET_RECIPE\) cannot be used"):
        RecipeCatalog(folder, active="x").load()
    with pytest.raises(RecipeFileError, match=r"no file y\.json"):
        RecipeCatalog(folder, active="y").load()


def test_set_active_is_safe_from_many_threads_and_tells_listeners(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    for name in ("a", "b"):
        write_recipe(folder, name)
    catalog = RecipeCatalog(folder)
    catalog.load()
    seen: list[str | None] = []
    catalog.add_listener(seen.append)
    threads = [threading.Thread(target=catalog.set_active, args=("ab"[i % 2],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert catalog.active_id in ("a", "b") and seen and seen[-1] in ("a", "b")
    catalog.set_active(None)
    assert catalog.active() is None and seen[-1] is None


# --- through the app --------------------------------------------------------------------------------------


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_model(root, "fake")  # the default model: OK on these parts
    hot_model(root, "hot")
    return root


def app_client(models: Path, tmp_path: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(make_settings(models, data_dir=tmp_path / "data", **settings)))


def test_a_recipe_per_request_picks_the_model_and_its_rules_and_the_record_says_so(
    models: Path, tmp_path: Path
) -> None:
    write_recipe(models / "recipes", "strict", version="4", review_threshold=0.97)
    write_recipe(models / "recipes", "lenient", threshold=0.96)
    with app_client(models, tmp_path) as client:
        plain = post(client).json()
        assert plain["model"]["name"] == "fake" and plain["recipe"] is None and plain["verdict"] == "ok"
        strict = post(client, recipe="strict").json()
        assert strict["model"]["name"] == "hot" and strict["recipe"] == {"id": "strict", "version": "4"}
        assert strict["score"] == pytest.approx(HOT) and strict["threshold"] == 0.9
        assert strict["verdict"] == "review" and strict["is_anomalous"] and strict["review_threshold"] == 0.97
        lenient = post(client, recipe="lenient").json()
        assert lenient["threshold"] == 0.96 and lenient["threshold_source"] == "recipe"
        assert lenient["verdict"] == "ok" and not lenient["is_anomalous"]
        record = client.get(f"/v1/results/{strict['request_id']}").json()
        assert record["recipe"] == {"id": "strict", "version": "4"} and record["verdict"] == "review"
        assert client.get(f"/v1/results/{plain['request_id']}").json()["recipe"] is None
        reviews = client.get("/v1/results", params={"verdict": "review"}).json()["results"]
        assert [r["request_id"] for r in reviews] == [strict["request_id"]]
        csv = [line.split(",") for line in client.get("/v1/results.csv").text.splitlines()]
        header = csv[0]
        assert header[-2:] == ["recipe", "recipe_version"]
        row = next(r for r in csv[1:] if r[0] == strict["request_id"])
        assert row[header.index("verdict")] == "review" and row[-2:] == ["strict", "4"]
        listed = client.get("/v1/recipes").json()
        assert listed["active"] is None and [r["id"] for r in listed["recipes"]] == ["lenient", "strict"]
        metrics = client.get("/metrics").text
        assert 'bridgenet_predictions_total{model="hot",verdict="review"} 1.0' in metrics


def test_an_unknown_recipe_is_404_and_nothing_is_recorded(models: Path, tmp_path: Path) -> None:
    (models / "recipes").mkdir()
    (models / "recipes" / "broken.json").write_text("{")
    with app_client(models, tmp_path) as client:
        response = post(client, recipe="nope")
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_recipe"
        broken = post(client, recipe="broken")
        assert broken.status_code == 503 and broken.json()["error"]["code"] == "recipe_unavailable"
        assert post(client, recipe="../x").status_code == 422
        assert client.get("/v1/results").json()["results"] == []
        assert client.get("/v1/recipes").json()["unavailable"][0]["id"] == "broken"


def test_a_recipe_and_another_model_conflict_and_a_version_mismatch_is_409(models: Path, tmp_path: Path) -> None:
    write_recipe(models / "recipes", "pinned", model_version="7")
    write_recipe(models / "recipes", "hot-only")
    with app_client(models, tmp_path) as client:
        conflict = post(client, recipe="hot-only", model="fake")
        assert conflict.status_code == 422 and "scores with model 'hot', not 'fake'" in conflict.text
        pinned = post(client, recipe="pinned")
        assert pinned.status_code == 409 and pinned.json()["error"]["code"] == "recipe_mismatch"
        assert "version '7'" in pinned.json()["error"]["message"]
        assert client.get("/v1/results").json()["results"] == []


def test_the_active_recipe_applies_when_a_request_names_none(models: Path, tmp_path: Path) -> None:
    write_recipe(models / "recipes", "line", threshold=0.5)
    with app_client(models, tmp_path, recipe="line", admin_key="admin-key-for-tests") as client:
        answer = post(client).json()
        assert answer["recipe"]["id"] == "line" and answer["model"]["name"] == "hot"
        assert answer["verdict"] == "ng" and answer["threshold"] == 0.5
        # A request naming another model gets that model's own rules.
        assert post(client, model="fake").json()["recipe"] is None
        assert client.get("/v1/recipes").json()["active"] == "line"
        # Switched by hand (the admin key), as the PLC does over OPC UA.
        url, admin = "/v1/admin/recipes/active", {"X-Admin-Key": "admin-key-for-tests"}
        assert client.put(url, json={"recipe": None}).status_code == 401
        unknown = client.put(url, json={"recipe": "nope"}, headers=admin)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_recipe"
        assert client.get("/v1/recipes").json()["active"] == "line"  # a refused switch changes nothing
        assert client.put(url, json={"recipe": None}, headers=admin).json() == {"recipe": None}
        assert post(client).json()["model"]["name"] == "fake"
        assert client.put(url, json={"recipe": "line"}, headers=admin).json() == {"recipe": "line"}
        assert post(client).json()["recipe"]["id"] == "line"


def test_a_mask_outside_the_hot_spot_makes_the_part_ok(models: Path, tmp_path: Path) -> None:
    # The upload is 40×48; the mask, 20×24 (same aspect), keeps the left third only: the hot spot (model
    # columns 14-19 of 32, upload columns about 21-29) lies outside it.
    mask = np.zeros((20, 24), bool)
    mask[:, :8] = True
    write_mask(models / "recipes" / "left.png", mask)
    write_recipe(models / "recipes", "left", roi_mask="left.png")
    inside = np.zeros((20, 24), bool)
    inside[:, 8:16] = True
    write_mask(models / "recipes" / "middle.png", inside)
    write_recipe(models / "recipes", "middle", roi_mask="middle.png")
    write_mask(models / "recipes" / "square.png", np.ones((10, 10), bool))
    write_recipe(models / "recipes", "square", roi_mask="square.png")
    with app_client(models, tmp_path) as client:
        left = post(client, recipe="left").json()
        assert left["verdict"] == "ok" and left["score"] == pytest.approx(HOT * COLD / HOT) and left["regions"] == []
        middle = post(client, recipe="middle").json()
        assert middle["verdict"] == "ng" and middle["score"] == pytest.approx(HOT) and middle["n_regions"] == 1
        square = post(client, recipe="square")
        assert square.status_code == 422 and square.json()["error"]["code"] == "mask_mismatch"
        assert client.get("/v1/recipes").json()["recipes"][0]["roi_mask_size"] == [24, 20]
