"""Liveness and readiness: open endpoints (no API key) for orchestrators. Metrics: routes_metrics."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import NOT_READY_RETRY_AFTER_S, ReadyState, State
from service.api.errors import NotReadyError
from service.api.schemas import ErrorResponse, HealthResponse, ReadyResponse, WorkersState

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process answers HTTP; says nothing about the models."""
    return HealthResponse(status="alive")


@router.get(
    "/readyz", response_model=ReadyResponse, response_model_exclude_none=True, responses={503: {"model": ErrorResponse}}
)
async def readyz(ready: ReadyState, state: State) -> ReadyResponse:
    """Every model loaded, its manifest verified and a warm-up run done, in every worker process; 503
    not_ready otherwise (while one worker is replaced, too)."""
    workers = None
    if state.worker is not None:
        count = len(state.worker.dir.ready())
        if count < state.worker.dir.count:
            raise NotReadyError(
                f"{count} of {state.worker.dir.count} worker processes are ready (the others are loading models, "
                "or being replaced)",
                retry_after_s=NOT_READY_RETRY_AFTER_S,
            )
        workers = WorkersState(ready=count, configured=state.worker.dir.count)
    return ReadyResponse(status="ready", models=sorted(ready.engine.models), workers=workers)
