"""Response schemas of the HTTP API (pydantic), kept apart from the engine's domain objects."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.engine import PredictResult, ThresholdSource
from service.postprocessing.maps import MapEncoding
from service.postprocessing.regions import MAX_REGIONS, Region
from service.postprocessing.verdict import Decision, Rule, Verdict


class ModelRef(BaseModel):
    name: str
    version: str


class RecipeRef(BaseModel):
    id: str = Field(description="The recipe whose rules decided (models/recipes/<id>.json).")
    version: str


class AnomalyMap(BaseModel):
    width: int = Field(description="Width of the uploaded image, pixels.")
    height: int = Field(description="Height of the uploaded image, pixels.")
    encoding: MapEncoding = Field(
        description="png: 16-bit grayscale, score = pixel / 65535 (clipped to [0, 1]); npy: float32 (H, W) array."
    )
    data: str = Field(description="The encoded map, base64.")


class Timings(BaseModel):
    queue: float = Field(description="Waiting for a free inference slot, ms.")
    decode: float
    preprocess: float
    batch_wait: float = Field(0.0, description="Waiting in the micro-batch for other parts, ms (0 when off).")
    inference: float = Field(description="Session time of the batch this part ran in, ms.")
    postprocess: float = Field(description="Map resize, area fraction and map encoding, ms.")
    total: float = Field(description="From the request's arrival at the handler to the answer, ms.")


class DefectRegion(BaseModel):
    """One connected region of the anomaly map above the model's pixel threshold (service.postprocessing.regions)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "x": 212,
                    "y": 141,
                    "width": 38,
                    "height": 17,
                    "area_px": 402,
                    "area_mm2": 3.91,
                    "length_mm": 3.85,
                    "measured_fraction": 1.0,
                    "max_score": 0.94,
                    "mean_score": 0.81,
                }
            ]
        }
    )

    x: int = Field(description="Left of the bounding box in the uploaded image, pixels (x to the right).")
    y: int = Field(description="Top of the bounding box, pixels (y down).")
    width: int = Field(description="Bounding box width, pixels.")
    height: int = Field(description="Bounding box height, pixels.")
    area_px: int = Field(description="Pixels in the region (8-connected, map value above the pixel threshold).")
    area_mm2: float | None = Field(
        description="Area on the part's surface from the uploaded point cloud, mm²; null where the cloud has no "
        "point under the region. Pixels without a point count with the mean footprint of the measured ones."
    )
    length_mm: float | None = Field(
        description="Longest straight extent of the region on the part's surface, mm: the largest 3D distance "
        "between two of its pixels with a point under them, plus one pixel's side (a chord: on a curved part a "
        "path along the surface is longer); null where `area_mm2` is null."
    )
    measured_fraction: float = Field(description="Share of the region's pixels with a point under them (0 to 1).")
    max_score: float = Field(description="Highest map value in the region.")
    mean_score: float = Field(description="Mean map value in the region.")

    @classmethod
    def of(cls, region: Region) -> DefectRegion:
        return cls(**region.to_dict())


