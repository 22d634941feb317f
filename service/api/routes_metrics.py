"""Prometheus metrics on the API port, for when no separate metrics port is configured: behind the API key.

With BRIDGENET_METRICS_PORT set, the metrics are served on that port instead (service.metrics_server) and
this route does not exist: the API port then shows nothing about the station's traffic to a client.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.api.deps import State
from service.api.schemas import ErrorResponse
from service.api.security import require_line_key

router = APIRouter(tags=["operations"], dependencies=[Depends(require_line_key)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorResponse}},
)
async def metrics(state: State) -> Response:
    """The Prometheus text exposition (API key required when the service has one)."""
    body, content_type = state.metrics.render()
    return Response(content=body, media_type=content_type)
