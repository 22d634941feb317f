"""GET /v1/models/{name}/drift (the drift watch of the served version) and GET /v1/models/{name}/shadow (the
shadow candidate's agreement with the answers, and the parts where the two disagree, with their reviews)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from service.api.deps import State, not_ready_error
from service.api.errors import ApiError
from service.api.routes_lifecycle import NAME_PATTERN
from service.api.routes_results import RecorderDep, ResultReview
from service.api.schemas import ErrorResponse
from service.api.security import require_any_key, require_results_key
from service.lifecycle.shadow import agreement

router = APIRouter(prefix="/v1/models", tags=["models"])
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]


class UnknownModelApiError(ApiError):
    status, code = 404, "unknown_model"


class DriftWindow(BaseModel):
    size: int = Field(description="Parts the window holds at most (BRIDGENET_DRIFT_WINDOW).")
    n: int = Field(description="Parts in it now.")
    ng_parts: int = Field(description="Of those, answered NG (counted above every OK score).")
    quantiles: dict[str, float | None] = Field(
        description="Raw-score quantiles 0.1, 0.5, 0.9 of the window; null where one falls among the NG parts."
    )


class DriftReference(BaseModel):
    logit_mean: float
    logit_std: float
    n: int = Field(description="Good parts the calibration was fitted on.")
    median_score: float
    threshold: float = Field(description="The threshold in effect (an override included).")
    target_false_reject_rate: float
    expected_false_reject_rate: float | None
    share_with_a_region_bound: float | None = Field(
        description="Upper end of the calibration's interval for the share of good parts with a defect region."
    )


class DriftResponse(BaseModel):
    model: str
    version: str
    status: Literal["ok", "watch", "drifting"]
    judged: bool = Field(description="False while the window holds fewer than BRIDGENET_DRIFT_MIN_PARTS parts.")
    window: DriftWindow
    n: int
    z: float | None = Field(description="The window median's distance from the calibration's, in standard errors.")
    implied_false_reject_rate: float | None
    ok_parts_with_a_region: float | None = Field(description="Share of the window's OK parts with a defect region.")
    reasons: list[str]
    reference: DriftReference


class ShadowDisagreement(BaseModel):
    request_id: str
    part_id: str | None
    created: str
    version: str
    score: float
    threshold: float
    verdict: Literal["ok", "ng"]
    shadow_version: str
    shadow_score: float
    shadow_threshold: float
    shadow_verdict: Literal["ok", "ng"]
    review: ResultReview | None


class ShadowResponse(BaseModel):
    model: str
    candidate: str | None = Field(description="The candidate version shadowing the model now (none: null).")
    candidate_versions: list[str] = Field(description="Candidate versions with shadowed parts in the records.")
    shadowed: int
    agree: int
    disagree: int
    agreement: float | None
    by_verdict: dict[str, int] = Field(description="Parts by answer_candidate verdicts: ok_ok, ok_ng, ng_ok, ng_ng.")
    disagreements: list[ShadowDisagreement] = Field(description="Newest first.")


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    403: {"model": ErrorResponse, "description": "A key of another role"},
    404: {"model": ErrorResponse, "description": "The model is not served, or the audit trail is off"},
    503: {"model": ErrorResponse, "description": "Not started yet"},
}


@router.get("/{name}/drift", response_model=DriftResponse, responses=_ERRORS, dependencies=[Depends(require_any_key)])
def drift(state: State, name: ModelName) -> DriftResponse:
    """The served version's drift window against its calibration: quantiles, the implied false-reject rate,
    and the status (ok, watch, drifting)."""
    if state.watch is None:
        raise not_ready_error()
    report = state.watch.report(name)
    if report is None:
        raise UnknownModelApiError(f"model {name!r} is not served; served: {sorted(state.engine.models)}")
    return DriftResponse.model_validate(report.view())


@router.get(
    "/{name}/shadow", response_model=ShadowResponse, responses=_ERRORS, dependencies=[Depends(require_results_key)]
)
def shadow(
    state: State,
    recorder: RecorderDep,
    name: ModelName,
    version: Annotated[str | None, Query(max_length=64, description="One candidate version only.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Disagreements listed at most.")] = 100,
) -> ShadowResponse:
    """How often the shadow candidate's verdict agreed with the answer, and the parts where it did not."""
    view = agreement(recorder.db_engine, name, version=version, limit=limit)
    candidate = state.shadow.version(name) if state.shadow is not None else None
    return ShadowResponse.model_validate({**view, "candidate": candidate})
