"""How well a trained run ranks its test split, independent of any calibration: I-AUROC per defect type,
the detection at the best threshold that lets at most K good test parts through as NG (an upper bound for
every calibration rule), where on the part the good parts score highest, and optionally what a threshold
calibrated on other good parts catches.

Run from the repository root:
    python benchmarks/score_ranking.py --run RUN [--data ROOT] [--false-rejects 2] [--band-px 8]
        [--weights selected|last] [--calibrate-on ROOT/CATEGORY/SPLIT [--false-reject-rate 0.01]] [--json OUT]
The test split is read from the run's own data folder unless --data says otherwise, and scored with the
run's PyTorch model (as `python -m training evaluate --run`): its validation-selected weights, or with
`--weights last` those of its last epoch (the resumable checkpoint), to tell the epoch from the training.
`--calibrate-on` also scores a split of good parts (the line's, for example), puts the threshold there as
`calibrate` would (the default method at --false-reject-rate), and counts the test parts above it.
"Where" takes each good part's anomaly-map maximum and says whether it lies on the background, within
--band-px pixels (at the model's resolution) of the part's outline, or inside the part, from the
preprocessing's foreground mask.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.lifecycle.thresholds import DEFAULT_METHOD, estimate
from training.evaluation.metrics import image_auroc, per_defect_image_auroc


def best_detection(scores: np.ndarray, defective: np.ndarray, false_rejects: int) -> tuple[float, int]:
    """(threshold, defective parts above it) for the lowest threshold with at most `false_rejects` good
    parts above it (NG iff score > threshold, as the service decides)."""
    good = np.sort(scores[~defective])[::-1]
    if false_rejects >= len(good):
        raise ValueError(f"--false-rejects {false_rejects} needs more than {len(good)} good test parts")
    threshold = float(good[false_rejects])
    return threshold, int((scores[defective] > threshold).sum())


def peak_places(maps: np.ndarray, foreground: np.ndarray, band_px: int) -> dict[str, int]:
    """Count the maps whose maximum lies on the background, within `band_px` of the outline, or inside."""
    counts = {"background": 0, "outline": 0, "inside": 0}
    kernel = np.ones((2 * band_px + 1, 2 * band_px + 1), np.uint8)
    for m, fg in zip(maps, foreground, strict=True):
        mask = cv2.resize(fg.astype(np.uint8), m.shape[::-1], interpolation=cv2.INTER_NEAREST)
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        if cv2.erode(mask, kernel)[y, x]:
            counts["inside"] += 1
        elif cv2.dilate(mask, kernel)[y, x]:
            counts["outline"] += 1
        else:
            counts["background"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a finished training run folder")
    p.add_argument("--data", type=Path, default=None, help="data root (default: the run's)")
    p.add_argument("--false-rejects", type=int, default=2, help="good test parts allowed above the threshold")
    p.add_argument("--band-px", type=int, default=8, help="outline band half-width, pixels at the model's size")
    p.add_argument("--weights", choices=("selected", "last"), default="selected", help="which epoch's weights")
    p.add_argument("--calibrate-on", type=Path, default=None, help="a split folder of good parts: ROOT/CATEGORY/SPLIT")
    p.add_argument("--false-reject-rate", type=float, default=0.01, help="the --calibrate-on threshold's target")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)

    from training import runs
    from training.data.prepared import prepare_split
    from training.scoring.torch_model import score_with_torch

    run = runs.load_run(args.run)
    epoch = runs.load_last_epoch(args.run, run.model) if args.weights == "last" else run.report["selection"]["epoch"]
    data = args.data or Path(run.config.data)
    test = prepare_split(data, run.config.category, "test", run.config.preprocessing, progress=False)
    scores, maps = score_with_torch(run.model, test.rgb, test.depth)
    defective = test.labels
    threshold, caught = best_detection(scores, defective, args.false_rejects)
    per_type = per_defect_image_auroc(test.defects, scores)
    places = peak_places(maps[~defective], test.foreground[~defective], args.band_px)
    result = {
        "run": str(args.run),
        "image_auroc": image_auroc(defective, scores),
        "per_defect_image_auroc": per_type,
        "false_rejects_allowed": args.false_rejects,
        "good_parts": int((~defective).sum()),
        "best_threshold": threshold,
        "best_detected": caught,
        "defective_parts": int(defective.sum()),
        "good_part_peaks": places,
        "band_px": args.band_px,
        "weights": args.weights,
        "epoch": epoch,
    }
    line = ""
    if args.calibrate_on is not None:
        good = prepare_split(
            args.calibrate_on.parent.parent,
            args.calibrate_on.parent.name,
            args.calibrate_on.name,
            run.config.preprocessing,
            progress=False,
        )
        good_scores, _ = score_with_torch(run.model, good.rgb, good.depth)
        found = estimate(DEFAULT_METHOD, good_scores, args.false_reject_rate).threshold
        result["calibrated"] = {
            "on": str(args.calibrate_on),
            "parts": len(good_scores),
            "method": DEFAULT_METHOD,
            "false_reject_rate": args.false_reject_rate,
            "threshold": found,
            "good_ng": int((scores[~defective] > found).sum()),
            "detected": int((scores[defective] > found).sum()),
        }
        line = f" | {result['calibrated']['good_ng']} / {result['calibrated']['detected']} (t {found:.4f})"
    print(
        f"| run | I-AUROC | {' | '.join(per_type)} | best at ≤ {args.false_rejects} good NG "
        "| good peaks outline / inside |" + (" calibrated: good NG / detected |" if line else "")
    )
    print("|---|---|" + "---|" * len(per_type) + "---|---|" + ("---|" if line else ""))
    print(
        f"| {args.run.name} ({args.weights}, epoch {epoch}) | {result['image_auroc']:.3f} | "
        f"{' | '.join(f'{v:.3f}' for v in per_type.values())} | "
        f"{caught}/{result['defective_parts']} (t {threshold:.4f}) | {places['outline']} / {places['inside']}{line} |"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
