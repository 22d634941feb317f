"""Per-request plumbing (pure ASGI): request id, body-size limit and deadline, access log, request metrics,
last-resort 500."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import (
    CLIENT_CLOSED_CODE,
    INVALID_MODEL_OUTPUT,
    BodyTimeoutHTTPError,
    BodyTooLargeHTTPError,
    PayloadTooLargeError,
    error_response,
    internal_error_response,
)
from service.logs import bind_request, current_request, unbind_request
from service.metrics import Metrics

access_log = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed into logs and headers: accept only short, plain tokens (no log injection).
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
SERVED_BY_HEADER = "X-Served-By"
PREDICT_PATHS = frozenset({"/v1/predict", "/predict"})
ENDPOINT_SCOPE_KEY = "bridgenet.endpoint"  # set by service.api.gate for requests it refuses before routing
# Every other path takes small bodies only (the review station's forms): a flood of large bodies there
# cannot hold more than this per connection, with no admission in front of it.
SMALL_BODY_BYTES = 1024 * 1024
CLIENT_CLOSED_STATUS = 499


def accepted_request_id(value: str | None) -> str | None:
    """The client's X-Request-ID if it is a plain token of at most 128 characters, else None."""
    return value if value is not None and _REQUEST_ID_RE.fullmatch(value) else None


class RequestMiddleware:
    """Binds the request context, refuses oversized bodies, and logs and counts every answer.

    Bodies: a declared Content-Length above the path's limit (`max_body_bytes` on the predict paths,
    SMALL_BODY_BYTES elsewhere) is refused before a byte of the body is read; a streamed body (no
    Content-Length) is counted while it arrives and stopped at the limit. The whole body must arrive within
    `body_timeout_s` of the request's start on the predict paths, within `form_body_timeout_s` (the shorter
    one) elsewhere, or the request is answered 408 and its connection closed: a review-station form is a few
    hundred bytes, and a client trickling one must not hold a connection the line may need.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        body_timeout_s: float,
        form_body_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.form_body_timeout_s = min(body_timeout_s, form_body_timeout_s or body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = accepted_request_id(headers.get(REQUEST_ID_HEADER)) or uuid.uuid4().hex
        token = bind_request(request_id)
        start = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        received = 0
        disconnected = False
        body_done = False
        predict = scope["path"] in PREDICT_PATHS
        limit = self.max_body_bytes if predict else SMALL_BODY_BYTES
        body_timeout_s = self.body_timeout_s if predict else self.form_body_timeout_s
        body_deadline = asyncio.get_running_loop().time() + body_timeout_s

        async def receive_limited() -> Message:
            nonlocal received, disconnected, body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline then
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(body_deadline):
                        message = await receive()
                except TimeoutError:
                    setting = "body_timeout_s" if predict else "form_body_timeout_s"
                    raise BodyTimeoutHTTPError(body_timeout_s, received, setting) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise BodyTooLargeHTTPError(limit)
            elif message["type"] == "http.disconnect":
                disconnected = True
            return message

        try:
            declared = _content_length(headers)
            if declared is not None and declared > limit:
                refusal = PayloadTooLargeError(
                    f"the request body is {declared:,} bytes (Content-Length); the limit is {limit:,}"
                )
                response = error_response(refusal.info())
                response.headers["Connection"] = "close"  # the client may not go on sending that body
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_limited, send_with_id)
        except Exception as exc:
            if response_started:  # too late for an error body; the server closes the connection
                access_log.error("exception after the response started", exc_info=True)
                raise
            await internal_error_response(exc)(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - start, disconnected)
            unbind_request(token)

    def _record(self, scope: Scope, status: int, seconds: float, disconnected: bool) -> None:
        ctx = current_request()
        code = ctx.error_code if ctx else None
        if disconnected and status >= 400:
            # The client left while its body was being read: whatever error the framework made of the
            # missing bytes (FastAPI: 400 "error parsing the body") was never seen by anyone. Counted and
            # logged as 499 (nginx's "client closed request"), so refusals of bad input stay meaningful.
            status, code = CLIENT_CLOSED_STATUS, CLIENT_CLOSED_CODE
        route = scope.get("route")
        # Templates only: bounded label values.
        endpoint = getattr(route, "path", None) or scope.get(ENDPOINT_SCOPE_KEY) or "unmatched"
        self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        if endpoint in PREDICT_PATHS:
            self.metrics.request_duration.observe(seconds)
            if status == 200:  # answered with a result: fast refusals must not flatter the latency
                self.metrics.prediction_duration.observe(seconds)
        # A bug (500 internal_error) is no refusal; a model's non-finite output (500 invalid_model_output) is
        # counted by its code: a part left without a verdict, with its own alert.
        if code is not None and (status != 500 or code == INVALID_MODEL_OUTPUT):
            self.metrics.rejected.labels(reason=code).inc()
        level = logging.ERROR if status >= 500 and status != 503 else logging.INFO
        access_log.log(
            level,
            "%s %s %d",
            scope.get("method", "?"),
            scope.get("path", "?"),
            status,
            extra={"status": status, "duration_ms": round(seconds * 1e3, 3), "endpoint": endpoint, "code": code},
        )


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def process_id() -> str:
    """`host:pid`: which process answered, when one `python -m service` per host serves."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ServedByMiddleware:
    """Adds `X-Served-By` to every answer: `app.state.served_by`, read per request so that a host that
    runs the app elsewhere (service.cluster: a Ray Serve replica) can put its own id there after building it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        served_by = str(scope["app"].state.served_by)

        async def send_with_server(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[SERVED_BY_HEADER] = served_by
            await send(message)

        await self.app(scope, receive, send_with_server)
