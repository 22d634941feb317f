"""What the engine raises. The HTTP layer maps these to status codes in `service.api.errors`.

Input refusals keep their own types (`service.codecs.CodecError`, `service.preprocessing.PreprocessingError`):
they name what is wrong with the upload. Everything the engine itself can fail at is an `EngineError`.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's domain errors."""


class ModelLoadError(EngineError):
    """A model cannot be served: missing, corrupt, mismatched, or the required provider is absent."""


class UnknownModelError(EngineError):
    """The request names a model that is not loaded."""


class ModelUnavailableError(EngineError):
    """The request names a model whose folder is there but failed to load (the reason is in /v1/models)."""


class InferenceError(EngineError):
    """The session run failed (ONNX Runtime raised, or answered the wrong number of outputs), with micro-batching
    on or off. Chained to the cause; with batching on, every part of the failed batch gets its own copy."""


class InvalidModelOutputError(EngineError):
    """The model answered a non-finite score or map (NaN or infinite): no verdict may be given, never an OK
    (`score > threshold` is False for NaN). The API answers 500 `invalid_model_output`."""


class BatcherClosedError(EngineError):
    """A part arrived after the engine began stopping, or was still queued when stopping gave up."""


class WorkerDeadError(InferenceError):
    """A model's batching worker thread died: its parts fail at once, the engine is no longer ready, and the
    service exits non-zero so that its orchestrator restarts it."""
