"""`python -m training evaluate`: test-split metrics, a paper-style table, anomaly maps and histograms.

`--run` evaluates a training run's checkpoint with PyTorch; `--model` evaluates an exported model folder
(fp32, fp16 or int8) through the service's own engine, ONNX Runtime only: this path never imports torch,
so what is measured is what is served.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.engine import Engine
from service.lifecycle.thresholds import binomial_upper_bound
from service.preprocessing import PreprocessConfig
from training.data.prepared import PreparedSplit, prepare_split
from training.evaluation.figures import anomaly_sheet, score_histogram
from training.evaluation.formatting import fmt
from training.evaluation.metrics import f1_optimal_threshold, per_defect_image_auroc, summarize
from training.scoring.engine import open_engine, score_with_engine

if TYPE_CHECKING:  # torch-backed; imported where a run is evaluated only
    from training.runs import Run

log = logging.getLogger(__name__)


def evaluate(run: Run, test: PreparedSplit, *, batch_size: int = 8, device: str = "cpu") -> dict[str, Any]:
    """Metrics of a run's checkpoint on the test split at the model's resolution (maps and masks at S×S)."""
    from training.scoring.torch_model import score_with_torch

    scores, maps = score_with_torch(run.model, test.rgb, test.depth, batch_size=batch_size, device=device)
    calibration = run.calibration
    pixel_threshold = calibration.pixel_threshold
    result = split_metrics(
        scores,
        maps,
        test,
        float(calibration.threshold),
        calibration.method,
        None if pixel_threshold is None else float(pixel_threshold),
    )
    result = {"category": run.config.category, "run": str(run.path), **result}
    result["selection"] = run.report.get("selection", {})
    return result


def evaluate_model(engine: Engine, test: PreparedSplit, *, batch_size: int = 8) -> dict[str, Any]:
    """Metrics of the engine's default model on the test split: its session (the service's options) runs
    the same preprocessed inputs, at the threshold the service applies."""
    model = engine.get(None)
    scores, maps = score_with_engine(engine, model, test.rgb, test.depth, batch_size=batch_size)
    manifest = model.manifest
    result = split_metrics(
        scores,
        maps,
        test,
        model.threshold,
        manifest.threshold.method,
        manifest.pixel_threshold,
    )
    result = {
        "category": manifest.category,
        "model": model.name,
        "version": manifest.version,
        "precision": manifest.precision,
        "provider": model.provider,
        **result,
    }
    result["selection"] = json.loads(manifest.selection) if manifest.selection.startswith("{") else {}
    if model.review_threshold is not None:
        result["review_band"] = band_rates(scores, test.defects, model.threshold, model.review_threshold)
    return result


def split_metrics(
    scores: np.ndarray,
    maps: np.ndarray,
    test: PreparedSplit,
    threshold: float,
    method: str,
    pixel_threshold: float | None = None,
) -> dict[str, Any]:
    """The metrics JSON's common part: AUROCs, AUPRO, per-defect AUROC, the verdicts at `threshold` and,
    given a pixel threshold, the regions it draws."""
    labels = test.labels
    result: dict[str, Any] = {
        "n_test": len(test),
        "n_defective": int(labels.sum()),
        "resolution": int(maps.shape[-1]),
        **summarize(labels, scores, test.gt, maps, fpr_limit=0.3),
        "per_defect_image_auroc": per_defect_image_auroc(test.defects, scores),
    }
    f1_threshold, f1 = f1_optimal_threshold(labels, scores)
    result["threshold"] = {
        "calibrated": threshold,
        "calibration_method": method,
        **verdict_rates(scores, test.defects, threshold),
        "f1_optimal_on_test": f1_threshold,
        "f1_at_f1_optimal": f1,
        "note": "the F1-optimal threshold looks at the test split and is for information only",
    }
    if pixel_threshold is not None:
        result["pixel_threshold"] = region_rates(maps, test.gt, labels, float(pixel_threshold))
    result["_scores"], result["_maps"] = scores, maps
    return result


def verdict_rates(scores: np.ndarray, defects: list[str], threshold: float) -> dict[str, Any]:
    """Test false-reject and detection rates at `threshold` (NG iff score > threshold), with counts, the
    false-reject rate's one-sided 95 % upper bound (Clopper-Pearson) and the detection rate per defect."""
    kinds = np.asarray(defects)
    good = kinds == "good"
    flagged = np.asarray(scores) > threshold
    k, n = int(flagged[good].sum()), int(good.sum())
    return {
        "test_false_reject_rate": k / n if n else None,
        "test_false_rejects": k,
        "test_good_parts": n,
        "test_false_reject_rate_upper95": binomial_upper_bound(k, n) if n else None,
        "test_detection_rate": float(flagged[~good].mean()) if (~good).any() else None,
        "test_detections": int(flagged[~good].sum()),
        "test_defective_parts": int((~good).sum()),
        "test_detection_rate_per_defect": {
            d: float(flagged[kinds == d].mean()) for d in sorted(set(defects) - {"good"})
        },
    }


