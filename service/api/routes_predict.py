"""POST /v1/predict: one part's RGB image + point cloud → score, verdict, anomaly map."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from service.api.deps import ReadyState
from service.api.errors import PayloadTooLargeError
from service.api.gate import admission_pass
from service.api.inference import serve_prediction
from service.api.schemas import ErrorResponse, PredictResponse
from service.api.security import require_api_key
from service.engine import PartUpload, ReturnMap
from service.logs import annotate_request

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
        503: "Not ready, the request timed out, or its record could not be written (Retry-After)",
    }.items()
}


async def _read_upload(upload: UploadFile, field: str, max_bytes: int) -> bytes:
    """The upload's bytes; refused from its size before reading when it exceeds `max_bytes`."""
    if upload.size is not None and upload.size > max_bytes:
        raise PayloadTooLargeError(f"{field}: the upload is {upload.size:,} bytes; the limit is {max_bytes:,} bytes")
    return await upload.read()


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(
    http: Request,
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
    model_name = state.engine.get(model).name  # an unknown model is refused before any decoding work
    request = annotate_request(part_id, model_name)
    upload = PartUpload(
        rgb=await _read_upload(rgb, "rgb", state.limits.max_bytes),
        xyz=await _read_upload(xyz, "xyz", state.limits.max_bytes),
        model=model_name,
        return_map=return_map,
    )
    admitted = admission_pass(http.scope)
    served = await serve_prediction(state.admission, admitted, state.engine, state.after_prediction, upload, request)
    total_ms = (time.perf_counter() - received_at) * 1e3
    response = PredictResponse.from_result(
        served.result, part_id=part_id, request_id=request.request_id, queue_ms=served.queue_ms, total_ms=total_ms
    )
    if state.records is not None:  # committed before the answer leaves: an answer always has its record
        await state.records.record_prediction(
            response.model_dump(mode="json", exclude={"anomaly_map"}),
            rgb=upload.rgb,
            xyz=upload.xyz,
            anomaly_map=served.result.prediction.anomaly_map,
            client=http.client.host if http.client else None,
        )
    return response
