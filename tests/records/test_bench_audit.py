"""benchmarks/bench_audit.py runs end to end in its tiny mode (write in-process; http on the fake model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.service.fake_model import write_fake_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_audit.py"


def run(*args: str | Path) -> dict[str, Any]:
    out = Path(str(args[args.index("--out") + 1]))
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def test_write_mode_times_audit_on_beside_off(tmp_path: Path) -> None:
    data = run("--quick", "--cache-dir", tmp_path, "--out", tmp_path / "audit.json")
    variants = data["variants"]
    assert set(variants) == {"audit off", "audit on, OK part", "audit on, NG part + evidence"}
    assert all(v["n"] == 20 and v["median_ms"] > 0 for v in variants.values())
    assert variants["audit off"]["added_median_ms"] == 0
    assert data["database_bytes_after"] > 0


def test_http_mode_runs_two_services(tmp_path: Path) -> None:
    model_dir = write_fake_model(tmp_path / "models")
    out = tmp_path / "audit_http.json"
    data = run("--mode", "http", "--quick", "--model-dir", model_dir, "--cache-dir", tmp_path, "--out", out)
    assert set(data["modes"]) == {"audit_off", "audit_on"}
    assert all(m["throughput_parts_per_s"] > 0 for m in data["modes"].values())
