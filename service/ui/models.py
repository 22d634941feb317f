"""The review station's model page (/ui/models/NAME): the versions a model folder holds, its audit trail
(promotions, rollbacks, saved calibrations: who, when, from, to, why), and for admins the commissioning
from the line's recorded parts: propose, see both score distributions with the thresholds, save, promote;
and the switches themselves: promote a stored version, roll back to the previous one.

The page's buttons call the JSON routes below with the session's CSRF token in a header; they run the
same code as the admin API (service.api.routes_commission, routes_lifecycle), with `ui:<user>` as the actor.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from service.api.deps import ServiceState, State
from service.api.routes_commission import (
    CalibrationProposal,
    CalibrationRequest,
    SaveRequest,
    SaveResponse,
    make_proposal,
    save,
)
from service.api.routes_lifecycle import (
    NAME_PATTERN,
    ModelEvent,
    PromoteRequest,
    RollbackRequest,
    VersionNotFoundApiError,
    switch_version,
)
from service.api.routes_results import recorder_of
from service.lifecycle.commission import LINE_METHODS
from service.lifecycle.promotion import list_events, previous_version
from service.lifecycle.rate import DEFAULT as DEFAULT_RATE
from service.lifecycle.versions import VersionNotFoundError, active_version, model_folder, other_versions
from service.ui import auth
from service.ui.pages import login_redirect, page

CSRF_HEADER = "X-CSRF-Token"
EVENTS_SHOWN = 50

router = APIRouter(prefix="/ui", include_in_schema=False)
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]


def _admin(request: Request) -> auth.UiSession:
    """The session of an admin whose request carries the session's CSRF token; 401/403 otherwise."""
    session = auth.require_session(request)
    auth.check_csrf(session.csrf, request.headers.get(CSRF_HEADER))
    auth.require_admin(session)
    return session


def _versions(state: ServiceState, name: str) -> dict[str, Any]:
    try:
        folder = model_folder(state.engine.options.models_dir, name)
    except VersionNotFoundError as exc:
        raise VersionNotFoundApiError(str(exc)) from exc
    return {"active": active_version(folder), "stored": other_versions(folder), "previous": previous_version(folder)}


@router.get("/models", response_model=None)
def models_index(request: Request, state: State) -> Response:
    """The default model's page (the page itself lists the others)."""
    return RedirectResponse(f"/ui/models/{state.settings.default_model}", status_code=303)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, state: State, name: ModelName) -> Response:
    session = auth.current_session(request)
    if session is None:
        return login_redirect(request)
    versions = _versions(state, name)
    return page(
        request,
        "model.html",
        session,
        model=name,
        models=sorted(state.engine.models),
        versions=versions,
        events=list_events(recorder_of(state).db_engine, name, EVENTS_SHOWN),
        methods=LINE_METHODS,
        default_rate=DEFAULT_RATE,
        min_parts=state.settings.commission_min_parts,
    )


@router.post("/api/models/{name}/calibrations", response_model=CalibrationProposal)
async def propose_calibration(
    request: Request, state: State, name: ModelName, body: CalibrationRequest
) -> CalibrationProposal:
    _admin(request)
    return await make_proposal(state, name, body)


@router.post("/api/models/{name}/calibrations/{proposal_id}/save", response_model=SaveResponse)
async def save_calibration(
    request: Request,
    state: State,
    name: ModelName,
    proposal_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
    body: SaveRequest,
) -> SaveResponse:
    session = _admin(request)
    return await save(state, name, proposal_id, f"ui:{session.user}", body.reason)


@router.post("/api/models/{name}/promote", response_model=ModelEvent)
async def promote_version(request: Request, state: State, name: ModelName, body: PromoteRequest) -> ModelEvent:
    session = _admin(request)
    return await switch_version(state, name, body.version, f"ui:{session.user}", body.reason)


@router.post("/api/models/{name}/rollback", response_model=ModelEvent)
async def rollback_version(request: Request, state: State, name: ModelName, body: RollbackRequest) -> ModelEvent:
    session = _admin(request)
    return await switch_version(state, name, None, f"ui:{session.user}", body.reason)


class EventsResponse(BaseModel):
    events: list[ModelEvent] = Field(description="Newest first.")


@router.get("/api/models/{name}/events", response_model=EventsResponse)
async def model_events(request: Request, state: State, name: ModelName) -> EventsResponse:
    auth.require_session(request)
    rows = await asyncio.to_thread(list_events, recorder_of(state).db_engine, name, EVENTS_SHOWN)
    return EventsResponse(events=[ModelEvent(**r) for r in rows])
