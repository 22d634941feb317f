"""POST /v1/admin/reload: load new and changed model folders, drop removed ones, without a restart.
POST /v1/admin/push/retry: put the push dead letters back into the outbox.

Behind its own key (`BRIDGENET_ADMIN_KEY`, header `X-Admin-Key`): the line controllers' API key does not
change what the station serves. Without an admin key the route answers 403; SIGHUP does the same reload.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field, SecretStr

from service.api.deps import State, not_ready_error
from service.api.errors import ApiError
from service.api.reload import reload_models, reload_other_workers
from service.api.schemas import ErrorResponse, ReloadResponse
from service.api.security import check_api_key

ADMIN_KEY_HEADER = "X-Admin-Key"

admin_key_header = APIKeyHeader(
    name=ADMIN_KEY_HEADER,
    scheme_name="AdminKey",
    auto_error=False,
    description="Required on /v1/admin/*, and on /v1/status to see the push destinations' errors: the value of "
    "BRIDGENET_ADMIN_KEY.",
)


class AdminDisabledError(ApiError):
    status, code = 403, "admin_disabled"


class PushRetryResponse(BaseModel):
    requeued: dict[str, int] = Field(description="Destination → dead letters put back at the end of its outbox.")


_ADMIN_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong admin key"},
    403: {"model": ErrorResponse, "description": "No admin key is configured (BRIDGENET_ADMIN_KEY)"},
    503: {"model": ErrorResponse, "description": "Not ready"},
}


router = APIRouter(prefix="/v1/admin", tags=["operations"])


def check_admin_key(admin_key: SecretStr | None, key: str | None, instead: str) -> None:
    """Pass when `key` is the configured admin key; 403 when none is configured (`instead` says what to
    do then), 401 when it is missing or wrong."""
    if admin_key is None:
        raise AdminDisabledError(f"no admin key is configured (BRIDGENET_ADMIN_KEY); {instead}")
    check_api_key(admin_key, key, ADMIN_KEY_HEADER)


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses=_ADMIN_ERRORS,
)
async def reload(state: State, key: Annotated[str | None, Security(admin_key_header)]) -> ReloadResponse:
    """Reload the model folders: new ones are loaded, changed ones replaced, removed ones dropped; requests in
    flight finish on the version they started with. A folder that fails is reported and the others are
    served (a changed one keeps its previous version); the default model is never dropped."""
    check_admin_key(state.settings.admin_key, key, "send SIGHUP to reload instead")
    if not state.ready:
        raise not_ready_error()
    report = await reload_models(state)
    reload_other_workers(state)
    return ReloadResponse(**report.__dict__, models=sorted(state.engine.models))


@router.post("/push/retry", response_model=PushRetryResponse, responses=_ADMIN_ERRORS)
async def retry_push(
    state: State,
    key: Annotated[str | None, Security(admin_key_header)],
    destination: Annotated[
        Literal["mqtt", "webhook"] | None, Query(description="Only this destination's; unset: every one's.")
    ] = None,
) -> PushRetryResponse:
    """Re-queue the push dead letters (results refused for good, or taken out of the outbox by its age or
    size bound) at the end of their destination's outbox, oldest first, as new messages: they count against
    the bounds again from now. A destination that is not configured re-queues nothing."""
    check_admin_key(state.settings.admin_key, key, "dead letters cannot be re-queued")
    records = state.records
    if records is None:
        raise not_ready_error()
    return PushRetryResponse(requeued=await asyncio.to_thread(records.requeue_dead_letters, destination))
