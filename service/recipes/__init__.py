"""Recipes: named, versioned bundles of a model and its verdict rules that the line switches between
(`models/recipes/<id>.json`); `catalog.RecipeCatalog` owns them."""

from service.recipes.catalog import RECIPES_DIR, RecipeCatalog, RecipeReport, RecipeUnavailableError, UnknownRecipeError
from service.recipes.recipe import Recipe, RecipeError, RecipeFileError, RecipeMismatchError, load_recipe

__all__ = [
    "RECIPES_DIR",
    "Recipe",
    "RecipeCatalog",
    "RecipeError",
    "RecipeFileError",
    "RecipeMismatchError",
    "RecipeReport",
    "RecipeUnavailableError",
    "UnknownRecipeError",
    "load_recipe",
]
