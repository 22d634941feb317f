"""Grafana dashboard and provisioning: datasource uid, metric names, layout, PromQL validity, generator sync."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dashboard_queries import dashboard_exprs, dashboard_metric_names, substitute_variables
from tests.deploy.tools import DASHBOARD_JSON, DOCKER_DIR, GRAFANA_VARIABLES, require_tool

GRAFANA = DOCKER_DIR / "grafana"

# What the service exports (fixed by the product spec) and the DCGM exporter's GPU series, plus two
# prometheus_client process defaults the dashboard uses. A later test compares this set with a running
# service's /metrics.
EXPECTED_METRICS = {
    "bridgenet_predictions_total",
    "bridgenet_stage_duration_seconds",
    "bridgenet_request_duration_seconds",
    "bridgenet_anomaly_score",
    "bridgenet_model_info",
    "bridgenet_inflight_requests",
    "bridgenet_rejected_requests_total",
    "bridgenet_requests_total",
    # Service health row: answered-only latency, admission limits, batch sizes, and
    # Prometheus's own `up` for the service target.
    "bridgenet_prediction_duration_seconds",
    "bridgenet_admission_limit",
    "bridgenet_batch_size",
    "up",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    # Traceability row (service.records, service.push).
    "bridgenet_push_backlog",
    "bridgenet_push_failures_total",
    "bridgenet_audit_write_seconds",
    "bridgenet_archive_bytes",
    # Drift watch row (service.lifecycle).
    "bridgenet_drift_status",
    "bridgenet_drift_implied_false_reject_rate",
    "bridgenet_shadow_scored_total",
    # PLC row (service.plc).
    "bridgenet_plc_unacknowledged_results",
    "bridgenet_plc_waiting_results",
    "bridgenet_plc_overruns_total",
    "bridgenet_plc_expired_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_queries_exactly_the_exported_metrics(dashboard: dict[str, Any]) -> None:
    names = dashboard_metric_names(dashboard)
    assert names == EXPECTED_METRICS, f"extra: {names - EXPECTED_METRICS}, missing: {EXPECTED_METRICS - names}"


def test_every_panel_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus"
    expected = {"type": "prometheus", "uid": source["uid"]}
    for panel in query_panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == expected, variable["name"]


def test_dashboard_provider_loads_the_mounted_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())["providers"][0]
    compose = yaml.safe_load((DOCKER_DIR.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD_JSON.name}"


def test_model_variable_lists_loaded_models(dashboard: dict[str, Any]) -> None:
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "model"
    assert variable["query"]["query"] == "label_values(bridgenet_model_info, model)"
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"


def test_variables_used_are_defined(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in dashboard_exprs(dashboard):
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name.startswith("__") or name in defined, f"${name} undefined in {expr}"


def test_top_row_is_thresholded_stats(dashboard: dict[str, Any]) -> None:
    top = [p for p in query_panels(dashboard) if p["gridPos"]["y"] == 0]
    assert [p["title"] for p in top] == [
        "Parts / s",
        "NG rate",
        "Latency p95",
        "Error rate",
        "Refusals / s",
        "Execution provider",
    ]
    for panel in top:
        assert panel["type"] == "stat"
        assert len(panel["fieldConfig"]["defaults"]["thresholds"]["steps"]) >= 2, panel["title"]
    latency = next(p for p in top if p["title"] == "Latency p95")
    assert latency["fieldConfig"]["defaults"]["unit"] == "s"
    assert latency["fieldConfig"]["defaults"]["thresholds"]["steps"][-1] == {"color": "red", "value": 0.1}


def test_panels_tile_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_committed_json_matches_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(GRAFANA))
    import make_dashboard

    assert make_dashboard.render_json(make_dashboard.build_dashboard()) == DASHBOARD_JSON.read_text(encoding="utf-8"), (
        "bridgenet.json differs from docker/grafana/make_dashboard.py: regenerate it"
    )


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute_variables(expr, GRAFANA_VARIABLES)}
        for i, expr in enumerate(dashboard_exprs(dashboard))
    ]
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
