"""POST /v1/predict (and its alias POST /predict): one part's RGB image + point cloud → score, verdict, map.

The form is read by the route itself (`service.api.forms.read_form`: at most 2 files and 5 fields, each name
once, no undeclared field), after the request was admitted from its headers (`service.api.gate`); its text
fields are validated by `PredictFields` (`part_id` printable, see `schemas.PartId`). The request body the
OpenAPI contract shows is declared here (`PREDICT_FORM_SCHEMA`), since FastAPI does not parse the form.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, get_args

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.api.deps import ReadyState
from service.api.errors import PayloadTooLargeError
from service.api.forms import PREDICT_FORM, FormFile, FormValue, read_form
from service.api.gate import admission_pass
from service.api.hooks import serve_prediction
from service.api.middleware import REQUEST_ID_HEADER, accepted_request_id
from service.api.schemas import PART_ID_MAX_LENGTH, PartId, PredictResponse, error_responses
from service.api.security import require_line_key
from service.engine import PartUpload, ReturnMap
from service.lifecycle.shadow import ShadowJob
from service.logs import annotate_request
from service.recipes import Recipe, RecipeCatalog
from service.recipes.recipe import RECIPE_ID

MODEL_NAME_MAX_LENGTH = 128
FILE_FIELDS = ("rgb", "xyz")


class PredictFields(BaseModel):
    """The text fields of the predict form."""

    model_config = ConfigDict(extra="forbid")

    part_id: PartId | None = None
    meas_id: PartId | None = None
    model: str | None = Field(default=None, min_length=1, max_length=MODEL_NAME_MAX_LENGTH)
    recipe: str | None = Field(default=None, pattern=RECIPE_ID)
    return_map: ReturnMap = "none"


PREDICT_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(FILE_FIELDS),
    "additionalProperties": False,
    "properties": {
        "rgb": {
            "type": "string",
            "format": "binary",
            "description": "RGB image: PNG, JPEG or TIFF (gray, 16-bit, alpha accepted).",
        },
        "xyz": {
            "type": "string",
            "format": "binary",
            "description": "Organized point cloud, TIFF or NPY, H×W×3 float32/float64, metres; NaN or 0 = no point.",
        },
        "part_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": PART_ID_MAX_LENGTH,
            "description": "Echoed back and logged. Printable text: no control, bidirectional or other "
            "invisible formatting characters (422 otherwise).",
        },
        "meas_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": PART_ID_MAX_LENGTH,
            "description": "The line's measurement id (OPC 40100 MeasId): passed to the PLC interface and pushed "
            "results (MQTT, webhook) with this result; printable text as part_id.",
        },
        "model": {
            "type": "string",
            "minLength": 1,
            "maxLength": MODEL_NAME_MAX_LENGTH,
            "description": "Model name; default: the recipe's, else the configured one.",
        },
        "recipe": {
            "type": "string",
            "pattern": RECIPE_ID,
            "description": "Recipe id (GET /v1/recipes): its model and verdict rules score the part; default: the "
            "active recipe, unless `model` names another model than its; without one, the model's own rules.",
        },
        "return_map": {
            "type": "string",
            "enum": list(get_args(ReturnMap)),
            "default": "none",
            "description": "Anomaly map encoding in the answer.",
        },
    },
}
_FIELD_NAMES = (*FILE_FIELDS, *PredictFields.model_fields)

_ERRORS = error_responses(
    {
        400: "Undecodable upload (corrupt, unsupported format, wrong shape or dtype), or a malformed form",
        401: "Missing or wrong API key",
        403: "A key of another role (only the line key predicts)",
        404: "Unknown model or recipe",
        408: "The body did not arrive within BRIDGENET_BODY_TIMEOUT_S",
        413: "Upload or declared image size too large",
        409: "The X-Request-ID has a record already (duplicate_request_id): read it at GET /v1/results/{request_id}; "
        "or the recipe does not fit the model served (recipe_mismatch)",
        422: "Missing/invalid/repeated/undeclared form field, `model` other than the recipe's, or unusable input (no "
        "foreground, size mismatch, a recipe mask of another aspect, ...)",
        429: "Queue full (Retry-After)",
        503: "Not ready, model or recipe unavailable, the request timed out, or its record could not be written "
        "(Retry-After)",
    }
)

_ROUTE: dict[str, Any] = {
    "response_model": PredictResponse,
    "responses": _ERRORS,
    "openapi_extra": {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": PREDICT_FORM_SCHEMA}}}
    },
}

router = APIRouter(tags=["inspection"], dependencies=[Depends(require_line_key)])


def _file(form: Mapping[str, FormValue], name: str) -> FormFile:
    value = form.get(name)
    if value is None:
        raise RequestValidationError([{"type": "missing", "loc": ("body", name), "msg": "Field required"}])
    if not isinstance(value, FormFile):
        raise RequestValidationError([{"type": "value_error", "loc": ("body", name), "msg": "expected a file upload"}])
    return value


def _upload_bytes(upload: FormFile, field: str, max_bytes: int) -> bytes:
    """The upload's bytes; 413 when they exceed `max_bytes`."""
    if len(upload.data) > max_bytes:
        raise PayloadTooLargeError(
            f"{field}: the upload is {len(upload.data):,} bytes; the limit is {max_bytes:,} bytes"
        )
    return upload.data


