"""Admission before the body (pure ASGI): the predict paths are refused from their headers alone.

FastAPI parses a multipart form before a route's dependencies run, so checks made there come after the
whole body was received and held in memory. This layer runs first, on the headers only: line key (401, 403),
readiness (503), declared body size (413, also checked by `RequestMiddleware` for every path) and capacity
(429, `Admission.admit`), each with the service's one error body and, where it applies, `Retry-After`. A
refusal closes the connection, so a client cannot go on sending the body it was refused for.

An admitted request holds its `AdmissionPass` (in the scope, for the route) while its body streams in and
while it runs, and the pass is released when the request ends, however it ends (answer, error, disconnect,
body deadline): capacity counts the bodies being received, so memory is bounded by the admission limits.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.admission import AdmissionPass
from service.api.deps import ServiceState, not_ready_error
from service.api.errors import ApiError, PayloadTooLargeError, error_response
from service.api.middleware import ENDPOINT_SCOPE_KEY, PREDICT_PATHS
from service.api.security import API_KEY_HEADER, Role, check_role

log = logging.getLogger(__name__)

ADMISSION_SCOPE_KEY = "bridgenet.admission"  # the request's AdmissionPass
CLOSE = {"Connection": "close"}


def admission_pass(scope: Scope) -> AdmissionPass:
    """The pass the gate gave this request; the predict route runs only behind the gate."""
    admitted = scope.get(ADMISSION_SCOPE_KEY)
    if not isinstance(admitted, AdmissionPass):
        raise RuntimeError("the predict route runs behind AdmissionGate (service.api.gate); no pass in the scope")
    return admitted


class AdmissionGate:
    """Refuses or admits POSTs to the predict paths before their body is read; other requests pass."""

    def __init__(self, app: ASGIApp, *, state: ServiceState, max_body_bytes: int) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PREDICT_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope[ENDPOINT_SCOPE_KEY] = scope["path"]
        try:
            admitted = self._admit(Headers(scope=scope))
        except ApiError as refusal:
            info = refusal.info()
            log.info("refused: %s", info.message, extra={"code": info.code, "status": info.status})
            response = error_response(info)
            response.headers.update(CLOSE)
            await response(scope, receive, send)
            return
        scope[ADMISSION_SCOPE_KEY] = admitted
        try:
            await self.app(scope, receive, send)
        finally:
            admitted.release()

    def _admit(self, headers: Headers) -> AdmissionPass:
        """The checks, in order: key, readiness, declared size, capacity. Raises the refusal's ApiError."""
        check_role(self.state.settings, headers.get(API_KEY_HEADER), (Role.LINE,))
        admission = self.state.admission
        if admission is None or not self.state.ready:
            raise not_ready_error()
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLargeError(
                f"the request body is {int(declared):,} bytes (Content-Length); the limit is {self.max_body_bytes:,}"
            )
        return admission.admit()
