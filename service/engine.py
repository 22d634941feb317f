"""The inference engine: owns the ONNX Runtime sessions, runs pre / core / post, times each stage.

It knows nothing of HTTP. Domain errors raised here are mapped to status codes in `service.api.errors`.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.batching import Batcher, BatchOutcome
from service.manifest import Manifest, ManifestError, load_model_dir
from service.postprocessing import defect_area_fraction, map_to_input_size
from service.preprocessing import PreprocessConfig, preprocess_part

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
MODEL_FILE = "model.onnx"


class EngineError(Exception):
    """Base of the engine's domain errors."""


class ModelLoadError(EngineError):
    """A model cannot be served: missing, corrupt, mismatched, or the required provider is absent."""


class UnknownModelError(EngineError):
    """The request names a model that is not loaded."""


@dataclass(frozen=True)
class EngineOptions:
    """What the engine needs from the service settings (kept small so tests can build one directly)."""

    models_dir: Path
    default_model: str
    models: tuple[str, ...] | None = None  # None: every sub-folder of models_dir holding a model.onnx
    require_cuda: bool = False
    providers: Literal["auto", "cpu"] = "auto"  # "cpu": never ask for CUDA, even where it is usable
    threshold_overrides: Mapping[str, float] = field(default_factory=dict)
    intra_op_threads: int | None = None
    # ONNX Runtime's pool threads busy-wait for work after a run; off, they sleep (see Settings.ort_spin_wait).
    ort_spin_wait: bool = True
    # Micro-batching (service.batching): 1 = off, every request runs its own session call.
    batch_max_size: int = 1
    batch_wait_ms: float = 0.0


@dataclass(frozen=True)
class LoadedModel:
    name: str
    manifest: Manifest
    session: ort.InferenceSession
    provider: str
    threshold: float
    threshold_source: str  # "manifest" or "override"
    preprocess_config: PreprocessConfig

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name,
            "version": m.version,
            "category": m.category,
            "modality": m.modality,
            "backbone": m.backbone,
            "image_size": m.image_size,
            "provider": self.provider,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "manifest_threshold": m.threshold.value,
            "created": str(m.created),
        }


@dataclass(frozen=True)
class Prediction:
    """One part's answer. `anomaly_map`: (H, W) float32 scores at the upload's resolution."""

    model: str
    version: str
    score: float
    threshold: float
    threshold_source: str
    is_anomalous: bool
    anomaly_map: np.ndarray
    defect_area_fraction: float
    timings_ms: dict[str, float]
    provider: str
    info: dict[str, Any]


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver library can be loaded. Without it, asking ONNX Runtime for the CUDA
    provider only produces a long error log before it falls back to the CPU."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def session_providers(require_cuda: bool, providers: Literal["auto", "cpu"] = "auto") -> list[str]:
    """Providers to ask for, CUDA first when the build and the machine both have it (and "auto" allows it)."""
    available = ort.get_available_providers()
    if providers == "auto" and CUDA in available and cuda_driver_present():
        return [CUDA, CPU]
    if require_cuda:
        raise ModelLoadError(
            "BRIDGENET_REQUIRE_CUDA is set but CUDA is not usable here: "
            f"onnxruntime providers {available}, NVIDIA driver {'found' if cuda_driver_present() else 'not found'}"
        )
    return [CPU]


