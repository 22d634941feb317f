"""`python -m training export`: a run → `model.onnx` (opset 18, dynamic batch) + `manifest.json`.

The graph goes from the two preprocessed inputs to the image scores and the smoothed maps at the model's
resolution, so no per-pixel model maths remains in the service. Every export is checked: ONNX Runtime must
match PyTorch within 1e-4 on real preprocessed parts saved by the run, or nothing is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.manifest import MODEL_FILE, Manifest, manifest_to_metadata, sha256_file, write_manifest_json
from training import runs
from training.onnx_scrub import portable_settings, strip_build_paths
from training.runs import Run, load_run
from training.thresholds import calibration_fields

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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = {"scores": 0.0, "maps": 0.0}
    with torch.no_grad():
        for r, d in ((rgb, depth), (rgb[:1], depth[:1])):
            ts, tm = model(torch.from_numpy(r), torch.from_numpy(d))
            os_, om = session.run(["scores", "maps"], {"rgb": r, "depth": d})
            diffs["scores"] = max(diffs["scores"], float(np.abs(ts.numpy() - os_).max()))
            diffs["maps"] = max(diffs["maps"], float(np.abs(tm.numpy() - om).max()))
    return diffs


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def build_manifest(trained: Run, name: str, version: str, metrics: dict[str, float] | None) -> Manifest:
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
        "threshold": {
            "value": cal["threshold"],
            "method": cal["method"],
            "target_false_reject_rate": cal["target_false_reject_rate"],
            "n_parts": cal["n_parts"],
        },
        "score_stats": cal["score_stats"],
        **calibration_fields(cal),
        "metrics": metrics or {},
        "selection": json.dumps(trained.report.get("selection", {}), default=str),
        "training": portable_settings({k: v for k, v in cfg.to_dict().items() if k not in ("preprocessing",)}),
    }
    return Manifest.model_validate(data)


def export(
    run_dir: Path, out_dir: Path, *, name: str | None = None, version: str = "1", metrics_file: Path | None = None
) -> dict[str, Any]:
    """Export, embed the manifest, check parity; only a checked model is moved into `out_dir`."""
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
    manifest = build_manifest(trained, name or out_dir.name, version, metrics)

    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        tmp_onnx = Path(tmp) / MODEL_FILE
        export_onnx(trained.model, tmp_onnx, trained.config.image_size)
        proto = onnx.load(str(tmp_onnx))
        onnx.helper.set_model_props(proto, manifest_to_metadata(manifest))
        proto = strip_build_paths(proto)  # no paths of this machine in the file (training/onnx_scrub.py)
        onnx.save(proto, str(tmp_onnx))
        onnx.checker.check_model(str(tmp_onnx))
        diffs = parity_check(trained.model, tmp_onnx, rgb, depth)
        if max(diffs.values()) > PARITY_TOLERANCE:
            raise ExportError(
                f"ONNX Runtime disagrees with PyTorch beyond {PARITY_TOLERANCE}: max |diff| {diffs}; nothing written"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_onnx), out_dir / MODEL_FILE)
    write_manifest_json(manifest, out_dir, sha256_file(out_dir / MODEL_FILE))
    log.info("exported %s → %s (parity %s)", run_dir, out_dir, diffs)
    return {"out": str(out_dir), "parity_max_abs_diff": diffs, "n_parity_parts": len(rgb)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="training run folder")
    p.add_argument("--out", required=True, type=Path, help="model folder to write (models/NAME)")
    p.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    p.add_argument("--version", default="1", help="model version string")
    p.add_argument(
        "--metrics", type=Path, default=None, help="evaluate's JSON, to record in the manifest (default: no metrics)"
    )


def run(args: argparse.Namespace) -> int:
    result = export(args.run, args.out, name=args.name, version=args.version, metrics_file=args.metrics)
    print(json.dumps(result, indent=2))
    return 0
