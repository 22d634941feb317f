"""The line first (pure ASGI): the review station and the results API hold at most a share of the service.

The line's predictions and the people and systems that read results share one process: its connections
(`max_connections`, beyond which uvicorn answers 503 to everyone), its worker threads and its event loop.
This layer counts the requests in progress on the side paths (`/ui`, `/v1/results`, `/v1/status`) from
their headers and refuses one beyond `side_limit` at once, with 503 `side_busy`, `Retry-After` and a
closed connection, before a byte of its body is read. A request holds its place until its answer is sent;
slow bodies on these paths are cut by their own short deadline (`RequestMiddleware`, `form_body_timeout_s`),
so a crowd of slow review-station clients holds at most `side_limit` connections for at most that long.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import ApiError, error_response
from service.api.middleware import ENDPOINT_SCOPE_KEY

log = logging.getLogger(__name__)

SIDE_PREFIXES = ("/ui", "/v1/results", "/v1/status")
SIDE_RETRY_AFTER_S = 2


class SideBusyError(ApiError):
    status, code = 503, "side_busy"


def is_side_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") or path.startswith(p + ".") for p in SIDE_PREFIXES)


def side_limit(max_connections: int, share: float) -> int:
    """Side requests allowed at once: `share` of the connections, at least one."""
    return max(1, int(max_connections * share))


class SideTrafficLimit:
    """Refuses side requests beyond `limit` in progress; every other request passes untouched."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_side_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            scope[ENDPOINT_SCOPE_KEY] = "side"  # a bounded label for the request metrics
            refusal = SideBusyError(
                f"the review station and results API are at their share of the service ({self.limit} requests "
                "at once, BRIDGENET_SIDE_SHARE); retry later",
                retry_after_s=SIDE_RETRY_AFTER_S,
            )
            info = refusal.info()
            log.info("refused: %s", info.message, extra={"code": info.code, "status": info.status})
            response = error_response(info)
            response.headers["Connection"] = "close"  # whatever body it meant to send is not read
            await response(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
