"""`python -m training export`: a run → `model.onnx` (opset 18, dynamic batch) + `manifest.json`.

The graph goes from the two preprocessed inputs to the image scores and the smoothed maps at the model's
resolution, so no per-pixel model maths remains in the service. Every export is checked: ONNX Runtime must
match PyTorch within 1e-4 on real preprocessed parts saved by the run, or nothing is written.

`--precision int8|fp16` then derives the reduced-precision graph from that checked fp32 one
(training/export/precision.py) and checks it against fp32 on the run's validation parts: scores within the
precision's tolerance and identical verdicts at the calibrated threshold, or nothing is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from service.lifecycle.calibration import Calibration
from service.lifecycle.thresholds import DEFAULT_CONFIDENCE, METHODS, calibrate_scores, empirical, score_stats
from service.manifest import MODEL_FILE, Manifest, manifest_to_metadata, sha256_file, write_manifest_json
from training import runs
from training.export import precision as reduced
from training.export.onnx_scrub import portable_settings, strip_build_paths
from training.runs import Run, load_run
from training.scoring.engine import open_session, score_with_session
from training.train.splits import load_splits

log = logging.getLogger(__name__)

OPSET = 18  # torch's dynamo exporter builds opset 18; TF-style padding does not convert down to 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported graph is missing, unloadable, or disagrees with PyTorch."""


def export_onnx(model: torch.nn.Module, path: Path, image_size: int) -> None:
    """Trace `model.forward(rgb, depth) -> (scores, maps)` into an ONNX file with a dynamic batch axis."""
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # hundreds of INFO lines per export otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    model = model.eval().cpu()
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model,
        (example, example.clone()),
        dynamo=True,
        opset_version=OPSET,
        input_names=["rgb", "depth"],
        output_names=["scores", "maps"],
        dynamic_shapes={"rgb": {0: batch}, "depth": {0: batch}},
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path))


def parity_check(model: torch.nn.Module, path: Path, rgb: np.ndarray, depth: np.ndarray) -> dict[str, float]:
    """Max absolute difference of ONNX Runtime (CPU) vs PyTorch on the same inputs, at batch N and 1."""
    session = open_session(path)
    diffs = {"scores": 0.0, "maps": 0.0}
    with torch.no_grad():
        for r, d in ((rgb, depth), (rgb[:1], depth[:1])):
            ts, tm = model(torch.from_numpy(r), torch.from_numpy(d))
            os_, om = score_with_session(session, r, d, batch_size=len(r))
            diffs["scores"] = max(diffs["scores"], float(np.abs(ts.numpy() - os_).max()))
            diffs["maps"] = max(diffs["maps"], float(np.abs(tm.numpy() - om).max()))
    return diffs


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def build_manifest(
    trained: Run,
    name: str,
    version: str,
    metrics: dict[str, float] | None,
    precision: reduced.Precision = "fp32",
    precision_check: dict[str, Any] | None = None,
) -> Manifest:
    cfg = trained.config
    cal = trained.calibration
    size = cfg.image_size
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "category": cfg.category,
        "modality": cfg.modality,
        "backbone": cfg.backbone,
        "image_size": size,
        "feature_dim": runs.feature_dim(cfg),
        "inputs": {"rgb": ["batch", 3, size, size], "depth": ["batch", 3, size, size]},
        "outputs": {"scores": ["batch"], "maps": ["batch", size, size]},
        "opset": OPSET,
        "preprocessing": cfg.preprocessing.to_dict(),
        **cal.manifest_fields(),
        "metrics": metrics or {},
        "selection": json.dumps(trained.report.get("selection", {}), default=str),
        "training": portable_settings({k: v for k, v in cfg.to_dict().items() if k not in ("preprocessing",)}),
        "precision": precision,
        "precision_check": precision_check or {},
    }
    return Manifest.model_validate(data)