class VerdictRule(BaseModel):
    """Which rule gave `is_anomalous`: "score" (score > threshold), or the size rules consulted when the score
    is above the threshold: "area" (a region at least `min_defect_area_mm2` large), "length" (a region at
    least `min_defect_length_mm` long) or "area_or_length" (both set: a region meeting either minimum). A
    region without points counts as large enough."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"rule": "score"},
                {
                    "rule": "area",
                    "min_defect_area_mm2": 2.5,
                    "largest_area_mm2": 3.91,
                    "unmeasured_regions": 0,
                    "n_regions": 1,
                },
                {
                    "rule": "area_or_length",
                    "min_defect_area_mm2": 2.5,
                    "min_defect_length_mm": 2.0,
                    "largest_area_mm2": 0.61,
                    "largest_length_mm": 2.03,
                    "unmeasured_regions": 0,
                    "n_regions": 1,
                },
            ]
        }
    )

    rule: Rule
    min_defect_area_mm2: float | None = Field(None, description="The area rule in effect; null: none.")
    min_defect_length_mm: float | None = Field(None, description="The length rule in effect; null: none.")
    largest_area_mm2: float | None = Field(None, description="Largest measured region (size rules consulted only).")
    largest_length_mm: float | None = Field(
        None, description="Longest measured region, mm (length rule consulted only)."
    )
    unmeasured_regions: int | None = Field(None, description="Regions without points under them (size rules only).")
    n_regions: int | None = Field(None, description="Regions above the pixel threshold (size rules consulted only).")

    @classmethod
    def of(cls, decision: Decision) -> VerdictRule:
        keys = (
            "min_defect_area_mm2",
            "min_defect_length_mm",
            "largest_area_mm2",
            "largest_length_mm",
            "unmeasured_regions",
            "n_regions",
        )
        return cls(rule=decision.rule, **{k: decision.details[k] for k in keys if k in decision.details})


class PredictResponse(BaseModel):
    model: ModelRef
    part_id: str | None
    score: float = Field(description="Raw image score (max of the anomaly map at model resolution).")
    threshold: float = Field(
        description="Threshold in effect: score > threshold means not accepted (NG, or REVIEW in the review band)."
    )
    threshold_source: ThresholdSource
    is_anomalous: bool = Field(
        description="Not accepted: true for NG and for REVIEW (a part in the review band waits for a person)."
    )
    verdict: Verdict = Field(
        description="ok: accepted; review: in the review band (threshold < score ≤ review_threshold), a person "
        "decides; ng: rejected. Without a review band: ok or ng, as `is_anomalous`."
    )
    review_threshold: float | None = Field(
        None, description="The review band's upper edge in effect; null: no band (two outcomes)."
    )
    recipe: RecipeRef | None = Field(None, description="The recipe whose rules decided; null: the model's own.")
    decision: VerdictRule = Field(description="The rule that gave `is_anomalous`.")
    anomaly_map: AnomalyMap | None = None
    pixel_threshold: float | None = Field(
        description="Map value above which a pixel belongs to a defect region (the model's calibration); null for "
        "a model calibrated before pixel thresholds (no regions then)."
    )
    regions: list[DefectRegion] = Field(
        description=f"Defect regions in the upload's pixel frame, highest max_score first, at most {MAX_REGIONS}."
    )
    n_regions: int = Field(description=f"All regions above the pixel threshold (only {MAX_REGIONS} are listed).")
    defect_area_fraction: float = Field(
        description="Share of the image's pixels whose map value exceeds the pixel threshold (without one: the "
        "image threshold)."
    )
    timings_ms: Timings
    provider: str = Field(description="ONNX Runtime execution provider that ran the model.")
    request_id: str

    @classmethod
    def from_result(
        cls, result: PredictResult, *, part_id: str | None, request_id: str, queue_ms: float, total_ms: float
    ) -> PredictResponse:
        """The answer for an engine result; `queue_ms` and `total_ms` are the HTTP layer's own timings."""
        p, encoded = result.prediction, result.anomaly_map
        timings = {"queue": queue_ms, **result.timings_ms, "total": total_ms}
        return cls(
            model=ModelRef(name=p.model, version=p.version),
            part_id=part_id,
            score=p.score,
            threshold=p.threshold,
            threshold_source=p.threshold_source,
            is_anomalous=p.is_anomalous,
            verdict=p.verdict,
            review_threshold=p.review_threshold,
            recipe=RecipeRef(id=p.recipe, version=p.recipe_version or "") if p.recipe is not None else None,
            decision=VerdictRule.of(p.decision),
            anomaly_map=(
                AnomalyMap(
                    width=encoded.width,
                    height=encoded.height,
                    encoding=encoded.encoding,
                    data=base64.b64encode(encoded.data).decode("ascii"),
                )
                if encoded is not None
                else None
            ),
            pixel_threshold=p.pixel_threshold,
            regions=[DefectRegion.of(r) for r in p.regions],
            n_regions=p.n_regions,
            defect_area_fraction=p.defect_area_fraction,
            timings_ms=Timings(**{k: round(v, 3) for k, v in timings.items()}),
            provider=p.provider,
            request_id=request_id,
        )


