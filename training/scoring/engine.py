"""ONNX models scored the way the service scores them, no torch.

An exported model folder is opened by the service's own engine (`open_engine`; `evaluate --model`,
`calibrate`, the demo sample and the calibration study), so what they measure and calibrate on is what the
service answers: the same verified load, session options, preprocessing and refusal of non-finite outputs
(`service.engine.InvalidModelOutputError`). A bare graph that has no model folder yet (export's checks,
reduced precisions) gets its session from the engine's factory (`open_session`). Either way the
preprocessed arrays are scored in batches by `score_with_engine` / `score_with_session`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.engine import Engine, EngineOptions, InvalidModelOutputError, LoadedModel, create_session


@contextmanager
def open_engine(folder: Path | str, *, device: str = "cpu") -> Iterator[Engine]:
    """A started engine serving the one model folder `folder` as its default model; stopped on exit.

    `device` "cuda" asks for the CUDA provider and fails without it. Raises
    `service.engine.ModelLoadError` naming the folder and the fault (missing file, sha256, manifest...).
    """
    folder = Path(folder)
    options = EngineOptions(
        models_dir=folder.parent,
        default_model=folder.name,
        models=(folder.name,),
        providers="auto" if device == "cuda" else "cpu",
        require_cuda=device == "cuda",
        decode_threads=0,  # parts arrive decoded: no upload decode pool to start
    )
    engine = Engine(options)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def open_session(path: Path | str, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session on a bare ONNX file, made by the engine's factory (`service.engine.create_session`)."""
    return create_session(str(path), intra_op_threads=threads)


Run = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _batched(run: Run, rgb: np.ndarray, depth: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    for start in range(0, len(rgb), batch_size):
        s, m = run(rgb[start : start + batch_size], depth[start : start + batch_size])
        scores.append(s)
        maps.append(m)
    return np.concatenate(scores), np.concatenate(maps)


def score_with_session(
    session: ort.InferenceSession, rgb: np.ndarray, depth: np.ndarray, *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed inputs (N, 3, S, S) float32 → the graph's scores (N,) and maps (N, S, S), as it gives
    them, `batch_size` parts per run."""

    def run(r: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, m = session.run(["scores", "maps"], {"rgb": r, "depth": d})
        return s, m

    return _batched(run, rgb, depth, batch_size)


def score_with_engine(
    engine: Engine, model: LoadedModel, rgb: np.ndarray, depth: np.ndarray, *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed inputs (N, 3, S, S) float32 → scores (N,) and maps (N, S, S) float32, in batches of
    `batch_size` through the engine's session. A non-finite value raises InvalidModelOutputError, as the
    service refuses to answer one."""
    scores, maps = _batched(lambda r, d: engine.infer(model, r, d), rgb, depth, batch_size)
    all_scores = scores.astype(np.float32, copy=False)
    all_maps = maps.astype(np.float32, copy=False)
    if not (np.isfinite(all_scores).all() and np.isfinite(all_maps).all()):
        raise InvalidModelOutputError(
            f"model {model.name!r} version {model.manifest.version}: a non-finite score or map value (NaN or inf)"
        )
    return all_scores, all_maps
