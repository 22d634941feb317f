"""GET /v1/recipes: the recipes the service knows (models/recipes/<id>.json), the active one, and the files
that failed to load."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from service.api.deps import ReadyState
from service.api.schemas import ErrorResponse
from service.api.security import require_line_key

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_line_key)])


class RecipeInfo(BaseModel):
    id: str
    version: str
    description: str
    model: str = Field(description="The model that scores the recipe's parts.")
    model_version: str | None = Field(description="Parts are refused (409) unless this version is served; null: any.")
    threshold: float | None = Field(description="Image threshold instead of the model's; null: the model's.")
    review_threshold: float | None = Field(
        description="The review band's upper edge instead of the model's; null: the model's band (or none)."
    )
    min_defect_area_mm2: float | None
    min_defect_length_mm: float | None
    roi_mask: str | None = Field(description="The region-of-interest PNG beside the recipe; null: the whole part.")
    roi_mask_size: list[int] | None = Field(None, description="The mask's width and height, pixels.")
    active: bool = Field(description="Whether requests without a `recipe` field get this one.")


class UnavailableRecipe(BaseModel):
    id: str
    reason: str = Field(description="Why its file is not served (or, for a changed file, not replaced).")


class RecipesResponse(BaseModel):
    active: str | None = Field(description="The active recipe; null: none (each model's own rules).")
    recipes: list[RecipeInfo]
    unavailable: list[UnavailableRecipe] = Field(
        default_factory=list, description="Recipe files that failed to load; requests naming them get 503."
    )


@router.get(
    "/recipes",
    response_model=RecipesResponse,
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def list_recipes(state: ReadyState) -> RecipesResponse:
    catalog = state.recipes
    active = catalog.active_id
    return RecipesResponse(
        active=active,
        recipes=[RecipeInfo(**r.summary(), active=r.id == active) for r in catalog.recipes()],
        unavailable=[UnavailableRecipe(id=i, reason=r) for i, r in sorted(catalog.unavailable.items())],
    )
