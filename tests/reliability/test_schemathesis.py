"""Schemathesis (`schemathesis run`, every check) against a live `python -m service` on loopback, with the
API key: generated and mutated requests from the service's own OpenAPI contract, responses checked against
it (status codes, content types, schemas, auth that must not be ignored, 405 with Allow, no 5xx)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.tools import in_ci
from tests.reliability.conftest import HOST, ModelsUnderTest, ServiceProcess, free_port, launch, service_env, wait_ready

KEY = "schemathesis-key-0123456789"
SEED = 20261130
MAX_EXAMPLES = 60  # per operation; the whole run takes seconds against the fake model
RUN_TIMEOUT_S = 300
PREDICT = "POST /v1/predict"
# Round two of issue 12 reworks the predict route; until then Schemathesis finds, only there:
#   ST202 (positive_data_acceptance): an empty or non-image `rgb`/`xyz` file is schema-valid (format:
#   binary) yet refused with 400. The route must document what it accepts (or 400 as an expected answer).
# test_schemathesis_predict_route is strict-xfail on exactly that: when the route is fixed it passes, and
# the strict xfail then fails until the marker is removed.


def schemathesis_binary() -> str:
    """The `schemathesis` of this interpreter's environment (dev extra); skip locally, fail under CI."""
    found = Path(sys.executable).with_name("schemathesis")
    path = str(found) if found.is_file() else shutil.which("schemathesis")
    if path is None:
        message = "schemathesis is not installed (pip install -e '.[dev]')"
        if in_ci():
            pytest.fail(f"{message}; CI is set, so this check may not be skipped")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def report(models_under_test: ModelsUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One `schemathesis run` over every operation of a live service (stopped afterwards); its JSON report."""
    binary = schemathesis_binary()
    folder = tmp_path_factory.mktemp("schemathesis")
    port = free_port()
    env = service_env(models_under_test.models_dir, models_under_test.default_model, api_key=KEY)
    service = ServiceProcess(launch(env, folder / "service.log", port), f"http://{HOST}:{port}", folder / "service.log")
    try:
        wait_ready(service)
        yield run_schemathesis(binary, service, folder)
    finally:
        service.stop()


def run_schemathesis(binary: str, service: ServiceProcess, folder: Path) -> dict[str, Any]:
    command = [
        binary, "run", f"{service.url}/openapi.json",
        "--header", f"X-API-Key: {KEY}",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--request-timeout", "15",
        "--generation-database", "none",
        "--no-color",
        "--report", "json",
        "--report-dir", str(folder),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    reports = sorted(folder.glob("*.json"))
    assert reports, f"no report (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    data: dict[str, Any] = json.loads(reports[-1].read_text(encoding="utf-8"))
    data["_output"] = result.stdout
    # The service survived the run and is still ready, and never answered 500.
    assert httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
    assert '"status": 500' not in service.log_text()
    return data


def failures_of(report: dict[str, Any], operation: str | None) -> list[tuple[str, str]]:
    """(code, title) of each failure on `operation`, or on any other operation when None."""
    return [
        (f["code"], f["title"])
        for f in report["failures"]
        for op in f["operations"]
        if (op == operation if operation else op != PREDICT)
    ]


def test_schemathesis_tested_every_operation_without_errors(report: dict[str, Any]) -> None:
    operations = report["operations"]
    assert operations["tested"] == operations["selected"] == operations["total"] >= 5, operations
    assert report["errors"] == [], report["_output"][-4000:]
    assert report["stop_reason"] == "completed"
    assert report["test_cases"]["generated"] >= 5 * 10


def test_schemathesis_finds_nothing_outside_the_predict_route(report: dict[str, Any]) -> None:
    assert failures_of(report, None) == [], report["_output"][-6000:]


class KnownPredictRouteFinding(AssertionError):
    """A finding on the predict route that round two of issue 12 fixes (the only failure xfail accepts)."""


KNOWN_PREDICT_FINDINGS = {"ST202"}


@pytest.mark.xfail(strict=True, raises=KnownPredictRouteFinding, reason="issue 12 round two: ST202 on POST /v1/predict")
def test_schemathesis_predict_route(report: dict[str, Any]) -> None:
    found = failures_of(report, PREDICT)
    new = [f for f in found if f[0] not in KNOWN_PREDICT_FINDINGS]
    assert not new, f"new Schemathesis findings on {PREDICT}: {new}"  # a real failure, not the xfail
    if found:
        raise KnownPredictRouteFinding(f"known findings on {PREDICT}: {found}")
