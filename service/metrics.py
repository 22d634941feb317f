"""Every Prometheus collector of the service, on one registry per app, with stable names and few labels."""

from __future__ import annotations

from collections.abc import Mapping

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

# Seconds; a part takes ~5 ms (tiny model) to a few seconds (WideResNet-50 at 576 px on a CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
# Raw scores of a BridgeNet discriminator are sigmoid outputs in [0, 1]; fine steps near the top,
# where calibrated thresholds usually sit.
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
# Parts per session run (micro-batching); 1 when batching is off.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode", "preprocess", "inference", "postprocess")


# ---- Records and push (service.records, service.push): audit write time, evidence archive, outbox.
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
        self.archive_bytes = Gauge("bridgenet_archive_bytes", "Bytes held by the evidence archive.", registry=r)
        self.push_backlog = Gauge(
            "bridgenet_push_backlog", "Results waiting in the outbox, by destination.", ["destination"], registry=r
        )
        self.push_failures = Counter(
            "bridgenet_push_failures_total", "Failed delivery attempts, by destination.", ["destination"], registry=r
        )
        self.push_delivered = Counter(
            "bridgenet_push_delivered_total", "Results delivered, by destination.", ["destination"], registry=r
        )

    def declare_destination(self, destination: str) -> None:
        """Expose a destination's series from the start (dashboards see zeros, not gaps)."""
        self.push_backlog.labels(destination=destination)
        self.push_failures.labels(destination=destination)
        self.push_delivered.labels(destination=destination)


class Metrics:
    """The collectors of one app. Each app owns a registry, so tests can build several apps in one process
    without prometheus_client's "Duplicated timeseries" error."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.predictions = Counter(
            "bridgenet_predictions_total",
            "Parts scored, by model and verdict (ok/ng).",
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
        )
        self.inflight = Gauge(
            "bridgenet_inflight_requests", "Predictions admitted and not yet answered (running or queued).", registry=r
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
        self.records = RecordsMetrics(r)

    def observe_prediction(self, model: str, score: float, is_anomalous: bool, timings_ms: Mapping[str, float]) -> None:
        """Record one scored part: its verdict, its score and the duration of each known stage."""
        self.predictions.labels(model=model, verdict="ng" if is_anomalous else "ok").inc()
        self.anomaly_score.labels(model=model).observe(score)
        for stage in STAGES:
            if stage in timings_ms:
                self.stage_duration.labels(stage=stage).observe(timings_ms[stage] / 1e3)

    def observe_batch(self, model: str, size: int) -> None:
        """Record one session run of `size` parts (called from the engine's batcher threads)."""
        self.batch_size.labels(model=model).observe(size)

    def set_model_info(self, model: str, version: str, provider: str, backbone: str) -> None:
        self.model_info.labels(model=model, version=version, provider=provider, backbone=backbone).set(1)

    def clear_model_info(self) -> None:
        self.model_info.clear()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
