"""Schemathesis (`schemathesis run`, every check) against a live `python -m service` on loopback, with each
operation's own key (line, results, admin: the contract's security schemes, given in schemathesis.toml):
generated and mutated requests from the service's own OpenAPI contract, responses checked against
it (status codes, content types, schemas, auth that must not be ignored, 405 with Allow, no 5xx)."""

from __future__ import annotations

import json
import os
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
RESULTS_KEY = "schemathesis-results-key-0123456789"
ADMIN_KEY = "schemathesis-admin-key-0123456789"
# schemathesis.toml reads the keys from these, one per security scheme of the contract.
KEY_ENV = {"SCHEMATHESIS_LINE_KEY": KEY, "SCHEMATHESIS_RESULTS_KEY": RESULTS_KEY, "SCHEMATHESIS_ADMIN_KEY": ADMIN_KEY}
SEED = 20261130
MAX_EXAMPLES = 60  # per operation; the whole run takes seconds against the fake model
RUN_TIMEOUT_S = 300
# What the schema cannot express (the content of the uploads, the opaque results cursor) is declared in
# this file, per operation; see its comments. Everything else runs with Schemathesis' defaults.
CONFIG = Path(__file__).with_name("schemathesis.toml")


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
    env = service_env(
        models_under_test.models_dir,
        models_under_test.default_model,
        api_key=KEY,
        results_key=RESULTS_KEY,
        admin_key=ADMIN_KEY,
    )
    service = ServiceProcess(launch(env, folder / "service.log", port), f"http://{HOST}:{port}", folder / "service.log")
    try:
        wait_ready(service)
        yield run_schemathesis(binary, service, folder)
    finally:
        service.stop()


def run_schemathesis(binary: str, service: ServiceProcess, folder: Path) -> dict[str, Any]:
    # The contract is behind a key too, and the run's keys are per operation: fetch it here, once.
    contract = httpx.get(f"{service.url}/openapi.json", headers={"X-API-Key": KEY}, timeout=10)
    contract.raise_for_status()
    schema = folder.parent / f"{folder.name}-openapi.json"  # beside the report folder, not in it
    schema.write_bytes(contract.content)
    command = [
        binary, "--config-file", str(CONFIG), "run", str(schema), "--url", service.url,
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
    env = {**os.environ, **KEY_ENV}
    result = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    reports = sorted(folder.glob("*.json"))
    assert reports, f"no report (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    data: dict[str, Any] = json.loads(reports[-1].read_text(encoding="utf-8"))
    data["_output"] = result.stdout
    # The service survived the run and is still ready, and never answered 500.
    assert httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
    assert '"status": 500' not in service.log_text()
    return data


def test_schemathesis_tested_every_operation_without_errors(report: dict[str, Any]) -> None:
    operations = report["operations"]
    assert operations["tested"] == operations["selected"] == operations["total"] >= 5, operations
    assert report["errors"] == [], report["_output"][-4000:]
    assert report["stop_reason"] == "completed"
    assert report["test_cases"]["generated"] >= 5 * 10


def test_schemathesis_finds_nothing_on_any_operation(report: dict[str, Any]) -> None:
    failures = [(op, f["code"], f["title"]) for f in report["failures"] for op in f["operations"]]
    assert failures == [], report["_output"][-8000:]


def test_every_route_was_tested(report: dict[str, Any]) -> None:
    """The predict alias, the results routes and the admin reload are in the contract and were exercised."""
    tested = set(report["valid_rates"])
    for operation in ("POST /predict", "POST /v1/predict", "GET /v1/results", "GET /v1/results.csv"):
        assert operation in tested, sorted(tested)
    assert "POST /v1/admin/reload" in tested
    assert report["warnings"]["missing_auth"] == [], report["warnings"]  # every key was accepted