class Engine:
    """Loads every model at start, verifies its manifest, warms it up; then predicts."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self._models: dict[str, LoadedModel] = {}
        self._batchers: dict[str, Batcher] = {}
        self._ready = False
        # Called with (model name, batch size) after every session run; the app points it at its metrics.
        self.batch_observer: Callable[[str, int], None] | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def models(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def start(self) -> None:
        """Load, verify and warm up each model. Any failure stops start-up with the model named."""
        names = self._model_names()
        for name in names:
            self._models[name] = self._load(name)
        if self.options.default_model not in self._models:
            raise ModelLoadError(
                f"default model {self.options.default_model!r} is not among the loaded models {sorted(self._models)}"
            )
        for name, model in self._models.items():
            self._warm_up(model)
            log.info("model %s ready", name, extra={"provider": model.provider, "version": model.manifest.version})
        if self.options.batch_max_size > 1:  # after every warm-up: a failed start leaves no worker thread behind
            self._batchers = {
                name: Batcher(
                    partial(self.infer, model),
                    max_size=self.options.batch_max_size,
                    wait_s=self.options.batch_wait_ms / 1e3,
                    name=name,
                    on_batch=partial(self._observe_batch, name),
                )
                for name, model in self._models.items()
            }
        self._ready = True

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Run the parts the batchers still hold (up to `drain_timeout_s` each), then drop the sessions."""
        self._ready = False
        batchers, self._batchers = self._batchers, {}
        for batcher in batchers.values():
            batcher.close(drain_timeout_s)
        self._models.clear()

    def _observe_batch(self, name: str, size: int) -> None:
        if self.batch_observer is not None:
            self.batch_observer(name, size)

    def _model_names(self) -> list[str]:
        root = self.options.models_dir
        if not root.is_dir():
            raise ModelLoadError(f"models directory {root} does not exist")
        if self.options.models:
            return list(self.options.models)
        names = sorted(p.name for p in root.iterdir() if (p / MODEL_FILE).is_file())
        if not names:
            raise ModelLoadError(f"no model found in {root}: expected <name>/{MODEL_FILE} + manifest.json")
        return names

    def _load(self, name: str) -> LoadedModel:
        folder = self.options.models_dir / name
        onnx_path = folder / MODEL_FILE
        if not onnx_path.is_file():
            raise ModelLoadError(f"model {name!r}: {onnx_path} not found")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.options.intra_op_threads:
            options.intra_op_num_threads = self.options.intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.ort_spin_wait else "0")
        try:
            session = ort.InferenceSession(
                str(onnx_path), options, providers=session_providers(self.options.require_cuda, self.options.providers)
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"model {name!r}: {onnx_path} is not a loadable ONNX model: {exc}") from exc
        try:
            manifest = load_model_dir(folder, session.get_modelmeta().custom_metadata_map)
        except ManifestError as exc:
            raise ModelLoadError(f"model {name!r}: {exc}") from exc
        provider = session.get_providers()[0]
        if self.options.require_cuda and provider != CUDA:
            raise ModelLoadError(f"model {name!r}: BRIDGENET_REQUIRE_CUDA is set but the session runs on {provider}")
        self._check_io(name, session, manifest)
        threshold, source = manifest.threshold.value, "manifest"
        if name in self.options.threshold_overrides:
            threshold, source = float(self.options.threshold_overrides[name]), "override"
            log.warning(
                "threshold override for model %s: %.6f instead of the calibrated %.6f",
                name,
                threshold,
                manifest.threshold.value,
            )
        return LoadedModel(
            name=name,
            manifest=manifest,
            session=session,
            provider=provider,
            threshold=threshold,
            threshold_source=source,
            preprocess_config=PreprocessConfig.from_dict(manifest.preprocessing),
        )

    @staticmethod
    def _check_io(name: str, session: ort.InferenceSession, manifest: Manifest) -> None:
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if set(inputs) != {"rgb", "depth"} or outputs[:2] != ["scores", "maps"]:
            raise ModelLoadError(
                f"model {name!r}: graph inputs {sorted(inputs)} / outputs {outputs} are not rgb, depth → scores, maps"
            )
        size = manifest.image_size
        for input_name, shape in inputs.items():
            if list(shape[1:]) != [3, size, size]:
                raise ModelLoadError(
                    f"model {name!r}: input {input_name} has shape {shape}, manifest says [batch, 3, {size}, {size}]"
                )

    def _warm_up(self, model: LoadedModel) -> None:
        size = model.manifest.image_size
        # The largest batch too: a first run at a new shape allocates (and on CUDA, tunes) for it.
        for batch in sorted({1, self.options.batch_max_size}):
            zeros = np.zeros((batch, 3, size, size), np.float32)
            model.session.run(None, {"rgb": zeros, "depth": zeros})

    def get(self, name: str | None) -> LoadedModel:
        key = name or self.options.default_model
        try:
            return self._models[key]
        except KeyError:
            raise UnknownModelError(f"model {key!r} is not loaded; available: {sorted(self._models)}") from None

    def infer(self, model: LoadedModel, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`rgb`, `depth`: (B, 3, S, S) float32 → scores (B,), maps (B, S, S). The core stage only."""
        scores, maps = model.session.run(["scores", "maps"], {"rgb": rgb, "depth": depth})
        return scores, maps

    def predict(self, rgb: np.ndarray, xyz: np.ndarray, *, model_name: str | None = None) -> Prediction:
        """`rgb`: (H, W, 3) uint8; `xyz`: (H, W, 3) float32, metres, 0 or NaN = no point.

        `timings_ms` holds preprocess, batch_wait (0 when batching is off), inference (the whole batch's
        session time) and postprocess; `info["batch_size"]` is the number of parts in the session run.
        Raises UnknownModelError, or the preprocessing errors (PreprocessingError) for unusable input;
        with batching on, BatchError when the batch's run failed and BatcherClosedError while stopping.
        """
        model = self.get(model_name)
        batcher = self._batchers.get(model.name)
        timings: dict[str, float] = {}
        # Announce the part to the batcher before preprocessing, so a batch waits for it (service.batching).
        with batcher.reserve() if batcher is not None else nullcontext() as ticket:
            t = time.perf_counter()
            part = preprocess_part(rgb, xyz, model.preprocess_config)
            timings["preprocess"] = (time.perf_counter() - t) * 1e3
            if ticket is not None:
                core = ticket.submit(part.rgb, part.depth)
            else:
                core = self._infer_one(model, part.rgb, part.depth)
        timings["batch_wait"] = core.wait_ms
        timings["inference"] = core.inference_ms
        t = time.perf_counter()
        height, width = rgb.shape[:2]
        amap = map_to_input_size(core.anomaly_map, height, width)
        score = core.score
        area = defect_area_fraction(amap, model.threshold)
        timings["postprocess"] = (time.perf_counter() - t) * 1e3
        return Prediction(
            model=model.name,
            version=model.manifest.version,
            score=score,
            threshold=model.threshold,
            threshold_source=model.threshold_source,
            is_anomalous=score > model.threshold,
            anomaly_map=amap,
            defect_area_fraction=area,
            timings_ms=timings,
            provider=model.provider,
            info={**part.info, "batch_size": core.batch_size},
        )

    def _infer_one(self, model: LoadedModel, rgb: np.ndarray, depth: np.ndarray) -> BatchOutcome:
        """Batching off: the part's own session run, in the request's thread. `rgb`, `depth`: (3, S, S)."""
        t = time.perf_counter()
        scores, maps = self.infer(model, rgb[None], depth[None])
        inference_ms = (time.perf_counter() - t) * 1e3
        self._observe_batch(model.name, 1)
        return BatchOutcome(float(scores[0]), maps[0], batch_size=1, wait_ms=0.0, inference_ms=inference_ms)
