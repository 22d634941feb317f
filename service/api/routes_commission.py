"""POST /v1/admin/models/{name}/calibrations: a calibration proposed from the line's recorded parts and their
reviews; POST .../calibrations/{id}/save: store it as a new version (promote is routes_lifecycle's).

Behind the admin key. The review station's commissioning page (service.ui) calls `make_proposal` and
`save` too, with its admin user as the actor.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Security
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool

from service.api.deps import ServiceState, State, not_ready_error
from service.api.errors import ApiError
from service.api.routes_admin import admin_key_header, check_admin_key
from service.api.routes_lifecycle import (
    _ERRORS,
    AuditOffError,
    ModelEvent,
    ModelName,
    Operator,
    VersionConflictApiError,
    VersionNotFoundApiError,
    _actor,
)
from service.api.schemas import ErrorResponse
from service.lifecycle.commission import (
    MAX_WINDOW_PARTS,
    ContaminatedSampleError,
    ProposalNotFoundError,
    TooFewPartsError,
    Window,
    propose,
    save_proposal,
)
from service.lifecycle.promotion import record_event
from service.lifecycle.rate import DEFAULT as DEFAULT_RATE
from service.lifecycle.thresholds import DEFAULT_CONFIDENCE, CalibrationInputError
from service.lifecycle.versions import VersionConflictError, VersionNotFoundError, model_folder
from service.lifecycle.writing import VersionWriteError
from service.records.store import Recorder

log = logging.getLogger(__name__)


class TooFewPartsApiError(ApiError):
    status, code = 422, "too_few_parts"


class ContaminatedSampleApiError(ApiError):
    status, code = 409, "good_sample_has_defects"


class ProposalNotFoundApiError(ApiError):
    status, code = 404, "proposal_not_found"


class CalibrationInputApiError(ApiError):
    status, code = 422, "calibration_input"


class CalibrationRequest(BaseModel):
    """Which recorded parts (a time window, the newest `last` of it, or both) and how to set the threshold."""

    start: datetime | None = Field(default=None, description="Parts received at or after this (ISO 8601).")
    end: datetime | None = Field(default=None, description="Parts received before this (ISO 8601).")
    last: int | None = Field(default=None, ge=1, le=MAX_WINDOW_PARTS, description="Only the newest this many.")
    method: Literal["normal_tolerance", "normal_prediction", "gumbel_tolerance", "empirical"] = "normal_tolerance"
    false_reject_rate: float = Field(default=DEFAULT_RATE, gt=0, lt=0.5, description="Target share of good parts.")
    confidence: float = Field(default=DEFAULT_CONFIDENCE, ge=0.5, lt=1, description="Of the tolerance methods' bound.")

    @model_validator(mode="after")
    def _ordered(self) -> CalibrationRequest:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        for moment in (self.start, self.end):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{moment.isoformat()} has no time zone: give one (e.g. Z for UTC)")
        return self


class CalibrationProposal(BaseModel):
    id: str = Field(description="Pass it to .../calibrations/{id}/save within an hour, on the same replica.")
    created: str
    model: str
    window: dict[str, Any] = Field(description="First and last part used, and the active version's parts in it.")
    good_sample: dict[str, Any] = Field(description="n = answered OK + NG parts reviewed as false rejects.")
    defect_sample: dict[str, Any] = Field(description="NG parts reviewed as confirmed defects.")
    proposed: dict[str, Any] = Field(
        description="Threshold, pixel threshold (kept from the active version), n, promised rate with its interval, "
        "the distribution-free bound, and `on_the_line`: good parts above it and confirmed defects detected."
    )
    active: dict[str, Any] = Field(description="The active version's figures, and `on_the_line` on the same sample.")
    histogram: dict[str, Any] = Field(description="Shared bin edges and counts of good and defect scores.")
    warnings: list[str]


class SaveRequest(BaseModel):
    reason: str = Field(default="", max_length=2000, description="Why; kept in the audit record.")


class SaveResponse(BaseModel):
    event: ModelEvent
    version: str = Field(description="The stored version; promote it with .../promote.")
    calibration: dict[str, Any]


_COMMISSION_ERRORS: dict[int | str, dict[str, object]] = {
    **_ERRORS,
    400: {"model": ErrorResponse, "description": "The optional body of save is not JSON"},
    404: {"model": ErrorResponse, "description": "No such model, or the proposal expired"},
    409: {
        "model": ErrorResponse,
        "description": "The good sample holds reviewed defects, audit trail off, or the active version changed",
    },
    422: {"model": ErrorResponse, "description": "Too few good parts, or the body is not valid"},
}

router = APIRouter(prefix="/v1/admin/models", tags=["operations"])
ProposalId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


def _recorder(state: ServiceState) -> Recorder:
    if not state.ready or state.records is None:
        raise not_ready_error()
    if state.records.recorder is None:
        raise AuditOffError("the audit trail is off (BRIDGENET_AUDIT=off): there are no recorded parts to calibrate on")
    return state.records.recorder


async def make_proposal(state: ServiceState, name: str, body: CalibrationRequest) -> CalibrationProposal:
    """Propose a calibration of model `name` from its recorded parts; the proposal is kept for `save`."""
    recorder = _recorder(state)
    loaded = state.engine.models.get(name)
    if loaded is None:
        raise VersionNotFoundApiError(f"model {name!r} is not served here; served: {sorted(state.engine.models)}")
    window = Window(body.start, body.end, body.last)
    try:
        proposal = await run_in_threadpool(
            propose, recorder.db_engine, name, loaded.manifest, loaded.onnx_sha256, window,
            method=body.method, rate=body.false_reject_rate, confidence=body.confidence,
            min_parts=state.settings.commission_min_parts,
        )  # fmt: skip
    except TooFewPartsError as exc:
        raise TooFewPartsApiError(str(exc)) from exc
    except ContaminatedSampleError as exc:
        raise ContaminatedSampleApiError(str(exc)) from exc
    except (CalibrationInputError, ValueError) as exc:
        raise CalibrationInputApiError(str(exc)) from exc
    state.proposals.put(proposal)
    return CalibrationProposal(**proposal.answer)


async def save(state: ServiceState, name: str, proposal_id: str, actor: str, reason: str) -> SaveResponse:
    """Store proposal `proposal_id` as a new version of model `name` and record it in the audit trail."""
    recorder = _recorder(state)
    try:
        proposal = state.proposals.get(proposal_id, name)
        folder = model_folder(state.engine.options.models_dir, name)
        async with state.reload_lock:  # not while a promotion moves the folder's files
            switch = await run_in_threadpool(save_proposal, folder, proposal)
    except ProposalNotFoundError as exc:
        raise ProposalNotFoundApiError(str(exc)) from exc
    except VersionNotFoundError as exc:
        raise VersionNotFoundApiError(str(exc)) from exc
    except (VersionConflictError, VersionWriteError) as exc:
        raise VersionConflictApiError(str(exc)) from exc
    except OSError as exc:  # e.g. the models folder mounted read-only
        raise VersionConflictApiError(f"the model folder of {name!r} cannot be written: {exc}") from exc
    state.proposals.drop(proposal_id)
    event = await asyncio.to_thread(record_event, recorder.db_engine, name, switch, actor, reason)
    log.info("model %s: calibration saved as version %s", name, switch.after.version)
    return SaveResponse(event=ModelEvent(**event), version=switch.after.version, calibration=switch.after.calibration)


@router.post("/{name}/calibrations", response_model=CalibrationProposal, responses=_COMMISSION_ERRORS)
async def calibrations(
    state: State,
    name: ModelName,
    body: CalibrationRequest,
    key: Annotated[str | None, Security(admin_key_header)],
) -> CalibrationProposal:
    """Propose a calibration from the model's recorded parts: the good sample is the parts answered OK in the
    window plus the NG parts reviewed as false rejects, the defect sample the parts reviewed as confirmed;
    only the active version's parts count. Nothing is scored again; nothing changes until saved."""
    check_admin_key(state.settings.admin_key, key, "run `python -m training calibrate` instead")
    return await make_proposal(state, name, body)


@router.post("/{name}/calibrations/{proposal_id}/save", response_model=SaveResponse, responses=_COMMISSION_ERRORS)
async def save_calibration(
    state: State,
    name: ModelName,
    proposal_id: ProposalId,
    key: Annotated[str | None, Security(admin_key_header)],
    body: SaveRequest | None = None,
    operator: Operator = None,
) -> SaveResponse:
    """Store a proposal as a new version of the model (its files under history/<version>/, as `training
    calibrate` writes them); the active version stays active until the new one is promoted."""
    check_admin_key(state.settings.admin_key, key, "run `python -m training calibrate` instead")
    return await save(state, name, proposal_id, _actor(operator), body.reason if body else "")
