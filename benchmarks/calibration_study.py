"""Calibration methods compared on unseen parts: false-reject and detection rates at each threshold.

Run from the repository root, in two steps (scoring once, comparing offline as often as wanted):
    python benchmarks/calibration_study.py dump --model models/NAME --data ROOT --category C --out S.npz
    python benchmarks/calibration_study.py compare S.npz [S2.npz ...] [--rate 0.01] [--json OUT]
`dump` scores the validation split's good parts, the run's synthetic validation anomalies made from them
(same seed and generator as training) and the whole test split with the exported model, through the
service's engine (`training.scoring.engine`). `compare` calibrates every method of
`service.lifecycle.thresholds` on the validation scores only and prints, per data set, the test
false-reject rate (with its Clopper-Pearson 95 % upper bound) and the detection rate per defect type at each
threshold, then the pixel thresholds: the share of good test parts showing any region, and of defective
parts with a region touching their ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.engine import Engine
from service.lifecycle import thresholds
from training.scoring.engine import open_engine, score_with_engine


def dump(args: argparse.Namespace) -> int:
    with open_engine(args.model) as engine:
        return _dump(args, engine)


def _dump(args: argparse.Namespace, engine: Engine) -> int:
    from training.anomalies.textures import load_textures
    from training.config import TrainConfig
    from training.data.dataset import AnomalyOptions, synthetic_validation
    from training.data.prepared import prepare_split

    model = engine.get(None)
    pre = model.manifest.preprocessing
    training = model.manifest.training
    # A manifest from before `utag_depth` existed was trained with the paper's texture anomalies.
    known = {k: training[k] for k in ("modality", "alpha", "seed") if k in training}
    cfg = TrainConfig(data=str(args.data), category=args.category, utag_depth=training.get("utag_depth", "texture"),
                      **known)  # fmt: skip
    val = prepare_split(args.data, args.category, "validation", pre)
    val = val.subset([i for i, bad in enumerate(val.labels) if not bad])
    v_scores, v_maps = score_with_engine(engine, model, val.rgb, val.depth)
    syn = synthetic_validation(val, load_textures(None), AnomalyOptions.from_config(cfg))
    s_scores, _ = score_with_engine(engine, model, syn.rgb[syn.labels], syn.depth[syn.labels])
    test = prepare_split(args.data, args.category, "test", pre)
    t_scores, t_maps = score_with_engine(engine, model, test.rgb, test.depth)
    np.savez_compressed(
        args.out,
        name=f"{args.category} ({model.manifest.name})",
        val_scores=v_scores,
        val_maps=v_maps.astype(np.float16),  # half the file; the pixel thresholds need no more
        synthetic_scores=s_scores,
        test_scores=t_scores,
        test_maps=t_maps.astype(np.float16),
        test_defects=np.array(test.defects),
        test_gt=test.gt,
        test_foreground=test.foreground,
    )
    print(f"wrote {args.out}: {len(v_scores)} validation, {len(s_scores)} synthetic, {len(t_scores)} test parts")
    return 0


RESAMPLED_LARGE = 50  # a calibration on good parts from the line: more than a validation split holds


def _rates(scores: np.ndarray, defects: np.ndarray, t: float) -> dict[str, Any]:
    good = defects == "good"
    flagged = scores > t
    k, n = int(flagged[good].sum()), int(good.sum())
    out: dict[str, Any] = {
        "threshold": float(t),
        "false_rejects": k,
        "n_good": n,
        "frr": k / n,
        "frr_upper95": thresholds.binomial_upper_bound(k, n),
        "detection": float(flagged[~good].mean()),
        "n_defective": int((~good).sum()),
    }
    out["per_defect"] = {d: float(flagged[defects == d].mean()) for d in sorted(set(defects) - {"good"})}
    return out


def _pixel_rates(maps: np.ndarray, gt: np.ndarray, defects: np.ndarray, t: float) -> dict[str, float]:
    good = defects == "good"
    above = maps.astype(np.float32) > t
    any_region = np.asarray(above.reshape(len(maps), -1).any(1))
    hit = np.asarray((above & gt).reshape(len(maps), -1).any(1))
    area = above.reshape(len(maps), -1).mean(1)
    gt_area = gt.reshape(len(maps), -1).mean(1)
    return {
        "pixel_threshold": float(t),
        "good_parts_with_region": float(any_region[good].mean()),
        "defective_parts_region_on_defect": float(hit[~good].mean()),
        "good_pixel_fpr": float(above[good].mean()),
        "defect_pixel_recall": float(above[~good][gt[~good]].mean()),
        "median_area_fraction_defective": float(np.median(area[~good])),
        "median_gt_fraction_defective": float(np.median(gt_area[~good])),
    }


def resampled(val: np.ndarray, test: np.ndarray, defects: np.ndarray, method: str, rate: float, confidence: float,
              n: int, rounds: int = 300) -> dict[str, float]:  # fmt: skip
    """Calibrate on n parts drawn from all good parts (validation + test), measure on the rest: the spread
    of what one calibration of that size does, not just the one split at hand."""
    rng = np.random.default_rng(0)
    pool = np.concatenate([val, test[defects == "good"]])
    bad = test[defects != "good"]
    frr, det = np.empty(rounds), np.empty(rounds)
    for i in range(rounds):
        order = rng.permutation(pool.size)
        t = thresholds.estimate(method, pool[order[:n]], rate, confidence, seed=i).threshold  # type: ignore[arg-type]
        frr[i], det[i] = (pool[order[n:]] > t).mean(), (bad > t).mean()
    return {
        "mean_frr": float(frr.mean()),
        "p90_frr": float(np.quantile(frr, 0.9)),
        "share_frr_above_2pct": float((frr > 0.02).mean()),
        "mean_detection": float(det.mean()),
    }


def compare_one(path: Path, rate: float, confidence: float) -> dict[str, Any]:
    d = np.load(path)
    val, syn, test = d["val_scores"], d["synthetic_scores"], d["test_scores"]
    defects = d["test_defects"]
    result: dict[str, Any] = {"name": str(d["name"]), "n_validation": int(val.size), "image": {}, "pixel": {}}
    for method in thresholds.METHODS:
        est = thresholds.estimate(method, val, rate, confidence, anomaly_scores=syn)
        result["image"][method] = {"estimate": est.to_dict(), "test": _rates(test, defects, est.threshold)}
        if method != "synthetic_margin":  # needs anomalies made from the calibration parts themselves
            result["image"][method]["resampled"] = {
                n: resampled(val, test, defects, method, rate, confidence, n) for n in (val.size, RESAMPLED_LARGE)
            }
    good = defects == "good"
    # What no calibration can beat: the threshold that rejects 2 % of the good test parts themselves.
    oracle = float(np.quantile(test[good], 0.98, method="inverted_cdf"))
    result["image"]["test oracle (2 % of test good)"] = {"estimate": None, "test": _rates(test, defects, oracle)}
    maxima = thresholds.map_maxima(d["val_maps"])
    candidates = {
        "image threshold on the map (before)": result["image"]["empirical"]["estimate"]["threshold"],
        "pooled good pixels, 0.999 quantile": thresholds.pixel_quantile(d["val_maps"], 0.999),
        "max of good maps (empirical)": thresholds.empirical(maxima, rate).threshold,
        "max of good maps, normal prediction 1 %": thresholds.normal_prediction(maxima, 0.01).threshold,
        "max of good maps, normal prediction 5 %": thresholds.normal_prediction(maxima, 0.05).threshold,
        "max of good maps, normal tolerance 1 %": thresholds.normal_tolerance(maxima, rate, confidence).threshold,
    }
    for label, t in candidates.items():
        result["pixel"][label] = _pixel_rates(d["test_maps"], d["test_gt"], defects, t)
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"\n## {result['name']} — {result['n_validation']} good validation parts\n")
    per = list(next(iter(result["image"].values()))["test"]["per_defect"])
    print("| method | threshold | expected FRR [90 % interval] | test FRR (k/n, 95 % upper) | detection | "
          + " | ".join(per) + " |")  # fmt: skip
    print("|---|---|---|---|---|" + "---|" * len(per))
    for method, r in result["image"].items():
        e, t = r["estimate"], r["test"]
        lo, hi = e["false_reject_rate_interval"] if e else (np.nan, np.nan)
        expected = e["expected_false_reject_rate"] if e else np.nan
        print(f"| {method} | {t['threshold']:.4f} | {expected:.2%} [{lo:.2%}, {hi:.2%}] | "
              f"{t['frr']:.1%} ({t['false_rejects']}/{t['n_good']}, ≤{t['frr_upper95']:.1%}) | {t['detection']:.1%} | "
              + " | ".join(f"{t['per_defect'][k]:.0%}" for k in per) + " |")  # fmt: skip
    print("\nResampled: n calibration parts drawn 300 times from all good parts, measured on the other good parts "
          "and every defective part:\n")  # fmt: skip
    print("| method | n | mean test FRR | 90th percentile FRR | calibrations with FRR > 2 % | mean detection |")
    print("|---|---|---|---|---|---|")
    for method, r in result["image"].items():
        for n, q in r.get("resampled", {}).items():
            print(f"| {method} | {n} | {q['mean_frr']:.2%} | {q['p90_frr']:.2%} | {q['share_frr_above_2pct']:.0%} | "
                  f"{q['mean_detection']:.1%} |")  # fmt: skip
    print(
        "\n| pixel threshold | value | good parts with a region | defective parts with a region on the defect "
        "| good-pixel FPR | defect-pixel recall | median area (defective) | median gt area |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, p in result["pixel"].items():
        cells = [f"{p['pixel_threshold']:.4f}", f"{p['good_parts_with_region']:.1%}",
                 f"{p['defective_parts_region_on_defect']:.1%}", f"{p['good_pixel_fpr']:.4%}",
                 f"{p['defect_pixel_recall']:.1%}", f"{p['median_area_fraction_defective']:.3%}",
                 f"{p['median_gt_fraction_defective']:.3%}"]  # fmt: skip
        print(f"| {label} | " + " | ".join(cells) + " |")


def compare(args: argparse.Namespace) -> int:
    results = [compare_one(p, args.rate, args.confidence) for p in args.dumps]
    for r in results:
        _print(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("dump", help="score validation, synthetic anomalies and test with an exported model")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="calibrate each method on validation, measure on test")
    c.add_argument("dumps", type=Path, nargs="+")
    c.add_argument("--rate", type=float, default=0.01)
    c.add_argument("--confidence", type=float, default=thresholds.DEFAULT_CONFIDENCE)
    c.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    return dump(args) if args.step == "dump" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
