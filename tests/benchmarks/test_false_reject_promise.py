"""benchmarks/false_reject_promise.py on dumps of scores from known laws: what it measures, and its CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from service.lifecycle.thresholds import expit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import false_reject_promise as study  # noqa: E402


def write_dump(path: Path, good_logits: np.ndarray, defect_logits: np.ndarray, n_val: int = 12) -> Path:
    """A dump as `calibration_study.py dump` writes it (only the keys the promise study reads)."""
    defects = np.array(["good"] * (good_logits.size - n_val) + ["dent", "stain"] * (defect_logits.size // 2))
    np.savez(
        path,
        name="known law",
        val_scores=expit(good_logits[:n_val]).astype(np.float32),
        test_scores=expit(np.concatenate([good_logits[n_val:], defect_logits])).astype(np.float32),
        test_defects=defects,
    )
    return path


def test_promise_measures_the_rate_on_held_out_parts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = stats.gumbel_r(0.3, 0.1).rvs(size=2000, random_state=rng)
    # Dents (even places) far above every good part; stains (odd places) at the good parts' median.
    defective = np.where(np.arange(20) % 2 == 0, 4.0, np.median(good))
    pool = study.load_pool(write_dump(tmp_path / "d.npz", good, defective))
    assert pool.good.size == 2000 and pool.defective.size == 20
    rows = {m: study.promise(pool, m, 12, 200, 0.01, 0.95) for m in ("gumbel_tolerance", "empirical")}
    tol, emp = rows["gumbel_tolerance"], rows["empirical"]
    assert tol["held_out"] == 1988 and tol["draws"] == 200
    # A Gumbel tolerance limit on Gumbel logits keeps the 1 % target about 95 % of the time; the maximum of
    # 12 parts is exceeded by 1/13 of unseen parts on average and keeps 1 % almost never.
    assert tol["target_kept"] >= 0.9 and tol["mean_observed_frr"] < 0.01
    assert abs(emp["mean_observed_frr"] - 1 / 13) < 0.02 and emp["target_kept"] < 0.1
    assert tol["mean_detection_per_type"] == {"dent": 1.0, "stain": 0.0} and tol["mean_detection"] == 0.5


def test_cli_writes_the_table_and_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    dump = write_dump(tmp_path / "d.npz", rng.normal(0.4, 0.15, 200), np.full(4, 3.0))
    out = tmp_path / "promise.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "false_reject_promise.py"),
            str(dump),
            "--sizes",
            "10",
            "12",
            "--draws",
            "20",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| gumbel_tolerance | 12 |" in proc.stdout
    [result] = json.loads(out.read_text())
    assert [r["n"] for r in result["rows"]] == [10, 12] and result["n_good"] == 200


def test_cli_refuses_a_pool_too_small_to_hold_out_100(tmp_path: Path) -> None:
    dump = write_dump(tmp_path / "d.npz", np.linspace(0, 1, 60), np.full(2, 3.0))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "false_reject_promise.py"), str(dump)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "60 good parts; need at least 115" in proc.stderr
