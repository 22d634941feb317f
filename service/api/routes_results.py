"""GET /v1/results (+ .csv, one record, its evidence files) and GET /v1/status: the audit trail, read back.

The handlers are plain `def`: FastAPI runs them in its thread pool, where the blocking database reads
belong.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, Field

from service.api.deps import State
from service.api.errors import ApiError, NotReadyError
from service.api.routes_admin import ADMIN_KEY_HEADER, check_admin_key
from service.api.schemas import ErrorResponse
from service.api.security import require_any_key, require_results_key
from service.records.reviews import latest_reviews
from service.records.runtime import Records
from service.records.store import MAX_PAGE, CursorError, EvidenceKind, Recorder, ResultFilter

router = APIRouter(prefix="/v1", tags=["results"])
ReadsResults = [Depends(require_results_key)]


class ResultNotFoundError(ApiError):
    status, code = 404, "unknown_result"


class NotArchivedError(ApiError):
    status, code = 404, "not_archived"


class AuditOffError(ApiError):
    status, code = 404, "audit_off"


class InvalidCursorError(ApiError):
    status, code = 400, "invalid_cursor"


# ---- response models


class ResultModel(BaseModel):
    name: str
    version: str
    onnx_sha256: str


class ResultRecipe(BaseModel):
    id: str
    version: str | None


class ResultEvidence(BaseModel):
    status: Literal["archived", "not_kept", "failed", "pruned"] = Field(
        description="archived: files available; not_kept: BRIDGENET_ARCHIVE skipped this part; failed: could "
        "not be stored (disk full); pruned: removed by retention."
    )
    rgb_sha256: str | None
    xyz_sha256: str | None
    map_sha256: str | None


class ResultReview(BaseModel):
    outcome: Literal["confirmed", "false_reject", "missed_defect"]
    defect_type: str | None
    comment: str | None
    operator: str
    created: datetime


class ResultShadow(BaseModel):
    version: str = Field(description="The candidate's version (BRIDGENET_SHADOW).")
    score: float
    threshold: float = Field(description="The candidate's own threshold.")
    is_anomalous: bool = Field(description="The candidate's verdict.")


class ResultRecord(BaseModel):
    request_id: str
    part_id: str | None
    created: datetime = Field(description="When the request was received (UTC).")
    model: ResultModel
    score: float
    threshold: float
    threshold_source: str
    is_anomalous: bool = Field(description="Not accepted: NG or REVIEW.")
    verdict: Literal["ok", "review", "ng"]
    recipe: ResultRecipe | None = Field(description="The recipe whose rules decided; null: the model's own.")
    defect_area_fraction: float
    decision_rule: str
    regions: list[dict[str, Any]]
    timings_ms: dict[str, float]
    provider: str
    client: str | None = Field(description="Address of the client that asked.")
    evidence: ResultEvidence
    review: ResultReview | None = Field(
        default=None, description="The latest review at the review station (/ui); null while unreviewed."
    )
    shadow: ResultShadow | None = Field(
        default=None,
        description="The shadow candidate's answer on this part (scored after the answer); null when none "
        "shadowed the model, or the part was skipped or is still queued.",
    )


class ResultsPage(BaseModel):
    results: list[ResultRecord] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


# What /v1/status shows instead of a delivery error without the admin key: the errors name the
# destination's host, port and path, which the line's clients have no need to learn.
HIDDEN_ERROR = f"delivery failed; send {ADMIN_KEY_HEADER} to see the error"


class PushBacklog(BaseModel):
    waiting: int = Field(description="Results not yet delivered to this destination.")
    oldest_age_s: float | None
    attempts: int = Field(description="Failed attempts on the oldest waiting result.")
    last_error: str | None = Field(
        description=f"The oldest waiting result's last delivery error; with {ADMIN_KEY_HEADER} only (it names "
        f"internal hosts), else {HIDDEN_ERROR!r}."
    )
    dead_letters: int = Field(
        description="Results taken out of the outbox undelivered (refused with a 4xx, too old, over the "
        "backlog bound); POST /v1/admin/push/retry re-queues them."
    )


class ArchiveStatus(BaseModel):
    policy: Literal["none", "ng", "all"]
    bytes: int
    max_bytes: int


class PlcBuffer(BaseModel):
    capacity: int = Field(description="Results kept ready at most (BRIDGENET_OPCUA_BUFFER_SIZE).")
    unacknowledged: int = Field(description="Results made ready to the PLC and not acknowledged yet.")
    waiting: int = Field(description="Results held back because the buffer is full: an overrun in progress.")
    overrun: bool = Field(description="Results are waiting (the VisionSystem shows Error, code 2).")
    overruns: int = Field(description="Results that found the buffer full since the start.")
    acknowledged: int = Field(description="Results acknowledged since the start.")
    expired: int = Field(description="Results unacknowledged past BRIDGENET_OPCUA_RESULT_TTL_S (dead letters).")
    oldest_result_id: str | None = Field(description="The result the PLC should read and acknowledge next.")
    oldest_age_s: float | None


class StatusResponse(BaseModel):
    audit: Literal["on", "off"]
    database: str | None = Field(description="sqlite or postgresql.")
    archive: ArchiveStatus | None
    push: dict[str, PushBacklog] = Field(description="By destination (mqtt, webhook, opcua).")
    plc: dict[str, PlcBuffer] | None = Field(
        default=None, description="The OPC UA result handshake by model; null when BRIDGENET_OPCUA_URL is unset."
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid filter or cursor"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    403: {"model": ErrorResponse, "description": "A key of another role (the line key cannot read results)"},
    404: {"model": ErrorResponse, "description": "Unknown result, evidence not archived, or audit off"},
    503: {"model": ErrorResponse, "description": "Not started yet"},
}


# ---- dependencies


def records_of(state: State) -> Records:
    """The records, or 503 not_ready while the lifespan has not opened them yet."""
    if state.records is None:
        raise NotReadyError("the records are not open yet: the service is starting", retry_after_s=5)
    return state.records


def recorder_of(state: State) -> Recorder:
    """The recorder (for this API and the review station), or 503 before the records are open and 404
    audit_off when BRIDGENET_AUDIT=off."""
    records = records_of(state)
    if records.recorder is None:
        raise AuditOffError("BRIDGENET_AUDIT=off: this service records no results")
    return records.recorder


RecorderDep = Annotated[Recorder, Depends(recorder_of)]


# RFC 3339 date-time, as the contract declares (format: date-time): a number (pydantic would read it as a
# Unix time) or a date without a time or an offset is refused (422) instead of silently reinterpreted.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str):
        if not _RFC3339.fullmatch(value):
            raise ValueError(f"expected an RFC 3339 date-time such as 2026-11-30T08:00:00Z, got {value!r}")
        return value.upper()  # t and z are allowed by RFC 3339, Python reads T and Z
    return value


DateTime = Annotated[datetime, BeforeValidator(_rfc3339)]


def _filters(
    part_id: Annotated[str | None, Query(max_length=256)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    verdict: Annotated[
        Literal["ok", "review", "ng"] | None,
        Query(description="ok, review (in the review band: a person decides) or ng."),
    ] = None,
    since: Annotated[DateTime | None, Query(description="RFC 3339 date-time with offset, inclusive.")] = None,
    until: Annotated[DateTime | None, Query(description="RFC 3339 date-time with offset, exclusive.")] = None,
) -> ResultFilter:
    return ResultFilter(part_id=part_id, model=model, verdict=verdict, since=since, until=until)


Filters = Annotated[ResultFilter, Depends(_filters)]


# ---- routes


@router.get("/results", response_model=ResultsPage, responses=_ERRORS, dependencies=ReadsResults)
def list_results(
    recorder: RecorderDep,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ResultsPage:
    try:
        views, next_cursor = recorder.query(filters, limit=limit, cursor=cursor)
    except CursorError as exc:
        raise InvalidCursorError(str(exc)) from None
    reviews = latest_reviews(recorder.db_engine, [v["request_id"] for v in views])
    results = [ResultRecord.model_validate({**v, "review": reviews.get(v["request_id"])}) for v in views]
    return ResultsPage(results=results, next_cursor=next_cursor)


CSV_COLUMNS = (
    "request_id",
    "created",
    "part_id",
    "model",
    "model_version",
    "model_onnx_sha256",
    "score",
    "threshold",
    "threshold_source",
    "verdict",
    "defect_area_fraction",
    "decision_rule",
    "provider",
    "client",
    "evidence",
    "total_ms",
    "shadow_version",
    "shadow_score",
    "shadow_verdict",
    "recipe",
    "recipe_version",
)


def _cell(value: Any) -> Any:
    # A spreadsheet runs a cell starting with = + - @ as a formula; part ids come from the line's clients.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def _csv_row(v: dict[str, Any]) -> list[Any]:
    row = [
        v["request_id"],
        v["created"],
        v["part_id"],
        v["model"]["name"],
        v["model"]["version"],
        v["model"]["onnx_sha256"],
        v["score"],
        v["threshold"],
        v["threshold_source"],
        v["verdict"],
        v["defect_area_fraction"],
        v["decision_rule"],
        v["provider"],
        v["client"],
        v["evidence"]["status"],
        v["timings_ms"].get("total"),
        *(
            (None, None, None)
            if v.get("shadow") is None
            else (v["shadow"]["version"], v["shadow"]["score"], "ng" if v["shadow"]["is_anomalous"] else "ok")
        ),
        (v["recipe"] or {}).get("id"),
        (v["recipe"] or {}).get("version"),
    ]
    return [_cell(c) for c in row]


@router.get(
    "/results.csv",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: {"content": {"text/csv": {}}, "description": "All matching records, newest first."}},
    dependencies=ReadsResults,
)
def results_csv(recorder: RecorderDep, filters: Filters) -> StreamingResponse:
    def rows() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        cursor: str | None = None
        while True:
            views, cursor = recorder.query(filters, limit=MAX_PAGE, cursor=cursor)
            for v in views:
                writer.writerow(_csv_row(v))
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if cursor is None:
                return

    return StreamingResponse(
        rows(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="results.csv"'}
    )


@router.get("/results/{request_id}", response_model=ResultRecord, responses=_ERRORS, dependencies=ReadsResults)
def get_result(recorder: RecorderDep, request_id: Annotated[str, Path(max_length=128)]) -> ResultRecord:
    view = recorder.get(request_id)
    if view is None:
        raise ResultNotFoundError(f"no record of request {request_id!r}")
    return ResultRecord.model_validate(
        {**view, "review": latest_reviews(recorder.db_engine, [request_id]).get(request_id)}
    )


def media_type(data: bytes) -> tuple[str, str]:
    """Content type and file extension of an archived upload, from its first bytes."""
    if data.startswith(b"\x89PNG"):
        return "image/png", "png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg", "jpg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff", "tiff"
    if data.startswith(b"\x93NUMPY"):
        return "application/octet-stream", "npy"
    return "application/octet-stream", "bin"


@router.get(
    "/results/{request_id}/files/{kind}",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "The archived upload exactly as received (rgb, xyz) or the anomaly map as a 16-bit PNG "
            "(map: score = pixel / 65535, at the model's resolution: resize it bilinearly to the part's image to "
            "line it up). ETag: the file's sha256.",
            "content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {}, "application/octet-stream": {}},
        },
    },
    dependencies=ReadsResults,
)
def get_result_file(
    recorder: RecorderDep, request_id: Annotated[str, Path(max_length=128)], kind: EvidenceKind
) -> Response:
    found = recorder.evidence_file(request_id, kind)
    if found is None:
        if recorder.get(request_id) is None:
            raise ResultNotFoundError(f"no record of request {request_id!r}")
        raise NotArchivedError(
            f"request {request_id!r} has no archived {kind} file (BRIDGENET_ARCHIVE policy, retention, or a "
            "failed write; see the record's evidence.status)"
        )
    sha, data = found
    content_type, ext = media_type(data)
    return Response(
        data,
        media_type=content_type,
        headers={"ETag": f'"{sha}"', "Content-Disposition": f'attachment; filename="{request_id}-{kind}.{ext}"'},
    )


# The service's own state, no part data: the line's and the results reader's keys both read it.
@router.get(
    "/status",
    response_model=StatusResponse,
    responses={
        **_ERRORS,
        401: {"model": ErrorResponse, "description": "Missing or wrong API key, or a wrong admin key"},
        403: {"model": ErrorResponse, "description": "An admin key was sent but none is configured"},
    },
    dependencies=[Depends(require_any_key)],
)
def service_status(
    records: Annotated[Records, Depends(records_of)],
    state: State,
    # A plain optional header, not a security scheme: the admin key adds detail here, it is not an alternative
    # to the line's or the results reader's key.
    admin_key: Annotated[
        str | None, Header(alias=ADMIN_KEY_HEADER, description="BRIDGENET_ADMIN_KEY: shows delivery errors")
    ] = None,
) -> StatusResponse:
    """The audit trail, the push backlog and the PLC's acknowledgement state: a push destination that is
    down shows here (and in bridgenet_push_backlog), never in /readyz, so the line keeps running. Delivery
    errors name internal hosts: they are shown with the admin key only."""
    status = records.status()
    if admin_key is not None:
        check_admin_key(state.settings.admin_key, admin_key, f"send no {ADMIN_KEY_HEADER}")
    else:
        for backlog in status["push"].values():
            if backlog.get("last_error") is not None:
                backlog["last_error"] = HIDDEN_ERROR
    status["plc"] = state.plc.handshake.status() if state.plc is not None else None
    return StatusResponse.model_validate(status)
