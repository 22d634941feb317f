"""Structured JSON logging: one object per line, with the request id, part id and model of the request."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
import traceback
from dataclasses import dataclass
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
# uvicorn's `color_message` is its message with terminal colour codes: noise in a JSON line.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}
_HANDLER_MARK = "_bridgenet_json_handler"


@dataclass
class RequestContext:
    """Per-request facts that every log line of the request carries.

    Mutable on purpose: the middleware binds one object per request, the route handler fills in
    `part_id` and `model` later, and the middleware's access line (outside the handler) sees them.
    """

    request_id: str
    part_id: str | None = None
    model: str | None = None
    error_code: str | None = None  # set when the answer is an error body; counted and logged by the middleware


_request_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "bridgenet_request_context", default=None
)


def bind_request(request_id: str) -> contextvars.Token[RequestContext | None]:
    """Start a request's context; pass the token to `unbind_request` when the request is over."""
    return _request_context.set(RequestContext(request_id=request_id))


def unbind_request(token: contextvars.Token[RequestContext | None]) -> None:
    _request_context.reset(token)


def current_request() -> RequestContext | None:
    """The context of the request being handled (also inside run_in_threadpool, which copies contexts)."""
    return _request_context.get()


def annotate_request(part_id: str | None, model: str) -> RequestContext:
    """Name the part and the model of the request being handled: every log line from here on carries them.
    Returns the request's context (a detached one, request id "", when called outside a request)."""
    ctx = _request_context.get() or RequestContext(request_id="")
    ctx.part_id = part_id
    ctx.model = model
    return ctx


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, `fields` (the same on every line of
    this process, e.g. its worker slot), request fields, extras."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
        }
        ctx = _request_context.get()
        if ctx is not None:
            out["request_id"] = ctx.request_id
            out["part_id"] = ctx.part_id
            out["model"] = ctx.model
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        # default=str: a stray non-JSON extra (a Path, a numpy float) must never lose the log line.
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    level: str | int = "INFO", stream: TextIO | None = None, fields: dict[str, Any] | None = None
) -> logging.Handler:
    """Send every log record (ours, uvicorn's, onnxruntime's Python side) as JSON lines to `stream`, each
    with `fields` (e.g. {"worker": 1} in one of several worker processes).

    Idempotent: a second call replaces the handler this function installed, and leaves handlers that
    others (pytest's caplog) installed alone.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(fields))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn's loggers carry their own handlers unless told otherwise; route them through the root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    return handler
