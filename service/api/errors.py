"""The one place where errors become HTTP answers: status, stable code, message, one JSON body shape.

Body: `{"error": {"code": "<reason>", "message": "<names the problem>", "request_id": "..."}}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.codecs import CodecError
from service.engine import (
    BatcherClosedError,
    EngineError,
    InvalidModelOutputError,
    ModelUnavailableError,
    UnknownModelError,
    WorkerDeadError,
)
from service.logs import current_request
from service.postprocessing.roi import MaskMismatchError
from service.preprocessing import (
    ConfigError,
    EmptyPointCloudError,
    ImageTooSmallError,
    InvalidImageError,
    InvalidPointCloudError,
    NoForegroundError,
    PlaneFitError,
    PreprocessingError,
    SizeMismatchError,
)
from service.recipes import RecipeError, RecipeMismatchError, RecipeUnavailableError, UnknownRecipeError
from service.records.store import DuplicateRequestError, RecordError

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=Exception)
# A client that left while its body was read (counted by the request middleware, never sent).
CLIENT_CLOSED_CODE = "client_disconnected"
# The model answered NaN or infinity (service.engine.InvalidModelOutputError): 500, its own alert.
INVALID_MODEL_OUTPUT = "invalid_model_output"
AUDIT_UNAVAILABLE = "audit_unavailable"
DUPLICATE_REQUEST_ID = "duplicate_request_id"
# 503 bodies whose cause is the service's own state: the cause (database text with its SQL, host and user;
# a worker's exception) goes to the log under the request id, the client learns only to retry.
AUDIT_UNAVAILABLE_MESSAGE = (
    "the record of this prediction could not be written, so it is not answered; retry (the cause is in "
    "the service log under this request id)"
)
WORKER_DEAD_MESSAGE = "the model's inference worker is down and the service is restarting; retry (another replica)"


class ApiError(Exception):
    """An error the HTTP layer itself raises (admission, auth, readiness, limits)."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def info(self) -> ErrorInfo:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}
        return ErrorInfo(self.status, self.code, self.message, headers)


class QueueFullError(ApiError):
    status, code = 429, "queue_full"


class RequestTimeoutError(ApiError):
    status, code = 503, "timeout"


class NotReadyError(ApiError):
    status, code = 503, "not_ready"


class UnauthorizedError(ApiError):
    status, code = 401, "unauthorized"


class PayloadTooLargeError(ApiError):
    """Every "too large" refusal (413 too_large): an upload, the request body, or a file's declared image size."""

    status, code = 413, "too_large"


class BodyTooLargeHTTPError(StarletteHTTPException):
    """Raised from inside body reading when a streamed body passes the limit. It must subclass
    HTTPException: FastAPI turns any other exception raised while parsing a form into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(PayloadTooLargeError.status, f"the request body exceeds the limit of {limit:,} bytes")


class BodyTimeoutHTTPError(StarletteHTTPException):
    """Raised from inside body reading when the body did not arrive within the body deadline (408); the
    connection is closed with the answer (what the client was still sending is not waited for)."""

    def __init__(self, timeout_s: float, received: int, setting: str = "body_timeout_s") -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout_s:g} s ({setting}); {received:,} bytes came",
            headers={"Connection": "close"},
        )


# Preprocessing refusals: the input is well-formed but unusable for this model (422).
_PREPROCESSING_CODES: dict[type[PreprocessingError], str] = {
    NoForegroundError: "no_foreground",
    SizeMismatchError: "size_mismatch",
    EmptyPointCloudError: "empty_point_cloud",
    PlaneFitError: "plane_fit_failed",
    ImageTooSmallError: "image_too_small",
    InvalidPointCloudError: "invalid_point_cloud",
    InvalidImageError: "invalid_image",
    MaskMismatchError: "mask_mismatch",
}
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    PayloadTooLargeError.status: PayloadTooLargeError.code,
    415: "unsupported_media_type",
}


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    code: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


def describe(exc: Exception) -> ErrorInfo | None:
    """Status, code and message for a known refusal; None for anything else (a bug → 500)."""
    if isinstance(exc, ApiError):
        return exc.info()
    if isinstance(exc, CodecError):
        if exc.reason == PayloadTooLargeError.code:
            return PayloadTooLargeError(str(exc)).info()
        return ErrorInfo(400, exc.reason, str(exc))
    if isinstance(exc, PreprocessingError) and not isinstance(exc, ConfigError):
        code = next((c for cls, c in _PREPROCESSING_CODES.items() if isinstance(exc, cls)), "preprocessing_failed")
        return ErrorInfo(422, code, str(exc))
    if isinstance(exc, WorkerDeadError):  # the process exits to be restarted: another replica / later
        return ErrorInfo(503, "not_ready", WORKER_DEAD_MESSAGE, {"Retry-After": "5"})
    if isinstance(exc, ModelUnavailableError):  # its folder failed to load; a reload may bring it back
        return ErrorInfo(503, "model_unavailable", str(exc), {"Retry-After": "30"})
    if isinstance(exc, BatcherClosedError):  # only after shutdown has begun: try another replica / later
        return ErrorInfo(503, "not_ready", str(exc), {"Retry-After": "5"})
    if isinstance(exc, DuplicateRequestError):  # the first record stands; the client reads it back
        return ErrorInfo(409, DUPLICATE_REQUEST_ID, f"{exc}; read it at GET /v1/results/{{request_id}}")
    if isinstance(exc, RecordError):  # no answer without its record: the client retries (another replica)
        return ErrorInfo(503, AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE_MESSAGE, {"Retry-After": "5"})
    if isinstance(exc, UnknownModelError):
        return ErrorInfo(404, "unknown_model", str(exc))
    if isinstance(exc, UnknownRecipeError):
        return ErrorInfo(404, "unknown_recipe", str(exc))
    if isinstance(exc, RecipeUnavailableError):  # its file failed to load; a reload may bring it back
        return ErrorInfo(503, "recipe_unavailable", str(exc), {"Retry-After": "30"})
    if isinstance(exc, RecipeMismatchError):
        return ErrorInfo(409, "recipe_mismatch", str(exc))
    if isinstance(exc, InvalidModelOutputError):  # never an OK on NaN: the model is at fault, not the part
        return ErrorInfo(500, INVALID_MODEL_OUTPUT, str(exc))
    if isinstance(exc, RequestValidationError):
        return _describe_validation(exc)
    if isinstance(exc, ClientDisconnect):  # never seen by the client; the middleware counts it as 499
        return ErrorInfo(400, CLIENT_CLOSED_CODE, "the client disconnected while sending the request body")
    if isinstance(exc, StarletteHTTPException):
        # Keep the framework's headers: a 405 carries `Allow` with the methods the path accepts.
        headers = dict(exc.headers or {})
        return ErrorInfo(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail), headers)
    return None


_WHERE = {"body": "form field", "query": "query parameter", "header": "header", "path": "path parameter"}


def _describe_validation(exc: RequestValidationError) -> ErrorInfo:
    """FastAPI's validation errors → one message naming every bad field, e.g. "form field 'xyz' is required"."""
    parts: list[str] = []
    missing = False
    for err in exc.errors():
        where = _WHERE.get(str((err.get("loc") or ("body",))[0]), "form field")
        loc = [str(p) for p in err.get("loc", ()) if p not in _WHERE]
        name = ".".join(loc) or "request"
        if err.get("type") == "missing":
            missing = True
            parts.append(f"{where} {name!r} is required")
        else:
            parts.append(f"{where} {name!r}: {err.get('msg', 'invalid value')}")
    return ErrorInfo(422, "missing_field" if missing else "invalid_field", "; ".join(parts) or "invalid request")