def _recipe(recipes: RecipeCatalog, fields: PredictFields) -> Recipe | None:
    """The recipe that decides: the one named (404 / 503 when it cannot), else the active one unless the
    request names another model than the active recipe's. A named recipe and another model: 422."""
    if fields.recipe is not None:
        recipe = recipes.get(fields.recipe)
        if fields.model is not None and fields.model != recipe.model:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "model"),
                        "msg": f"recipe {recipe.id!r} scores with model {recipe.model!r}, not {fields.model!r}; "
                        "send one of the two",
                    }
                ]
            )
        return recipe
    active = recipes.active()
    if active is None or (fields.model is not None and fields.model != active.model):
        return None
    return active


def _fields(form: Mapping[str, FormValue]) -> PredictFields:
    values = {name: form[name] for name in PredictFields.model_fields if name in form}
    bad = next((name for name, v in values.items() if isinstance(v, FormFile)), None)
    if bad is not None:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", bad), "msg": "expected text, got a file"}]
        )
    try:
        return PredictFields.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


async def predict(http: Request, state: ReadyState) -> PredictResponse:
    """Score one part. `POST /predict` is the same operation under the path line controllers use."""
    received_at = time.perf_counter()
    form = await read_form(http, PREDICT_FORM, known=_FIELD_NAMES)
    rgb, xyz = _file(form, "rgb"), _file(form, "xyz")
    fields = _fields(form)
    recipe = _recipe(state.recipes, fields)  # an unknown recipe is refused before any work, nothing recorded
    model = state.engine.get(recipe.model if recipe is not None else fields.model)  # likewise an unknown model
    model_name = model.name
    rules = recipe.rules_for(model) if recipe is not None else None
    request = annotate_request(fields.part_id, model_name)
    # One record per request id: a client's id that has one is refused before any work (the service's
    # own ids are fresh UUIDs, not worth a lookup).
    if state.records is not None and accepted_request_id(http.headers.get(REQUEST_ID_HEADER)) is not None:
        await state.records.refuse_recorded(request.request_id)
    upload = PartUpload(
        rgb=_upload_bytes(rgb, "rgb", state.limits.max_bytes),
        xyz=_upload_bytes(xyz, "xyz", state.limits.max_bytes),
        model=model_name,
        return_map=fields.return_map,
        rules=rules,
    )
    served = await serve_prediction(
        state.admission, admission_pass(http.scope), state.engine, state.after_prediction, upload, request
    )
    total_ms = (time.perf_counter() - received_at) * 1e3
    response = PredictResponse.from_result(
        served.result,
        part_id=fields.part_id,
        request_id=request.request_id,
        queue_ms=served.queue_ms,
        total_ms=total_ms,
    )
    if state.records is not None:  # committed before the answer leaves: an answer always has its record
        await state.records.record_prediction(
            response.model_dump(mode="json", exclude={"anomaly_map"}),
            rgb=upload.rgb,
            xyz=upload.xyz,
            anomaly_map=served.result.prediction.model_map,  # the model's S×S map: 10× less to encode at 800 px
            model_sha256=served.result.prediction.model_sha256,
            client=http.client.host if http.client else None,
            meas_id=fields.meas_id,
        )
    if state.shadow is not None:  # queued, never waited for: a full queue skips the part (and counts it)
        state.shadow.submit(
            ShadowJob(request.request_id, model_name, upload.rgb, upload.xyz, served.result.prediction.is_anomalous)
        )
    return response


router.add_api_route("/v1/predict", predict, methods=["POST"], operation_id="predict", **_ROUTE)
router.add_api_route(
    "/predict",
    predict,
    methods=["POST"],
    operation_id="predict_alias",
    summary="Predict (alias of POST /v1/predict)",
    description="The same operation as `POST /v1/predict`, under the path line controllers were promised.",
    **_ROUTE,
)
