"""What goes into the engine's complete predict and what comes out of it (see docs/DESIGN.md, "The predict path")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.postprocessing.maps import MapEncoding
from service.postprocessing.regions import Region
from service.postprocessing.verdict import Decision, Verdict

# How the answer carries the anomaly map: not at all, a 16-bit PNG, or a float32 .npy (service.postprocessing.maps).
ReturnMap = Literal["none", "png", "npy"]
# Where the threshold in effect comes from: the model's calibration, BRIDGENET_THRESHOLD_OVERRIDES, or a recipe.
ThresholdSource = Literal["manifest", "override", "recipe"]


@dataclass(frozen=True)
class Rules:
    """A recipe's verdict rules for one part (service.recipes), each None where the model's own applies,
    except `review_threshold`: the review band's upper edge in effect, resolved by the recipe (None: no band).

    `roi_mask`: (h, w) bool in the upload's frame, True where the part is inspected
    (service.postprocessing.roi). `recipe`, `recipe_version`: which recipe, for the answer and the record."""

    recipe: str
    recipe_version: str
    threshold: float | None = None
    review_threshold: float | None = None
    min_defect_area_mm2: float | None = None
    min_defect_length_mm: float | None = None
    roi_mask: np.ndarray | None = None


@dataclass(frozen=True)
class PartUpload:
    """One part as the line controller sends it: the encoded files (service.codecs reads them), the model to
    score it with (None: the default model) and the map encoding wanted in the answer."""

    rgb: bytes
    xyz: bytes
    model: str | None = None
    return_map: ReturnMap = "none"
    rules: Rules | None = None  # a recipe's, when the request names one or one is active


@dataclass(frozen=True)
class Prediction:
    """One part's answer, built from the model's output in one place (`service.engine.stages.postprocess`).

    `anomaly_map`: (H, W) float32 scores at the upload's resolution; `model_map`: the (S, S) map at the
    model's resolution it was resized from (bilinear, `service.postprocessing.maps.map_to_input_size`), what the
    evidence archive keeps: the same information at a fixed, small size. `timings_ms`: preprocess, batch_wait (0
    when batching is off), inference (the whole batch's session time), postprocess. `batch_size`: parts in
    the session run; `first_in_batch`: whether this part reports its run (one part per run does).
    `info`: the preprocessing facts of the part (JSON-able: plane method, foreground fraction, ...).
    `regions`: at most 16 connected regions above `pixel_threshold` in the upload's frame, largest score
    first (`n_regions`: all of them); empty without a pixel threshold (a schema-1 manifest). `decision`: the
    rule that gave `is_anomalous` and the verdict (service.postprocessing.verdict.decide).
    `review_threshold`: the review band's upper edge in effect (None: two outcomes). `recipe`,
    `recipe_version`: the recipe whose rules decided (None: the model's own).
    """

    model: str
    version: str
    score: float
    threshold: float
    threshold_source: ThresholdSource
    is_anomalous: bool
    anomaly_map: np.ndarray
    model_map: np.ndarray
    defect_area_fraction: float
    timings_ms: dict[str, float]
    provider: str
    batch_size: int
    first_in_batch: bool
    info: dict[str, Any]
    pixel_threshold: float | None
    regions: tuple[Region, ...]
    n_regions: int
    decision: Decision
    model_sha256: str  # the SHA-256 of the model file that scored the part (a hot reload may change it)
    review_threshold: float | None = None
    recipe: str | None = None
    recipe_version: str | None = None

    @property
    def verdict(self) -> Verdict:
        return self.decision.verdict


@dataclass(frozen=True)
class EncodedMap:
    """The anomaly map as the answer carries it. `width`, `height`: of the upload, pixels."""

    encoding: MapEncoding
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class PredictResult:
    """What `Engine.predict_upload` returns: the prediction, its map encoded as asked (None for "none"), and
    the time of each stage in ms: decode, preprocess, batch_wait, inference, postprocess (map encoding
    included)."""

    prediction: Prediction
    anomaly_map: EncodedMap | None
    timings_ms: dict[str, float]
