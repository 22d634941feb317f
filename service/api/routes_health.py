"""Liveness and readiness: open endpoints (no API key) for orchestrators. Metrics: routes_metrics."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ReadyState
from service.api.schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process answers HTTP; says nothing about the models."""
    return HealthResponse(status="alive")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
async def readyz(state: ReadyState) -> ReadyResponse:
    """Every model loaded, its manifest verified and a warm-up run done; 503 not_ready otherwise."""
    return ReadyResponse(status="ready", models=sorted(state.engine.models))
