"""Every Prometheus collector of the service, on one registry per app, with stable names and few labels.

With several worker processes (service.supervisor) every worker writes its values to files in one folder
(prometheus_client's multiprocess mode) and any scrape renders all of them: counters and histograms sum over
the workers, each gauge says how it combines (`multiprocess_mode`; ignored with one process).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.engine import PredictResult
from service.workers_dir import WorkersDir, WorkersProcessCollector

# Seconds; a part takes ~5 ms (tiny model) to a few seconds (WideResNet-50 at 576 px on a CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
# Raw scores of a BridgeNet discriminator are sigmoid outputs in [0, 1]; fine steps near the top,
# where calibrated thresholds usually sit.
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
# Parts per session run (micro-batching); 1 when batching is off.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode", "preprocess", "inference", "postprocess")
VERDICTS = ("ok", "review", "ng")
# Of a manifest's score_stats, the ones exported as drift baselines (alerts compare against p99).
GOOD_SCORE_STATS = ("p50", "p95", "p99", "max")


# ---- Records and push (service.records, service.push): audit write time, evidence archive, outbox.
DEAD_LETTER_REASONS = ("refused", "expired", "overflow")
# Seconds per audit write: SQLite commits take ~0.1-1 ms, PostgreSQL over a network a few ms.
AUDIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class RecordsMetrics:
    """Collectors of the audit trail and the push outbox, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.audit_write_seconds = Histogram(
            "bridgenet_audit_write_seconds",
            "Time to write one decision record (evidence and outbox rows included) and commit it.",
            buckets=AUDIT_BUCKETS,
            registry=r,
        )
        self.archive_failures = Counter(
            "bridgenet_archive_failures_total",
            "Parts recorded without their evidence because it could not be stored (full, write error).",
            registry=r,
        )
        self.archive_bytes = Gauge(
            "bridgenet_archive_bytes", "Bytes held by the evidence archive.", registry=r, multiprocess_mode="livemax"
        )
        self.archive_orphans_removed = Counter(
            "bridgenet_archive_orphans_removed_total",
            "Evidence files that no record named, deleted by the archive sweep (a crash between file and record).",
            registry=r,
        )
        self.push_backlog = Gauge(
            "bridgenet_push_backlog",
            "Results waiting in the outbox, by destination.",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",  # one worker delivers (and counts); the others hold 0
        )
        self.push_failures = Counter(
            "bridgenet_push_failures_total", "Failed delivery attempts, by destination.", ["destination"], registry=r
        )
        self.push_delivered = Counter(
            "bridgenet_push_delivered_total", "Results delivered, by destination.", ["destination"], registry=r
        )
        self.push_dead_letters = Gauge(
            "bridgenet_push_dead_letters",
            "Results taken out of the outbox undelivered (refused, too old, over the bound), by destination.",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.push_dead_lettered = Counter(
            "bridgenet_push_dead_lettered_total",
            "Results moved to the dead letters, by destination and reason (refused, expired, overflow).",
            ["destination", "reason"],
            registry=r,
        )

    def declare_destination(self, destination: str) -> None:
        """Expose a destination's series from the start (dashboards see zeros, not gaps)."""
        self.push_backlog.labels(destination=destination)
        self.push_failures.labels(destination=destination)
        self.push_delivered.labels(destination=destination)
        self.push_dead_letters.labels(destination=destination)
        for reason in DEAD_LETTER_REASONS:
            self.push_dead_lettered.labels(destination=destination, reason=reason)


class PlcMetrics:
    """Collectors of the OPC UA result handshake (service.plc), by model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.unacknowledged = Gauge(
            "bridgenet_plc_unacknowledged_results",
            "Results made ready to the PLC and not acknowledged yet, by model.",
            ["model"],
            registry=r,
        )
        self.waiting = Gauge(
            "bridgenet_plc_waiting_results",
            "Results held back because the model's result buffer is full (an overrun in progress), by model.",
            ["model"],
            registry=r,
        )
        self.overruns = Counter(
            "bridgenet_plc_overruns_total",
            "Results that found the model's result buffer full and had to wait for acknowledgements, by model.",
            ["model"],
            registry=r,
        )
        self.acknowledged = Counter(
            "bridgenet_plc_acknowledged_total", "Results the PLC acknowledged, by model.", ["model"], registry=r
        )
        self.expired = Counter(
            "bridgenet_plc_expired_total",
            "Results unacknowledged past BRIDGENET_OPCUA_RESULT_TTL_S, moved to the dead letters, by model.",
            ["model"],
            registry=r,
        )

    def declare_model(self, model: str) -> None:
        """Expose a model's series from the start (dashboards see zeros, not gaps)."""
        for collector in (self.unacknowledged, self.waiting, self.overruns, self.acknowledged, self.expired):
            collector.labels(model=model)


# ---- A model's life on the line (service.lifecycle): the drift watch and the shadow candidate.
DRIFT_QUANTILES = ("0.1", "0.5", "0.9")


class LifecycleMetrics:
    """Collectors of the drift watch and of shadow scoring, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.drift_quantile = Gauge(
            "bridgenet_drift_score_quantile",
            "Quantiles of the raw scores in a model version's drift window (NG parts counted above every OK "
            "score; +Inf where a quantile falls among them).",
            ["model", "version", "quantile"],
            registry=r,
            multiprocess_mode="livemax",  # several workers: each watches its share of the parts; the worst shows
        )
        self.drift_implied_rate = Gauge(
            "bridgenet_drift_implied_false_reject_rate",
            "False-reject rate implied by the drift window's median and spread at the threshold in effect.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_status = Gauge(
            "bridgenet_drift_status",
            "Drift watch status of a model version: 0 ok, 1 watch, 2 drifting (0 until the window is judged).",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_window_parts = Gauge(
            "bridgenet_drift_window_parts",
            "Parts in a model version's drift window.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shadow_scored = Counter(
            "bridgenet_shadow_scored_total",
            "Parts the shadow candidate scored, by model and whether its verdict agreed with the answer's.",
            ["model", "agreement"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "bridgenet_shadow_skipped_total",
            "Parts the shadow candidate did not score: its queue was full (queue_full) or it failed (error).",
            ["model", "reason"],
            registry=r,
        )
        self.shadow_queue = Gauge(
            "bridgenet_shadow_queue", "Parts waiting for the shadow scorer.", registry=r, multiprocess_mode="livesum"
        )

    def set_drift(self, model: str, version: str, view: Mapping[str, Any]) -> None:
        """Publish one drift report (`DriftReport.view()`: window quantiles, implied rate, status)."""
        window = view["window"]
        quantiles = window["quantiles"]
        for q in DRIFT_QUANTILES:
            value = quantiles.get(q)
            self.drift_quantile.labels(model=model, version=version, quantile=q).set(
                float("inf") if value is None else float(value)
            )
        rate = view["implied_false_reject_rate"]
        self.drift_implied_rate.labels(model=model, version=version).set(float("nan") if rate is None else float(rate))
        level = {"ok": 0, "watch": 1, "drifting": 2}[str(view["status"])]
        self.drift_status.labels(model=model, version=version).set(level)
        self.drift_window_parts.labels(model=model, version=version).set(float(window["n"]))

    def forget_drift(self, model: str, version: str) -> None:
        """Drop the series of a version no longer served (its alert must not outlive it)."""
        for gauge in (self.drift_implied_rate, self.drift_status, self.drift_window_parts):
            remove_series(gauge, model, version)
        for q in DRIFT_QUANTILES:
            remove_series(self.drift_quantile, model, version, q)


class Metrics:
    """The collectors of one app. Each app owns a registry, so tests can build several apps in one process
    without prometheus_client's "Duplicated timeseries" error."""

    def __init__(self, registry: CollectorRegistry | None = None, workers: WorkersDir | None = None) -> None:
        """`workers`: with several worker processes, their shared folder (whose value files the supervisor
        named in PROMETHEUS_MULTIPROC_DIR before this process imported prometheus_client); None with one."""
        self.registry = registry or CollectorRegistry()
        self.workers = workers
        r = self.registry
        if workers is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.predictions = Counter(
            "bridgenet_predictions_total",
            "Parts scored, by model and verdict (ok/review/ng).",
            ["model", "verdict"],
            registry=r,
        )
        self.stage_duration = Histogram(
            "bridgenet_stage_duration_seconds",
            "Time per pipeline stage of a prediction.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "bridgenet_request_duration_seconds",
            "Wall time of POST /v1/predict requests, queueing and refusals included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.anomaly_score = Histogram(
            "bridgenet_anomaly_score", "Raw image scores, by model.", ["model"], buckets=SCORE_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "bridgenet_model_info",
            "Loaded models (value 1), with version, execution provider and backbone.",
            ["model", "version", "provider", "backbone"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.inflight = Gauge(
            "bridgenet_inflight_requests",
            "Predictions admitted and not yet answered (running or queued).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "bridgenet_rejected_requests_total", "Requests refused, by error code.", ["reason"], registry=r
        )
        self.requests = Counter(
            "bridgenet_requests_total",
            "HTTP requests, by route template and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.batch_size = Histogram(
            "bridgenet_batch_size",
            "Parts per ONNX Runtime session run, by model (1 when micro-batching is off).",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        for stage in STAGES:  # expose every stage from the start, so dashboards see zeros, not gaps
            self.stage_duration.labels(stage=stage)
        # --- fail-closed monitoring: baselines, capacity and answered-only latency ------------------------
        self.good_score = Gauge(
            "bridgenet_good_score",
            "Raw scores of the good validation parts in each model's manifest (score_stats): the drift baseline.",
            ["model", "stat"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.admission_limit = Gauge(
            "bridgenet_admission_limit",
            "Admission limits in effect: predictions run at once (inflight) and waiting beyond those (queue).",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",  # each worker admits its own share: the host's limit is the sum
        )
        self.prediction_duration = Histogram(
            "bridgenet_prediction_duration_seconds",
            "Wall time of prediction requests answered with a result (200); refusals are left out.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # --- workers and models that cannot take the service down -----------------------------------------
        self.reclaimed_slots = Counter(
            "bridgenet_reclaimed_slots_total",
            "Admission slots taken back from predictions still running long after their request timed out.",
            registry=r,
        )
        self.model_unavailable = Gauge(
            "bridgenet_model_unavailable",
            "Model folders that failed to load (value 1; the reason is in /v1/models and the log), by model.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.records = RecordsMetrics(r)
        self.plc = PlcMetrics(r)

        self.lifecycle = LifecycleMetrics(r)

    def observe_prediction(self, result: PredictResult) -> None:
        """Record one scored part: its verdict, its score, the duration of each known stage, and the size of
        its session run (once per run: by the part that came first in it)."""
        p = result.prediction
        self.predictions.labels(model=p.model, verdict=p.verdict).inc()
        self.anomaly_score.labels(model=p.model).observe(p.score)
        for stage in STAGES:
            if stage in result.timings_ms:
                self.stage_duration.labels(stage=stage).observe(result.timings_ms[stage] / 1e3)
        if p.first_in_batch:
            self.batch_size.labels(model=p.model).observe(p.batch_size)

    def init_series(self, models: Iterable[str], refusal_codes: Iterable[str]) -> None:
        """Create every labelled series for the known models, verdicts and refusal reasons at 0, so a
        dashboard shows 0 after a restart instead of "No data" until the first request of each kind."""
        for model in models:
            for verdict in VERDICTS:
                self.predictions.labels(model=model, verdict=verdict)
            self.anomaly_score.labels(model=model)
            self.batch_size.labels(model=model)
        for code in refusal_codes:
            self.rejected.labels(reason=code)

    def set_good_scores(self, model: str, stats: Mapping[str, float]) -> None:
        """Export a model's good-score statistics (p50, p95, p99, max of its manifest's score_stats)."""
        for stat in GOOD_SCORE_STATS:
            if stat in stats:
                self.good_score.labels(model=model, stat=stat).set(stats[stat])

    def set_admission_limits(self, max_inflight: int, max_queue: int) -> None:
        self.admission_limit.labels(kind="inflight").set(max_inflight)
        self.admission_limit.labels(kind="queue").set(max_queue)

    def set_model_info(self, model: str, version: str, provider: str, backbone: str) -> None:
        self.model_info.labels(model=model, version=version, provider=provider, backbone=backbone).set(1)

    def clear_model_info(self) -> None:
        clear_gauge(self.model_info)
        clear_gauge(self.good_score)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry (of every worker's, with several) and its content type."""
        if self.workers is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return generate_latest(workers_registry(self.workers)), CONTENT_TYPE_LATEST


def clear_gauge(gauge: Gauge) -> None:
    """Remove every labelled series of `gauge`. With several workers a removed series would live on in this
    worker's value file at its last value, so each is set to 0 first (it reads 0 until the worker restarts)."""
    for family in gauge.collect():
        for sample in family.samples:
            gauge.labels(**sample.labels).set(0)
    gauge.clear()


def remove_series(gauge: Gauge, *labels: str) -> None:
    """Remove one labelled series of `gauge` (none: nothing). With several workers it would live on in this
    worker's value file at its last value, so it is set to 0 first (an alert on it ends)."""
    if any(tuple(s.labels.values()) == labels for family in gauge.collect() for s in family.samples):
        gauge.labels(*labels).set(0)
        gauge.remove(*labels)


def workers_registry(workers: WorkersDir) -> CollectorRegistry:
    """A registry that renders the value files of every worker, plus the process series (CPU, memory) summed
    over the supervisor and its live workers."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(workers.metrics_dir))
    registry.register(WorkersProcessCollector(workers))
    return registry
