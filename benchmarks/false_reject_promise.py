"""Does a calibration keep its false-reject promise? Resampled calibrations of a user's size, on cached scores.

Run from the repository root on the dumps of `benchmarks/calibration_study.py dump` (scores of the
validation split's good parts and of a test split with many good parts, through the service's engine):
    python benchmarks/false_reject_promise.py S.npz [S2.npz ...] [--sizes 10 12 15] [--draws 1000]
        [--methods normal_tolerance ...] [--rate 0.01] [--json OUT]
Every good part of a dump (validation + test) is one pool from the same process. Each draw calibrates a
method on `n` parts taken from the pool without replacement and measures on the pool's other good parts:
the observed false-reject rate against what the calibration promised (its expected rate, the upper end of
its 90 % interval, i.e. a one-sided 95 % bound, and the target rate), and the detection of every
defective test part at that threshold.

A benchmark script, not a `python -m training` command: it reads a dump of labelled test parts that a line
does not have, and it measures the rules rather than producing a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.lifecycle import thresholds

SIZES = (10, 12, 15)
DRAWS = 1000
UNSEEN = 100  # the yardstick: false rejects on 100 unseen good parts
FRR_LIMIT = 0.02


@dataclass(frozen=True)
class Pool:
    """The good parts' scores (N,) of one process and its defective parts' scores (M,) with their types."""

    name: str
    good: np.ndarray
    defective: np.ndarray
    defect_types: np.ndarray


def load_pool(path: Path) -> Pool:
    d = np.load(path)
    defects = d["test_defects"]
    test = d["test_scores"].astype(np.float64)
    good = np.concatenate([d["val_scores"].astype(np.float64), test[defects == "good"]])
    return Pool(str(d["name"]), good, test[defects != "good"], defects[defects != "good"])


def promise(pool: Pool, method: str, n: int, draws: int, rate: float, confidence: float, seed: int = 0
            ) -> dict[str, Any]:  # fmt: skip
    """`draws` calibrations of `n` parts each: how often the rate on the pool's other good parts (and on
    `UNSEEN` of them) exceeds what was promised, and the detection at those thresholds."""
    rng = np.random.default_rng(seed)
    observed, unseen, bound, expected, det, cut = (np.empty(draws) for _ in range(6))
    per_type = {t: np.empty(draws) for t in sorted(set(pool.defect_types))}
    for i in range(draws):
        order = rng.permutation(pool.good.size)
        est = thresholds.estimate(method, pool.good[order[:n]], rate, confidence, seed=i)  # type: ignore[arg-type]
        rest = pool.good[order[n:]]
        observed[i] = (rest > est.threshold).mean()
        unseen[i] = (rest[:UNSEEN] > est.threshold).mean()
        expected[i], bound[i] = est.expected_false_reject_rate, est.false_reject_rate_interval[1]
        cut[i] = est.threshold
        flagged = pool.defective > est.threshold
        det[i] = flagged.mean()
        for t, arr in per_type.items():
            arr[i] = flagged[pool.defect_types == t].mean()
    return {
        "method": method,
        "n": n,
        "draws": draws,
        "held_out": int(pool.good.size - n),
        "mean_threshold": float(cut.mean()),
        "mean_promised_rate": float(expected.mean()),
        "mean_promised_bound": float(bound.mean()),
        "mean_observed_frr": float(observed.mean()),
        "p95_observed_frr": float(np.quantile(observed, 0.95)),
        "bound_kept": float((observed <= bound).mean()),
        "target_kept": float((observed <= rate).mean()),
        "share_unseen_frr_above_limit": float((unseen > FRR_LIMIT).mean()),
        "mean_detection": float(det.mean()),
        "p05_detection": float(np.quantile(det, 0.05)),
        "mean_detection_per_type": {t: float(a.mean()) for t, a in per_type.items()},
    }


def _print(pool: Pool, rows: list[dict[str, Any]], rate: float) -> None:
    print(f"\n## {pool.name}: {pool.good.size} good parts, {pool.defective.size} defective\n")
    types = list(rows[0]["mean_detection_per_type"])
    print(f"| method | n | promised rate (mean) | promised bound (mean) | observed FRR mean / 95th pct | bound kept "
          f"| FRR ≤ {rate:.0%} | > {FRR_LIMIT:.0%} on {UNSEEN} unseen | detection mean (5th pct) | "
          + " | ".join(types) + " |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(types))
    for r in rows:
        print(f"| {r['method']} | {r['n']} | {r['mean_promised_rate']:.2%} | {r['mean_promised_bound']:.2%} | "
              f"{r['mean_observed_frr']:.2%} / {r['p95_observed_frr']:.2%} | {r['bound_kept']:.1%} | "
              f"{r['target_kept']:.1%} | {r['share_unseen_frr_above_limit']:.1%} | {r['mean_detection']:.1%} "
              f"({r['p05_detection']:.1%}) | "
              + " | ".join(f"{r['mean_detection_per_type'][t]:.0%}" for t in types) + " |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", type=Path, nargs="+", help="npz files of calibration_study.py dump")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="calibration sizes n")
    parser.add_argument("--draws", type=int, default=DRAWS, help="calibrations per size")
    parser.add_argument("--methods", nargs="+", default=[thresholds.DEFAULT_METHOD],
                        choices=[m for m in thresholds.METHODS if m != "synthetic_margin"])  # fmt: skip
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--confidence", type=float, default=thresholds.DEFAULT_CONFIDENCE)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for path in args.dumps:
        pool = load_pool(path)
        if pool.good.size < max(args.sizes) + UNSEEN:
            parser.error(f"{path}: {pool.good.size} good parts; need at least {max(args.sizes) + UNSEEN}")
        rows = [promise(pool, m, n, args.draws, args.rate, args.confidence) for m in args.methods
                for n in args.sizes]  # fmt: skip
        _print(pool, rows, args.rate)
        results.append({"name": pool.name, "n_good": int(pool.good.size), "rows": rows})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