def export(
    run_dir: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    version: str = "1",
    metrics_file: Path | None = None,
    precision: reduced.Precision = "fp32",
    int8: reduced.Int8Options | None = None,
    tolerance: reduced.Tolerance | None = None,
) -> dict[str, Any]:
    """Export, embed the manifest, check parity; only a checked model is moved into `out_dir`.

    For fp16/int8 the fp32 graph is exported and checked against PyTorch first, then converted and checked
    against itself (`tolerance`: the precision's default from training/export/precision.py)."""
    trained = load_run(run_dir)
    samples_path = run_dir / runs.SAMPLES_FILE
    if not samples_path.is_file():
        raise ExportError(f"{samples_path} not found: the parity check needs the run's saved validation parts")
    samples = np.load(samples_path)
    rgb, depth = samples["rgb"].astype(np.float32), samples["depth"].astype(np.float32)
    metrics = None
    if metrics_file is not None:
        raw = json.loads(metrics_file.read_text())
        metrics = {k: float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        tmp_onnx = Path(tmp) / MODEL_FILE
        export_onnx(trained.model, tmp_onnx, trained.config.image_size)
        diffs = parity_check(trained.model, tmp_onnx, rgb, depth)
        if max(diffs.values()) > PARITY_TOLERANCE:
            raise ExportError(
                f"ONNX Runtime disagrees with PyTorch beyond {PARITY_TOLERANCE}: max |diff| {diffs}; nothing written"
            )
        check: dict[str, Any] = {}
        if precision != "fp32":
            reduced_onnx = Path(tmp) / f"model_{precision}.onnx"
            check, calibration = reduced_precision(trained, tmp_onnx, reduced_onnx, precision, int8, tolerance)
            trained = replace(trained, calibration=calibration)
            tmp_onnx = reduced_onnx
        manifest = build_manifest(trained, name or out_dir.name, version, metrics, precision, check)
        proto = onnx.load(str(tmp_onnx))
        del proto.metadata_props[:]  # quantisation tools may carry over or add their own
        onnx.helper.set_model_props(proto, manifest_to_metadata(manifest))
        proto = strip_build_paths(proto)  # no paths of this machine in the file (training/export/onnx_scrub.py)
        onnx.save(proto, str(tmp_onnx))
        onnx.checker.check_model(str(tmp_onnx))
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_onnx), out_dir / MODEL_FILE)
    write_manifest_json(manifest, out_dir, sha256_file(out_dir / MODEL_FILE))
    log.info("exported %s → %s (%s; parity %s)", run_dir, out_dir, precision, diffs)
    return {"out": str(out_dir), "precision": precision, "parity_max_abs_diff": diffs, "n_parity_parts": len(rgb)} | (
        {"precision_check": check} if check else {}
    )


def reduced_precision(
    trained: Run,
    fp32_onnx: Path,
    out_onnx: Path,
    precision: reduced.Precision,
    int8: reduced.Int8Options | None,
    tolerance: reduced.Tolerance | None,
) -> tuple[dict[str, Any], Calibration]:
    """Convert the checked fp32 graph; compare on the run's validation parts; raise ExportError outside tolerance.

    Returns what was done and checked (for the manifest) and the reduced model's calibration (threshold and
    score statistics recomputed on its own validation scores).

    int8 is calibrated on the run's good training parts (the train split, preprocessed by the shared
    preprocessing exactly as in training); both splits are read from the run's data folder."""
    try:
        splits = load_splits(trained.config, progress=False)
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"{precision} export needs the run's data ({trained.config.data}) for calibration and the check: {exc}"
        ) from exc
    validation = splits.validation
    if precision == "int8":
        options = int8 or reduced.Int8Options()
        chosen = sorted(set(splits.train_indices))[: options.max_calibration_parts]  # few-shot runs repeat parts
        parts = splits.train.subset(chosen)
        facts = reduced.quantise_int8(fp32_onnx, out_onnx, parts.rgb, parts.depth, options)
        facts["calibration_data"] = {
            "data": Path(trained.config.data).name,  # the folder's name only: no paths of this machine
            "category": trained.config.category,
            "split": "train (good parts)",
            "stems": [s.stem for s in parts.samples],
        }
    else:
        facts = reduced.convert_fp16(fp32_onnx, out_onnx)
    candidate = open_session(out_onnx)
    scores, maps = score_with_session(candidate, validation.rgb, validation.depth)
    good = ~validation.labels
    calibration = own_calibration(trained.calibration, scores[good], maps[good], precision)
    bound = tolerance or reduced.TOLERANCES[precision]
    compared = reduced.compare(
        open_session(fp32_onnx),
        candidate,
        validation.rgb,
        validation.depth,
        (trained.calibration.threshold, calibration.threshold),
    )
    compared["parts"] = f"validation ({splits.validation_source})"
    compared["tolerance"] = {"score": bound.score, "map_mean": bound.map_mean, "verdicts": "identical"}
    if not reduced.within(compared, bound):
        raise ExportError(f"the {precision} model disagrees with fp32 beyond its tolerance: {compared}; not written")
    return {**facts, "against_fp32": compared}, calibration


