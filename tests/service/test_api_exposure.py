"""Exposure: metrics port or key, bundled docs, the contract behind the key, 405 Allow, the
API-key security scheme, part_id and form limits, and the series dashboards read from the first scrape."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Form, Request
from fastapi.testclient import TestClient
from pydantic import TypeAdapter, ValidationError

from service.api.errors import refusal_codes
from service.api.forms import FormLimits, read_form
from service.api.routes_docs import SWAGGER_UI_ASSETS, SWAGGER_UI_DIR, docs_page
from service.api.schemas import PartId
from service.main import create_app
from tests.service.fake_model import make_part, make_settings, png_bytes, tiff_bytes

KEY = "exposure-test-key-0123456789"
AUTH = {"X-API-Key": KEY}
RGB, XYZ = make_part(40, 48, seed=5)
FILES = {"rgb": ("p.png", png_bytes(RGB), "image/png"), "xyz": ("p.tiff", tiff_bytes(XYZ), "image/tiff")}


def settings(models_dir: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {"api_key": KEY, "metrics_port": None, "docs": False}
    return make_settings(models_dir, **(values | overrides))


@pytest.fixture
def client(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(models_dir))) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(text: str, name_and_labels: str) -> float:
    match = re.search(rf"^{re.escape(name_and_labels)} (\S+)$", text, flags=re.MULTILINE)
    assert match, f"{name_and_labels} not exposed"
    return float(match.group(1))


# --- /metrics: behind the key on the API port, or alone on its own port --------------------------------


def test_metrics_on_the_api_port_need_the_key(client: TestClient) -> None:
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
    answer = client.get("/metrics", headers=AUTH)
    assert answer.status_code == 200 and "bridgenet_predictions_total" in answer.text


def test_metrics_port_serves_metrics_and_the_api_port_does_not(models_dir: Path) -> None:
    port = free_port()
    app = create_app(settings(models_dir, metrics_port=port, metrics_host="127.0.0.1"))
    with TestClient(app) as c:
        assert c.get("/metrics", headers=AUTH).status_code == 404
        assert c.post("/v1/predict", files=FILES, headers=AUTH).status_code == 200
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert sample(scraped.text, 'bridgenet_predictions_total{model="fake",verdict="ok"}') + sample(
            scraped.text, 'bridgenet_predictions_total{model="fake",verdict="ng"}'
        ) == pytest.approx(1)
    with pytest.raises(httpx.TransportError):  # stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_taken_metrics_port_stops_the_start(models_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(settings(models_dir, metrics_port=port, metrics_host="127.0.0.1"))
        with pytest.raises(OSError), TestClient(app):
            pass


def test_labelled_series_and_baselines_exist_from_start_up(models_dir: Path, client: TestClient) -> None:
    text = client.get("/metrics", headers=AUTH).text
    for verdict in ("ok", "ng"):
        assert sample(text, f'bridgenet_predictions_total{{model="fake",verdict="{verdict}"}}') == 0
    assert sample(text, 'bridgenet_anomaly_score_count{model="fake"}') == 0
    assert sample(text, 'bridgenet_batch_size_count{model="fake"}') == 0
    codes = refusal_codes()
    assert {"queue_full", "unauthorized", "too_large", "bad_dtype", "no_foreground", "invalid_form"} <= set(codes)
    for code in codes:
        assert sample(text, f'bridgenet_rejected_requests_total{{reason="{code}"}}') == 0, code
    stats = json.loads((models_dir / "fake" / "manifest.json").read_text())["score_stats"]
    assert sample(text, 'bridgenet_good_score{model="fake",stat="p99"}') == pytest.approx(stats["p99"])
    assert sample(text, 'bridgenet_good_score{model="fake",stat="p50"}') == pytest.approx(stats["p50"])
    assert sample(text, 'bridgenet_admission_limit{kind="inflight"}') == 2
    assert sample(text, 'bridgenet_admission_limit{kind="queue"}') == 4


def test_answered_latency_leaves_refusals_out(client: TestClient) -> None:
    assert client.post("/v1/predict", files=FILES, headers=AUTH).status_code == 200
    assert client.post("/v1/predict", files=FILES).status_code == 401
    assert client.post("/v1/predict", files={"rgb": FILES["rgb"]}, headers=AUTH).status_code == 422
    text = client.get("/metrics", headers=AUTH).text
    assert sample(text, "bridgenet_request_duration_seconds_count") == 3
    assert sample(text, "bridgenet_prediction_duration_seconds_count") == 1


# --- the contract and its reader -------------------------------------------------------------------------


def test_openapi_needs_the_key_and_docs_are_off_by_default(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 401
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert "/v1/predict" in spec["paths"]
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js"):
        assert client.get(path).status_code == 404, path


def test_openapi_declares_each_role_as_a_security_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers=AUTH).json()
    schemes = {n: (s["type"], s["in"], s["name"]) for n, s in spec["components"]["securitySchemes"].items()}
    # The line's and the results reader's keys share the X-API-Key header; the admin key has its own.
    assert schemes == {
        "LineKey": ("apiKey", "header", "X-API-Key"),
        "ResultsKey": ("apiKey", "header", "X-API-Key"),
        "AdminKey": ("apiKey", "header", "X-Admin-Key"),
    }
    expected = {
        "/v1/predict": [{"LineKey": []}],
        "/v1/models": [{"LineKey": []}],
        "/v1/results": [{"ResultsKey": []}],
        "/v1/results/{request_id}": [{"ResultsKey": []}],
        "/v1/status": [{"LineKey": []}, {"ResultsKey": []}],  # either key
        "/v1/admin/reload": [{"AdminKey": []}],
    }
    for path, security in expected.items():
        operation = next(iter(spec["paths"][path].values()))
        assert operation["security"] == security, path
        assert all(p["name"].lower() != "x-api-key" for p in operation.get("parameters", [])), path
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_docs_on_request_from_bundled_assets_only(models_dir: Path) -> None:
    with TestClient(create_app(settings(models_dir, docs=True))) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("docs/assets/") for s in sources), sources  # no CDN, no host
        for source in sources:
            asset = c.get(f"/{source}")
            assert asset.status_code == 200 and asset.content == (SWAGGER_UI_DIR / source.split("/")[-1]).read_bytes()
        assert c.get("/docs/assets/SOURCE.md").status_code == 404
        assert c.get("/docs/assets/..%2Fschemas.py").status_code == 404
        embedded = re.search(r'<script id="openapi-spec" type="application/json">(.*?)</script>', page.text, re.S)
        assert (
            embedded
            and json.loads(embedded.group(1))["paths"].keys()
            == c.get("/openapi.json", headers=AUTH).json()["paths"].keys()
        )


def test_docs_page_cannot_be_broken_out_of_by_the_spec() -> None:
    page = docs_page({"info": {"title": "x"}, "description": "</script><script>alert(1)</script>"})
    assert page.count("</script>") == 3  # the spec's element, the bundle's, the initialiser's
    assert "alert(1)" in page and "<script>alert" not in page


def test_vendored_swagger_ui_matches_its_recorded_checksums() -> None:
    recorded = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{64}) \|$", (SWAGGER_UI_DIR / "SOURCE.md").read_text(), re.M))
    assert set(SWAGGER_UI_ASSETS) <= set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((SWAGGER_UI_DIR / name).read_bytes()).hexdigest() == digest, name


# --- HTTP details ----------------------------------------------------------------------------------------


def test_405_names_the_allowed_methods(client: TestClient) -> None:
    answer = client.get("/v1/predict", headers=AUTH)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"
    assert client.delete("/healthz").headers["allow"] in ("GET", "GET, HEAD")


# --- part_id and form limits (wired into the predict route by the lead) ----------------------------------


@pytest.mark.parametrize(
    "bad",
    ["a\u202eb", "x\u2066y", "line\nbreak", "tab\tbed", "nul\x00", "zero\u200bwidth", "bell\x07", "", "x" * 257],
)
def test_part_id_refuses_controls_and_bidi_overrides(bad: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(PartId).validate_python(bad)


@pytest.mark.parametrize("good", ["A-123/7", "Teil Nr. 5", "部品-42", "ÄÖÜ ß", "x" * 256])
def test_part_id_accepts_printable_text(good: str) -> None:
    assert TypeAdapter(PartId).validate_python(good) == good


@pytest.fixture
def form_client(models_dir: Path) -> Iterator[TestClient]:
    """The real app (middleware, error handlers) with one extra route that uses the form helpers."""
    app = create_app(settings(models_dir, api_key=None))

    @app.post("/test/form")
    async def form_route(request: Request) -> dict[str, Any]:
        form = await read_form(request, FormLimits(), known=("rgb", "xyz", "model", "part_id", "map"))
        return {"names": sorted(form)}

    @app.post("/test/part")
    async def part_route(part_id: Annotated[PartId, Form()]) -> dict[str, str]:
        return {"part_id": part_id}

    with TestClient(app) as c:
        yield c


def test_form_limits_two_files_five_fields_each_name_once(form_client: TestClient) -> None:
    ok = form_client.post("/test/form", files=FILES, data={"model": "fake", "part_id": "A1", "map": "png"})
    assert ok.status_code == 200 and ok.json()["names"] == ["map", "model", "part_id", "rgb", "xyz"]
    third_file = {**FILES, "extra": ("x.png", b"x", "image/png")}
    for files, data, words in (
        (third_file, {}, "Too many files"),
        (FILES, {"model": "a", "part_id": "b", "map": "png", "x": "y", "z": "w", "w": "v"}, "Too many fields"),
        ([("rgb", FILES["rgb"]), ("rgb", FILES["rgb"])], {}, "'rgb' is given more than once"),
        (FILES, {"modell": "typo"}, "unknown form field 'modell'"),
    ):
        answer = form_client.post("/test/form", files=files, data=data)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_form" and words in answer.json()["error"]["message"]
    # Refusals of the helper are counted like any other.
    text = form_client.get("/metrics").text
    assert sample(text, 'bridgenet_rejected_requests_total{reason="invalid_form"}') == 4


def test_part_id_refused_with_the_error_body(form_client: TestClient) -> None:
    assert form_client.post("/test/part", data={"part_id": "A-1"}).json() == {"part_id": "A-1"}
    answer = form_client.post("/test/part", data={"part_id": "evil\u202etxt.exe"})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_field" and "U+202E" in error["message"]
