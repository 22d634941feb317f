"""benchmarks/bench_cluster.py end to end in its smallest form: a direct service and a one-replica local Ray
instance side by side on the fake model, a table and a JSON result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.ray_head import clean_env, require_ray
from tests.deploy.tools import REPO_ROOT
from tests.service.fake_model import write_fake_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_bench_cluster_quick(tmp_path: Path) -> None:
    require_ray()
    write_fake_model(tmp_path / "models")
    out = tmp_path / "cluster.json"
    env = clean_env()
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_cluster.py", "--quick", "--model-dir", str(tmp_path / "models" / "fake"),
         "--replicas", "1", "--num-cpus", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Ray Serve's added median latency" in result.stdout
    data = json.loads(out.read_text())
    direct, ray = data["latency"]["direct"][0], data["latency"]["ray_serve"][0]
    assert direct["answered"] > 0 and ray["answered"] > 0 and not direct["refused"] and not ray["refused"]
    assert data["added_median_ms"]["1"] == pytest.approx(
        ray["latency"]["median_ms"] - direct["latency"]["median_ms"], abs=1e-3
    )
    assert [t["replicas"] for t in data["throughput_by_replicas"]] == [1]
