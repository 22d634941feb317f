"""The Engine: loads every model at start, then runs the complete predict (see docs/DESIGN.md, "The predict path").

It knows nothing of HTTP. Domain errors raised here are mapped to status codes in `service.api.errors`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from service.codecs import decode_rgb, decode_xyz
from service.engine.batching import Batcher, BatchOutcome
from service.engine.binding import BoundRunner
from service.engine.errors import InferenceError, ModelLoadError, ModelUnavailableError, UnknownModelError
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
from service.engine.result import PartUpload, Prediction, PredictResult, Rules
from service.engine.stages import decode_upload, encode_anomaly_map, postprocess
from service.manifest import MANIFEST_FILE, MODEL_FILE
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


@dataclass(frozen=True)
class ReloadReport:
    """What a reload did, by model name. `failed`: name → reason (a changed folder that failed keeps its
    previous version served; it is listed in `kept` too)."""

    loaded: list[str] = field(default_factory=list)  # new folders now served
    reloaded: list[str] = field(default_factory=list)  # changed folders, the new version now served
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Served:
    """A model as requests reach it: its session and, with micro-batching on, its batching worker."""

    model: LoadedModel
    batcher: Batcher | None
    fingerprint: tuple[int, ...]


def _fingerprint(folder: Path) -> tuple[int, ...]:
    """Changes when the model or manifest file is replaced or rewritten (modification time and size)."""
    stats = [(folder / f).stat() for f in (MODEL_FILE, MANIFEST_FILE) if (folder / f).is_file()]
    return tuple(v for st in stats for v in (st.st_mtime_ns, st.st_size))


class Engine:
    """Loads every model folder at start (a bad folder is reported and left out; the default model must
    load), warms each up; then predicts. `reload` picks up new, changed and removed folders while requests
    keep being served."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self._served: dict[str, _Served] = {}  # replaced as a whole on reload: a request sees one or the other
        self._failed: dict[str, str] = {}  # model name → why its folder is not served
        self._retiring: list[threading.Timer] = []
        self._reload_lock = threading.Lock()
        self._decoder: ThreadPoolExecutor | None = None  # the RGB decode pool (EngineOptions.decode_threads)
        self._started = False

    @property
    def ready(self) -> bool:
        """Started, the default model served, and no batching worker dead."""
        return self._started and self.options.default_model in self._served and self.failure is None

    @property
    def failure(self) -> str | None:
        """Why the engine can no longer serve (a batching worker died), or None."""
        for name, served in self._served.items():
            if served.batcher is not None and served.batcher.failure is not None:
                return f"model {name!r}: batching worker died ({served.batcher.failure})"
        return None

    @property
    def models(self) -> dict[str, LoadedModel]:
        return {name: served.model for name, served in self._served.items()}

    @property
    def unavailable(self) -> dict[str, str]:
        """Model folders that failed to load (name → reason); a kept previous version may still be served."""
        return dict(self._failed)

    def start(self) -> None:
        """Load, verify and warm up each model folder. A folder that fails is reported (log, `unavailable`)
        and the others are served; start fails only when the default model cannot be served."""
        served: dict[str, _Served] = {}
        for name in model_names(self.options):
            try:
                served[name] = self._load(name)
            except ModelLoadError as exc:
                self._failed[name] = str(exc)
                log.error("model %s is not served: %s", name, exc)
        default = self.options.default_model
        if default not in served:
            for item in served.values():
                if item.batcher is not None:
                    item.batcher.close(0.0)
            reason = self._failed.get(default, f"not among the loaded models {sorted(served)}")
            raise ModelLoadError(f"default model {default!r} cannot be served: {reason}")
        self._served = served
        if self.options.decode_threads > 0:
            self._decoder = ThreadPoolExecutor(self.options.decode_threads, thread_name_prefix="decode")
        self._started = True

    def _load(self, name: str) -> _Served:
        """One folder: load, verify, warm up, and (batching on) its worker, started after the warm-up so a
        failed load leaves no thread behind."""
        folder = self.options.models_dir / name
        fingerprint = _fingerprint(folder)
        model = load_model(self.options, name)
        if model.manifest.precision == "fp16" and model.provider == CPU:
            log.warning("model %s is fp16 on the CPU provider, where fp32 is faster: fp16 is meant for CUDA", name)
        batch_max_size = self.batch_max_size(model)
        warm_up(model, (1, batch_max_size))  # the largest batch too
        model = replace(model, runner=self._runner(model))  # after the warm-up checked the outputs
        log.info(
            "model %s ready",
            name,
            extra={
                "provider": model.provider,
                "version": model.manifest.version,
                "precision": model.manifest.precision,
                "io_binding": model.runner is not None,
            },
        )
        batcher = None
        if batch_max_size > 1:
            batcher = Batcher(
                partial(self.infer, model),
                max_size=batch_max_size,
                wait_s=self.options.batch_wait_ms / 1e3,
                name=name,
                result_timeout_s=self.options.result_timeout_s,
            )
        return _Served(model, batcher, fingerprint)

    def reload(self) -> ReloadReport:
        """Load new and changed model folders (and retry failed ones), drop removed ones; requests in flight
        finish on the version they started with (a replaced batching worker is closed only after
        `result_timeout_s`). The default model is never dropped: a reload that would leave it unserved
        changes nothing."""
        with self._reload_lock:
            report = ReloadReport()
            current = dict(self._served)
            names = model_names(self.options)
            served: dict[str, _Served] = {}
            failed: dict[str, str] = {}
            for name in names:
                old = current.get(name)
                fingerprint = _fingerprint(self.options.models_dir / name)
                if old is not None and old.fingerprint == fingerprint:
                    served[name] = old
                    report.unchanged.append(name)
                    continue
                try:
                    served[name] = self._load(name)
                    (report.reloaded if old is not None else report.loaded).append(name)
                except ModelLoadError as exc:
                    log.error("model %s: reload failed: %s", name, exc)
                    if old is not None:
                        served[name] = old
                        report.kept.append(name)
                        failed[name] = f"the changed folder failed to load; the previous version is served: {exc}"
                    else:
                        failed[name] = str(exc)
                    report.failed[name] = failed[name]
            report.removed.extend(sorted(set(current) - set(served)))
            default = self.options.default_model
            if default not in served:
                # Never drop the default model: keep what was served and say why.
                log.error("reload: the default model %r would not be served; nothing changed", default)
                for item in served.values():
                    if all(item is not c for c in current.values()) and item.batcher is not None:
                        item.batcher.close(0.0)
                failed[default] = failed.get(default, "its folder is gone; the previous version is served")
                self._failed = failed
                return replace(report, loaded=[], reloaded=[], removed=[], failed=failed)
            self._served, self._failed = served, failed
            for name, old in current.items():
                if served.get(name) is not old and old.batcher is not None:
                    self._retire(old.batcher)
            log.info("models reloaded", extra={"reload": report.__dict__})
            return report

    def _retire(self, batcher: Batcher) -> None:
        """Close a replaced worker once every request that may still hold it has had its time."""
        timer = threading.Timer(self.options.result_timeout_s, batcher.close, args=(self.options.result_timeout_s,))
        timer.daemon = True
        timer.start()
        self._retiring.append(timer)

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Run the parts the batchers still hold (up to `drain_timeout_s` each), then drop the sessions."""
        self._started = False
        served, self._served = self._served, {}
        for timer in self._retiring:
            timer.cancel()
        self._retiring.clear()
        for item in served.values():
            if item.batcher is not None:
                item.batcher.close(drain_timeout_s)
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.shutdown(wait=True)

    def batch_max_size(self, model: LoadedModel) -> int:
        """The micro-batch size in effect for `model`: the option, or when unset 1 on the CPU and
        GPU_BATCH_MAX_SIZE when its session runs on CUDA (or TensorRT)."""
        if self.options.batch_max_size is not None:
            return self.options.batch_max_size
        return GPU_BATCH_MAX_SIZE if model.provider in (CUDA, TENSORRT) else 1

    def _runner(self, model: LoadedModel) -> BoundRunner | None:
        """IO binding for this model's session, or None for plain `session.run` (see EngineOptions.io_binding)."""
        on_gpu = model.provider in (CUDA, TENSORRT)
        if self.options.io_binding == "off" or (self.options.io_binding == "auto" and not on_gpu):
            return None
        return BoundRunner(model.session, model.manifest.image_size, "cuda" if on_gpu else "cpu")

    def get(self, name: str | None) -> LoadedModel:
        return self._get(name).model

    def _get(self, name: str | None) -> _Served:
        key = name or self.options.default_model
        served = self._served.get(key)
        if served is not None:
            return served
        if key in self._failed:
            raise ModelUnavailableError(f"model {key!r} is unavailable: {self._failed[key]}")
        raise UnknownModelError(f"model {key!r} is not loaded; available: {sorted(self._served)}") from None

    def infer(self, model: LoadedModel, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`rgb`, `depth`: (B, 3, S, S) float32 → scores (B,), maps (B, S, S). The core stage only."""
        if model.runner is not None:
            return model.runner.run(rgb, depth)
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
            prediction = self.predict(rgb, xyz, model_name=upload.model, rules=upload.rules)
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
            served = self._get(upload.model)  # the model and its worker together, as one reload left them
            config = served.model.manifest.preprocessing
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
            served, xyz, lambda: preprocess_image(rgb, depth_image, config), cloud_ms, upload.rules
        )
        return prediction, decode_ms

    def predict(
        self, rgb: np.ndarray, xyz: np.ndarray, *, model_name: str | None = None, rules: Rules | None = None
    ) -> Prediction:
        """The decoded part's prediction: preprocess → infer → postprocess (with a recipe's `rules`).

        `rgb`: (H, W, 3) uint8; `xyz`: (H, W, 3) float32, metres, 0 or NaN = no point. Raises as
        `predict_upload` does, less the codec errors.
        """
        served = self._get(model_name)  # the model and its worker together, as one reload left them
        config = served.model.manifest.preprocessing
        return self._predict_prepared(served, xyz, lambda: preprocess_part(rgb, xyz, config), 0.0, rules)

    def _predict_prepared(
        self,
        served: _Served,
        xyz: np.ndarray,
        prepare: Callable[[], PreprocessedPart],
        preprocess_ms: float,
        rules: Rules | None = None,
    ) -> Prediction:
        """`prepare()` (the preprocessing, or what is left of it) → infer → postprocess with the decoded
        `xyz` and a recipe's `rules`. `preprocess_ms`: time already spent preprocessing before the call."""
        model, batcher = served.model, served.batcher
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
        prediction = postprocess(model, core, xyz, part.info, rules)
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
