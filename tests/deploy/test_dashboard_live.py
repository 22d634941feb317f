"""Every dashboard query returns data from a real Prometheus scraping a fake exporter shaped like the spec."""

from __future__ import annotations

import json
import math
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from tests.deploy.dashboard_queries import dashboard_exprs, substitute_variables
from tests.deploy.processes import free_port, running_prometheus, wait_until
from tests.deploy.tools import DASHBOARD_JSON, GRAFANA_VARIABLES, require_tool

SCRAPE_MS = 500


def fake_exporter_state() -> tuple[CollectorRegistry, Callable[[], None]]:
    """The service's metric families (names and labels from the product spec) plus DCGM's GPU gauges,
    and a `tick` that moves them as one scrape interval of traffic would.

    Label values are the assumption the dashboard makes: endpoint names contain "predict", status is
    the HTTP code, verdict is "ok" / "ng", provider is ONNX Runtime's provider name.
    """
    reg = CollectorRegistry()
    predictions = Counter("bridgenet_predictions", "", ["model", "verdict"], registry=reg)
    requests = Counter("bridgenet_requests", "", ["endpoint", "status"], registry=reg)
    rejected = Counter("bridgenet_rejected_requests", "", ["reason"], registry=reg)
    stage = Histogram("bridgenet_stage_duration_seconds", "", ["stage"], registry=reg)
    latency = Histogram("bridgenet_request_duration_seconds", "", registry=reg)
    answered = Histogram("bridgenet_prediction_duration_seconds", "", registry=reg)
    batch = Histogram("bridgenet_batch_size", "", ["model"], buckets=(1, 2, 4, 8), registry=reg)
    limits = Gauge("bridgenet_admission_limit", "", ["kind"], registry=reg)
    limits.labels("inflight").set(2)
    limits.labels("queue").set(16)
    score = Histogram("bridgenet_anomaly_score", "", ["model"], buckets=(0.5, 1, 2, 4), registry=reg)
    Gauge("bridgenet_model_info", "", ["model", "version", "provider", "backbone"], registry=reg).labels(
        "bolt", "3", "CUDAExecutionProvider", "tf_efficientnet_lite0"
    ).set(1)
    Gauge("bridgenet_inflight_requests", "", registry=reg).set(2)
    # Traceability: a webhook whose backlog holds 3 results, failing now and then; the audit write time.
    Gauge("bridgenet_push_backlog", "", ["destination"], registry=reg).labels("webhook").set(3)
    push_failures = Counter("bridgenet_push_failures", "", ["destination"], registry=reg)
    audit = Histogram("bridgenet_audit_write_seconds", "", buckets=(0.001, 0.002, 0.005), registry=reg)
    Gauge("bridgenet_archive_bytes", "", registry=reg).set(2.5e6)
    # Drift watch: bolt v3 drifting, with a 4 % implied false-reject rate; its shadow candidate disagrees now and then.
    Gauge("bridgenet_drift_status", "", ["model", "version"], registry=reg).labels("bolt", "3").set(2)
    Gauge("bridgenet_drift_implied_false_reject_rate", "", ["model", "version"], registry=reg).labels("bolt", "3").set(
        0.04
    )
    shadow = Counter("bridgenet_shadow_scored", "", ["model", "agreement"], registry=reg)
    # PLC: 3 results unacknowledged, 1 waiting behind the full buffer, an overrun now and then.
    Gauge("bridgenet_plc_unacknowledged_results", "", ["model"], registry=reg).labels("bolt").set(3)
    Gauge("bridgenet_plc_waiting_results", "", ["model"], registry=reg).labels("bolt").set(1)
    overruns = Counter("bridgenet_plc_overruns", "", ["model"], registry=reg)
    Counter("bridgenet_plc_expired", "", ["model"], registry=reg).labels("bolt")
    for name, value in (("DCGM_FI_DEV_GPU_UTIL", 40), ("DCGM_FI_DEV_FB_USED", 3000), ("DCGM_FI_DEV_FB_FREE", 138000)):
        Gauge(name, "", ["gpu"], registry=reg).labels("0").set(value)
    ProcessCollector(registry=reg)

    def tick() -> None:
        # Per scrape: 10 prediction requests, 9 answered (1 of them NG), 1 refused with 429.
        predictions.labels("bolt", "ok").inc(8)
        predictions.labels("bolt", "ng").inc(1)
        requests.labels("/v1/predict", "200").inc(9)
        requests.labels("/v1/predict", "429").inc(1)
        rejected.labels("queue_full").inc(1)
        push_failures.labels("webhook").inc(1)
        shadow.labels("bolt", "agree").inc(8)
        shadow.labels("bolt", "disagree").inc(1)
        overruns.labels("bolt").inc(1)
        latency.observe(0.001)  # the refusal: fast, and only in the all-requests histogram
        for _ in range(9):
            latency.observe(0.08)
            answered.observe(0.08)
            batch.labels("bolt").observe(1)
            audit.observe(0.0015)
            score.labels("bolt").observe(1.5)
            for name, seconds in (("decode", 0.004), ("preprocess", 0.02), ("inference", 0.05), ("postprocess", 0.006)):
                stage.labels(name).observe(seconds)

    return reg, tick


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    """A /metrics endpoint whose counters and histograms move at every scrape, so rate() has data."""
    reg, tick = fake_exporter_state()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            tick()
            body = generate_latest(reg)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def prometheus(exporter: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus scraping the fake exporter under the job name the dashboard filters on."""
    binary = require_tool("prometheus")
    folder: Path = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_MS}ms", "scrape_timeout": f"{SCRAPE_MS}ms"},
        "scrape_configs": [{"job_name": "bridgenet-service", "static_configs": [{"targets": [exporter]}]}],
    }
    # Ready once a quantile over rate() is a number: two scrapes with traffic between them.
    ready = "histogram_quantile(0.5, sum by (le) (rate(bridgenet_request_duration_seconds_bucket[1m])))"

    def has_rate_data(base: str) -> bool:
        result = query(base, ready)["data"]["result"]
        return bool(result) and math.isfinite(float(result[0]["value"][1]))

    with running_prometheus(binary, folder, config, free_port()) as (process, base, log_path):
        wait_until(
            lambda: has_rate_data(base),
            process,
            log_path,
            what="rate() data in Prometheus",
            timeout_s=30,
            poll_s=SCRAPE_MS / 1000,
            not_yet=(OSError,),
        )
        yield base


def test_every_dashboard_query_returns_numbers(prometheus: str) -> None:
    dashboard = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    empty = []
    for expr in dashboard_exprs(dashboard):
        answer = query(prometheus, substitute_variables(expr, GRAFANA_VARIABLES))
        assert answer["status"] == "success", (expr, answer)
        samples = [float(r["value"][1]) for r in answer["data"]["result"]]
        if not samples or not all(math.isfinite(v) for v in samples):
            empty.append((expr, samples))
    assert not empty, f"queries without a finite value: {empty}"


def test_headline_numbers_follow_the_fake_traffic(prometheus: str) -> None:
    stats = {
        p["title"]: p["targets"][0]["expr"]
        for p in json.loads(DASHBOARD_JSON.read_text())["panels"]
        if p["gridPos"]["y"] == 0
    }

    def value(title: str) -> float:
        (result,) = query(prometheus, substitute_variables(stats[title], GRAFANA_VARIABLES))["data"]["result"]
        return float(result["value"][1])

    # Per scrape the exporter answers 9 predictions (1 NG) and refuses 1 request in 10.
    assert value("NG rate") == pytest.approx(1 / 9, rel=1e-6)
    assert value("Error rate") == pytest.approx(0.1, rel=1e-6)
    assert value("Execution provider") == 1.0  # the one model runs on CUDA
    assert re.fullmatch(r"histogram_quantile\(0\.95, .*", stats["Latency p95"])
    assert 0.05 < value("Latency p95") <= 0.1  # one 80 ms observation, bucket 0.075..0.1
