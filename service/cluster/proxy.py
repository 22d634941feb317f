"""Runs inside Ray Serve's HTTP proxies: an answer the proxy makes up itself because no replica answered
(the replica died under the request, or none is available) becomes the service's 503 with Retry-After;
and predictions are refused from their headers (line key, declared size) before the proxy takes in their
body, which it would otherwise receive whole before a replica's own gate (service.api.gate) sees them.

Ray Serve leaves such a request without an answer (uvicorn then sends a bare 500) or answers a 5xx itself;
the line controller must see the same "retry later" as when one `python -m service` is briefly away. Every
answer a replica gives carries `X-Served-By`, so a 5xx without it, or none at all, came from the proxy.
Ray finds this hook through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.cluster.proxy:middlewares (set
by `python -m service.cluster` for the instance it starts, in docker/k8s/rayservice.yaml, Dockerfile.cluster,
and by hand before `ray start`).

Kept apart from service.cluster.app: every proxy imports it, and it needs neither the engine nor the models.
"""

from __future__ import annotations

import json
import logging
import socket

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ApiError, PayloadTooLargeError
from service.api.middleware import (
    PREDICT_PATHS,
    REQUEST_ID_HEADER,
    SERVED_BY_HEADER,
    SMALL_BODY_BYTES,
    accepted_request_id,
)
from service.api.security import API_KEY_HEADER, Role, check_role
from service.config import Settings, get_settings, max_body_bytes

log = logging.getLogger(__name__)

REPLICA_LOST_RETRY_AFTER_S = 1  # Ray starts a replacement and routes elsewhere meanwhile
REPLICA_LOST_CODE = "replica_unavailable"


class ReplicaLossMiddleware:
    """Turns the proxy's own 5xx answers (no `X-Served-By`) into the service's error body: 503, Retry-After."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.served_by = f"proxy@{socket.gethostname()}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        replaced = False

        async def send_checked(message: Message) -> None:
            nonlocal started, replaced
            if replaced:  # the proxy's own body after its replaced start: already answered
                return
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if message["status"] >= 500 and SERVED_BY_HEADER not in headers:
                    replaced = True
                    await self._send_unavailable(scope, send, str(message["status"]))
                    return
                _drop_repeated(headers, REQUEST_ID_HEADER)
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        except Exception as exc:
            if started:
                raise
            if not replaced:
                await self._send_unavailable(scope, send, type(exc).__name__)
            return
        if not started and not replaced:
            # When the replica died under the request, the proxy returns without answering (uvicorn would
            # then send a bare 500 of its own).
            await self._send_unavailable(scope, send, "no answer from the proxy")

    async def _send_unavailable(self, scope: Scope, send: Send, cause: str) -> None:
        request_id = accepted_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        body = {
            "error": {
                "code": REPLICA_LOST_CODE,
                "message": "no replica answered this request (the one serving it stopped, or every replica is "
                "full); retry: another replica answers, or a replacement is starting",
                "request_id": request_id,
            }
        }
        payload = json.dumps(body).encode()
        log.warning("no replica answered %s %s (%s): 503", scope.get("method"), scope.get("path"), cause)
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", str(REPLICA_LOST_RETRY_AFTER_S).encode()),
                    (SERVED_BY_HEADER.lower().encode(), self.served_by.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def _drop_repeated(headers: MutableHeaders, name: str) -> None:
    """Keep the first of several equal-named headers: the app echoes the request id Ray's proxy gave the
    request, and the proxy appends it once more."""
    values = headers.getlist(name)
    if len(values) > 1:
        del headers[name]
        headers.append(name, values[0])


class ProxyGateMiddleware:
    """Bodies in the proxy: prediction POSTs without the line key are refused (401/403) and any body
    declared above its path's limit (`max_body_bytes` for predictions, SMALL_BODY_BYTES elsewhere, as in
    service.api.middleware) gets 413, from the headers, before a byte of it is read; a body sent without
    Content-Length is cut at the limit (the replica then sees the client gone, the client a 413)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.predict_limit = max_body_bytes(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        predict = scope["path"] in PREDICT_PATHS
        limit = self.predict_limit if predict else SMALL_BODY_BYTES
        try:
            if predict and scope["method"] == "POST":
                check_role(self.settings, headers.get(API_KEY_HEADER), (Role.LINE,))
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLargeError(
                    f"the request body is {int(declared):,} bytes (Content-Length); the limit is {limit:,}"
                )
        except ApiError as refusal:
            await _send_error(scope, send, refusal)
            return
        received = 0
        cut = False
        started = False

        async def receive_limited() -> Message:
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_cut(message: Message) -> None:
            nonlocal started
            if cut and not started:  # whatever the proxy makes of the "disconnect", the client gets the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_limited, send_unless_cut)
        except Exception:
            if not cut:  # after a cut, an error about the missing body is expected, and answered below
                raise
        if cut and not started:
            await _send_error(scope, send, PayloadTooLargeError(f"the request body exceeds {limit:,} bytes"))


async def _send_error(scope: Scope, send: Send, refusal: ApiError) -> None:
    info = refusal.info()
    body = {
        "error": {
            "code": info.code,
            "message": info.message,
            "request_id": accepted_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER)),
        }
    }
    payload = json.dumps(body).encode()
    log.info("refused in the proxy: %s", info.message, extra={"code": info.code, "status": info.status})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),  # the client may not go on sending the body it was refused for
        *((k.lower().encode(), v.encode()) for k, v in info.headers.items()),
    ]
    await send({"type": "http.response.start", "status": info.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def middlewares() -> list[Middleware]:
    """What Ray Serve's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH). The proxy reads the same
    BRIDGENET_* settings as the replicas (the key, the upload limit); bad ones stop it, as they stop them."""
    settings = get_settings()
    # Outermost first: the gate's refusals carry no X-Served-By and are 4xx, which ReplicaLossMiddleware
    # leaves alone either way.
    return [Middleware(ProxyGateMiddleware, settings=settings), Middleware(ReplicaLossMiddleware)]
