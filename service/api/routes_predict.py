"""POST /v1/predict: one part's RGB image + point cloud → score, verdict, anomaly map."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.api.deps import ReadyState
from service.api.errors import PayloadTooLargeError
from service.api.inference import ReturnMap, run_prediction
from service.api.schemas import AnomalyMap, ErrorResponse, ModelRef, PredictResponse, Timings
from service.api.security import require_api_key
from service.logs import current_request

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["inspection"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Undecodable upload (corrupt, unsupported format, wrong shape or dtype)",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Upload or declared image size too large",
        422: "Missing/invalid form field, or unusable input (no foreground, size mismatch, ...)",
        429: "Queue full (Retry-After)",
        503: "Not ready, or the request timed out (Retry-After)",
    }.items()
}


async def _read_upload(upload: UploadFile, field: str, max_bytes: int) -> bytes:
    """The upload's bytes; refused from its size before reading when it exceeds `max_bytes`."""
    if upload.size is not None and upload.size > max_bytes:
        raise PayloadTooLargeError(f"{field}: the upload is {upload.size:,} bytes; the limit is {max_bytes:,} bytes")
    return await upload.read()


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(
    state: ReadyState,
    rgb: Annotated[UploadFile, File(description="RGB image: PNG, JPEG or TIFF (gray, 16-bit, alpha accepted).")],
    xyz: Annotated[
        UploadFile,
        File(description="Organized point cloud, TIFF or NPY, H×W×3 float32/float64, metres; NaN or 0 = no point."),
    ],
    part_id: Annotated[str | None, Form(max_length=256, description="Echoed back and logged.")] = None,
    model: Annotated[str | None, Form(max_length=128, description="Model name; default: the configured one.")] = None,
    return_map: Annotated[ReturnMap, Form(description="Anomaly map encoding in the answer.")] = "none",
) -> PredictResponse:
    received_at = time.perf_counter()
    ctx = current_request()
    if ctx is not None:
        ctx.part_id = part_id
    loaded = state.engine.get(model)  # an unknown model is refused before any decoding work
    if ctx is not None:
        ctx.model = loaded.name
    max_bytes = state.limits.max_bytes
    rgb_bytes = await _read_upload(rgb, "rgb", max_bytes)
    xyz_bytes = await _read_upload(xyz, "xyz", max_bytes)
    assert state.admission is not None  # guaranteed by ReadyState
    outcome = await state.admission.run(
        run_prediction,
        state.engine,
        state.limits,
        rgb_bytes,
        xyz_bytes,
        model_name=loaded.name,
        return_map=return_map,
        submitted_at=time.perf_counter(),
    )
    p = outcome.prediction
    timings = {**outcome.timings_ms, "total": (time.perf_counter() - received_at) * 1e3}
    state.metrics.observe_prediction(p.model, p.score, p.is_anomalous, timings)
    log.info(
        "scored part",
        extra={"score": p.score, "threshold": p.threshold, "is_anomalous": p.is_anomalous, "provider": p.provider},
    )
    height, width = p.anomaly_map.shape
    return PredictResponse(
        model=ModelRef(name=p.model, version=p.version),
        part_id=part_id,
        score=p.score,
        threshold=p.threshold,
        threshold_source=p.threshold_source,  # type: ignore[arg-type]
        is_anomalous=p.is_anomalous,
        anomaly_map=(
            AnomalyMap(width=width, height=height, encoding=return_map, data=outcome.map_b64)
            if return_map != "none" and outcome.map_b64 is not None
            else None
        ),
        defect_area_fraction=p.defect_area_fraction,
        timings_ms=Timings(**{k: round(v, 3) for k, v in timings.items()}),
        provider=p.provider,
        request_id=ctx.request_id if ctx is not None else "",
    )
