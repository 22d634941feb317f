"""Shared helpers for the deployment tests: repository paths and external tools that CI must provide."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
DASHBOARD_JSON = DOCKER_DIR / "grafana" / "dashboards" / "bridgenet.json"
# Values for Grafana's variables when a dashboard query runs outside Grafana.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "model": ".*"}


def in_ci() -> bool:
    """True when the CI environment variable is set to something other than an explicit "no"."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str) -> str:
    """Path of the executable `name`; skip the test when absent, but fail under CI.

    CI installs the tools with docker/ci-apt.sh: a check that silently skips there would let a broken
    compose file or Prometheus config through.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name!r} not found on PATH (install it with docker/ci-apt.sh)"
    if in_ci():
        pytest.fail(f"{message}; CI is set, so this check may not be skipped")
    pytest.skip(message)