def band_rates(scores: np.ndarray, defects: list[str], threshold: float, upper: float) -> dict[str, Any]:
    """OK / REVIEW / NG on the test split with a review band (threshold, upper]: per kind of part (good,
    defective), how many the line accepts, sends to a person, rejects outright. The band's false rejects
    are the good parts above `upper`; its detection counts REVIEW and NG alike (neither is accepted)."""
    s = np.asarray(scores)
    good = np.asarray(defects) == "good"
    review = (s > threshold) & (s <= upper)
    ng = s > upper

    def counts(selected: np.ndarray) -> dict[str, int]:
        return {
            "ok": int((selected & ~review & ~ng).sum()),
            "review": int((selected & review).sum()),
            "ng": int((selected & ng).sum()),
        }

    n = len(s)
    return {
        "threshold": float(threshold),
        "upper": float(upper),
        "good": counts(good),
        "defective": counts(~good),
        "share_sent_to_review": float(review.mean()) if n else None,
        "test_false_reject_rate": float(ng[good].mean()) if good.any() else None,
        "test_false_reject_rate_upper95": binomial_upper_bound(int(ng[good].sum()), int(good.sum())),
        "test_detection_rate": float((review | ng)[~good].mean()) if (~good).any() else None,
        "test_detection_rate_without_review": float(ng[~good].mean()) if (~good).any() else None,
    }


