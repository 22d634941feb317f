"""Prometheus alert rules (docker/prometheus/*.rules.yml): loaded by prometheus.yml, valid, unit-tested."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from service.metrics import Metrics
from tests.deploy.tools import DOCKER_DIR, REPO_ROOT, require_tool

RULES = DOCKER_DIR / "prometheus" / "bridgenet.rules.yml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
# Series the rules read that another process exports: Prometheus itself and the DCGM exporter.
EXTERNAL = {"up", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
EXPECTED_ALERTS = {
    "BridgeNetServiceDown",
    "BridgeNetNgRateAboveBaseline",
    "BridgeNetLatencyP99High",
    "BridgeNetCapacityRefusals",
    "BridgeNetInputRefusals",
    "BridgeNetScoreDrift",
    "BridgeNetPushBacklog",
    "BridgeNetPushDeadLetters",
    "BridgeNetGpuMemoryHigh",
    "BridgeNetModelUnavailable",
    "BridgeNetStuckPrediction",
    "BridgeNetInvalidModelOutput",
    "BridgeNetModelDrifting",
    "BridgeNetPlcResultsWaiting",
}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_config_loads_the_rule_files() -> None:
    config = yaml.safe_load((DOCKER_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    loaded = {path for pattern in config["rule_files"] for path in DOCKER_DIR.glob(pattern)}
    assert RULES in loaded


def test_every_alert_is_unit_tested_and_has_severity_and_text() -> None:
    names = {rule["alert"] for rule in rules()}
    assert names == EXPECTED_ALERTS
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text(encoding="utf-8")))
    assert tested == names, f"alerts without a promtool test: {names - tested}"
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    bare = re.sub(r"\{[^}]*\}|\[[^]]*\]|\b(?:by|on|without|ignoring)\s*\([^)]*\)", " ", expr)
    names = set(re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", bare))
    return names - {"and", "or", "unless"}


def test_rules_read_only_series_that_exist() -> None:
    """A renamed metric must not leave an alert that can never fire."""
    exported = {metric.name for metric in Metrics().registry.collect()}
    # prometheus_client names counters without _total and histograms without _bucket in collect().
    known = exported | {f"{name}_total" for name in exported} | {f"{name}_bucket" for name in exported} | EXTERNAL
    for rule in rules():
        used = series_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']} reads unknown series {used - known}"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
