"""The steps of a prediction around the session run: decode the uploads, turn the model's output into a
prediction, encode the map. Pure functions of their inputs; the engine times them and calls them in order."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.codecs import DecodeLimits, decode_rgb, decode_xyz
from service.engine.batching import BatchOutcome
from service.engine.errors import InvalidModelOutputError
from service.engine.loading import LoadedModel
from service.engine.result import EncodedMap, PartUpload, Prediction, ReturnMap, Rules, ThresholdSource
from service.postprocessing.maps import encode_map
from service.postprocessing.pipeline import postprocess_outputs
from service.postprocessing.verdict import NonFiniteError


def decode_upload(upload: PartUpload, limits: DecodeLimits) -> tuple[np.ndarray, np.ndarray]:
    """The upload's files → rgb (H, W, 3) uint8 and xyz (H, W, 3) float32 (0 or NaN = no point).

    Raises CodecError (service.codecs) naming the form field of an undecodable file.
    """
    rgb = decode_rgb(upload.rgb, limits, field="rgb")
    xyz = decode_xyz(upload.xyz, limits, field="xyz")
    return rgb, xyz


def _pick(recipe: float | None, model: float | None) -> float | None:
    return model if recipe is None else recipe


def postprocess(
    model: LoadedModel, core: BatchOutcome, xyz: np.ndarray, info: dict[str, Any], rules: Rules | None = None
) -> Prediction:
    """The one place where the model's output becomes an answer: `core` holds the raw score and the (S, S)
    map at the model's resolution; `xyz` is the uploaded (H, W, 3) cloud. The post-processing itself
    (`service.postprocessing.pipeline.postprocess_outputs`) runs with the model's thresholds, review band and
    size rules in effect, each replaced by the recipe's (`rules`) where it sets one, and the recipe's region
    of interest. `timings_ms` is left empty for the engine to fill in.

    Raises InvalidModelOutputError on a non-finite score or map: never an answer, never an OK.
    """
    threshold, source = model.threshold, model.threshold_source
    if rules is not None and rules.threshold is not None:
        threshold, source = rules.threshold, "recipe"
    review = rules.review_threshold if rules is not None else model.review_threshold
    min_area = _pick(rules.min_defect_area_mm2 if rules else None, model.min_defect_area_mm2)
    min_length = _pick(rules.min_defect_length_mm if rules else None, model.min_defect_length_mm)
    threshold_source: ThresholdSource = source
    try:
        out = postprocess_outputs(
            core.score,
            core.anomaly_map,
            xyz,
            threshold,
            model.manifest.pixel_threshold,
            min_area,
            min_length,
            review_threshold=review,
            roi=rules.roi_mask if rules is not None else None,
        )
    except NonFiniteError as exc:
        raise InvalidModelOutputError(f"model {model.name!r} version {model.manifest.version}: {exc}") from exc
    report = out.report
    return Prediction(
        model=model.name,
        version=model.manifest.version,
        score=out.score,
        threshold=threshold,
        threshold_source=threshold_source,
        is_anomalous=out.decision.is_anomalous,
        anomaly_map=out.anomaly_map,
        model_map=out.model_map,
        defect_area_fraction=out.defect_area_fraction,
        timings_ms={},
        provider=model.provider,
        batch_size=core.batch_size,
        first_in_batch=core.first_in_batch,
        info=dict(info),
        pixel_threshold=model.manifest.pixel_threshold,
        regions=report.regions if report is not None else (),
        n_regions=report.n_regions if report is not None else 0,
        decision=out.decision,
        model_sha256=model.onnx_sha256,
        review_threshold=review,
        recipe=rules.recipe if rules is not None else None,
        recipe_version=rules.recipe_version if rules is not None else None,
    )


def encode_anomaly_map(prediction: Prediction, return_map: ReturnMap) -> EncodedMap | None:
    """The prediction's map in the encoding asked for; None for "none"."""
    if return_map == "none":
        return None
    height, width = prediction.anomaly_map.shape
    return EncodedMap(
        encoding=return_map, width=width, height=height, data=encode_map(prediction.anomaly_map, return_map)
    )
