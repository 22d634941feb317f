"""GET /v1/models: what is loaded, on which execution provider, with which threshold."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import ReadyState
from service.api.schemas import ErrorResponse, ModelInfo, ModelsResponse, UnavailableModel
from service.api.security import require_line_key

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_line_key)])


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def list_models(state: ReadyState) -> ModelsResponse:
    default = state.engine.options.default_model
    models = [
        ModelInfo(**loaded.info(), default=name == default) for name, loaded in sorted(state.engine.models.items())
    ]
    unavailable = [UnavailableModel(name=n, reason=r) for n, r in sorted(state.engine.unavailable.items())]
    return ModelsResponse(default_model=default, models=models, unavailable=unavailable)
