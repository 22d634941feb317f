"""The drift watch as the app runs it: fed after every prediction, rebuilt from the records at start (and
when a version is first seen after a promotion or reload), published on the Prometheus gauges.

The windows live in memory; the records hold every answered part's score, verdict and defect area, so the
window of the version being served is read back from the store (the last `size` parts of that model version)
the first time the watch meets it. A service without an audit trail starts with empty windows.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from sqlalchemy import Engine as DbEngine
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from service.engine import Engine, LoadedModel, PredictResult
from service.lifecycle.drift import DriftReport, DriftWatch, Reference
from service.metrics import LifecycleMetrics
from service.records.tables import DecisionRow

log = logging.getLogger(__name__)

# Once a window is judged, its gauges are refreshed at most this often per model (a report sorts the window;
# Prometheus scrapes every few seconds); the endpoint always computes a fresh report.
PUBLISH_EVERY_S = 1.0


def recorded_parts(db_engine: DbEngine, model: str, version: str, limit: int) -> list[tuple[float, bool, float]]:
    """The last `limit` recorded parts of this model version, oldest first: (score, NG, defect area share)."""
    query = (
        select(DecisionRow.score, DecisionRow.is_anomalous, DecisionRow.defect_area_fraction)
        .where(DecisionRow.model == model, DecisionRow.model_version == version)
        .order_by(DecisionRow.received_at.desc(), DecisionRow.request_id.desc())
        .limit(limit)
    )
    with db_engine.connect() as conn:
        rows = conn.execute(query).all()
    return [(float(s), bool(ng), float(a)) for s, ng, a in reversed(rows)]


class LineWatch:
    """The app's drift watch. `db_engine` (None: no audit trail) is where windows are rebuilt from; the
    engine tells which version of each model is served and with which threshold."""

    def __init__(self, engine: Engine, metrics: LifecycleMetrics, size: int = 200, min_parts: int = 50) -> None:
        self.engine = engine
        self.metrics = metrics
        self.watch = DriftWatch(size, min_parts)
        self.db_engine: DbEngine | None = None
        self._served: dict[str, tuple[str, Reference]] = {}  # model → (version, reference) being watched
        self._published: dict[str, float] = {}  # model → when its gauges were last refreshed (monotonic)
        self._lock = threading.Lock()

    def attach(self, db_engine: DbEngine | None) -> None:
        """Watch every served model, rebuilding the windows from `db_engine` (blocking)."""
        self.db_engine = db_engine
        for name, loaded in self.engine.models.items():
            self._ensure(name, loaded)

    def _ensure(self, name: str, loaded: LoadedModel) -> tuple[str, Reference]:
        """Watch the served version of `name`: on first sight its window is made and filled from the
        records, under the lock, so no part of the line slips in before the older ones."""
        version = loaded.manifest.version
        reference = Reference.from_manifest(loaded.manifest, loaded.threshold)
        with self._lock:
            current = self._served.get(name)
            if current == (version, reference):
                return current
            if current is not None and current[0] != version:
                self.metrics.forget_drift(name, current[0])
            window = self.watch.track(name, version, reference)
            if self.db_engine is not None and not window.parts:
                try:
                    for score, ng, area in recorded_parts(self.db_engine, name, version, self.watch.size):
                        window.add(score, ng, area)
                except SQLAlchemyError as exc:  # the window fills from the line instead
                    log.warning("drift window of %s %s not rebuilt from the records: %s", name, version, exc)
            self._served[name] = (version, reference)
        self._publish(name, version)
        return version, reference

    def _publish(self, name: str, version: str) -> DriftReport | None:
        report = self.watch.report(name, version)
        if report is not None:
            self.metrics.set_drift(name, version, report.view())
        return report

    def after_prediction(self, result: PredictResult, request: Any = None) -> None:
        """The after-prediction hook: add the part to its version's window and refresh the gauges."""
        p = result.prediction
        loaded = self.engine.models.get(p.model)
        if loaded is None or loaded.manifest.version != p.version:
            return  # scored by a version a reload has just replaced: not the one being watched
        self._ensure(p.model, loaded)
        self.watch.observe(p.model, p.version, p.score, p.is_anomalous, p.defect_area_fraction)
        now = time.monotonic()
        filling = len(self.watch.window(p.model, p.version).parts) <= self.watch.min_parts
        if filling or now - self._published.get(p.model, -math.inf) >= PUBLISH_EVERY_S:
            self._published[p.model] = now
            self._publish(p.model, p.version)

    def report(self, name: str, version: str | None = None) -> DriftReport | None:
        """The report of the served version of `name` (or of `version` when it is watched); None when
        neither is."""
        loaded = self.engine.models.get(name)
        if version is None or (loaded is not None and version == loaded.manifest.version):
            if loaded is None:
                return None
            version, _ = self._ensure(name, loaded)
        return self.watch.report(name, version)
