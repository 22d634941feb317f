"""The steps of a prediction around the session run: decode the uploads, turn the model's output into a
prediction, encode the map. Pure functions of their inputs; the engine times them and calls them in order."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.codecs import DecodeLimits, decode_rgb, decode_xyz
from service.engine.batching import BatchOutcome
from service.engine.errors import InvalidModelOutputError
from service.engine.loading import LoadedModel
from service.engine.result import EncodedMap, PartUpload, Prediction, ReturnMap
from service.postprocessing.maps import defect_area_fraction, encode_map, map_to_input_size
from service.postprocessing.regions import find_regions
from service.postprocessing.verdict import NonFiniteError, check_finite, decide


def decode_upload(upload: PartUpload, limits: DecodeLimits) -> tuple[np.ndarray, np.ndarray]:
    """The upload's files → rgb (H, W, 3) uint8 and xyz (H, W, 3) float32 (0 or NaN = no point).

    Raises CodecError (service.codecs) naming the form field of an undecodable file.
    """
    rgb = decode_rgb(upload.rgb, limits, field="rgb")
    xyz = decode_xyz(upload.xyz, limits, field="xyz")
    return rgb, xyz


def postprocess(model: LoadedModel, core: BatchOutcome, xyz: np.ndarray, info: dict[str, Any]) -> Prediction:
    """The one place where the model's output becomes an answer: `core` holds the raw score and the (S, S)
    map at the model's resolution; `xyz` is the uploaded (H, W, 3) cloud (the decoded array itself, not a
    copy). The map goes back to the upload's H × W; the defect regions come from the manifest's pixel
    threshold and their mm² from `xyz`; the verdict from `service.postprocessing.verdict.decide` with the
    threshold and the area rule in effect. A model without a pixel threshold (schema 1) answers no regions
    and the area fraction above the image threshold, as before. `timings_ms` is left empty for the engine to fill in.

    Raises InvalidModelOutputError on a non-finite score or map: never an answer, never an OK.
    """
    try:
        check_finite(core.score, model.threshold)
        if not np.isfinite(core.anomaly_map).all():  # checked at the model's resolution: resizing spreads NaN
            bad = int(np.count_nonzero(~np.isfinite(core.anomaly_map)))
            raise NonFiniteError(f"the anomaly map holds {bad} non-finite value(s)")
    except NonFiniteError as exc:
        raise InvalidModelOutputError(f"model {model.name!r} version {model.manifest.version}: {exc}") from exc
    height, width = xyz.shape[:2]
    anomaly_map = map_to_input_size(core.anomaly_map, height, width)
    pixel_threshold = model.manifest.pixel_threshold
    if pixel_threshold is None:
        report, fraction = None, defect_area_fraction(anomaly_map, model.threshold)
    else:
        report = find_regions(anomaly_map, pixel_threshold, xyz)
        fraction = report.defect_area_fraction
    decision = decide(core.score, model.threshold, report, model.min_defect_area_mm2)
    return Prediction(
        model=model.name,
        version=model.manifest.version,
        score=core.score,
        threshold=model.threshold,
        threshold_source=model.threshold_source,
        is_anomalous=decision.is_anomalous,
        anomaly_map=anomaly_map,
        model_map=core.anomaly_map,
        defect_area_fraction=fraction,
        timings_ms={},
        provider=model.provider,
        batch_size=core.batch_size,
        first_in_batch=core.first_in_batch,
        info=dict(info),
        pixel_threshold=pixel_threshold,
        regions=report.regions if report is not None else (),
        n_regions=report.n_regions if report is not None else 0,
        decision=decision,
        model_sha256=model.onnx_sha256,
    )


def encode_anomaly_map(prediction: Prediction, return_map: ReturnMap) -> EncodedMap | None:
    """The prediction's map in the encoding asked for; None for "none"."""
    if return_map == "none":
        return None
    height, width = prediction.anomaly_map.shape
    return EncodedMap(
        encoding=return_map, width=width, height=height, data=encode_map(prediction.anomaly_map, return_map)
    )