def _subclasses(cls: type[_E]) -> list[type[_E]]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def refusal_codes() -> list[str]:
    """Every error code a refusal can carry, for pre-initialising the refusal metric at start-up."""
    api_errors: list[type[ApiError]] = [ApiError, *_subclasses(ApiError)]
    codec_errors: list[type[CodecError]] = [CodecError, *_subclasses(CodecError)]
    codes = {cls.code for cls in api_errors} | {cls.reason for cls in codec_errors}
    codes |= {*_PREPROCESSING_CODES.values(), "preprocessing_failed", *_HTTP_CODES.values()}
    codes |= {"not_ready", "unknown_model", "model_unavailable", "missing_field", "invalid_field", CLIENT_CLOSED_CODE}
    codes |= {"unknown_recipe", "recipe_unavailable", "recipe_mismatch"}
    codes |= {INVALID_MODEL_OUTPUT, AUDIT_UNAVAILABLE, DUPLICATE_REQUEST_ID}
    return sorted(codes)


def error_response(info: ErrorInfo) -> JSONResponse:
    ctx = current_request()
    if ctx is not None:
        ctx.error_code = info.code
    body = {"error": {"code": info.code, "message": info.message, "request_id": ctx.request_id if ctx else None}}
    return JSONResponse(body, status_code=info.status, headers=dict(info.headers))


def internal_error_response(exc: BaseException) -> JSONResponse:
    """A server error is a bug: log the traceback, answer 500 without internals in the body."""
    log.error("unhandled %s: %s", type(exc).__name__, exc, exc_info=(type(exc), exc, exc.__traceback__))
    return error_response(ErrorInfo(500, "internal_error", "internal server error; the request id is in the log"))


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    info = describe(exc)
    if info is None:
        return internal_error_response(exc)
    if isinstance(exc, InvalidModelOutputError):  # a fault of the model: an operator must look at it
        log.error("invalid model output: %s", info.message, extra={"code": info.code, "status": info.status})
    elif isinstance(exc, RecordError) and info.status >= 500:  # the detail the body leaves out
        log.error("record not written: %s", exc, extra={"code": info.code, "status": info.status})
    elif isinstance(exc, WorkerDeadError):
        log.error("worker down: %s", exc, extra={"code": info.code, "status": info.status})
    elif isinstance(
        exc, EngineError | PreprocessingError | CodecError | ApiError | DuplicateRequestError | RecipeError
    ):
        log.info("refused: %s", info.message, extra={"code": info.code, "status": info.status})
    return error_response(info)


def install_error_handlers(app: FastAPI) -> None:
    """Register the domain and framework error types; unexpected exceptions reach the request middleware,
    which answers 500 through `internal_error_response`."""
    for exc_type in (
        ApiError,
        CodecError,
        PreprocessingError,
        EngineError,
        RecordError,
        RecipeError,
        RequestValidationError,
        StarletteHTTPException,
        ClientDisconnect,
    ):
        app.add_exception_handler(exc_type, _handle)
