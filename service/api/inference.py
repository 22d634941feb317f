"""The blocking part of a prediction, run in a worker thread: decode → engine → encode the map.

This is the one place that calls into the engine. Micro-batching happens inside `engine.predict`
(service.batching): this thread preprocesses, waits for its batch's session run, then postprocesses.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Literal

from service.codecs import DecodeLimits, decode_rgb, decode_xyz
from service.engine import Engine, Prediction
from service.postprocessing import encode_map

ReturnMap = Literal["none", "png", "npy"]


@dataclass(frozen=True)
class PredictOutcome:
    """A prediction plus what the HTTP answer needs beyond it.

    `map_b64`: the anomaly map encoded as asked, base64 text; None when no map was asked for.
    `timings_ms`: queue, decode, preprocess, batch_wait, inference (the batch's session time), postprocess
    (map encoding included), in ms.
    """

    prediction: Prediction
    map_b64: str | None
    timings_ms: dict[str, float]


def run_prediction(
    engine: Engine,
    limits: DecodeLimits,
    rgb_bytes: bytes,
    xyz_bytes: bytes,
    *,
    model_name: str,
    return_map: ReturnMap,
    submitted_at: float,
) -> PredictOutcome:
    """Decode the uploads, score the part, encode the map. Blocking; call it from a worker thread.

    `submitted_at`: `time.perf_counter()` when the request asked for a slot (queue time = start − it).
    Raises CodecError for undecodable uploads, the engine's and preprocessing's domain errors otherwise.
    """
    start = time.perf_counter()
    rgb = decode_rgb(rgb_bytes, limits, field="rgb")  # (H, W, 3) uint8
    xyz = decode_xyz(xyz_bytes, limits, field="xyz")  # (H, W, 3) float32, 0 or NaN = no point
    decoded = time.perf_counter()
    prediction = engine.predict(rgb, xyz, model_name=model_name)
    encoded_at = time.perf_counter()
    map_b64 = None
    if return_map != "none":
        map_b64 = base64.b64encode(encode_map(prediction.anomaly_map, return_map)).decode("ascii")
    encode_ms = (time.perf_counter() - encoded_at) * 1e3
    timings = {
        "queue": (start - submitted_at) * 1e3,
        "decode": (decoded - start) * 1e3,
        **prediction.timings_ms,
    }
    timings["postprocess"] = timings.get("postprocess", 0.0) + encode_ms
    return PredictOutcome(prediction=prediction, map_b64=map_b64, timings_ms=timings)
