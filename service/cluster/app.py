"""The service as a Ray Serve deployment: the same FastAPI app (`service.main.create_app`), one engine per
replica, health checks on the engine's readiness, domain metrics exported through Ray with a `replica` label.

This is the only module of `service/` besides `service.cluster.proxy` that imports Ray (a test enforces it).
Everything here runs on a Ray cluster: on a laptop (`python -m service.cluster`), on machines joined by hand
(`ray start`, then `python -m service.cluster --address ...` or `serve deploy docker/ray/serve.yaml`), or on
Kubernetes through KubeRay (docker/k8s/rayservice.yaml). docs/DEPLOYMENT.md, "More than one host".
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any, cast

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from ray import serve
from ray.serve import metrics as serve_metrics
from ray.serve.deployment import Application

from service.config import Settings, env_name, get_settings
from service.engine import Engine
from service.logs import configure_logging
from service.main import create_app, engine_options

log = logging.getLogger(__name__)

APP_NAME = "bridgenet"
DEPLOYMENT_NAME = "inspection"
# The proxy answers for a replica that died under a request (service.cluster.proxy); the env variable
# is how Ray Serve's proxies find such a hook, in every proxy process of the cluster.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "service.cluster.proxy:middlewares"
# Requests a replica accepts beyond the admission limits: probes and /metrics must reach a replica whose
# prediction slots and queue are all taken, so that the app itself answers 429 for the predictions.
PROBE_HEADROOM = 4
HEALTH_CHECK_PERIOD_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 10.0
# Margin beyond request_timeout_s that a stopping replica waits for its in-flight requests (as `python -m service`).
SHUTDOWN_MARGIN_S = 5.0
# The families copied: the service's own and its process' (memory, CPU); Python GC counters stay local.
COPIED_PREFIXES = ("bridgenet_", "process_")


class ClusterConfigError(ValueError):
    """The deployment cannot start as asked; the message says why and what to change."""


@dataclass(frozen=True)
class Scale:
    """How many replicas and what each one reserves. `autoscale` = (min, max) replaces `replicas`."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ClusterConfigError(f"--replicas must be at least 1, got {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise ClusterConfigError(f"--autoscale MIN:MAX needs 0 ≤ MIN ≤ MAX and MAX ≥ 1, got {low}:{high}")
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ClusterConfigError("--cpus-per-replica and --gpus-per-replica must not be negative")

    @property
    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale is not None else self.replicas


def shared_database_problem(settings: Settings, max_replicas: int) -> str | None:
    """Why the audit trail cannot run with `max_replicas` replicas, or None. SQLite is one file on one host:
    replicas on other hosts would each write their own, and several writers on one host contend for its lock.
    """
    if max_replicas <= 1:
        return None
    if settings.audit == "off":
        return None
    url = settings.database_url.get_secret_value() if settings.database_url else None
    if url is None or url.startswith("sqlite"):
        where = "SQLite in the data directory" if url is None else "an SQLite URL"
        return (
            f"{max_replicas} replicas cannot share the audit trail in {where}: set {env_name('database_url')} "
            f"to the shared PostgreSQL database (postgresql+psycopg://...), or {env_name('audit')}=off"
        )
    return None


def shared_port_problem(settings: Settings, max_replicas: int) -> str | None:
    """Why a separate metrics port (BRIDGENET_METRICS_PORT) cannot work with `max_replicas` replicas, or
    None: replicas on one machine would all bind it."""
    if max_replicas > 1 and settings.metrics_port is not None:
        return (
            f"{env_name('metrics_port')} is set, but {max_replicas} replicas on one machine cannot all bind it; "
            "on Ray each node exports every replica's metrics on its Ray metrics port (docker/ray/prometheus.yml): "
            "unset it"
        )
    return None


def shared_opcua_problem(settings: Settings, max_replicas: int) -> str | None:
    """Why the OPC UA server (BRIDGENET_OPCUA_URL) cannot run with `max_replicas` replicas, or None: each
    would bind its port and announce the same outbox's results to the PLC."""
    if max_replicas > 1 and settings.opcua_url:
        return (
            f"{env_name('opcua_url')} is set, but the PLC interface runs in one replica only ({max_replicas} "
            "would each bind its port and announce the same results): unset it, or serve the PLC from a "
            "single-replica service"
        )
    return None


def deployment_options(settings: Settings, scale: Scale) -> dict[str, Any]:
    """Ray Serve options of the deployment, from the service's own limits (kept in one place)."""
    capacity = settings.max_inflight + settings.max_queue
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": scale.cpus_per_replica, "num_gpus": scale.gpus_per_replica},
        # The app's admission answers 429/503 in the service's error body; Ray's limit only sits above it.
        "max_ongoing_requests": capacity + PROBE_HEADROOM,
        # Requests the proxies hold while every replica is full (answered 503 + Retry-After beyond that).
        "max_queued_requests": max(capacity, 1),
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": settings.request_timeout_s + SHUTDOWN_MARGIN_S,
    }
    if scale.autoscale is not None:
        low, high = scale.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            # A replica whose prediction slots are all busy is full: more ongoing requests means more replicas.
            "target_ongoing_requests": settings.max_inflight,
        }
    else:
        options["num_replicas"] = scale.replicas
    return options