class CalibrationSummary(BaseModel):
    method: str
    n_parts: int = Field(description="Good parts the threshold was calibrated on.")
    threshold: float
    pixel_threshold: float | None = None
    target_false_reject_rate: float | None = None
    expected_false_reject_rate: float | None = Field(default=None, description="Promised on unseen good parts.")
    false_reject_rate_interval: list[float] | None = None
    distribution_free_upper_bound: float | None = None


class StoredVersion(BaseModel):
    version: str
    onnx_sha256: str
    created: str
    calibration: CalibrationSummary


class ModelInfo(BaseModel):
    name: str
    version: str
    category: str | None = None
    modality: str | None = None
    backbone: str
    image_size: int
    provider: str
    threshold: float
    threshold_source: ThresholdSource
    manifest_threshold: float
    review_threshold: float | None = Field(
        default=None, description="The review band's upper edge (the manifest's); null: OK / NG only."
    )
    created: str
    default: bool = Field(description="Whether requests without a `model` field go to this model.")
    calibration: CalibrationSummary | None = Field(default=None, description="The served version's calibration.")
    other_versions: list[StoredVersion] = Field(
        default_factory=list, description="Versions stored in the model folder's history/, promotable."
    )
    previous_version: str | None = Field(
        default=None, description="The version active before the last promotion or rollback (what rollback restores)."
    )


class UnavailableModel(BaseModel):
    name: str
    reason: str = Field(description="Why its folder is not served (or, for a changed folder, not replaced).")


class ModelsResponse(BaseModel):
    default_model: str
    models: list[ModelInfo]
    unavailable: list[UnavailableModel] = Field(
        default_factory=list, description="Model folders that failed to load; requests naming them get 503."
    )


class ReloadResponse(BaseModel):
    loaded: list[str] = Field(description="New model folders, now served.")
    reloaded: list[str] = Field(description="Changed model folders, their new version now served.")
    removed: list[str] = Field(description="Model folders gone, no longer served.")
    unchanged: list[str]
    kept: list[str] = Field(description="Changed folders that failed to load; their previous version is served.")
    failed: dict[str, str] = Field(description="Model name → why its folder failed to load.")
    models: list[str] = Field(description="The models served after the reload.")


class HealthResponse(BaseModel):
    status: Literal["alive"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    models: list[str]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. too_large, no_foreground, queue_full.")
    message: str = Field(description="What was wrong, naming the field or value.")
    request_id: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(texts: dict[int, str]) -> dict[int | str, dict[str, object]]:
    """A route's documented refusals (`responses=`): status → what it means, each with the one error body."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in texts.items()}


# --- request field types ------------------------------------------------------------------------------

PART_ID_MAX_LENGTH = 256


def printable_part_id(value: str) -> str:
    """Refuse a part id with control characters, bidirectional overrides or other invisible formatting:
    it is echoed into logs and answers, where such characters forge or hide text. Python's `isprintable`
    is false exactly for Unicode's Other (Cc, Cf, Cs, Co, Cn) and Separator (Zl, Zp, Zs) categories, the
    ASCII space excepted; that covers U+202A-U+202E, U+2066-U+2069, zero-width characters and newlines."""
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise ValueError(
            f"part_id holds the non-printable character U+{ord(bad):04X}; "
            "expected printable text without control or bidirectional formatting characters"
        )
    return value


# A form field annotation: `part_id: Annotated[PartId | None, Form()] = None` → 422 invalid_field otherwise.
PartId = Annotated[
    str,
    Field(min_length=1, max_length=PART_ID_MAX_LENGTH, description="Echoed back and logged; printable text."),
    AfterValidator(printable_part_id),
]
