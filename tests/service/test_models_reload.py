"""Models: read once, sha256 checked before ONNX Runtime parses the bytes, external data refused; a bad
folder is reported and the others served; hot reload without dropping a request in flight."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from service.engine import Engine, ModelLoadError
from service.main import create_app, engine_options
from service.manifest import MODEL_FILE, sha256_file, write_manifest_json
from tests.service.fake_model import (
    build_graph,
    fake_manifest,
    make_part,
    make_settings,
    png_bytes,
    tiff_bytes,
    write_fake_model,
)
from tests.service.test_api_admission import wait_until

ADMIN = "admin-key-0123456789abcdef"
RGB, XYZ = make_part(seed=21)
FILES = {"rgb": ("p.png", png_bytes(RGB), "image/png"), "xyz": ("p.tiff", tiff_bytes(XYZ), "image/tiff")}


def write_external_data_model(models_dir: Path, name: str) -> Path:
    """A model whose initializers live in a side file, with a manifest that matches its model.onnx."""
    folder = write_fake_model(models_dir, name)
    model = build_graph()
    for k, tensor in enumerate(model.graph.initializer):  # raw data, so that onnx moves them out
        model.graph.initializer[k].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.helper.set_model_props(model, {p.key: p.value for p in onnx.load(str(folder / MODEL_FILE)).metadata_props})
    onnx.save(model, str(folder / MODEL_FILE), save_as_external_data=True, location="weights.bin", size_threshold=0)
    write_manifest_json(fake_manifest(name), folder, sha256_file(folder / MODEL_FILE))
    return folder


def test_the_hash_is_checked_before_onnx_runtime_sees_the_bytes_and_the_session_is_built_from_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_fake_model(tmp_path, "fake")
    seen: list[Any] = []
    real = ort.InferenceSession

    def recording(model: Any, *args: Any, **kwargs: Any) -> ort.InferenceSession:
        seen.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr("service.engine.loading.ort.InferenceSession", recording)
    reads: list[Path] = []
    read_bytes = Path.read_bytes

    def counting(path: Path) -> bytes:
        reads.append(path)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counting)
    engine = Engine(engine_options(make_settings(tmp_path)))
    engine.start()
    engine.stop()
    assert [type(m) for m in seen] == [bytes] and seen[0] == read_bytes(folder / MODEL_FILE)
    assert reads.count(folder / MODEL_FILE) == 1  # read once: hashed, scanned and parsed from the same bytes
    seen.clear()
    (folder / MODEL_FILE).write_bytes(read_bytes(folder / MODEL_FILE) + b"\0")
    with pytest.raises(ModelLoadError, match=r"sha256 .* does not match"):
        Engine(engine_options(make_settings(tmp_path))).start()
    assert seen == []  # ONNX Runtime never parsed the bytes that failed the check


def test_a_bad_model_folder_is_reported_and_the_others_are_served(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "fake")
    write_external_data_model(tmp_path, "external")
    broken = write_fake_model(tmp_path, "broken") / MODEL_FILE
    broken.write_bytes(broken.read_bytes()[:64])
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert client.get("/readyz").status_code == 200
        listing = client.get("/v1/models").json()
        assert [m["name"] for m in listing["models"]] == ["fake"]
        reasons = {m["name"]: m["reason"] for m in listing["unavailable"]}
        assert set(reasons) == {"broken", "external"}
        assert "does not match" in reasons["broken"]
        assert "external data (axis1, axes12, half, scales)" in reasons["external"]
        for name in ("broken", "external"):
            answer = client.post("/v1/predict", files=FILES, data={"model": name})
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_unavailable", answer.text
            assert name in answer.json()["error"]["message"]
        assert client.post("/v1/predict", files=FILES).status_code == 200
        metrics = client.get("/metrics").text
        assert 'bridgenet_model_unavailable{model="broken"} 1.0' in metrics
        assert 'bridgenet_model_unavailable{model="external"} 1.0' in metrics


def test_a_bad_default_model_still_stops_start_up(tmp_path: Path) -> None:
    write_external_data_model(tmp_path, "fake")
    write_fake_model(tmp_path, "other")
    with pytest.raises(ModelLoadError, match=r"default model 'fake' cannot be served: .*external data"):
        Engine(engine_options(make_settings(tmp_path))).start()


@pytest.mark.parametrize("batch_max_size", [1, 4], ids=["unbatched", "batched"])
def test_reload_loads_changes_and_drops_folders_while_requests_keep_succeeding(
    tmp_path: Path, batch_max_size: int
) -> None:
    write_fake_model(tmp_path, "fake")
    write_fake_model(tmp_path, "old")
    settings = make_settings(tmp_path, admin_key=ADMIN, batch_max_size=batch_max_size, batch_wait_ms=1.0)
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(create_app(settings)) as client:

        def hammer() -> None:
            while not stop.is_set():
                statuses.append(client.post("/v1/predict", files=FILES).status_code)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(statuses) >= 3, timeout_s=20)  # requests are flowing before the folders change
        write_fake_model(tmp_path, "new")
        write_fake_model(tmp_path, "fake", version="2")  # changed in place
        shutil.rmtree(tmp_path / "old")
        reports = [client.post("/v1/admin/reload", headers={"X-Admin-Key": ADMIN}) for _ in range(2)]
        after_reload = len(statuses)
        wait_until(lambda: len(statuses) >= after_reload + 3, timeout_s=20)  # and go on flowing after the swap
        stop.set()
        for t in threads:
            t.join(30)
        first, second = (r.json() for r in reports)
        assert reports[0].status_code == 200, reports[0].text
        assert (first["loaded"], first["reloaded"], first["removed"]) == (["new"], ["fake"], ["old"])
        assert second["unchanged"] == ["fake", "new"] and not second["loaded"] and not second["reloaded"]
        versions = {m["name"]: m["version"] for m in client.get("/v1/models").json()["models"]}
        assert versions == {"fake": "2", "new": "1"}
        assert client.post("/v1/predict", files=FILES, data={"model": "new"}).status_code == 200
        assert client.post("/v1/predict", files=FILES, data={"model": "old"}).json()["error"]["code"] == (
            "unknown_model"
        )
    assert statuses and set(statuses) == {200}, sorted(set(statuses))


def test_a_changed_folder_that_fails_keeps_its_previous_version(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "fake")
    write_fake_model(tmp_path, "other")
    with TestClient(create_app(make_settings(tmp_path, admin_key=ADMIN))) as client:
        model = tmp_path / "other" / MODEL_FILE
        model.write_bytes(model.read_bytes()[:100])
        report = client.post("/v1/admin/reload", headers={"X-Admin-Key": ADMIN}).json()
        assert report["kept"] == ["other"] and "does not match" in report["failed"]["other"]
        assert client.post("/v1/predict", files=FILES, data={"model": "other"}).status_code == 200


def test_the_reload_route_needs_its_own_key(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "fake")
    with TestClient(create_app(make_settings(tmp_path))) as client:
        answer = client.post("/v1/admin/reload", headers={"X-Admin-Key": ADMIN})
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_disabled"
    with TestClient(create_app(make_settings(tmp_path, admin_key=ADMIN, api_key="api-key-0123456789"))) as client:
        for headers in ({}, {"X-Admin-Key": "wrong"}, {"X-API-Key": "api-key-0123456789"}):
            answer = client.post("/v1/admin/reload", headers=headers)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized", headers
        assert client.post("/v1/admin/reload", headers={"X-Admin-Key": ADMIN}).status_code == 200
