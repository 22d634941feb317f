"""Model loading: the ONNX Runtime session of each model folder, its verified manifest, providers, warm-up."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.codecs import DecodeLimits
from service.engine.binding import BoundRunner
from service.engine.errors import ModelLoadError
from service.engine.onnx_scan import ProtobufError, external_tensors
from service.engine.result import ThresholdSource
from service.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, ManifestError, check_embedded, verify_model_bytes

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_BATCH_MAX_SIZE = 16  # micro-batch size when the settings leave it unset and the sessions run on CUDA


@dataclass(frozen=True)
class EngineOptions:
    """What the engine needs from the service settings (kept small so tests can build one directly)."""

    models_dir: Path
    default_model: str
    models: tuple[str, ...] | None = None  # None: every sub-folder of models_dir holding a model.onnx
    require_cuda: bool = False
    providers: Literal["auto", "cpu"] = "auto"  # "cpu": never ask for CUDA, even where it is usable
    threshold_overrides: Mapping[str, float] = field(default_factory=dict)
    # Model name → smallest region (mm²) that makes a part NG, instead of the manifest's min_defect_area_mm2.
    min_defect_area_overrides: Mapping[str, float] = field(default_factory=dict)
    # Model name → shortest region (mm) that makes a part NG, instead of the manifest's min_defect_length_mm.
    min_defect_length_overrides: Mapping[str, float] = field(default_factory=dict)
    intra_op_threads: int | None = None
    # ONNX Runtime's pool threads busy-wait for work after a run; off, they sleep (see Settings.ort_spin_wait).
    ort_spin_wait: bool = True
    # Micro-batching (service.engine.batching): 1 = off, every request runs its own session call.
    # None: 1 on the CPU, GPU_BATCH_MAX_SIZE when the sessions run on CUDA (a batch of 16 costs about
    # what one part does there; on a CPU a batch costs about its size in time).
    batch_max_size: int | None = 1
    batch_wait_ms: float = 0.0
    # Longest wait for a micro-batch's result; a replaced model's worker is closed this long after a reload.
    result_timeout_s: float = 60.0
    # What one uploaded file may hold (Engine.predict_upload decodes the uploads).
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)
    # Threads decoding RGB images while the point cloud becomes a depth image (Engine.predict_upload);
    # 0: decode and preprocess one after the other in the request's thread.
    decode_threads: int = 2
    # IO binding with outputs allocated once (service.engine.binding): "auto" on CUDA only.
    io_binding: Literal["auto", "on", "off"] = "auto"
    # Ask for ONNX Runtime's TensorRT provider ahead of CUDA; where it is missing, CUDA with a log line.
    tensorrt: bool = False


@dataclass(frozen=True)
class LoadedModel:
    name: str
    manifest: Manifest
    session: ort.InferenceSession
    provider: str
    threshold: float
    threshold_source: ThresholdSource
    onnx_sha256: str  # of the model file as read and verified at load (what the audit trail records)
    # The area rule in effect (postprocessing.verdict.decide): the override, else the manifest's; None = score rule.
    min_defect_area_mm2: float | None = None
    # The length rule in effect, likewise; with both set a region meeting either minimum makes a part NG.
    min_defect_length_mm: float | None = None
    # IO binding for the session (service.engine.binding), set by the engine after the warm-up; None: session.run.
    runner: BoundRunner | None = None

    @property
    def review_threshold(self) -> float | None:
        """The review band's upper edge (the manifest's), None without a band: OK / NG only. Above the
        threshold in effect, or the band is empty (an override at or above it leaves two outcomes)."""
        band = self.manifest.review_band
        return band.upper if band is not None and band.upper > self.threshold else None

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
            "precision": m.precision,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "manifest_threshold": m.threshold.value,
            "review_threshold": self.review_threshold,
            "created": str(m.created),
        }


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver library can be loaded. Without it, asking ONNX Runtime for the CUDA
    provider only produces a long error log before it falls back to the CPU."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def tensorrt_present() -> bool:
    """Whether TensorRT's runtime library can be loaded (the onnxruntime-gpu build lists the TensorRT
    provider whether or not TensorRT is installed; asking for it without the library fails at load)."""
    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def session_providers(
    require_cuda: bool, providers: Literal["auto", "cpu"] = "auto", *, tensorrt: bool = False
) -> list[str]:
    """Providers to ask for, CUDA first when the build and the machine both have it (and "auto" allows it);
    with `tensorrt`, TensorRT ahead of CUDA where its provider and library are both present."""
    available = ort.get_available_providers()
    if providers == "auto" and CUDA in available and cuda_driver_present():
        if tensorrt:
            if TENSORRT in available and tensorrt_present():
                return [TENSORRT, CUDA, CPU]
            log.warning(
                "TensorRT asked for but not usable here (provider %s, library %s): running on CUDA",
                "listed" if TENSORRT in available else "not in this onnxruntime build",
                "found" if tensorrt_present() else "libnvinfer not found",
            )
        return [CUDA, CPU]
    if tensorrt:
        log.warning("TensorRT asked for but CUDA is not usable here: running on %s", CPU)
    if require_cuda:
        raise ModelLoadError(
            "BRIDGENET_REQUIRE_CUDA is set but CUDA is not usable here: "
            f"onnxruntime providers {available}, NVIDIA driver {'found' if cuda_driver_present() else 'not found'}"
        )
    return [CPU]


def create_session(
    model: bytes | str,
    *,
    providers: list[str] | None = None,
    intra_op_threads: int | None = None,
    spin_wait: bool = True,
    configure: Callable[[ort.SessionOptions], None] | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session made as the engine makes its models' (all graph optimisations, the thread
    count and spinning given; `providers` default CPU). `model`: the ONNX bytes or a file path. The one
    place sessions are made: the engine's loads, and training's and the benchmarks' scoring of bare graphs
    (`configure` lets a benchmark change further options)."""
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        session_options.intra_op_num_threads = intra_op_threads
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    if configure is not None:
        configure(session_options)
    return ort.InferenceSession(model, session_options, providers=providers or [CPU])


