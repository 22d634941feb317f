"""The Engine: loads every model at start, then runs the complete predict (see docs/DESIGN.md, "The predict path").

It knows nothing of HTTP. Domain errors raised here are mapped to status codes in `service.api.errors`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from functools import partial

import numpy as np

from service.codecs import decode_rgb, decode_xyz
from service.engine.batching import Batcher, BatchOutcome
from service.engine.binding import BoundRunner
from service.engine.errors import InferenceError, ModelLoadError, UnknownModelError
from service.engine.loading import (
    CPU,
    CUDA,
    GPU_BATCH_MAX_SIZE,
    TENSORRT,
    EngineOptions,
    LoadedModel,
    load_model,
    model_names,
    warm_up,
)
from service.engine.result import PartUpload, Prediction, PredictResult
from service.engine.stages import decode_upload, encode_anomaly_map, postprocess
from service.preprocessing import (
    PreprocessConfig,
    PreprocessedPart,
    preprocess_cloud,
    preprocess_image,
    preprocess_part,
    validate_part,
)

log = logging.getLogger(__name__)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class Engine:
    """Loads every model at start, verifies its manifest, warms it up; then predicts."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self._models: dict[str, LoadedModel] = {}
        self._batchers: dict[str, Batcher] = {}
        self._runners: dict[str, BoundRunner] = {}
        self._decoder: ThreadPoolExecutor | None = None
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def models(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def start(self) -> None:
        """Load, verify and warm up each model. Any failure stops start-up with the model named."""
        for name in model_names(self.options):
            self._models[name] = load_model(self.options, name)
        if self.options.default_model not in self._models:
            raise ModelLoadError(
                f"default model {self.options.default_model!r} is not among the loaded models {sorted(self._models)}"
            )
        self._runners = {name: r for name, m in self._models.items() if (r := self._runner(m)) is not None}
        batch_max_size = self.batch_max_size()
        for name, model in self._models.items():
            if model.manifest.precision == "fp16" and model.provider == CPU:
                log.warning("model %s is fp16 on the CPU provider, where fp32 is faster: fp16 is meant for CUDA", name)
            warm_up(model, (1, batch_max_size))  # the largest batch too
            log.info(
                "model %s ready",
                name,
                extra={
                    "provider": model.provider,
                    "version": model.manifest.version,
                    "precision": model.manifest.precision,
                    "io_binding": name in self._runners,
                },
            )
        if batch_max_size > 1:  # after every warm-up: a failed start leaves no worker thread behind
            self._batchers = {
                name: Batcher(
                    partial(self.infer, model),
                    max_size=batch_max_size,
                    wait_s=self.options.batch_wait_ms / 1e3,
                    name=name,
                )
                for name, model in self._models.items()
            }
        if self.options.decode_threads > 0:
            self._decoder = ThreadPoolExecutor(self.options.decode_threads, thread_name_prefix="decode")
        self._ready = True

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Run the parts the batchers still hold (up to `drain_timeout_s` each), then drop the sessions."""
        self._ready = False
        batchers, self._batchers = self._batchers, {}
        for batcher in batchers.values():
            batcher.close(drain_timeout_s)
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.shutdown(wait=True)
        self._runners.clear()
        self._models.clear()

    def batch_max_size(self) -> int:
        """The micro-batch size in effect: the option, or when unset 1 on the CPU and GPU_BATCH_MAX_SIZE
        when every model runs on CUDA (or TensorRT)."""
        if self.options.batch_max_size is not None:
            return self.options.batch_max_size
        on_gpu = bool(self._models) and all(m.provider in (CUDA, TENSORRT) for m in self._models.values())
        return GPU_BATCH_MAX_SIZE if on_gpu else 1

    def _runner(self, model: LoadedModel) -> BoundRunner | None:
        """IO binding for this model's session, or None for plain `session.run` (see EngineOptions.io_binding)."""
        on_gpu = model.provider in (CUDA, TENSORRT)
        if self.options.io_binding == "off" or (self.options.io_binding == "auto" and not on_gpu):
            return None
        return BoundRunner(model.session, model.manifest.image_size, "cuda" if on_gpu else "cpu")

    def get(self, name: str | None) -> LoadedModel:
        key = name or self.options.default_model
        try:
            return self._models[key]
        except KeyError:
            raise UnknownModelError(f"model {key!r} is not loaded; available: {sorted(self._models)}") from None

    def infer(self, model: LoadedModel, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`rgb`, `depth`: (B, 3, S, S) float32 → scores (B,), maps (B, S, S). The core stage only."""
        runner = self._runners.get(model.name)
        if runner is not None:
            return runner.run(rgb, depth)
        scores, maps = model.session.run(["scores", "maps"], {"rgb": rgb, "depth": depth})
        return scores, maps

    def predict_upload(self, upload: PartUpload) -> PredictResult:
        """The complete predict: decode → preprocess → infer → postprocess → encode the map. Blocking.

        Raises CodecError for an undecodable file and PreprocessingError for unusable input (both name the
        problem), UnknownModelError, InferenceError when the session run failed (batching on or off), and
        BatcherClosedError once the engine is stopping.
        """
        if self._decoder is None:
            started = time.perf_counter()
            rgb, xyz = decode_upload(upload, self.options.decode_limits)
            decode_ms = _ms_since(started)
            prediction = self.predict(rgb, xyz, model_name=upload.model)
        else:
            prediction, decode_ms = self._predict_overlapped(upload, self._decoder)
        encoding_started = time.perf_counter()
        encoded = encode_anomaly_map(prediction, upload.return_map)
        timings = {"decode": decode_ms, **prediction.timings_ms}
        timings["postprocess"] = timings.get("postprocess", 0.0) + _ms_since(encoding_started)
        return PredictResult(prediction=prediction, anomaly_map=encoded, timings_ms=timings)

    def _predict_overlapped(self, upload: PartUpload, decoder: ThreadPoolExecutor) -> tuple[Prediction, float]:
        """`predict_upload`'s decode and preprocess with the RGB decode in a pool thread while this thread
        decodes the point cloud and turns it into a depth image (OpenCV's and tifffile's decoders and the
        cloud's numpy/OpenCV work release the GIL). Same answers and the same errors, in the same order of
        precedence, as the sequential path; `decode` is this thread's decoding plus its wait for the RGB."""
        limits = self.options.decode_limits
        started = time.perf_counter()
        rgb_job = decoder.submit(decode_rgb, upload.rgb, limits, field="rgb")
        config: PreprocessConfig | None = None
        try:
            xyz = decode_xyz(upload.xyz, limits, field="xyz")
            decode_ms = _ms_since(started)
            model = self.get(upload.model)
            config = model.manifest.preprocessing
            cloud_started = time.perf_counter()
            depth_image = preprocess_cloud(xyz, config)
            cloud_ms = _ms_since(cloud_started)
        except Exception:
            rgb = rgb_job.result()  # a bad RGB file is named first, as in the sequential order
            if config is not None:  # the cloud half failed: the whole-part checks come first there
                validate_part(rgb, xyz, config)
            raise
        waited = time.perf_counter()
        rgb = rgb_job.result()
        decode_ms += _ms_since(waited)
        prediction = self._predict_prepared(
            model, rgb.shape[:2], lambda: preprocess_image(rgb, depth_image, config), cloud_ms
        )
        return prediction, decode_ms

    def predict(self, rgb: np.ndarray, xyz: np.ndarray, *, model_name: str | None = None) -> Prediction:
        """The decoded part's prediction: preprocess → infer → postprocess.

        `rgb`: (H, W, 3) uint8; `xyz`: (H, W, 3) float32, metres, 0 or NaN = no point. Raises as
        `predict_upload` does, less the codec errors.
        """
        model = self.get(model_name)
        config = model.manifest.preprocessing
        return self._predict_prepared(model, rgb.shape[:2], lambda: preprocess_part(rgb, xyz, config), 0.0)

    def _predict_prepared(
        self,
        model: LoadedModel,
        height_width: tuple[int, ...],
        prepare: Callable[[], PreprocessedPart],
        preprocess_ms: float,
    ) -> Prediction:
        """`prepare()` (the preprocessing, or what is left of it) → infer → postprocess. `preprocess_ms`: time
        already spent preprocessing before the call."""
        batcher = self._batchers.get(model.name)
        timings: dict[str, float] = {}
        # Announce the part to the batcher before preprocessing, so a batch waits for it (service.engine.batching).
        with batcher.reserve() if batcher is not None else nullcontext() as ticket:
            started = time.perf_counter()
            part = prepare()
            timings["preprocess"] = preprocess_ms + _ms_since(started)
            core = ticket.submit(part.rgb, part.depth) if ticket is not None else self._infer_one(model, part)
        timings["batch_wait"] = core.wait_ms
        timings["inference"] = core.inference_ms
        started = time.perf_counter()
        height, width = height_width[:2]
        prediction = postprocess(model, core, height, width, part.info)
        timings["postprocess"] = _ms_since(started)
        return replace(prediction, timings_ms=timings)

    def _infer_one(self, model: LoadedModel, part: PreprocessedPart) -> BatchOutcome:
        """Batching off: the part's own session run, in the request's thread."""
        started = time.perf_counter()
        try:
            scores, maps = self.infer(model, part.rgb[None], part.depth[None])
        except Exception as exc:  # ONNX Runtime raises its own types; the caller sees the engine's one
            raise InferenceError(f"model {model.name!r}: the session run failed: {exc}") from exc
        return BatchOutcome(
            float(scores[0]), maps[0], batch_size=1, first_in_batch=True, wait_ms=0.0, inference_ms=_ms_since(started)
        )
