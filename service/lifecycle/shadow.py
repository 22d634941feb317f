"""Shadow scoring: a candidate model scores every part of the model it shadows, after the answer and off the
line's capacity, and its score and verdict are added to the part's record.

`BRIDGENET_SHADOW='{"<model>": "<version or model folder>"}'` names, per served model, a version stored in
its folder (`history/<version>/`) or another model folder. The candidates are loaded at start with one
ONNX Runtime thread each, and one background thread scores the parts from a bounded queue: when the queue
is full the part is skipped and counted (`bridgenet_shadow_skipped_total`), never waited for. The candidate
decodes and preprocesses the uploads itself with its own preprocessing, and decides with its own thresholds
and size rules (no override applies to it).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine as DbEngine
from sqlalchemy import and_, func, select, update

from service.codecs import DecodeLimits
from service.engine import BatchOutcome, EngineOptions, LoadedModel, ModelLoadError, PartUpload, Prediction
from service.engine.loading import load_model, warm_up
from service.engine.stages import decode_upload, postprocess
from service.lifecycle.versions import HISTORY_DIR, LifecycleError, model_folder, other_versions
from service.manifest import MANIFEST_FILE, MODEL_FILE
from service.metrics import LifecycleMetrics
from service.preprocessing import preprocess_part
from service.records.reviews import latest_reviews
from service.records.store import utc
from service.records.tables import DecisionRow

log = logging.getLogger(__name__)

_STOP = object()


class ShadowConfigError(ValueError):
    """BRIDGENET_SHADOW names a model or a candidate that cannot be shadowed; the message says which."""


@dataclass(frozen=True)
class ShadowJob:
    """One answered part to score again: its record's id, the uploads as received, and the answer's verdict."""

    request_id: str
    model: str
    rgb: bytes
    xyz: bytes
    is_anomalous: bool


@dataclass(frozen=True)
class ShadowOutcome:
    request_id: str
    model: str
    version: str
    score: float
    threshold: float
    is_anomalous: bool
    agrees: bool


def candidate_folder(models_dir: Path, model: str, target: str, active_version: str) -> Path:
    """The folder holding the candidate `target` for `model`: a stored version of the model, else a model
    folder (absolute, or relative to `models_dir`). ShadowConfigError says what was expected."""
    try:
        folder = model_folder(models_dir, model)
    except LifecycleError as exc:
        raise ShadowConfigError(f"BRIDGENET_SHADOW: {exc}") from exc
    if target == active_version:
        raise ShadowConfigError(
            f"BRIDGENET_SHADOW: {target!r} is the active version of {model!r}; name another version to shadow it"
        )
    stored = other_versions(folder)
    for info in stored:
        if info.version == target:
            return info.folder
    path = Path(target)
    path = path if path.is_absolute() else models_dir / path
    if (path / MODEL_FILE).is_file() and (path / MANIFEST_FILE).is_file():
        return path
    raise ShadowConfigError(
        f"BRIDGENET_SHADOW: {target!r} for model {model!r} is neither a version stored in "
        f"{folder / HISTORY_DIR} (stored: {[v.version for v in stored]}) nor a model folder holding "
        f"{MODEL_FILE} and {MANIFEST_FILE}"
    )


def load_candidate(options: EngineOptions, model: str, folder: Path) -> LoadedModel:
    """The candidate's session, verified as the engine verifies a model, on one ONNX Runtime thread (the
    line's cores stay the line's), warmed up."""
    candidate_options = replace(
        options,
        models_dir=folder.parent,
        default_model=folder.name,
        models=(folder.name,),
        threshold_overrides={},
        min_defect_area_overrides={},
        min_defect_length_overrides={},
        intra_op_threads=1,
        ort_spin_wait=False,
    )
    try:
        loaded = load_model(candidate_options, folder.name)
        warm_up(loaded, (1,))
    except ModelLoadError as exc:
        raise ShadowConfigError(f"BRIDGENET_SHADOW: the candidate for {model!r} does not load: {exc}") from exc
    return replace(loaded, name=model)


SHADOW_NICE = 19


def _lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: nice is per thread), so the line's threads
    take the cores first and the candidate runs in what they leave. Where that is not allowed the thread
    keeps its priority (it is still one thread with one ONNX Runtime thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
    except (OSError, AttributeError) as exc:
        log.warning("the shadow scorer runs at normal priority: %s", exc)


class ShadowScorer:
    """Candidates by model name and the one thread that scores their parts. `submit` never blocks."""

    def __init__(
        self,
        candidates: Mapping[str, LoadedModel],
        metrics: LifecycleMetrics,
        limits: DecodeLimits,
        db_engine: DbEngine | None = None,
        max_queue: int = 64,
    ) -> None:
        self.candidates = dict(candidates)
        self.metrics = metrics
        self.limits = limits
        self.db_engine = db_engine
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self.outcomes = 0  # parts scored (tests and the benchmark wait on it)
        for model in self.candidates:
            for agreement in ("agree", "disagree"):
                metrics.shadow_scored.labels(model=model, agreement=agreement)
            for reason in ("queue_full", "error"):
                metrics.shadow_skipped.labels(model=model, reason=reason)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Score what is queued (up to `timeout_s`), then end the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    log.warning("shadow scorer stopped with %d parts unscored", self._queue.qsize())
                    return
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._thread = None

    def version(self, model: str) -> str | None:
        candidate = self.candidates.get(model)
        return candidate.manifest.version if candidate is not None else None

    def submit(self, job: ShadowJob) -> bool:
        """Queue `job` when its model has a candidate; False (counted) when the queue is full."""
        if job.model not in self.candidates:
            return False
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.metrics.shadow_skipped.labels(model=job.model, reason="queue_full").inc()
            return False
        self.metrics.shadow_queue.set(self._queue.qsize())
        return True

    def _run(self) -> None:
        _lowest_priority()
        while True:
            job = self._queue.get()
            self.metrics.shadow_queue.set(self._queue.qsize())
            if job is _STOP:
                return
            try:
                outcome = self.score(job)
                self._record(outcome)
            except Exception:  # the shadow must never take anything down: count, log, go on
                log.exception("shadow scoring of request %s failed", job.request_id)
                self.metrics.shadow_skipped.labels(model=job.model, reason="error").inc()
                continue
            self.outcomes += 1
            self.metrics.shadow_scored.labels(
                model=job.model, agreement="agree" if outcome.agrees else "disagree"
            ).inc()

    def score(self, job: ShadowJob) -> ShadowOutcome:
        """Decode, preprocess, infer and decide with the candidate (blocking)."""
        candidate = self.candidates[job.model]
        rgb, xyz = decode_upload(PartUpload(job.rgb, job.xyz), self.limits)
        part = preprocess_part(rgb, xyz, candidate.manifest.preprocessing)
        started = time.perf_counter()
        scores, maps = candidate.session.run(["scores", "maps"], {"rgb": part.rgb[None], "depth": part.depth[None]})
        elapsed_ms = (time.perf_counter() - started) * 1e3
        core = BatchOutcome(
            float(scores[0]), maps[0], batch_size=1, first_in_batch=True, wait_ms=0.0, inference_ms=elapsed_ms
        )
        prediction: Prediction = postprocess(candidate, core, xyz, part.info)
        return ShadowOutcome(
            request_id=job.request_id,
            model=job.model,
            version=candidate.manifest.version,
            score=prediction.score,
            threshold=prediction.threshold,
            is_anomalous=prediction.is_anomalous,
            agrees=prediction.is_anomalous == job.is_anomalous,
        )

    def _record(self, outcome: ShadowOutcome) -> None:
        if self.db_engine is None:
            return
        with self.db_engine.begin() as conn:
            conn.execute(
                update(DecisionRow)
                .where(DecisionRow.request_id == outcome.request_id)
                .values(
                    shadow_version=outcome.version,
                    shadow_score=outcome.score,
                    shadow_threshold=outcome.threshold,
                    shadow_is_anomalous=outcome.is_anomalous,
                )
            )


def agreement(db_engine: DbEngine, model: str, *, version: str | None = None, limit: int = 100) -> dict[str, Any]:
    """The shadowed parts of `model` (of candidate `version`, else every candidate): counts by the answer's
    and the candidate's verdict, and the parts where they disagree, newest first, with their latest review."""
    shadowed = and_(DecisionRow.model == model, DecisionRow.shadow_version.is_not(None))
    if version is not None:
        shadowed = and_(shadowed, DecisionRow.shadow_version == version)
    counts_query = (
        select(DecisionRow.is_anomalous, DecisionRow.shadow_is_anomalous, func.count())
        .where(shadowed)
        .group_by(DecisionRow.is_anomalous, DecisionRow.shadow_is_anomalous)
    )
    differ = DecisionRow.is_anomalous != DecisionRow.shadow_is_anomalous
    parts_query = (
        select(DecisionRow)
        .where(shadowed, differ)
        .order_by(DecisionRow.received_at.desc(), DecisionRow.request_id.desc())
        .limit(limit)
    )
    versions_query = select(DecisionRow.shadow_version).where(shadowed).distinct()
    with db_engine.connect() as conn:
        counts = {(bool(a), bool(b)): int(n) for a, b, n in conn.execute(counts_query)}
        rows = conn.execute(parts_query).mappings().all()
        versions = sorted(str(v) for (v,) in conn.execute(versions_query))
    reviews = latest_reviews(db_engine, [r["request_id"] for r in rows])
    verdict = {False: "ok", True: "ng"}
    total = sum(counts.values())
    agree = counts.get((False, False), 0) + counts.get((True, True), 0)
    return {
        "model": model,
        "candidate_versions": versions,
        "shadowed": total,
        "agree": agree,
        "disagree": total - agree,
        "agreement": agree / total if total else None,
        "by_verdict": {
            f"{verdict[a]}_{verdict[b]}": counts.get((a, b), 0) for a in (False, True) for b in (False, True)
        },
        "disagreements": [
            {
                "request_id": r["request_id"],
                "part_id": r["part_id"],
                "created": utc(r["received_at"]).isoformat(),
                "version": r["model_version"],
                "score": r["score"],
                "threshold": r["threshold"],
                "verdict": verdict[bool(r["is_anomalous"])],
                "shadow_version": r["shadow_version"],
                "shadow_score": r["shadow_score"],
                "shadow_threshold": r["shadow_threshold"],
                "shadow_verdict": verdict[bool(r["shadow_is_anomalous"])],
                "review": reviews.get(r["request_id"]),
            }
            for r in rows
        ],
    }
