"""`python -m training calibrate`: re-calibrate an exported model on good parts from the line (no torch).

Good parts from production are the best calibration data: many more than a run's validation split, and
from the real process. The parts are scored with the exported ONNX model exactly as the service scores
them: through the service's engine (`training.scoring.engine.open_engine`, then `Engine.predict` per part: its
score and its map at the model's resolution), the image and pixel thresholds are recomputed with
`service.lifecycle.thresholds`, and the model folder gets a new version:

    models/NAME/model.onnx, manifest.json        the new version (manifest embedded again: new sha256)
    models/NAME/history/<old version>/...        the previous model.onnx + manifest.json, unchanged

The manifest's `history` lists every earlier version (oldest first). The new files are written and
verified in a temporary folder beside them, then moved into place; nothing changes on any error
(`service.lifecycle.writing`, shared with the service's commissioning from recorded parts).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.engine import Engine, EngineError, ModelLoadError
from service.lifecycle.rate import DEFAULT as DEFAULT_FALSE_REJECT_RATE
from service.lifecycle.rate import add_false_reject_rate_argument, check_false_reject_rate, false_reject_rate_arg
from service.lifecycle.thresholds import (
    DEFAULT_CONFIDENCE,
    DEFAULT_METHOD,
    METHODS,
    REVIEW_RATE,
    CalibrationInputError,
    Method,
    calibrate_scores,
)
from service.lifecycle.writing import VersionWriteError, new_manifest, next_version, write_version
from service.preprocessing import PreprocessingError
from training.data.layout import GOOD, DatasetError, Sample, discover_folder, load_sample
from training.scoring.engine import open_engine

log = logging.getLogger(__name__)

MIN_PARTS = 3  # the fitted methods need a spread; 30+ parts are what a stable threshold wants


class CalibrateError(ValueError):
    """Arguments, folders or parts that a calibration cannot use; the message says which and why."""


def find_good_parts(folder: Path) -> list[Sample]:
    """Good parts in `folder/rgb` + `folder/xyz`, or in an MVTec-layout split (`folder/good/rgb` + `xyz`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrateError(f"--good {folder} is not a folder")
    for candidate in (folder, folder / GOOD):
        if (candidate / "rgb").is_dir():
            try:
                return discover_folder(candidate)
            except DatasetError as exc:
                raise CalibrateError(str(exc)) from exc
    raise CalibrateError(
        f"--good {folder}: expected rgb/ + xyz/ folders of good parts in it, or a split folder of the MVTec "
        f"3D-AD layout holding good/rgb/ + good/xyz/ (e.g. DATA/CATEGORY/validation)"
    )


def score_folder(engine: Engine, samples: list[Sample], *, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and maps (N, S, S) of the parts as the engine's default model answers them; any unreadable
    part, or a non-finite answer (InvalidModelOutputError), stops it, naming the file."""
    size = engine.get(None).manifest.image_size
    scores = np.empty(len(samples), np.float32)
    maps = np.empty((len(samples), size, size), np.float32)
    for i, sample in enumerate(tqdm(samples, desc="score good parts", unit="part", disable=not progress)):
        try:
            part = load_sample(sample)
            assert part.xyz is not None  # discover_folder requires the point clouds
            prediction = engine.predict(part.rgb, part.xyz)
            scores[i], maps[i] = prediction.score, prediction.model_map
        except (DatasetError, PreprocessingError, EngineError, OSError) as exc:
            raise CalibrateError(f"part {sample.rgb_path} cannot be scored: {exc}") from exc
    return scores, maps


def calibrate_model(
    model_dir: Path,
    good: Path,
    *,
    false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE,
    method: Method | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    version: str | None = None,
    min_defect_area_mm2: float | None = None,
    min_defect_length_mm: float | None = None,
    progress: bool = True,
    review_rate: float | None = REVIEW_RATE,
) -> dict[str, Any]:
    """Score the good parts, recompute both thresholds and the review band (`review_rate`: its upper edge's
    false-reject rate; None: no band), write the new version; returns a summary."""
    if not (0.5 <= confidence < 1.0):
        raise CalibrateError(f"--confidence must be in [0.5, 1), got {confidence}")
    try:
        check_false_reject_rate(false_reject_rate)
    except ValueError as exc:
        raise CalibrateError(f"--false-reject-rate: {exc}") from None
    if min_defect_area_mm2 is not None and not min_defect_area_mm2 > 0:
        raise CalibrateError(f"--min-defect-area-mm2 must be > 0, got {min_defect_area_mm2}")
    if min_defect_length_mm is not None and not min_defect_length_mm > 0:
        raise CalibrateError(f"--min-defect-length-mm must be > 0, got {min_defect_length_mm}")
    if version is not None and (not version or "/" in version or "\\" in version or version.startswith(".")):
        raise CalibrateError(f"--version {version!r} must be a plain name (it names the history folder)")
    folder = Path(model_dir)
    try:
        with open_engine(folder) as engine:
            loaded = engine.get(None)
            samples = find_good_parts(good)
            if len(samples) < MIN_PARTS:
                raise CalibrateError(f"{len(samples)} good part(s) in {good}; a calibration needs at least {MIN_PARTS}")
            scores, maps = score_folder(engine, samples, progress=progress)
    except ModelLoadError as exc:
        raise CalibrateError(f"--model {model_dir}: {exc}") from exc
    old, old_sha = loaded.manifest, loaded.onnx_sha256  # the version that scored the parts
    old_calibration = old.calibration
    previous = old_calibration.method if old_calibration is not None else None
    chosen: Method = next((m for m in METHODS if m == previous), DEFAULT_METHOD) if method is None else method
    if chosen == "synthetic_margin":
        raise CalibrateError("synthetic_margin needs a training run's synthetic anomalies; choose another --method")
    try:
        calibration = calibrate_scores(
            scores,
            maps,
            rate=false_reject_rate,
            method=chosen,
            confidence=confidence,
            source=f"{len(samples)} good parts in {good}",
            review_rate=review_rate,
        )
    except CalibrationInputError as exc:
        raise CalibrateError(str(exc)) from exc
    note = f"re-calibrated on {len(samples)} good parts ({chosen}, target false-reject rate {false_reject_rate})"
    manifest = new_manifest(
        old, old_sha, calibration, version or next_version(old), min_defect_area_mm2, note, min_defect_length_mm
    )
    try:
        archive = write_version(folder, old, manifest)
    except VersionWriteError as exc:
        raise CalibrateError(str(exc)) from exc
    old_t = old.threshold.value
    return {
        "model": str(folder),
        "version": f"{old.version} → {manifest.version}",
        "archived": str(archive),
        "n_parts": len(samples),
        "threshold": f"{old_t:.5f} → {calibration.threshold:.5f}",
        "parts_above_old_threshold": int((scores > old_t).sum()),
        "expected_false_reject_rate": calibration.expected_false_reject_rate,
        "false_reject_rate_interval": calibration.false_reject_rate_interval,
        "pixel_threshold": calibration.pixel_threshold,
        "method": chosen,
        "review_band": calibration.review_band,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="exported model folder (models/NAME)")
    p.add_argument("--good", required=True, type=Path,
                   help="good parts: rgb/ + xyz/ folders, or an MVTec-layout split folder with good/")  # fmt: skip
    add_false_reject_rate_argument(p)
    p.add_argument("--method", choices=[m for m in METHODS if m != "synthetic_margin"], default=None,
                   help="threshold method (default: the model's, else the default method)")  # fmt: skip
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                   help="one-sided confidence of the tolerance methods' bound (default: %(default)s)")  # fmt: skip
    p.add_argument("--version", default=None, help="new version string (default: the old one + 1)")
    p.add_argument(
        "--min-defect-area-mm2",
        type=float,
        default=None,
        help="also set the area rule: NG only with a region this large, mm² (default: as the manifest)",
    )
    p.add_argument(
        "--min-defect-length-mm",
        type=float,
        default=None,
        help="also set the length rule: NG only with a region this long, mm (default: as the manifest); with "
        "both rules set, a region meeting either minimum makes a part NG",
    )
    band = p.add_mutually_exclusive_group()
    band.add_argument(
        "--review-false-reject-rate",
        type=false_reject_rate_arg,
        default=REVIEW_RATE,
        help="the review band's upper edge: share of good parts rejected outright (NG), below the threshold's "
        "rate; parts between the threshold and it answer REVIEW (default: %(default)s)",
    )
    band.add_argument("--no-review-band", action="store_true", help="no review band: OK / NG only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = calibrate_model(
            args.model,
            args.good,
            false_reject_rate=args.false_reject_rate,
            method=args.method,
            confidence=args.confidence,
            version=args.version,
            min_defect_area_mm2=args.min_defect_area_mm2,
            min_defect_length_mm=args.min_defect_length_mm,
            progress=not args.no_progress,
            review_rate=None if args.no_review_band else args.review_false_reject_rate,
        )
    except CalibrateError as exc:
        log.error("calibrate: %s", exc)
        return 2
    lo, hi = summary["false_reject_rate_interval"]
    review = summary["review_band"]
    band = (
        f"review band up to {review['upper']:.5f} (NG above it: expected {review['expected_false_reject_rate']:.2%} "
        f"of good parts; REVIEW: {review['expected_review_rate']:.2%})"
        if review is not None
        else "no review band"
    )
    print(
        f"{summary['model']}: version {summary['version']}, threshold {summary['threshold']} "
        f"({summary['method']}, {summary['n_parts']} good parts, {summary['parts_above_old_threshold']} of them "
        f"above the old threshold); expected false-reject rate {summary['expected_false_reject_rate']:.2%} "
        f"(90 % interval {lo:.2%}-{hi:.2%}); pixel threshold {summary['pixel_threshold']:.5f}; {band}; "
        f"previous version kept in {summary['archived']}"
    )
    return 0
