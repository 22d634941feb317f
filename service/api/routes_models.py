"""GET /v1/models: what is loaded, on which execution provider, with which threshold, and the other versions
each model folder stores."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadyState
from service.api.schemas import (
    CalibrationSummary,
    ErrorResponse,
    ModelInfo,
    ModelsResponse,
    StoredVersion,
    UnavailableModel,
)
from service.api.security import require_line_key
from service.engine import Engine
from service.lifecycle.promotion import previous_version
from service.lifecycle.versions import calibration_summary, other_versions

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_line_key)])


def _model_infos(engine: Engine) -> list[ModelInfo]:
    """Per served model: what is loaded (from memory) and what else its folder stores (from disk)."""
    default = engine.options.default_model
    infos = []
    for name, loaded in sorted(engine.models.items()):
        folder: Path = engine.options.models_dir / name
        stored = [
            StoredVersion(
                version=v.version,
                onnx_sha256=v.onnx_sha256,
                created=v.created,
                calibration=CalibrationSummary(**v.calibration),
            )
            for v in other_versions(folder)
            if v.version != loaded.manifest.version
        ]
        infos.append(
            ModelInfo(
                **loaded.info(),
                default=name == default,
                calibration=CalibrationSummary(**calibration_summary(loaded.manifest)),
                other_versions=stored,
                previous_version=previous_version(folder),
            )
        )
    return infos


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def list_models(state: ReadyState) -> ModelsResponse:
    default = state.engine.options.default_model
    models = await run_in_threadpool(_model_infos, state.engine)
    unavailable = [UnavailableModel(name=n, reason=r) for n, r in sorted(state.engine.unavailable.items())]
    return ModelsResponse(default_model=default, models=models, unavailable=unavailable)
