"""Interoperability: node-opcua's client (a second, independent OPC UA stack) reads a VisionSystem of a
running service and acknowledges its result. Needs `node` and the npm package `node-opcua-client`: its
folder in BRIDGENET_TEST_NODE_OPCUA (e.g. after `npm install node-opcua-client` there); skipped without."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.plc.opcua_client import post_part, start_service
from tests.plc.test_opcua_live import stop_cleanly
from tests.service.fake_model import write_fake_model

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "interop" / "node_opcua_client.js"
NODE_OPCUA_ENV = "BRIDGENET_TEST_NODE_OPCUA"


def node_modules() -> Path:
    node, folder = shutil.which("node"), os.environ.get(NODE_OPCUA_ENV)
    modules = Path(folder) / "node_modules" if folder else None
    if node is None or modules is None or not (modules / "node-opcua-client").is_dir():
        pytest.skip(f"needs node and node-opcua-client installed in ${NODE_OPCUA_ENV} (npm install node-opcua-client)")
    return modules


def test_node_opcua_reads_the_oldest_result_and_acknowledges_it(tmp_path: Path) -> None:
    modules = node_modules()
    write_fake_model(tmp_path / "models", "fake")
    service, url = start_service(tmp_path / "models", tmp_path / "service.log", tmp_path / "data")
    try:
        request_id = post_part(service, "part-node")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_PATH": str(modules)}
        run = subprocess.run(
            ["node", str(SCRIPT), url, "fake"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert run.returncode == 0, run.stdout + run.stderr
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, run.stdout + run.stderr  # node-opcua logs its own lines around it
        seen = json.loads(lines[0].removeprefix("RESULT "))
        assert seen["state"] == "Operational" and seen["subState"] == "Ready"
        assert (seen["before"], seen["resultId"], seen["partId"]) == (1, request_id, "part-node")
        assert seen["verdict"] in ("ok", "ng")
        assert (seen["acknowledge"], seen["acknowledgeAgain"], seen["after"]) == ("Good", "BadNotFound", 0)
        status = httpx.get(f"{service.url}/v1/status", timeout=10).json()["plc"]["fake"]
        assert status["acknowledged"] == 1 and status["unacknowledged"] == 0
    finally:
        stop_cleanly(service)
