"""The inference engine: ONNX Runtime sessions and the complete predict, decode to encoded map.

`engine` (the Engine: start, predict, stop), `stages` (decode, postprocess, encode: the steps around the
session run), `batching` (micro-batching of session runs), `loading` (sessions, manifests, providers),
`result` (what a prediction takes and returns), `errors` (what the engine raises). The names below are the
package's public face; the contract is in docs/DESIGN.md, "The predict path".
"""

from service.engine.batching import Batcher, BatchOutcome
from service.engine.engine import Engine, ReloadReport
from service.engine.errors import (
    BatcherClosedError,
    EngineError,
    InferenceError,
    InvalidModelOutputError,
    ModelLoadError,
    ModelUnavailableError,
    UnknownModelError,
    WorkerDeadError,
)
from service.engine.loading import (
    CPU,
    CUDA,
    EngineOptions,
    LoadedModel,
    create_session,
    cuda_driver_present,
    session_providers,
)
from service.engine.result import (
    EncodedMap,
    PartUpload,
    Prediction,
    PredictResult,
    ReturnMap,
    Rules,
    ThresholdSource,
)

__all__ = [
    "CPU",
    "CUDA",
    "BatchOutcome",
    "Batcher",
    "BatcherClosedError",
    "EncodedMap",
    "Engine",
    "EngineError",
    "EngineOptions",
    "InferenceError",
    "InvalidModelOutputError",
    "LoadedModel",
    "ModelLoadError",
    "ModelUnavailableError",
    "PartUpload",
    "PredictResult",
    "Prediction",
    "ReloadReport",
    "ReturnMap",
    "Rules",
    "ThresholdSource",
    "UnknownModelError",
    "WorkerDeadError",
    "create_session",
    "cuda_driver_present",
    "session_providers",
]
