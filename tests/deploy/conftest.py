"""Fixtures for the live deployment checks: the real service and a real Prometheus as loopback subprocesses."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.deploy.processes import free_port, running_prometheus, stop, wait_until
from tests.deploy.tools import DOCKER_DIR, REPO_ROOT, require_tool
from tests.records.servers import WebhookReceiver

log = logging.getLogger(__name__)

DEMO_DIR = REPO_ROOT / "models" / "demo"
# Decided at collection time so that the test ids say which model the live checks ran against.
MODEL_KIND = "demo" if (DEMO_DIR / "model.onnx").is_file() and (DEMO_DIR / "manifest.json").is_file() else "fake"

# Bounded waits (seconds). A real backbone loads and warms up on a shared CPU far slower than the fake one.
READY_TIMEOUT_S = 60.0 if MODEL_KIND == "demo" else 30.0
PROMETHEUS_TIMEOUT_S = 30.0
POLL_S = 0.2
# Scrape every half second instead of the production 10 s, so rate() has two samples within seconds.
TEST_SCRAPE_INTERVAL = "500ms"

SERVICE_JOB = "bridgenet-service"
DCGM_JOB = "dcgm-exporter"
SELF_JOB = "prometheus"

RGB_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
XYZ_SUFFIXES = (".tif", ".tiff", ".npy")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class Upload:
    """One file of a multipart upload: name, bytes, content type."""

    filename: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class LiveModel:
    """The model the live service serves and the part sent to it. `source` says where both came from."""

    kind: str  # "demo" or "fake"
    name: str
    models_dir: Path
    rgb: Upload
    xyz: Upload
    source: str


@dataclass(frozen=True)
class LiveService:
    base_url: str
    port: int
    model: LiveModel
    log_path: Path


@dataclass(frozen=True)
class LivePrometheus:
    base_url: str
    config: dict[str, Any]
    log_path: Path
    dcgm_target: str


def _upload(path: Path) -> Upload:
    return Upload(path.name, path.read_bytes(), MIME.get(path.suffix.lower(), "application/octet-stream"))


def demo_sample_part(sample_dir: Path) -> tuple[Upload, Upload]:
    """The bundled sample of the demo model: the file whose relative path contains "rgb" (an image) and the
    one whose relative path contains "xyz" (TIFF or NPY point cloud). Fails when the folder holds neither."""
    files = sorted(p for p in sample_dir.rglob("*") if p.is_file())

    def pick(word: str, suffixes: tuple[str, ...]) -> Path | None:
        found = [p for p in files if word in str(p.relative_to(sample_dir)).lower() and p.suffix.lower() in suffixes]
        return found[0] if found else None

    rgb, xyz = pick("rgb", RGB_SUFFIXES), pick("xyz", XYZ_SUFFIXES)
    if rgb is None or xyz is None:
        listing = [str(p.relative_to(sample_dir)) for p in files]
        pytest.fail(f"{sample_dir} has no '*rgb*' image {RGB_SUFFIXES} and '*xyz*' cloud {XYZ_SUFFIXES}: {listing}")
    return _upload(rgb), _upload(xyz)


def synthetic_part() -> tuple[Upload, Upload]:
    from tests.service.fake_model import make_part, npy_bytes, png_bytes  # lazy: keeps onnx out of collection

    rgb, xyz = make_part(seed=7)
    return Upload("part.png", png_bytes(rgb), "image/png"), Upload(
        "part.npy", npy_bytes(xyz.astype(np.float32)), "application/octet-stream"
    )


@pytest.fixture(scope="module", params=[MODEL_KIND], ids=[f"{MODEL_KIND}-model"])
def live_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LiveModel:
    """The bundled demo model (with its sample part when bundled) or, until it lands, the tiny fake model."""
    if request.param == "demo":
        sample_dir = DEMO_DIR / "sample"
        if sample_dir.is_dir():
            rgb, xyz = demo_sample_part(sample_dir)
            source = f"models/demo + sample {rgb.filename}, {xyz.filename}"
        else:
            rgb, xyz = synthetic_part()
            source = "models/demo + synthetic part (no models/demo/sample/)"
        model = LiveModel("demo", "demo", DEMO_DIR.parent, rgb, xyz, source)
    else:
        from tests.service.fake_model import write_fake_model

        models_dir = tmp_path_factory.mktemp("models")
        write_fake_model(models_dir, "fake")
        rgb, xyz = synthetic_part()
        model = LiveModel(
            "fake", "fake", models_dir, rgb, xyz, "fake model (tests/service/fake_model.py), no models/demo"
        )
    log.warning("live deployment checks run against: %s", model.source)
    return model


def service_env(model: LiveModel, data_dir: Path, webhook_url: str, candidate: Path | None = None) -> dict[str, str]:
    """The parent's environment without any BRIDGENET_* (a developer's shell must not leak in), plus the
    settings of this run: one model, CPU provider, development mode without an API key, the audit trail in
    `data_dir`, results pushed to a webhook (so the push panels have a destination to show), an OPC UA
    server on a free loopback port (so the PLC panels have their series) and, with `candidate`, that model
    folder shadowing the model (so the shadow panel has parts to show)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGENET_")}
    env.update(
        BRIDGENET_MODELS_DIR=str(model.models_dir),
        BRIDGENET_MODELS=model.name,
        BRIDGENET_DEFAULT_MODEL=model.name,
        BRIDGENET_PROVIDERS="cpu",
        BRIDGENET_ENVIRONMENT="development",
        BRIDGENET_INTRA_OP_THREADS="2",
        BRIDGENET_LOG_LEVEL="INFO",
        BRIDGENET_DATA_DIR=str(data_dir),
        BRIDGENET_WEBHOOK_URL=webhook_url,
        BRIDGENET_OPCUA_URL=f"opc.tcp://127.0.0.1:{free_port()}",
    )
    if candidate is not None:
        env["BRIDGENET_SHADOW"] = json.dumps({model.name: str(candidate)})
    return env


