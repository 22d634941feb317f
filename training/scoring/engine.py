"""An exported model folder opened the way the service opens it: its engine (`service.engine`), no torch.

`training evaluate --model`, `training calibrate` and the calibration study score parts through here, so
what they measure and calibrate on is what the service answers: the same verified load, session options,
preprocessing and refusal of non-finite outputs (`service.engine.InvalidModelOutputError`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from service.engine import Engine, EngineOptions, InvalidModelOutputError, LoadedModel


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


def infer_batches(
    engine: Engine, model: LoadedModel, rgb: np.ndarray, depth: np.ndarray, *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed inputs (N, 3, S, S) float32 → scores (N,) and maps (N, S, S) float32, in batches of
    `batch_size` through the engine's session. A non-finite value raises InvalidModelOutputError, as the
    service refuses to answer one."""
    scores, maps = [], []
    for start in range(0, len(rgb), batch_size):
        s, m = engine.infer(model, rgb[start : start + batch_size], depth[start : start + batch_size])
        scores.append(s)
        maps.append(m)
    all_scores = np.concatenate(scores).astype(np.float32, copy=False)
    all_maps = np.concatenate(maps).astype(np.float32, copy=False)
    if not (np.isfinite(all_scores).all() and np.isfinite(all_maps).all()):
        raise InvalidModelOutputError(
            f"model {model.name!r} version {model.manifest.version}: a non-finite score or map value (NaN or inf)"
        )
    return all_scores, all_maps