def region_rates(maps: np.ndarray, gt: np.ndarray, labels: np.ndarray, pixel_threshold: float) -> dict[str, Any]:
    """At the calibrated pixel threshold (model resolution): how many good parts show any region, and how
    many defective parts show one touching their ground truth."""
    above = maps > pixel_threshold
    flat = above.reshape(len(maps), -1)
    on_defect = (above & gt).reshape(len(maps), -1).any(axis=1)
    return {
        "value": pixel_threshold,
        "good_parts_with_a_region": float(flat[~labels].any(axis=1).mean()) if (~labels).any() else None,
        "defective_parts_with_a_region_on_the_defect": float(on_defect[labels].mean()) if labels.any() else None,
        "defect_pixel_recall": float(above[gt].mean()) if gt.any() else None,
        "good_pixel_false_positive_rate": float(above[~labels].mean()) if (~labels).any() else None,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The paper's table layout: one column per category, one row per metric."""
    cat = result["category"]
    rows = [
        ("I-AUROC", "image_auroc"),
        ("P-AUROC", "pixel_auroc"),
        ("AUPRO@0.3", "aupro"),
        ("AUPRO@0.3 (reference variant)", "aupro_reference_variant"),
    ]
    lines = [f"| metric | {cat} |", "|---|---|"]
    lines += [f"| {label} | {fmt(result[key], '.3f')} |" for label, key in rows]
    lines += ["", "| defect | I-AUROC vs good |", "|---|---|"]
    lines += [f"| {d} | {fmt(v, '.3f')} |" for d, v in result["per_defect_image_auroc"].items()]
    sel = result.get("selection", {})
    th = result["threshold"]
    lines += [
        "",
        f"At the calibrated threshold {th['calibrated']:.4f} ({th['calibration_method']}):",
        "",
        "| verdict on the test split | rate | parts |",
        "|---|---|---|",
        f"| false rejects (good parts judged NG) | {fmt(th['test_false_reject_rate'], '.1%')} "
        f"(95 % upper bound {fmt(th.get('test_false_reject_rate_upper95'), '.1%')}) | "
        f"{th.get('test_false_rejects', '?')} of {th.get('test_good_parts', '?')} |",
        f"| detection (defective parts judged NG) | {fmt(th['test_detection_rate'], '.1%')} | "
        f"{th.get('test_detections', '?')} of {th.get('test_defective_parts', '?')} |",
    ]
    lines += [
        f"| detection: {d} | {fmt(v, '.1%')} | |" for d, v in th.get("test_detection_rate_per_defect", {}).items()
    ]
    px = result.get("pixel_threshold")
    if px:
        lines += [
            "",
            f"Pixel threshold {px['value']:.4f}: "
            f"good parts showing a region {fmt(px['good_parts_with_a_region'], '.1%')}, "
            "defective parts with a region on the defect "
            f"{fmt(px['defective_parts_with_a_region_on_the_defect'], '.1%')}, "
            f"defect-pixel recall {fmt(px['defect_pixel_recall'], '.1%')}.",
        ]
    band = result.get("review_band")
    if band:
        g, d = band["good"], band["defective"]
        lines += [
            "",
            f"With the review band ({band['threshold']:.4f}, {band['upper']:.4f}]: OK / REVIEW / NG",
            "",
            "| parts | OK | REVIEW | NG |",
            "|---|---|---|---|",
            f"| good | {g['ok']} | {g['review']} | {g['ng']} |",
            f"| defective | {d['ok']} | {d['review']} | {d['ng']} |",
            "",
            f"Sent to review: {fmt(band['share_sent_to_review'], '.1%')} of the parts; false rejects (good parts "
            f"NG) {fmt(band['test_false_reject_rate'], '.1%')}; detection (defective parts not accepted) "
            f"{fmt(band['test_detection_rate'], '.1%')}, of which NG outright "
            f"{fmt(band['test_detection_rate_without_review'], '.1%')}.",
        ]
    lines += ["", f"Model selection: {sel.get('method', '?')} (epoch {sel.get('epoch', '?')})."]
    return "\n".join(lines) + "\n"


def write_figures(
    result: dict[str, Any], test: PreparedSplit, folder: Path, preprocessing: PreprocessConfig, *, per_defect: int = 2
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    scores, maps = result["_scores"], result["_maps"]
    threshold = result["threshold"]["calibrated"]
    written = []
    seen: dict[str, int] = {}
    for i, sample in enumerate(test.samples):
        if seen.get(sample.defect, 0) >= per_defect:
            continue
        seen[sample.defect] = seen.get(sample.defect, 0) + 1
        path = folder / f"{sample.defect}_{sample.stem}.png"
        verdict = "NG" if scores[i] > threshold else "OK"
        anomaly_sheet(
            path,
            test.rgb[i],
            test.depth[i],
            maps[i],
            test.gt[i],
            preprocessing=preprocessing,
            threshold=threshold,
            title=f"{sample.defect}/{sample.stem}: score {scores[i]:.3f} → {verdict}",
        )
        written.append(str(path))
    hist = folder / "score_histogram.png"
    score_histogram(hist, scores, test.defects, threshold=threshold, title=f"{result['category']}: test scores")
    written.append(str(hist))
    return written


def _json_safe(value: Any) -> Any:
    """Strict JSON: NaN (a metric that is undefined for this data) becomes null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", type=Path, help="training run (its checkpoint, PyTorch); no default: this or --model")
    what.add_argument(
        "--model",
        type=Path,
        help="exported model folder (models/NAME), run by the service's engine, no torch; no default: this or --run",
    )
    p.add_argument("--data", default=None, help="data root (default: the run's; required with --model)")
    p.add_argument("--category", default=None, help="category (default: the run's, or the model manifest's)")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON file to write")
    p.add_argument("--device", default="cpu", help="cpu or cuda (with --model: cuda lets the engine pick CUDA)")
    p.add_argument("--batch-size", type=int, default=8, help="parts per inference batch")
    p.add_argument("--figures-per-defect", type=int, default=2, help="anomaly-map pictures per defect type")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        result, test, preprocessing = _evaluate_model_folder(args)
    else:
        result, test, preprocessing = _evaluate_run(args)
    figures = args.out.parent / f"{args.out.stem}_figures"
    result["figures"] = write_figures(result, test, figures, preprocessing, per_defect=args.figures_per_defect)
    scores = result.pop("_scores")
    result.pop("_maps")
    result["parts"] = [
        {
            "defect": s.defect,
            "stem": s.stem,
            "score": float(v),
            "is_anomalous": bool(v > result["threshold"]["calibrated"]),
        }
        for s, v in zip(test.samples, scores, strict=True)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    table = markdown_table(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


def _test_split(data: Path, category: str, preprocessing: PreprocessConfig, progress: bool) -> PreparedSplit:
    test = prepare_split(data, category, "test", preprocessing, progress=progress)
    if not test.labels.any() or test.labels.all():
        raise SystemExit(f"test split of {category} needs good and defective parts to compute AUROC")
    return test


def _evaluate_run(args: argparse.Namespace) -> tuple[dict[str, Any], PreparedSplit, PreprocessConfig]:
    from training.runs import load_run

    trained = load_run(args.run, device=args.device)
    config = trained.config
    data = Path(args.data) if args.data else Path(config.data)
    category = args.category or config.category
    test = _test_split(data, category, config.preprocessing, not args.no_progress)
    result = evaluate(trained, test, batch_size=args.batch_size, device=args.device)
    result["category"] = category
    return result, test, config.preprocessing


def _evaluate_model_folder(args: argparse.Namespace) -> tuple[dict[str, Any], PreparedSplit, PreprocessConfig]:
    if args.data is None:
        raise SystemExit("--model needs --data (a model folder does not say where its test data is)")
    folder = Path(args.model)
    with open_engine(folder, device=args.device) as engine:
        preprocessing = engine.get(None).manifest.preprocessing
        category = args.category or engine.get(None).manifest.category
        test = _test_split(Path(args.data), category, preprocessing, not args.no_progress)
        result = evaluate_model(engine, test, batch_size=args.batch_size)
    result["category"] = category
    result["model_folder"] = folder.name
    return result, test, preprocessing
