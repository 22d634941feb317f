"""`python -m training check-data`: report what an MVTec 3D-AD style data set holds before training on it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.preprocessing import PreprocessConfig, PreprocessingError, point_cloud_to_depth
from training.data.layout import SPLITS, DatasetError, Sample, discover, load_sample
from training.evaluation.formatting import fmt

logger = logging.getLogger(__name__)

# Exit codes: the report is still printed for EXIT_PART_FAILURES, not for EXIT_BROKEN.
EXIT_OK, EXIT_PART_FAILURES, EXIT_BROKEN = 0, 1, 2
TINY_TRAIN = 20  # fewer good train parts than this rarely trains a usable discriminator
PROGRESS_MIN_PARTS = 50  # below this, a progress bar is noise
# Mean foreground outside these bounds means the plane fit or the distance unit is probably wrong.
FOREGROUND_PLAUSIBLE = (0.01, 0.9)
HIGH_MISSING = 0.5
# Valid points this far away (in cloud units) suggest millimetres while plane_distance assumes metres.
MILLIMETRE_HINT_Z = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="data root holding <category>/train, ...")
    parser.add_argument("--category", required=True, help="category folder under --data, e.g. tire")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--allow-missing-xyz",
        action="store_true",
        help="accept parts without a point cloud (RGB-only or partial data); point-cloud stats skip them",
    )
    parser.epilog = "exit status: 0 ok (warnings allowed), 1 some parts failed to load or preprocess, 2 broken"


def run(args: argparse.Namespace) -> int:
    try:
        report = check_data(args.data, args.category, require_xyz=not args.allow_missing_xyz)
    except DatasetError as exc:
        print(f"check-data: broken data set: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    if report["failures"]:
        print(f"check-data: {len(report['failures'])} part(s) failed, see 'failures'", file=sys.stderr)
        return EXIT_PART_FAILURES
    return EXIT_OK


def discover_splits(root: Path, category: str, require_xyz: bool) -> dict[str, list[Sample]]:
    """Parts per split; train and test must exist, validation may be absent (then it maps to [])."""
    out: dict[str, list[Sample]] = {}
    category_dir = Path(root) / category
    for split in SPLITS:
        if split == "validation" and category_dir.is_dir() and not (category_dir / split).is_dir():
            out[split] = []  # reported as a warning: calibration then has to hold out train parts
            continue
        out[split] = discover(root, category, split, require_xyz=require_xyz)
    return out


def check_data(
    root: Path, category: str, *, require_xyz: bool = True, config: PreprocessConfig | None = None
) -> dict[str, Any]:
    """Read every part once and summarise it as a JSON-able dict (see `format_report` for the fields).

    Raises DatasetError when the layout is broken; a part that fails to load or preprocess is listed
    under `failures` by file name instead, so that one run shows every bad part.
    """
    config = config or PreprocessConfig()
    by_split = discover_splits(Path(root), category, require_xyz)
    samples = [s for split in SPLITS for s in by_split[split]]

    sizes: Counter[tuple[int, int]] = Counter()
    plane_methods: Counter[str] = Counter()
    missing, foreground, median_z = [], [], []
    anomalous: dict[str, list[float]] = defaultdict(list)
    failures: list[dict[str, str]] = []
    no_xyz = 0
    progress = tqdm(samples, desc="check-data", unit="part", file=sys.stderr, disable=len(samples) < PROGRESS_MIN_PARTS)
    for sample in progress:
        try:
            part = load_sample(sample)
        except DatasetError as exc:
            failures.append({"file": str(sample.rgb_path), "error": str(exc)})
            continue
        sizes[(part.rgb.shape[0], part.rgb.shape[1])] += 1
        if sample.split == "test" and sample.is_anomalous:
            anomalous[sample.defect].append(float(part.gt.mean()))
        if part.xyz is None:
            no_xyz += 1
            continue
        # "No point" as documented for xyz: z == 0 or any coordinate NaN/inf. Counted here rather than
        # taken from the preprocessing so that parts it refuses (e.g. all points missing) still count.
        valid = np.isfinite(part.xyz).all(axis=2) & (part.xyz[:, :, 2] != 0)
        missing.append(1.0 - float(valid.mean()))
        if valid.any():
            median_z.append(float(np.median(np.abs(part.xyz[:, :, 2][valid]))))
        try:
            depth = point_cloud_to_depth(part.xyz, config)
        except PreprocessingError as exc:
            failures.append({"file": str(sample.xyz_path), "error": f"{type(exc).__name__}: {exc}"})
            continue
        foreground.append(float(depth.foreground_fraction))
        plane_methods[depth.plane_method] += 1

    report: dict[str, Any] = {
        "data": str(root),
        "category": category,
        "splits": {split: dict(Counter(s.defect for s in by_split[split])) for split in SPLITS},
        "parts": len(samples),
        "image_sizes": [{"height": h, "width": w, "count": n} for (h, w), n in sorted(sizes.items())],
        "parts_without_xyz": no_xyz,
        "missing_fraction": _mean(missing),
        "foreground_fraction": _mean(foreground),
        "plane_methods": dict(sorted(plane_methods.items())),
        "anomalous_pixel_fraction": {
            "mean": _mean([f for fs in anomalous.values() for f in fs]),
            "per_defect": {d: _mean(fs) for d, fs in sorted(anomalous.items())},
        },
        "failures": failures,
    }
    report["warnings"] = _warnings(report, by_split, _mean(median_z), config)
    return report


def _warnings(
    report: dict[str, Any],
    by_split: dict[str, list[Sample]],
    median_z: float | None,
    config: PreprocessConfig,
) -> list[str]:
    warnings = []
    splits = report["splits"]
    if not by_split["validation"]:
        warnings.append(
            "no validation split: threshold calibration will have to hold out train parts (fewer parts to train on)"
        )
    n_train = sum(splits["train"].values())
    if n_train < TINY_TRAIN:
        warnings.append(f"tiny train set: {n_train} part(s) (fewer than {TINY_TRAIN})")
    odd_train = sorted(d for d in splits["train"] if d != "good")
    if odd_train:
        warnings.append(f"train split holds defect types {odd_train}; training expects only 'good' parts")
    test = splits["test"]
    if "good" not in test or len(test) < 2:
        warnings.append("test split lacks good or defective parts: I-AUROC is undefined on it")
    if len(report["image_sizes"]) > 1:
        seen = ", ".join(f"{s['height']}×{s['width']}" for s in report["image_sizes"])
        warnings.append(f"mixed image sizes (H×W): {seen}")
    if report["parts_without_xyz"]:
        warnings.append(f"{report['parts_without_xyz']} part(s) have no point cloud: depth stats skip them")
    fg, miss = report["foreground_fraction"], report["missing_fraction"]
    if fg is not None and not FOREGROUND_PLAUSIBLE[0] <= fg <= FOREGROUND_PLAUSIBLE[1]:
        warnings.append(
            f"mean foreground fraction {fg:.3f} is outside {FOREGROUND_PLAUSIBLE}: check the background "
            f"plane and the distance unit (plane_distance {config.plane_distance})"
        )
    if median_z is not None and median_z > MILLIMETRE_HINT_Z:
        warnings.append(
            f"median |z| of valid points is {median_z:.1f}: the clouds look like millimetres, but "
            f"plane_distance {config.plane_distance} assumes metres"
        )
    if miss is not None and miss > HIGH_MISSING:
        warnings.append(f"on average {miss:.0%} of the points are missing")
    if report["failures"]:
        warnings.append(f"{len(report['failures'])} part(s) failed to load or preprocess (see failures)")
    return warnings


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of a `check_data` report."""
    lines = [f"data set {report['data']}, category {report['category']}: {report['parts']} part(s)", ""]
    defects = sorted({d for counts in report["splits"].values() for d in counts})
    width = max([len(d) for d in defects] + [len("defect")])
    lines.append(f"{'defect':<{width}} " + " ".join(f"{s:>10}" for s in SPLITS))
    for d in defects:
        lines.append(f"{d:<{width}} " + " ".join(f"{report['splits'][s].get(d, 0):>10}" for s in SPLITS))
    totals = " ".join(f"{sum(report['splits'][s].values()):>10}" for s in SPLITS)
    lines += [f"{'total':<{width}} {totals}", ""]
    sizes = ", ".join(f"{s['height']}×{s['width']} ({s['count']})" for s in report["image_sizes"])
    methods = ", ".join(f"{m} ({n})" for m, n in report["plane_methods"].items())
    anomalous = report["anomalous_pixel_fraction"]
    per_defect = ", ".join(f"{d} {fmt(f)}" for d, f in anomalous["per_defect"].items())
    lines += [
        f"image sizes (H×W):         {sizes or 'n/a'}",
        f"missing points (mean):     {fmt(report['missing_fraction'])}",
        f"foreground (mean):         {fmt(report['foreground_fraction'])}",
        f"plane fit methods:         {methods or 'n/a'}",
        f"anomalous pixels (test):   {fmt(anomalous['mean'])}" + (f"  [{per_defect}]" if per_defect else ""),
    ]
    for failure in report["failures"]:
        lines.append(f"FAILED {failure['file']}: {failure['error']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
