"""The running service exports every metric the dashboard reads, and a real Prometheus scrapes and queries it."""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.deploy.conftest import (
    DCGM_JOB,
    POLL_S,
    PROMETHEUS_TIMEOUT_S,
    SERVICE_JOB,
    LivePrometheus,
    LiveService,
    targets_by_job,
)
from tests.deploy.dashboard_queries import (
    HISTOGRAM_SUFFIXES,
    dashboard_exprs,
    dashboard_metric_names,
    promql_metric_names,
    substitute_variables,
)
from tests.deploy.processes import log_tail
from tests.deploy.tools import DASHBOARD_JSON, GRAFANA_VARIABLES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# Metrics of NVIDIA's DCGM exporter: the dashboard reads them, the service never exports them.
GPU_PREFIX = "DCGM_"
UNKNOWN_MODEL = "no-such-model"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))


# --- the service ----------------------------------------------------------------------------------------


def post_part(service: LiveService, model: str | None = None) -> httpx.Response:
    m = service.model
    files = {
        "rgb": (m.rgb.filename, m.rgb.data, m.rgb.content_type),
        "xyz": (m.xyz.filename, m.xyz.data, m.xyz.content_type),
    }
    data = {"model": model} if model else {}
    return httpx.post(f"{service.base_url}/v1/predict", files=files, data=data, timeout=30.0)


def send_traffic(service: LiveService, scored: int, refused: int) -> None:
    """`scored` predictions of the model's part, then `refused` requests for a model that is not loaded
    (404 unknown_model: an error answer and a refusal, so the error and refusal panels have series)."""
    for _ in range(scored):
        answer = post_part(service)
        assert answer.status_code == 200, f"{answer.status_code} {answer.text}\n{log_tail(service.log_path)}"
        assert answer.json()["model"]["name"] == service.model.name
    for _ in range(refused):
        answer = post_part(service, UNKNOWN_MODEL)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "unknown_model", answer.text


def scrape(service: LiveService) -> dict[str, Any]:
    """The service's /metrics as prometheus_client's parser reads it: family name → family."""
    answer = httpx.get(f"{service.base_url}/metrics", timeout=5.0)
    assert answer.status_code == 200, answer.text
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def samples(families: dict[str, Any]) -> list[Sample]:
    return [s for family in families.values() for s in family.samples]


def total(families: dict[str, Any], sample_name: str) -> float:
    return sum(s.value for s in samples(families) if s.name == sample_name)


def exported(name: str, sample_names: set[str]) -> bool:
    """`name` as the dashboard spells it (counters with `_total`, histograms by base name) has a sample."""
    return name in sample_names or any(name + suffix in sample_names for suffix in HISTOGRAM_SUFFIXES)


def test_every_dashboard_metric_is_exported(live_service: LiveService) -> None:
    send_traffic(live_service, scored=1, refused=1)
    families = scrape(live_service)
    sample_names = {s.name for s in samples(families)}

    # `up` is Prometheus's own series for the target, not the service's.
    wanted = {n for n in dashboard_metric_names(dashboard()) if not n.startswith(GPU_PREFIX) and n != "up"}
    assert {"bridgenet_predictions_total", "bridgenet_request_duration_seconds"} <= wanted  # the parse found them
    missing = sorted(n for n in wanted if not exported(n, sample_names))
    assert not missing, f"dashboard metrics without a sample on /metrics ({live_service.model.source}): {missing}"

    # What the dashboard reads as X_bucket must be a histogram (a summary has no buckets).
    bucketed = {b for expr in dashboard_exprs(dashboard()) for b in re.findall(r"\b(\w+)_bucket\b", expr)}
    assert bucketed, "the dashboard has latency quantiles; the regex found none"
    for name in bucketed:
        assert name in families and families[name].type == "histogram", (name, families.get(name))

    predictions = [s for s in families["bridgenet_predictions"].samples if s.name == "bridgenet_predictions_total"]
    assert [s.labels["model"] for s in predictions] == [live_service.model.name] * len(predictions)
    assert {s.labels["verdict"] for s in predictions} <= {"ok", "review", "ng"}
    assert sum(s.value for s in predictions) >= 1


# --- Prometheus -----------------------------------------------------------------------------------------


def query(prometheus: LivePrometheus, expr: str) -> list[dict[str, Any]]:
    """The instant vector of `expr` now; fails on a PromQL error."""
    answer = httpx.get(f"{prometheus.base_url}/api/v1/query", params={"query": expr}, timeout=5.0).json()
    assert answer["status"] == "success", (expr, answer)
    if answer["data"]["resultType"] == "scalar":
        return [{"metric": {}, "value": answer["data"]["result"]}]
    return list(answer["data"]["result"])


def wait_until(prometheus: LivePrometheus, what: str, check: Callable[[], bool]) -> None:
    """Poll `check` until it is true, for at most PROMETHEUS_TIMEOUT_S."""
    deadline = time.monotonic() + PROMETHEUS_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen after {PROMETHEUS_TIMEOUT_S:.0f} s:\n{log_tail(prometheus.log_path)}")
        time.sleep(POLL_S)


def scraped_total(prometheus: LivePrometheus, sample_name: str) -> float:
    result = query(prometheus, f"sum({sample_name})")
    return float(result[0]["value"][1]) if result else 0.0


