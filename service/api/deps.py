"""Typed FastAPI dependencies: the service's shared state, reached through the app instead of globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.api.admission import Admission
from service.api.errors import NotReadyError
from service.codecs import DecodeLimits
from service.config import Settings
from service.engine import Engine
from service.metrics import Metrics

NOT_READY_RETRY_AFTER_S = 5  # model loading and warm-up take seconds (minutes for a first CUDA session)


@dataclass
class ServiceState:
    """What the app holds between requests. `admission` exists once the lifespan has started."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    limits: DecodeLimits
    admission: Admission | None = None

    @property
    def ready(self) -> bool:
        """Models loaded, verified and warmed up, and requests admitted: what /readyz answers (and what
        service.cluster's health check reports to Ray Serve)."""
        return self.admission is not None and self.engine.ready


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hand-off on every request for a two-line function.


async def state_dependency(request: Request) -> ServiceState:
    return get_state(request)


async def get_ready_state(request: Request) -> ServiceState:
    """The state, or 503 not_ready while the models are still loading (or already stopped)."""
    state = get_state(request)
    if not state.ready:
        raise NotReadyError(
            "the service is not ready: models are loading or the service is stopping",
            retry_after_s=NOT_READY_RETRY_AFTER_S,
        )
    return state


State = Annotated[ServiceState, Depends(state_dependency)]
ReadyState = Annotated[ServiceState, Depends(get_ready_state)]
