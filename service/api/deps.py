"""Typed FastAPI dependencies: the service's shared state, reached through the app instead of globals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from service.api.admission import Admission
from service.api.errors import NotReadyError
from service.api.hooks import AfterPrediction
from service.codecs import DecodeLimits
from service.config import Settings
from service.engine import Engine
from service.lifecycle.commission import ProposalStore
from service.lifecycle.shadow import ShadowScorer
from service.lifecycle.watch import LineWatch
from service.metrics import Metrics
from service.recipes import RecipeCatalog
from service.records.runtime import Records
from service.workers_dir import WorkerSlot

if TYPE_CHECKING:  # asyncua takes a second to import: only a service with BRIDGENET_OPCUA_URL loads it
    from service.plc.server import PlcServer

NOT_READY_RETRY_AFTER_S = 5  # model loading and warm-up take seconds (minutes for a first CUDA session)


@dataclass
class ServiceState:
    """What the app holds between requests. `admission` and `records` exist once the lifespan has started.

    `after_prediction`: the hooks run after every prediction, before its answer (service.api.hooks);
    the app factory installs the metrics and the "scored part" log line, later capabilities add theirs.
    """

    settings: Settings
    engine: Engine
    metrics: Metrics
    limits: DecodeLimits
    recipes: RecipeCatalog = field(default_factory=lambda: RecipeCatalog(None))  # loaded by the lifespan
    admission: Admission | None = None
    records: Records | None = None  # the audit trail and push (service.records), set by the lifespan
    plc: PlcServer | None = None  # the OPC UA server (service.plc) when BRIDGENET_OPCUA_URL is set
    after_prediction: list[AfterPrediction] = field(default_factory=list)
    # A dead worker (service.main.watch_workers): why, and how the process is told to stop (set by
    # `python -m service`; tests leave it None and see /readyz 503).
    fatal: str | None = None
    on_fatal: Callable[[str], None] | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task[object]] = field(default_factory=set)  # e.g. SIGHUP reloads, kept referenced
    worker: WorkerSlot | None = None  # this process's place among several workers (service.supervisor)
    watch: LineWatch | None = None  # the drift watch (service.lifecycle.watch), fed by an after-prediction hook
    shadow: ShadowScorer | None = None  # BRIDGENET_SHADOW's candidates, set by the lifespan when configured
    proposals: ProposalStore = field(default_factory=ProposalStore)  # calibrations proposed, not yet saved

    @property
    def ready(self) -> bool:
        """Models loaded, verified and warmed up, and requests admitted: what /readyz answers (and what
        service.cluster's health check reports to Ray Serve)."""
        return self.admission is not None and self.engine.ready


@dataclass(frozen=True)
class ReadyService:
    """The state of a service that is ready: what a prediction needs, none of it missing."""

    engine: Engine
    limits: DecodeLimits
    admission: Admission
    after_prediction: tuple[AfterPrediction, ...]
    records: Records | None  # None until started or in tests that build a bare state; off: records.enabled
    recipes: RecipeCatalog
    shadow: ShadowScorer | None = None


def not_ready_error() -> NotReadyError:
    return NotReadyError(
        "the service is not ready: models are loading, the default model or a worker is down, or the service "
        "is stopping",
        retry_after_s=NOT_READY_RETRY_AFTER_S,
    )


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hand-off on every request for a two-line function.


async def state_dependency(request: Request) -> ServiceState:
    return get_state(request)


async def get_ready_state(request: Request) -> ReadyService:
    """The ready state, or 503 not_ready while the models are still loading (or already stopped)."""
    state = get_state(request)
    if not state.ready or state.admission is None:  # (the second test only narrows the type: ready implies it)
        raise not_ready_error()
    return ReadyService(
        state.engine,
        state.limits,
        state.admission,
        tuple(state.after_prediction),
        state.records,
        state.recipes,
        state.shadow,
    )


State = Annotated[ServiceState, Depends(state_dependency)]
ReadyState = Annotated[ReadyService, Depends(get_ready_state)]