def own_calibration(run: Calibration, scores: np.ndarray, maps: np.ndarray, precision: str) -> Calibration:
    """A reduced-precision model's own threshold: the run's rule (method, target rate, confidence) on the
    model's own scores and maps of the run's good validation parts, so that its verdicts are made as the fp32
    model's are. A run calibrated before the threshold methods existed keeps its rule of then (the highest good
    score for the target rate)."""
    method = run.method
    if method not in METHODS or method == "synthetic_margin":  # synthetic_margin needs the anomalies' scores
        return run.with_threshold(empirical(scores, run.target_false_reject_rate).threshold, score_stats(scores))
    return calibrate_scores(
        scores,
        maps,
        rate=run.target_false_reject_rate,
        method=method,
        confidence=DEFAULT_CONFIDENCE if run.confidence is None else run.confidence,
        source=f"{len(scores)} good validation parts, scored by the {precision} model",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="training run folder")
    p.add_argument("--out", required=True, type=Path, help="model folder to write (models/NAME)")
    p.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    p.add_argument("--version", default="1", help="model version string")
    p.add_argument(
        "--metrics", type=Path, default=None, help="evaluate's JSON, to record in the manifest (default: no metrics)"
    )
    p.add_argument(
        "--precision",
        choices=reduced.PRECISIONS,
        default="fp32",
        help="fp32 (default); int8: static QDQ quantisation for CPUs, calibrated on the run's good training "
        "parts; fp16: for the CUDA provider. Both are checked against fp32 on the validation parts",
    )
    p.add_argument(
        "--per-tensor", action="store_true", help="int8: one weight scale per tensor instead of per output channel"
    )
    p.add_argument(
        "--quantise-head", action="store_true", help="int8: quantise the score head too (default: it stays float)"
    )
    p.add_argument(
        "--float-stem-convs",
        type=int,
        default=reduced.Int8Options.float_stem_convs,
        help="int8: the backbone's first convolutions that stay float (default: %(default)s)",
    )
    p.add_argument("--calibration-parts", type=int, default=32, help="int8: good training parts to calibrate on")
    p.add_argument(
        "--calibration", choices=["percentile", "minmax"], default="percentile", help="int8: activation ranges"
    )


def run(args: argparse.Namespace) -> int:
    int8 = reduced.Int8Options(
        per_channel=not args.per_tensor,
        float_head=not args.quantise_head,
        float_stem_convs=args.float_stem_convs,
        max_calibration_parts=args.calibration_parts,
        calibration=args.calibration,
    )
    result = export(
        args.run,
        args.out,
        name=args.name,
        version=args.version,
        metrics_file=args.metrics,
        precision=args.precision,
        int8=int8,
    )
    print(json.dumps(result, indent=2))
    return 0
