"""GET /v1/recipes: the recipes the service knows (models/recipes/<id>.json), the active one, and the files
that failed to load. PUT /v1/admin/recipes/active (admin key): switch the active recipe by hand, as the PLC
does over OPC UA."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Security
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import ReadyState, State, not_ready_error
from service.api.routes_admin import admin_key_header, check_admin_key
from service.api.schemas import ErrorResponse, error_responses
from service.api.security import require_line_key
from service.recipes.recipe import RECIPE_ID

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_line_key)])
admin_router = APIRouter(prefix="/v1/admin", tags=["operations"])


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


class ActiveRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: str | None = Field(
        pattern=RECIPE_ID,
        description="The recipe requests without a `recipe` field get; null: none (each model's own rules).",
    )


@admin_router.put(
    "/recipes/active",
    response_model=ActiveRecipe,
    responses=error_responses(
        {
            400: "The body is not JSON",
            401: "Missing or wrong admin key",
            403: "No admin key is configured (BRIDGENET_ADMIN_KEY)",
            404: "Unknown recipe",
            503: "Not ready, or the recipe's file failed to load",
        }
    ),
)
async def set_active_recipe(
    state: State, body: ActiveRecipe, key: Annotated[str | None, Security(admin_key_header)]
) -> ActiveRecipe:
    """Make a recipe the active one (null: none) until the next switch or restart (`BRIDGENET_RECIPE` is
    the one at start). The next request without a `recipe` field gets it."""
    check_admin_key(state.settings.admin_key, key, "set BRIDGENET_RECIPE and restart instead")
    if not state.ready:
        raise not_ready_error()
    state.recipes.set_active(body.recipe)
    return ActiveRecipe(recipe=state.recipes.active_id)
