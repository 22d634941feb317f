"""POST /v1/admin/models/{name}/promote and /rollback: switch a model's active version without dropping a
request in flight; GET /v1/admin/models/{name}/events: the audit trail of those switches.

Behind the admin key, as /v1/admin/reload. A switch renames files in the model folder
(service.lifecycle.promotion) and then runs the hot reload, so requests in flight finish on the version they
started with; a version that does not load is switched back and refused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Security
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service.api.deps import ServiceState, State, not_ready_error
from service.api.errors import ApiError
from service.api.reload import publish_models
from service.api.routes_admin import _ADMIN_ERRORS, admin_key_header, check_admin_key
from service.api.schemas import ErrorResponse
from service.lifecycle.promotion import Switch, activate, list_events, record_event, rollback_target
from service.lifecycle.versions import VersionConflictError, VersionNotFoundError, model_folder

log = logging.getLogger(__name__)

ACTOR_HEADER = "X-Operator"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class VersionNotFoundApiError(ApiError):
    status, code = 404, "version_not_found"


class VersionConflictApiError(ApiError):
    status, code = 409, "version_conflict"


class VersionUnloadableError(ApiError):
    status, code = 422, "version_unloadable"


class AuditOffError(ApiError):
    status, code = 409, "audit_off"


class PromoteRequest(BaseModel):
    version: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN, description="A stored version.")
    reason: str = Field(default="", max_length=2000, description="Why; kept in the audit record.")


class RollbackRequest(BaseModel):
    reason: str = Field(default="", max_length=2000, description="Why; kept in the audit record.")


class ModelEvent(BaseModel):
    model: str
    action: str = Field(description="promote, rollback or save (a calibration stored as a new version)")
    at: str
    actor: str = Field(
        description="'admin' (the admin key), with the X-Operator header's name when sent; 'ui:<user>' from the "
        "review station"
    )
    from_version: str
    from_sha256: str
    to_version: str
    to_sha256: str
    reason: str


class ModelEventsResponse(BaseModel):
    model: str
    events: list[ModelEvent] = Field(description="Newest first.")


_ERRORS: dict[int | str, dict[str, object]] = {
    **_ADMIN_ERRORS,
    404: {"model": ErrorResponse, "description": "No such model folder or stored version"},
    409: {"model": ErrorResponse, "description": "Already active, nothing to roll back to, or audit trail off"},
    422: {"model": ErrorResponse, "description": "The version does not load, or the body is not valid"},
}

router = APIRouter(prefix="/v1/admin/models", tags=["operations"])

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]
Operator = Annotated[
    str | None, Header(alias=ACTOR_HEADER, max_length=64, description="Who does this (kept in the audit record).")
]


def _actor(operator: str | None) -> str:
    return f"admin:{operator.strip()}" if operator and operator.strip() else "admin"


async def switch_version(state: ServiceState, name: str, version: str | None, actor: str, reason: str) -> ModelEvent:
    """Activate `version` (None: the previous one) of model `name`, reload, record the switch."""
    records = state.records
    if not state.ready or records is None:
        raise not_ready_error()
    if records.recorder is None:
        raise AuditOffError("the audit trail is off (BRIDGENET_AUDIT=off): a version switch would go unrecorded")
    try:
        folder = model_folder(state.engine.options.models_dir, name)
        async with state.reload_lock:
            target = version if version is not None else await run_in_threadpool(rollback_target, folder)
            switch: Switch = await run_in_threadpool(activate, folder, target, "promote" if version else "rollback")
            report = await run_in_threadpool(state.engine.reload)
            if name in report.failed:
                await run_in_threadpool(activate, folder, switch.before.version, switch.action)
                await run_in_threadpool(state.engine.reload)
                publish_models(state.engine, state.metrics)
                raise VersionUnloadableError(
                    f"version {target!r} of {name!r} does not load; {switch.before.version!r} stays active: "
                    f"{report.failed[name]}"
                )
            publish_models(state.engine, state.metrics)
    except VersionNotFoundError as exc:
        raise VersionNotFoundApiError(str(exc)) from exc
    except VersionConflictError as exc:
        raise VersionConflictApiError(str(exc)) from exc
    event = await asyncio.to_thread(record_event, records.recorder.db_engine, name, switch, actor, reason)
    log.info("model %s: %s %s → %s", name, switch.action, switch.before.version, switch.after.version)
    return ModelEvent(**event)


@router.post("/{name}/promote", response_model=ModelEvent, responses=_ERRORS)
async def promote(
    state: State,
    name: ModelName,
    body: PromoteRequest,
    key: Annotated[str | None, Security(admin_key_header)],
    operator: Operator = None,
) -> ModelEvent:
    """Make a stored version of the model the active one; the one active until now stays stored for
    rollback. Requests in flight finish on the version they started with; a restart keeps the new one."""
    check_admin_key(state.settings.admin_key, key, "promote by moving the files and reloading instead")
    return await switch_version(state, name, body.version, _actor(operator), body.reason)


@router.post("/{name}/rollback", response_model=ModelEvent, responses=_ERRORS)
async def rollback(
    state: State,
    name: ModelName,
    key: Annotated[str | None, Security(admin_key_header)],
    body: RollbackRequest | None = None,
    operator: Operator = None,
) -> ModelEvent:
    """Make the version that was active before the last promotion or rollback the active one again."""
    check_admin_key(state.settings.admin_key, key, "roll back by moving the files and reloading instead")
    return await switch_version(state, name, None, _actor(operator), body.reason if body else "")


@router.get("/{name}/events", response_model=ModelEventsResponse, responses=_ERRORS)
async def events(
    state: State,
    name: ModelName,
    key: Annotated[str | None, Security(admin_key_header)],
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 100,
) -> ModelEventsResponse:
    """The model's promotions, rollbacks and saved calibrations, newest first."""
    check_admin_key(state.settings.admin_key, key, "the events cannot be listed")
    records = state.records
    if records is None:
        raise not_ready_error()
    if records.recorder is None:
        return ModelEventsResponse(model=name, events=[])
    rows = await asyncio.to_thread(list_events, records.recorder.db_engine, name, limit)
    return ModelEventsResponse(model=name, events=[ModelEvent(**r) for r in rows])
