"""One recipe file, `<recipes dir>/<id>.json`, read and checked: its schema (`RecipeFile`), its mask, and the
verdict rules it gives a part scored by the model it names (`Recipe.rules_for`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.engine import LoadedModel, Rules
from service.manifest import read_json_object

RECIPE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SUFFIX = ".json"
MAX_MASK_SIDE = 8192


class RecipeFileError(ValueError):
    """A recipe file (or its mask) that cannot be used; the message names the file and the fault."""


class RecipeError(Exception):
    """Base of the recipe refusals a request can meet (mapped to status codes in service.api.errors)."""


class RecipeMismatchError(RecipeError):
    """The recipe does not fit the model served: another version, or a size rule without pixel threshold."""


class RecipeFile(BaseModel):
    """The JSON of a recipe file. Every rule is optional: what a recipe leaves out, the model's manifest
    (and the service's overrides) decide."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=RECIPE_ID, description="the file's name without .json")
    version: str = Field(min_length=1, max_length=64)
    description: str = Field(default="", max_length=1000)
    model: str = Field(min_length=1, max_length=128, description="the model folder that scores the parts")
    model_version: str | None = Field(default=None, min_length=1, description="refuse parts unless this is served")
    threshold: float | None = Field(default=None, description="image threshold instead of the model's")
    review_threshold: float | None = Field(
        default=None, description="the review band's upper edge instead of the model's (the threshold is its lower)"
    )
    min_defect_area_mm2: float | None = Field(default=None, gt=0.0)
    min_defect_length_mm: float | None = Field(default=None, gt=0.0)
    roi_mask: str | None = Field(
        default=None, min_length=1, description="PNG beside the recipe: non-zero pixels are inspected"
    )

    @model_validator(mode="after")
    def _band_above_threshold(self) -> RecipeFile:
        if self.threshold is not None and self.review_threshold is not None and self.review_threshold <= self.threshold:
            raise ValueError(
                f"review_threshold {self.review_threshold} must be above threshold {self.threshold} (the band's "
                "lower edge)"
            )
        return self


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe: its file's settings and, with `roi_mask`, the mask as (h, w) bool (True: inspected)."""

    spec: RecipeFile
    path: Path
    mask: np.ndarray | None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def model(self) -> str:
        return self.spec.model

    def summary(self) -> dict[str, Any]:
        """What /v1/recipes shows of it."""
        out = self.spec.model_dump()
        if self.mask is not None:
            out["roi_mask_size"] = [int(self.mask.shape[1]), int(self.mask.shape[0])]
        return out

    def rules_for(self, model: LoadedModel) -> Rules:
        """The rules a part scored by `model` gets: the recipe's where it sets them, else the model's; the
        review band in effect is resolved here (None when it is empty). RecipeMismatchError when the recipe
        wants another version of the model, or a size rule the model cannot apply."""
        spec = self.spec
        if spec.model_version is not None and spec.model_version != model.manifest.version:
            raise RecipeMismatchError(
                f"recipe {spec.id!r} (version {spec.version}) is for model {spec.model!r} version "
                f"{spec.model_version!r}, but version {model.manifest.version!r} is served: promote that version "
                "or update the recipe"
            )
        sized = spec.min_defect_area_mm2 is not None or spec.min_defect_length_mm is not None
        if sized and model.manifest.pixel_threshold is None:
            raise RecipeMismatchError(
                f"recipe {spec.id!r} sets a size rule, but model {model.name!r} has no pixel_threshold (no defect "
                "regions); run `python -m training calibrate` on the model first"
            )
        threshold = model.threshold if spec.threshold is None else spec.threshold
        if spec.review_threshold is not None:
            review: float | None = spec.review_threshold
        else:
            band = model.manifest.review_band
            review = band.upper if band is not None else None
        return Rules(
            recipe=spec.id,
            recipe_version=spec.version,
            threshold=spec.threshold,
            review_threshold=review if review is not None and review > threshold else None,
            min_defect_area_mm2=spec.min_defect_area_mm2,
            min_defect_length_mm=spec.min_defect_length_mm,
            roi_mask=self.mask,
        )


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'recipe'}: {e['msg']}" for e in exc.errors(include_url=False)[:10]
    )


def load_recipe(path: Path) -> Recipe:
    """Read and check `path` (`<id>.json`) and its mask; RecipeFileError naming the file and the fault."""
    data = read_json_object(path, RecipeFileError)
    try:
        spec = RecipeFile.model_validate(data)
    except ValidationError as exc:
        raise RecipeFileError(f"{path} is not a valid recipe: {_errors(exc)}") from exc
    if spec.id != path.name.removesuffix(SUFFIX):
        raise RecipeFileError(f"{path}: id {spec.id!r} differs from the file name; name the file {spec.id}{SUFFIX}")
    for name in ("threshold", "review_threshold"):
        value = getattr(spec, name)
        if value is not None and not math.isfinite(value):  # allow_inf_nan refuses these already; kept explicit
            raise RecipeFileError(f"{path}: {name} must be finite, got {value}")
    mask = _read_mask(path, spec.roi_mask) if spec.roi_mask is not None else None
    return Recipe(spec=spec, path=path, mask=mask)


def _read_mask(recipe_path: Path, name: str) -> np.ndarray:
    """The PNG `name` beside the recipe as (h, w) bool: non-zero (any channel) = inspected."""
    folder = recipe_path.parent
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or path.suffix.lower() != ".png":
        raise RecipeFileError(f"{recipe_path}: roi_mask {name!r} must be a .png file in the recipes folder itself")
    if not path.is_file():
        raise RecipeFileError(f"{recipe_path}: roi_mask {path} not found")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise RecipeFileError(f"{recipe_path}: roi_mask {path} is not a readable PNG")
    if max(image.shape[:2]) > MAX_MASK_SIDE:
        raise RecipeFileError(
            f"{recipe_path}: roi_mask {path} is {image.shape[1]}×{image.shape[0]}; at most {MAX_MASK_SIDE}"
        )
    mask = image[..., :3].any(axis=2) if image.ndim == 3 else image > 0  # the colour channels; alpha aside
    if not mask.any():
        raise RecipeFileError(f"{recipe_path}: roi_mask {path} has no non-zero pixel: nothing would be inspected")
    return np.ascontiguousarray(mask)
