"""The steps of a prediction around the session run: decode the uploads, turn the model's output into a
prediction, encode the map. Pure functions of their inputs; the engine times them and calls them in order."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.codecs import DecodeLimits, decode_rgb, decode_xyz
from service.engine.batching import BatchOutcome
from service.engine.loading import LoadedModel
from service.engine.result import EncodedMap, PartUpload, Prediction, ReturnMap
from service.postprocessing import defect_area_fraction, encode_map, map_to_input_size


def decode_upload(upload: PartUpload, limits: DecodeLimits) -> tuple[np.ndarray, np.ndarray]:
    """The upload's files → rgb (H, W, 3) uint8 and xyz (H, W, 3) float32 (0 or NaN = no point).

    Raises CodecError (service.codecs) naming the form field of an undecodable file.
    """
    rgb = decode_rgb(upload.rgb, limits, field="rgb")
    xyz = decode_xyz(upload.xyz, limits, field="xyz")
    return rgb, xyz


def postprocess(model: LoadedModel, core: BatchOutcome, height: int, width: int, info: dict[str, Any]) -> Prediction:
    """The one place where the model's output becomes an answer: `core` holds the raw score and the (S, S)
    map at the model's resolution; the map goes back to the upload's `height` × `width`, the verdict and the
    defect area follow from the threshold in effect. `timings_ms` is left empty for the engine to fill in."""
    anomaly_map = map_to_input_size(core.anomaly_map, height, width)
    return Prediction(
        model=model.name,
        version=model.manifest.version,
        score=core.score,
        threshold=model.threshold,
        threshold_source=model.threshold_source,
        is_anomalous=core.score > model.threshold,
        anomaly_map=anomaly_map,
        defect_area_fraction=defect_area_fraction(anomaly_map, model.threshold),
        timings_ms={},
        provider=model.provider,
        batch_size=core.batch_size,
        first_in_batch=core.first_in_batch,
        info=dict(info),
    )


def encode_anomaly_map(prediction: Prediction, return_map: ReturnMap) -> EncodedMap | None:
    """The prediction's map in the encoding asked for; None for "none"."""
    if return_map == "none":
        return None
    height, width = prediction.anomaly_map.shape
    return EncodedMap(
        encoding=return_map, width=width, height=height, data=encode_map(prediction.anomaly_map, return_map)
    )
