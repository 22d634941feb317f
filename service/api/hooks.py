"""The after-prediction hooks (metrics, the "scored part" log line, the records) and the call that runs them:
the engine's complete predict in a worker thread under admission, then the hooks, all before the answer (see
docs/DESIGN.md, "The predict path")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.api.admission import Admission, AdmissionPass
from service.engine import Engine, PartUpload, PredictResult
from service.logs import RequestContext
from service.metrics import Metrics

log = logging.getLogger("service.api.routes_predict")  # the logger the "scored part" line always came from

# Runs after every successful prediction, before the answer, in the prediction's worker thread (under its
# admission slot and deadline). An exception from a hook fails the request; a hook that must never do so
# catches its own errors. A thread cannot be interrupted: when the request times out (503) while the part is
# being scored, the prediction still completes in the background and its hooks still run.
AfterPrediction = Callable[[PredictResult, RequestContext], None]


@dataclass(frozen=True)
class Served:
    """A prediction as the route answers it. `queue_ms`: waiting for a free inference slot."""

    result: PredictResult
    queue_ms: float


def default_hooks(metrics: Metrics) -> list[AfterPrediction]:
    """The hooks every app runs: record the prediction's metrics, log the scored part."""

    def record_metrics(result: PredictResult, request: RequestContext) -> None:
        metrics.observe_prediction(result)

    return [record_metrics, log_scored_part]


def log_scored_part(result: PredictResult, request: RequestContext) -> None:
    p = result.prediction
    log.info(
        "scored part",
        extra={
            "score": p.score,
            "threshold": p.threshold,
            "is_anomalous": p.is_anomalous,
            "verdict": p.verdict,
            "recipe": p.recipe,
            "rule": p.decision.rule,
            "n_regions": p.n_regions,
            "provider": p.provider,
        },
    )


def _predict(
    engine: Engine, hooks: Sequence[AfterPrediction], upload: PartUpload, request: RequestContext, submitted_at: float
) -> Served:
    """Blocking: runs in a worker thread once admission gives it a slot."""
    queue_ms = (time.perf_counter() - submitted_at) * 1e3
    result = engine.predict_upload(upload)
    for hook in hooks:
        hook(result, request)
    return Served(result=result, queue_ms=queue_ms)


async def serve_prediction(
    admission: Admission,
    admitted: AdmissionPass,
    engine: Engine,
    hooks: Sequence[AfterPrediction],
    upload: PartUpload,
    request: RequestContext,
) -> Served:
    """Predict `upload` under `admission`, with the pass the request was admitted with (service.api.gate),
    and run `hooks` on the result. Raises the engine's errors (and the codec and preprocessing refusals)
    and RequestTimeoutError."""
    return await admission.run(admitted, _predict, engine, hooks, upload, request, time.perf_counter())
