"""`RecipeCatalog`: the recipes in the recipes folder, which one is active, loads and reloads.

A recipe file that fails to load never stops the others: it is logged as an error, listed with its reason
under `unavailable` (GET /v1/recipes) and a request naming it gets 503 `recipe_unavailable`. A reload keeps
the previous version of a changed file that fails. The active recipe is the one requests without a `recipe`
field get (the PLC switches it over OPC UA); a start naming an active recipe that does not load fails,
naming the file and the fault, rather than serving parts with rules nobody chose.

Thread-safe: `set_active`, `reload` and the readers may run from any thread or from the event loop (the
lock is held only to swap references, never over file reads).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.recipes.recipe import SUFFIX, Recipe, RecipeError, RecipeFileError, RecipeMismatchError, load_recipe

log = logging.getLogger(__name__)

RECIPES_DIR = "recipes"  # the recipes folder's name in the models folder, unless BRIDGENET_RECIPES_DIR says

__all__ = [
    "RECIPES_DIR",
    "RecipeCatalog",
    "RecipeError",
    "RecipeMismatchError",
    "RecipeReport",
    "RecipeUnavailableError",
    "UnknownRecipeError",
]


class UnknownRecipeError(RecipeError):
    """No recipe file of that id."""


class RecipeUnavailableError(RecipeError):
    """The recipe's file is there but failed to load (the reason is in GET /v1/recipes)."""


@dataclass(frozen=True)
class RecipeReport:
    """What a load or reload found, by recipe id. `failed`: id → reason (a changed file that failed keeps its
    previous version, and is listed in `kept` too)."""

    loaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _fingerprint(path: Path, recipe: Recipe | None) -> tuple[int, ...]:
    files = [path] + ([path.parent / recipe.spec.roi_mask] if recipe is not None and recipe.spec.roi_mask else [])
    stats = [f.stat() for f in files if f.is_file()]
    return tuple(v for st in stats for v in (st.st_mtime_ns, st.st_size))


class RecipeCatalog:
    """The recipes of `folder` (`<id>.json`, masks beside them); `active`: the recipe requests without a
    `recipe` field get, None for the models' own rules. Nothing is read until `load`."""

    def __init__(self, folder: Path | None, active: str | None = None) -> None:
        self.folder = folder
        self._recipes: dict[str, Recipe] = {}
        self._fingerprints: dict[str, tuple[int, ...]] = {}
        self._failed: dict[str, str] = {}
        self._active = active
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str | None], None]] = []

    # ---- reading

    def get(self, recipe_id: str) -> Recipe:
        """The recipe `recipe_id`; UnknownRecipeError or RecipeUnavailableError naming it."""
        recipes, failed = self._recipes, self._failed
        recipe = recipes.get(recipe_id)
        if recipe is not None:
            return recipe
        if recipe_id in failed:
            raise RecipeUnavailableError(f"recipe {recipe_id!r} is unavailable: {failed[recipe_id]}")
        raise UnknownRecipeError(f"recipe {recipe_id!r} is not known; available: {sorted(recipes)}")

    def ids(self) -> list[str]:
        """The ids of the recipes that loaded, sorted."""
        return sorted(self._recipes)

    def recipes(self) -> list[Recipe]:
        recipes = self._recipes
        return [recipes[i] for i in sorted(recipes)]

    @property
    def unavailable(self) -> dict[str, str]:
        return dict(self._failed)

    @property
    def active_id(self) -> str | None:
        return self._active

    def active(self) -> Recipe | None:
        """The active recipe, or None when none is."""
        active = self._active
        return None if active is None else self.get(active)

    # ---- changing

    def set_active(self, recipe_id: str | None) -> None:
        """Make `recipe_id` the recipe requests without a `recipe` field get (None: the models' own rules).
        UnknownRecipeError / RecipeUnavailableError, and nothing changes, unless it loaded."""
        with self._lock:
            if recipe_id is not None:
                self.get(recipe_id)
            previous, self._active = self._active, recipe_id
            listeners = list(self._listeners)
        if previous != recipe_id:
            log.info("active recipe: %s (was %s)", recipe_id, previous)
            for listener in listeners:
                listener(recipe_id)

    def add_listener(self, listener: Callable[[str | None], None]) -> None:
        """Call `listener(new_id)` after each change of the active recipe (in the thread that changed it)."""
        with self._lock:
            self._listeners.append(listener)

    def load(self) -> RecipeReport:
        """Read every recipe file (start-up). Raises RecipeFileError when the active recipe does not load."""
        report = self.reload()
        active = self._active
        if active is not None and active not in self._recipes:
            reason = self._failed.get(active, f"no file {active}{SUFFIX} in {self.folder}")
            raise RecipeFileError(f"the active recipe {active!r} (BRIDGENET_RECIPE) cannot be used: {reason}")
        return report

    def reload(self) -> RecipeReport:
        """Read new and changed recipe files, drop removed ones. A changed file that fails keeps its previous
        version; the active recipe is never dropped (its file gone, its last version stays, reported)."""
        report = RecipeReport()
        paths = self._paths()
        current, fingerprints = dict(self._recipes), dict(self._fingerprints)
        recipes: dict[str, Recipe] = {}
        new_fingerprints: dict[str, tuple[int, ...]] = {}
        failed: dict[str, str] = {}
        for recipe_id, path in paths.items():
            old = current.get(recipe_id)
            fingerprint = _fingerprint(path, old)
            if old is not None and fingerprints.get(recipe_id) == fingerprint:
                recipes[recipe_id], new_fingerprints[recipe_id] = old, fingerprint
                continue
            try:
                recipe = load_recipe(path)
            except RecipeFileError as exc:
                log.error("recipe %s is not served: %s", recipe_id, exc)
                if old is not None:
                    recipes[recipe_id], new_fingerprints[recipe_id] = old, fingerprints[recipe_id]
                    report.kept.append(recipe_id)
                    failed[recipe_id] = f"the changed file failed to load; the previous version is served: {exc}"
                else:
                    failed[recipe_id] = str(exc)
                report.failed[recipe_id] = failed[recipe_id]
                continue
            recipes[recipe_id], new_fingerprints[recipe_id] = recipe, _fingerprint(path, recipe)
            report.loaded.append(recipe_id)
        with self._lock:
            active = self._active
            if active is not None and active not in recipes and active in current:
                log.error("recipe %s: its file is gone but it is active; its last version stays", active)
                recipes[active], new_fingerprints[active] = current[active], fingerprints[active]
                report.kept.append(active)
                failed[active] = "its file is gone; it is the active recipe, so its last version is served"
                report.failed[active] = failed[active]
            report.removed.extend(sorted(set(current) - set(recipes)))
            self._recipes, self._fingerprints, self._failed = recipes, new_fingerprints, failed
        if report.loaded or report.removed or report.failed:
            log.info("recipes loaded", extra={"recipes": report.__dict__})
        return report

    def _paths(self) -> dict[str, Path]:
        folder = self.folder
        if folder is None or not folder.is_dir():
            return {}
        return {p.name.removesuffix(SUFFIX): p for p in sorted(folder.glob(f"*{SUFFIX}")) if p.is_file()}
