"""The predict form as the route reads it: part_id printable, 2 files and 4 fields at most, each once, no
undeclared field, files where files belong; POST /predict is the same operation as POST /v1/predict."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.fake_model import make_part, make_settings, png_bytes, tiff_bytes, write_fake_model

RGB, XYZ = make_part(seed=31)
PNG, TIFF = png_bytes(RGB), tiff_bytes(XYZ)


def files(**extra: Any) -> list[tuple[str, Any]]:
    return [("rgb", ("p.png", PNG, "image/png")), ("xyz", ("p.tiff", TIFF, "image/tiff")), *extra.items()]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("models")
    write_fake_model(root, "fake")
    with TestClient(create_app(make_settings(root))) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/predict", "/predict"])
def test_both_paths_answer_the_same_operation(client: TestClient, path: str) -> None:
    answer = client.post(path, files=files(), data={"part_id": "Lot 7 / Teil-Nr. 12 (ä)"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["part_id"] == "Lot 7 / Teil-Nr. 12 (ä)"
    metrics = client.get("/metrics").text
    assert f'bridgenet_requests_total{{endpoint="{path}",status="200"}}' in metrics


@pytest.mark.parametrize(
    "part_id", ["evil\u202eexe.txt", "line\nbreak", "tab\there", "zero\u200bwidth", "\u2066isolate"]
)
def test_a_part_id_with_control_or_bidi_characters_is_refused(client: TestClient, part_id: str) -> None:
    answer = client.post("/v1/predict", files=files(), data={"part_id": part_id})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_field" and "part_id" in error["message"] and "U+" in error["message"]


@pytest.mark.parametrize(
    ("form", "data", "expected"),
    [
        ([*files(), ("rgb", ("b.png", PNG, "image/png"))], {}, "Too many files"),
        (
            files(),
            {"part_id": "a", "meas_id": "m", "model": "fake", "recipe": "r", "return_map": "none", "extra": "x"},
            "Too many fields",
        ),
        ([*files(), ("part_id", ("x.bin", b"x", "text/plain"))], {"part_id": "a"}, "Too many files"),
        (files(), {"comment": "x"}, "unknown form field 'comment'"),
    ],
    ids=["second-rgb", "fifth-field", "third-file", "undeclared-field"],
)
def test_form_limits(client: TestClient, form: list[Any], data: dict[str, str], expected: str) -> None:
    answer = client.post("/v1/predict", files=form, data=data)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_form" and expected in answer.json()["error"]["message"]


def test_a_repeated_text_field_is_refused(client: TestClient) -> None:
    body = client.post(
        "/v1/predict",
        content=b'--b\r\nContent-Disposition: form-data; name="part_id"\r\n\r\na\r\n'
        b'--b\r\nContent-Disposition: form-data; name="part_id"\r\n\r\nb\r\n--b--\r\n',
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert body.status_code == 422 and "'part_id' is given more than once" in body.json()["error"]["message"]


def test_missing_and_misplaced_files(client: TestClient) -> None:
    missing = client.post("/v1/predict", files=[("rgb", ("p.png", PNG, "image/png"))])
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "missing_field"
    assert "form field 'xyz' is required" in missing.json()["error"]["message"]
    text = client.post("/v1/predict", files=[("rgb", ("p.png", PNG, "image/png"))], data={"xyz": "not a file"})
    assert text.status_code == 422 and "form field 'xyz': expected a file upload" in text.json()["error"]["message"]
    bad_map = client.post("/v1/predict", files=files(), data={"return_map": "gif"})
    assert bad_map.status_code == 422 and "return_map" in bad_map.json()["error"]["message"]


def test_the_contract_shows_the_form_on_both_paths(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/predict"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["required"] == ["rgb", "xyz"] and body["additionalProperties"] is False
        assert set(body["properties"]) == {"rgb", "xyz", "part_id", "meas_id", "model", "recipe", "return_map"}
        assert {"400", "408", "422", "429", "503"} <= set(spec["paths"][path]["post"]["responses"])


def test_meas_id_is_printable_text(client: TestClient) -> None:
    answer = client.post("/v1/predict", files=files(), data={"meas_id": "m\u202e1"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_field" and "meas_id" in answer.json()["error"]["message"]
    assert client.post("/v1/predict", files=files(), data={"meas_id": "batch-7/42"}).status_code == 200