def scraped_at_least(prometheus: LivePrometheus, sample_name: str, count: float) -> bool:
    return scraped_total(prometheus, sample_name) >= count


def wait_for_scrape(service: LiveService, prometheus: LivePrometheus) -> None:
    """Wait until Prometheus holds the service's current prediction and refusal counts."""
    families = scrape(service)
    for name in ("bridgenet_predictions_total", "bridgenet_rejected_requests_total"):
        count = total(families, name)
        wait_until(prometheus, f"{name} >= {count}", functools.partial(scraped_at_least, prometheus, name, count))


def test_prometheus_scrapes_the_service(live_service: LiveService, live_prometheus: LivePrometheus) -> None:
    target = targets_by_job(live_prometheus.base_url)[SERVICE_JOB]
    assert target["scrapeUrl"] == f"{live_service.base_url}/metrics"

    send_traffic(live_service, scored=1, refused=0)
    expected = total(scrape(live_service), "bridgenet_predictions_total")

    def scraped() -> bool:
        series = query(live_prometheus, "bridgenet_predictions_total")
        return bool(series) and sum(float(s["value"][1]) for s in series) >= expected

    wait_until(live_prometheus, f"bridgenet_predictions_total >= {expected}", scraped)
    series = query(live_prometheus, "bridgenet_predictions_total")
    for s in series:
        assert s["metric"]["model"] == live_service.model.name, s
        assert s["metric"]["job"] == SERVICE_JOB, s
        assert s["metric"]["instance"] == f"127.0.0.1:{live_service.port}", s
    target = targets_by_job(live_prometheus.base_url)[SERVICE_JOB]
    assert target["health"] == "up", target
    assert target["lastError"] == "", target


def test_every_dashboard_query_runs_on_live_data(live_service: LiveService, live_prometheus: LivePrometheus) -> None:
    # rate() needs an increase between two scrapes: one round creates the series, the next one moves them.
    for scored, refused in ((1, 1), (2, 1)):
        send_traffic(live_service, scored, refused)
        wait_for_scrape(live_service, live_prometheus)

    def dcgm_scraped() -> bool:
        return targets_by_job(live_prometheus.base_url)[DCGM_JOB]["health"] != "unknown"

    wait_until(live_prometheus, "a scrape attempt of the DCGM target", dcgm_scraped)
    dcgm = targets_by_job(live_prometheus.base_url)[DCGM_JOB]
    assert dcgm["health"] == "down", f"nothing should listen on {live_prometheus.dcgm_target}: {dcgm}"

    # The Model selector set to the served model, so the label filters are exercised, not just ".*".
    variables = {**GRAFANA_VARIABLES, "model": re.escape(live_service.model.name)}
    empty, not_finite = [], []
    for expr in dashboard_exprs(dashboard()):
        result = query(live_prometheus, substitute_variables(expr, variables))
        if any(n.startswith(GPU_PREFIX) for n in promql_metric_names(expr)):
            assert result == [], f"GPU panel has data without a DCGM exporter: {expr} → {result}"
            continue
        values = [float(r["value"][1]) for r in result]
        if not values:
            empty.append(expr)
        elif not all(math.isfinite(v) for v in values):
            not_finite.append((expr, result))
    assert not empty, f"dashboard queries without data from the live service: {empty}"
    assert not not_finite, f"dashboard queries with NaN/Inf on live data: {not_finite}"

    # Template variable label_values(bridgenet_model_info, model): the selector offers the served model.
    answer = httpx.get(
        f"{live_prometheus.base_url}/api/v1/label/model/values",
        params={"match[]": "bridgenet_model_info"},
        timeout=5.0,
    ).json()
    assert answer["data"] == [live_service.model.name], answer
    # The provider stat: the service runs with BRIDGENET_PROVIDERS=cpu, so the share of models on a GPU is 0.
    (stat,) = [p["targets"][0]["expr"] for p in dashboard()["panels"] if p.get("title") == "Execution provider"]
    (share,) = query(live_prometheus, substitute_variables(stat, variables))
    assert float(share["value"][1]) == 0.0, share


def test_prometheus_loads_the_alert_rules_and_the_service_is_not_down(
    live_service: LiveService, live_prometheus: LivePrometheus
) -> None:
    """The repository's rule files load in a real Prometheus; with the service scraped, it is not "down"."""
    answer = httpx.get(f"{live_prometheus.base_url}/api/v1/rules", timeout=5.0).json()
    rules = {r["name"]: r for g in answer["data"]["groups"] for r in g["rules"] if r["type"] == "alerting"}
    assert {"BridgeNetServiceDown", "BridgeNetScoreDrift", "BridgeNetGpuMemoryHigh"} <= set(rules)
    assert all(r["health"] in ("ok", "unknown") for r in rules.values()), {n: r["health"] for n, r in rules.items()}

    def evaluated_and_quiet() -> bool:
        down = httpx.get(f"{live_prometheus.base_url}/api/v1/rules", timeout=5.0).json()
        state = {r["name"]: r for g in down["data"]["groups"] for r in g["rules"]}["BridgeNetServiceDown"]
        return state["health"] == "ok" and state["state"] == "inactive"

    wait_until(live_prometheus, "BridgeNetServiceDown evaluated and inactive", evaluated_and_quiet)