def model_names(options: EngineOptions) -> list[str]:
    """The models to load: `options.models`, or every folder of `models_dir` holding a model file."""
    root = options.models_dir
    if not root.is_dir():
        raise ModelLoadError(f"models directory {root} does not exist")
    if options.models:
        return list(options.models)
    names = sorted(p.name for p in root.iterdir() if (p / MODEL_FILE).is_file())
    if not names:
        raise ModelLoadError(f"no model found in {root}: expected <name>/{MODEL_FILE} + {MANIFEST_FILE}")
    return names


def load_model(options: EngineOptions, name: str) -> LoadedModel:
    """Open `models_dir/<name>`'s session and verify its manifest; ModelLoadError names the model and the fault.

    The model file is read once; the SHA-256 of those bytes is checked against the manifest and the file
    is checked to be self-contained (no external data) before ONNX Runtime parses anything, and the
    session is built from the same bytes, so what runs is what was verified.
    """
    folder = options.models_dir / name
    onnx_path = folder / MODEL_FILE
    if not onnx_path.is_file():
        raise ModelLoadError(f"model {name!r}: {onnx_path} not found")
    model_bytes = onnx_path.read_bytes()
    try:
        manifest, onnx_sha256 = verify_model_bytes(folder, model_bytes)
    except ManifestError as exc:
        raise ModelLoadError(f"model {name!r}: {exc}") from exc
    try:
        external = external_tensors(model_bytes)
    except ProtobufError as exc:
        raise ModelLoadError(f"model {name!r}: {onnx_path} is not a loadable ONNX model: {exc}") from exc
    if external:
        shown = ", ".join(external[:5]) + (" …" if len(external) > 5 else "")
        raise ModelLoadError(
            f"model {name!r}: {onnx_path} keeps {len(external)} tensor(s) in external data ({shown}); "
            "only self-contained model files are served (export without external data)"
        )
    try:
        session = create_session(
            model_bytes,
            providers=session_providers(options.require_cuda, options.providers, tensorrt=options.tensorrt),
            intra_op_threads=options.intra_op_threads,
            spin_wait=options.ort_spin_wait,
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelLoadError(f"model {name!r}: {onnx_path} is not a loadable ONNX model: {exc}") from exc
    del model_bytes  # the session holds its own copy
    try:
        check_embedded(folder, manifest, session.get_modelmeta().custom_metadata_map)
    except ManifestError as exc:
        raise ModelLoadError(f"model {name!r}: {exc}") from exc
    provider = session.get_providers()[0]
    if options.require_cuda and provider not in (CUDA, TENSORRT):
        raise ModelLoadError(f"model {name!r}: BRIDGENET_REQUIRE_CUDA is set but the session runs on {provider}")
    _check_io(name, session, manifest)
    threshold: float = manifest.threshold.value
    source: ThresholdSource = "manifest"
    if name in options.threshold_overrides:
        threshold, source = float(options.threshold_overrides[name]), "override"
        log.warning(
            "threshold override for model %s: %.6f instead of the calibrated %.6f",
            name,
            threshold,
            manifest.threshold.value,
        )
    min_area = _size_rule(
        name, "min_defect_area_mm2", "mm²", manifest.min_defect_area_mm2, options.min_defect_area_overrides
    )
    min_length = _size_rule(
        name, "min_defect_length_mm", "mm", manifest.min_defect_length_mm, options.min_defect_length_overrides
    )
    if (min_area is not None or min_length is not None) and manifest.pixel_threshold is None:
        rules = " and ".join(
            f"{field} {value:g}"
            for field, value in (("min_defect_area_mm2", min_area), ("min_defect_length_mm", min_length))
            if value is not None
        )
        raise ModelLoadError(
            f"model {name!r}: a size rule ({rules}) needs defect regions, but the manifest "
            "has no pixel_threshold; run `python -m training calibrate` on the model first"
        )
    return LoadedModel(
        name=name,
        manifest=manifest,
        session=session,
        provider=provider,
        threshold=threshold,
        threshold_source=source,
        onnx_sha256=onnx_sha256,
        min_defect_area_mm2=min_area,
        min_defect_length_mm=min_length,
    )


def _size_rule(
    name: str, field: str, unit: str, in_manifest: float | None, overrides: Mapping[str, float]
) -> float | None:
    """The size rule `field` in effect for model `name`: the override when there is one (logged), else the
    manifest's."""
    if name not in overrides:
        return in_manifest
    value = float(overrides[name])
    log.warning("%s override for model %s: %g %s instead of the manifest's %s", field, name, value, unit, in_manifest)
    return value


FLOAT = "tensor(float)"


def _check_io(name: str, session: ort.InferenceSession, manifest: Manifest) -> None:
    """The graph's declared inputs and outputs: names, element types, and shapes where they are fixed."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if set(inputs) != {"rgb", "depth"} or not {"scores", "maps"} <= set(outputs):
        raise ModelLoadError(
            f"model {name!r}: graph inputs {sorted(inputs)} / outputs {list(outputs)} are not rgb, depth → scores, maps"
        )
    size = manifest.image_size
    for input_name, arg in inputs.items():
        if list(arg.shape[1:]) != [3, size, size] or arg.type != FLOAT:
            raise ModelLoadError(
                f"model {name!r}: input {input_name} is {arg.type} {arg.shape}; "
                f"expected float32 [batch, 3, {size}, {size}] (manifest image_size {size})"
            )
    expected = {"scores": "[batch]", "maps": f"[batch, {size}, {size}]"}
    for output_name, rank in (("scores", 1), ("maps", 3)):
        arg = outputs[output_name]
        fixed = [d for d in arg.shape[1:] if isinstance(d, int)]
        wrong_size = output_name == "maps" and any(d != size for d in fixed)
        if arg.type != FLOAT or len(arg.shape) != rank or wrong_size:
            raise ModelLoadError(
                f"model {name!r}: output {output_name} is {arg.type} {arg.shape}; expected float32 "
                f"{expected[output_name]}"
            )


def warm_up(model: LoadedModel, batch_sizes: Iterable[int]) -> None:
    """One run per batch size: a first run at a new shape allocates (and on CUDA, tunes) for it. The outputs
    are checked too: a graph that declares nothing (or lies) about its output shapes is refused here, before
    a request could meet it. ModelLoadError names the output, its shape and dtype, and what was expected."""
    size = model.manifest.image_size
    for batch in sorted(set(batch_sizes)):
        zeros = np.zeros((batch, 3, size, size), np.float32)
        try:
            scores, maps = model.session.run(["scores", "maps"], {"rgb": zeros, "depth": zeros})
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelLoadError(f"model {model.name!r}: the warm-up run (batch {batch}) failed: {exc}") from exc
        for output_name, array, shape in (("scores", scores, (batch,)), ("maps", maps, (batch, size, size))):
            if array.shape != shape or array.dtype != np.float32:
                raise ModelLoadError(
                    f"model {model.name!r}: output {output_name} is {array.dtype} {array.shape} at warm-up with "
                    f"batch {batch}; expected float32 {shape}"
                )