@pytest.fixture(scope="module")
def live_service(live_model: LiveModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """`python -m service` on a free loopback port, yielded once /readyz answers 200."""
    folder = tmp_path_factory.mktemp("service")
    log_path = folder / "service.log"
    port = free_port()
    candidate = folder / "candidate" / live_model.name  # a copy of the model shadows it
    shutil.copytree(
        live_model.models_dir / live_model.name, candidate, ignore=shutil.ignore_patterns("sample", "history")
    )
    webhook = WebhookReceiver()  # a real HTTP receiver standing in for the line's MES
    webhook.start()
    log_file = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env=service_env(live_model, folder / "data", webhook.url, candidate), stdout=log_file,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        waited = wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200,
            process,
            log_path,
            what="/readyz 200",
            timeout_s=READY_TIMEOUT_S,
            poll_s=POLL_S,
            not_yet=(httpx.TransportError,),
        )
        log.warning("service ready on %s after %.1f s (%s)", base, waited, live_model.source)
        yield LiveService(base, port, live_model, log_path)
    finally:
        stop(process, log_file)
        webhook.stop()


def loopback_config(service_port: int, prometheus_port: int, dcgm_port: int) -> dict[str, Any]:
    """docker/prometheus.yml with its compose-network targets moved to loopback and a short scrape interval.

    The DCGM job is kept and pointed at a loopback port nothing listens on, rather than dropped: that is the
    CPU-only stack (docker-compose.cpu.yml), where the job exists and its target is down, and it shows that
    a down GPU exporter leaves the service's target and panels alone. The self-scrape job gets Prometheus's
    own port, so no stray server on :9090 can be picked up.
    """
    config: dict[str, Any] = yaml.safe_load((DOCKER_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        SERVICE_JOB: f"127.0.0.1:{service_port}",
        DCGM_JOB: f"127.0.0.1:{dcgm_port}",
        SELF_JOB: f"127.0.0.1:{prometheus_port}",
    }
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    if sorted(jobs) != sorted(targets):
        raise AssertionError(f"docker/prometheus.yml has jobs {jobs}; this test knows how to rewrite {sorted(targets)}")
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    # The rule files are named relative to docker/prometheus.yml; the copy lives elsewhere.
    config["rule_files"] = [str(DOCKER_DIR / pattern) for pattern in config.get("rule_files", [])]
    config["global"]["scrape_interval"] = TEST_SCRAPE_INTERVAL
    config["global"]["scrape_timeout"] = TEST_SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = TEST_SCRAPE_INTERVAL  # alert rules evaluated within seconds
    return config


def targets_by_job(base_url: str) -> dict[str, dict[str, Any]]:
    """The active targets of Prometheus, one per job (each job here has one target)."""
    answer = httpx.get(f"{base_url}/api/v1/targets", params={"state": "active"}, timeout=5.0).json()
    return {t["labels"]["job"]: t for t in answer["data"]["activeTargets"]}


@pytest.fixture(scope="module")
def live_prometheus(live_service: LiveService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    """Debian's Prometheus with the repository's config (loopback targets), yielded once the service is up."""
    binary = require_tool("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    port, dcgm_port = free_port(), free_port()
    config = loopback_config(live_service.port, port, dcgm_port)
    with running_prometheus(binary, folder, config, port) as (process, base, log_path):
        waited = wait_until(
            lambda: targets_by_job(base).get(SERVICE_JOB, {}).get("health") == "up",
            process,
            log_path,
            what=f"{SERVICE_JOB} target up",
            timeout_s=PROMETHEUS_TIMEOUT_S,
            poll_s=POLL_S,
            # not listening yet, or answering before its API is up
            not_yet=(httpx.TransportError, ValueError, KeyError),
        )
        log.warning("prometheus on %s scrapes the service after %.1f s", base, waited)
        yield LivePrometheus(base, config, log_path, f"127.0.0.1:{dcgm_port}")