class MetricsCopier:
    """Copies a replica's Prometheus samples into Ray metrics, which every node's Ray agent exports with the
    replica's id as the `replica` label (the family names gain Ray's `ray_` prefix; docker/ray/prometheus.yml
    strips it, so the dashboard's queries are the same for one process and for Ray).

    Every sample becomes a gauge holding its current value: counters, histogram buckets, sums and counts
    keep their meaning under rate() and histogram_quantile(), which read values, not metric types.
    """

    def __init__(self, registry: CollectorRegistry, interval_s: float) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._gauges: dict[str, serve_metrics.Gauge] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-copier", daemon=True)

    def start(self) -> None:
        self.copy_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.copy_once()
            except Exception:  # a metrics hiccup must never take the replica down
                log.warning("copying metrics to Ray failed", exc_info=True)

    def copy_once(self) -> None:
        for family in self._registry.collect():
            if not family.name.startswith(COPIED_PREFIXES):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):  # creation timestamps: noise in a gauge
                    continue
                gauge = self._gauges.get(sample.name)
                if gauge is None:
                    gauge = serve_metrics.Gauge(
                        sample.name,
                        description=family.documentation or sample.name,
                        tag_keys=cast("tuple[str]", tuple(sample.labels)),  # Ray's hint says 1-tuple; any length works
                    )
                    self._gauges[sample.name] = gauge
                gauge.set(sample.value, tags=dict(sample.labels))


class _Replica:
    """One replica: loads and warms up its engine in the constructor (a failure fails the deployment's start
    with the reason in `serve status`), then serves the unchanged app of `service.main.create_app`."""

    # Ray Serve's ingress awaits an async constructor (the model loading below runs in a thread meanwhile).
    async def __init__(self, settings: Settings | None = None) -> None:  # type: ignore[misc]
        # Given by `python -m service.cluster` (checked there); read from the replica's environment when
        # deployed from a Serve config file (docker/ray/serve.yaml, runtime_env.env_vars).
        settings = settings or get_settings()
        configure_logging(settings.log_level)
        engine = Engine(engine_options(settings))
        # Loading is blocking work; the replica's event loop also answers Ray's own calls meanwhile.
        await asyncio.to_thread(engine.start)
        self._app: FastAPI = create_app(settings, engine=engine)
        self._app.state.served_by = serve.get_replica_context().replica_tag
        self._copier = MetricsCopier(self._app.state.service.metrics.registry, settings.cluster_metrics_interval_s)
        self._copier.start()
        log.info("replica %s ready", self._app.state.served_by)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    def check_health(self) -> None:
        """Ray Serve calls this every HEALTH_CHECK_PERIOD_S; raising replaces the replica."""
        if not self._app.state.service.ready:
            raise RuntimeError("the engine is not ready (models not loaded, or stopping)")

    def __del__(self) -> None:
        copier = getattr(self, "_copier", None)  # absent when the constructor failed (a model did not load)
        if copier is not None:
            copier.stop()


InspectionReplica = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress()(_Replica))


def build(settings: Settings, scale: Scale, *, bind_settings: bool = True) -> Application:
    """The Serve application for `settings` at `scale`; refuses what cannot work before anything starts.
    `bind_settings=False`: each replica reads its settings from its own environment instead."""
    for check in (shared_database_problem, shared_port_problem, shared_opcua_problem):
        problem = check(settings, scale.max_replicas)
        if problem:
            raise ClusterConfigError(problem)
    if scale.gpus_per_replica == 0 and settings.require_cuda:
        raise ClusterConfigError(f"{env_name('require_cuda')} is set but --gpus-per-replica is 0")
    deployment = InspectionReplica.options(**deployment_options(settings, scale))
    return deployment.bind(settings) if bind_settings else deployment.bind()


APP_ARGS = ("replicas", "autoscale", "cpus_per_replica", "gpus_per_replica")


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point of docker/ray/serve.yaml and docker/k8s/rayservice.yaml
    (`import_path: service.cluster.app:app_builder`); `args` are APP_ARGS, `autoscale` as "MIN:MAX".
    Settings come from the BRIDGENET_* variables (runtime_env.env_vars and the machines' environment)."""
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ClusterConfigError(f"unknown application args {unknown}; known: {list(APP_ARGS)}")
    scale = Scale(
        replicas=int(args.get("replicas", 1)),
        autoscale=parse_autoscale(str(args["autoscale"])) if args.get("autoscale") else None,
        cpus_per_replica=float(args.get("cpus_per_replica", 1.0)),
        gpus_per_replica=float(args.get("gpus_per_replica", 0.0)),
    )
    return build(get_settings(), scale, bind_settings=False)


def parse_autoscale(text: str) -> tuple[int, int]:
    """ "MIN:MAX" → (MIN, MAX)."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise ClusterConfigError(f"--autoscale expects MIN:MAX, e.g. 1:4; got {text!r}") from None
