"""Score parts with an exported model folder: ONNX Runtime + `service.preprocessing`, no torch.

`training calibrate` and the calibration measurements go through `score_part` only, so the scoring can be
repointed at the service's engine in one place once that exposes the same (score, map) per part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.manifest import MODEL_FILE, Manifest, ManifestError, load_model_dir
from service.preprocessing import PreprocessConfig, preprocess_part


class ModelOutputError(ValueError):
    """The model returned a non-finite score or map, or outputs of an unexpected shape."""


@dataclass(frozen=True)
class ExportedModel:
    """A verified model folder (`model.onnx` + `manifest.json`) with its ONNX Runtime session."""

    folder: Path
    manifest: Manifest
    session: ort.InferenceSession
    preprocessing: PreprocessConfig


def load_exported(folder: Path | str, *, threads: int = 0) -> ExportedModel:
    """Open and verify a model folder (sha256, embedded manifest, preprocessing version).

    `threads`: ONNX Runtime intra-op threads (0: its default). Raises `service.manifest.ManifestError`.
    """
    folder = Path(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    path = folder / MODEL_FILE
    if not path.is_file():
        # load_model_dir names the missing file; it needs the session's metadata, so check first.
        load_model_dir(folder, {})
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise ManifestError(f"{path} cannot be loaded by ONNX Runtime: {exc}") from exc
    manifest = load_model_dir(folder, session.get_modelmeta().custom_metadata_map)
    return ExportedModel(folder, manifest, session, manifest.preprocessing)


def run_model(model: ExportedModel, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed inputs (N, 3, S, S) float32 → scores (N,) and maps (N, S, S), both checked finite."""
    scores, maps = model.session.run(
        ["scores", "maps"],
        {"rgb": np.ascontiguousarray(rgb, np.float32), "depth": np.ascontiguousarray(depth, np.float32)},
    )
    n, size = rgb.shape[0], model.manifest.image_size
    if scores.shape != (n,) or maps.shape != (n, size, size):
        raise ModelOutputError(
            f"model outputs scores {scores.shape}, maps {maps.shape}; expected ({n},), ({n}, {size}, {size})"
        )
    if not (np.isfinite(scores).all() and np.isfinite(maps).all()):
        raise ModelOutputError("the model returned a non-finite score or map value (NaN or inf)")
    return scores.astype(np.float32), maps.astype(np.float32)


def score_part(model: ExportedModel, rgb: np.ndarray, xyz: np.ndarray) -> tuple[float, np.ndarray]:
    """One part as the service sees it: `rgb` (H, W, 3) uint8, `xyz` (H, W, 3) metres → (image score,
    anomaly map (S, S) at the model's resolution). Raises a PreprocessingError or ModelOutputError."""
    part = preprocess_part(rgb, xyz, model.preprocessing)
    scores, maps = run_model(model, part.rgb[None], part.depth[None])
    return float(scores[0]), maps[0]
