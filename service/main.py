"""The app factory: settings → engine → FastAPI app whose lifespan loads, verifies and warms the models."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.api import health_router, models_router, predict_router
from service.api.admission import Admission
from service.api.capacity import SideTrafficLimit, side_limit
from service.api.deps import ServiceState
from service.api.errors import install_error_handlers
from service.api.gate import AdmissionGate
from service.api.hooks import default_hooks
from service.api.middleware import RequestMiddleware, ServedByMiddleware, process_id
from service.api.reload import install_sighup, publish_models
from service.api.routes_admin import router as admin_router
from service.api.routes_commission import router as commission_router
from service.api.routes_docs import docs_router
from service.api.routes_lifecycle import router as lifecycle_router
from service.api.routes_metrics import router as metrics_router
from service.api.routes_recipes import admin_router as recipes_admin_router
from service.api.routes_recipes import router as recipes_router
from service.api.routes_results import router as results_router
from service.api.routes_watch import router as watch_router
from service.config import Settings, decode_limits, get_settings, max_body_bytes
from service.engine import Engine, EngineOptions
from service.lifecycle.shadow import ShadowConfigError, ShadowScorer, candidate_folder, load_candidate
from service.lifecycle.watch import LineWatch
from service.metrics import Metrics
from service.metrics_server import start_metrics_server
from service.recipes import RECIPES_DIR, RecipeCatalog
from service.records.runtime import Records

if TYPE_CHECKING:
    from service.plc.server import PlcServer
from service.ui.routes import mount_ui
from service.workers_dir import WorkerSlot

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("bridgenet-inspection")
    except metadata.PackageNotFoundError:  # running from a checkout that was never pip-installed
        return "0+unknown"


def engine_options(settings: Settings) -> EngineOptions:
    """The engine's view of the settings (the engine never sees the settings object itself)."""
    return EngineOptions(
        models_dir=settings.models_dir,
        default_model=settings.default_model,
        models=tuple(settings.models) if settings.models else None,
        require_cuda=settings.require_cuda,
        providers=settings.providers,
        threshold_overrides=dict(settings.threshold_overrides),
        min_defect_area_overrides=dict(settings.min_defect_area_mm2),
        min_defect_length_overrides=dict(settings.min_defect_length_mm),
        intra_op_threads=settings.intra_op_threads,
        ort_spin_wait=settings.ort_spin_wait,
        batch_max_size=settings.batch_max_size,
        batch_wait_ms=settings.batch_wait_ms,
        decode_limits=decode_limits(settings),
        decode_threads=settings.decode_threads,
        io_binding=settings.io_binding,
        tensorrt=settings.tensorrt,
        result_timeout_s=2 * settings.request_timeout_s,  # as long as admission waits before reclaiming a slot
    )


WATCHDOG_INTERVAL_S = 0.5


def start_shadow(settings: Settings, engine: Engine, metrics: Metrics, records: Records) -> ShadowScorer | None:
    """Resolve and load BRIDGENET_SHADOW's candidates and start their scorer (blocking); None when unset.
    ShadowConfigError names the model and what is wrong with its candidate: the start stops there."""
    if not settings.shadow:
        return None
    candidates = {}
    for model, target in settings.shadow.items():
        loaded = engine.models.get(model)
        if loaded is None:
            served = sorted(engine.models)
            raise ShadowConfigError(f"BRIDGENET_SHADOW names model {model!r}, which is not served: {served}")
        folder = candidate_folder(engine.options.models_dir, model, target, loaded.manifest.version)
        candidates[model] = load_candidate(engine.options, model, folder)
        log.info("model %s: shadowed by version %s from %s", model, candidates[model].manifest.version, folder)
    db_engine = records.recorder.db_engine if records.recorder is not None else None
    scorer = ShadowScorer(candidates, metrics.lifecycle, decode_limits(settings), db_engine, settings.shadow_queue)
    scorer.start()
    return scorer


async def watch_workers(state: ServiceState) -> None:
    """A dead batching worker makes the engine not ready at once (/readyz 503); this also ends the process
    (non-zero, `state.fatal`) so its orchestrator restarts it. `state.on_fatal` stops the server."""
    while state.engine.failure is None:
        await asyncio.sleep(WATCHDOG_INTERVAL_S)
    state.fatal = state.engine.failure
    log.critical("a worker died: %s; the service stops to be restarted", state.fatal)
    if state.on_fatal is not None:
        state.on_fatal(state.fatal)


async def start_plc(state: ServiceState, recipes: RecipeCatalog | None) -> PlcServer:
    """The OPC UA server over the records' outbox; `recipes`: the catalog its VisionSystems switch."""
    # Imported here: asyncua takes a second to import, and only a service with an OPC UA address needs it.
    from service.plc.server import PlcServer

    records = state.records
    if records is None or records.recorder is None:
        raise RuntimeError("the OPC UA server needs the audit trail (BRIDGENET_AUDIT=on)")
    plc = await PlcServer.start(
        state.settings,
        state.engine,
        records.recorder.db_engine,
        state.metrics.plc,
        recipes,
        push_metrics=state.metrics.records,
    )
    records.commit_listeners.append(plc.handshake.wake)
    return plc


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, worker: WorkerSlot | None = None
) -> FastAPI:
    """Build the app. Nothing is loaded here: the lifespan starts the engine (load, verify, warm up) and
    only then does /readyz answer 200. `engine` is for tests (a wrapped or pre-built engine). `worker`: this
    process is one of several workers (service.supervisor), which serves the metrics port itself."""
    settings = settings or get_settings()
    engine = engine or Engine(engine_options(settings))
    metrics = Metrics(workers=worker.dir if worker is not None else None)
    state = ServiceState(
        settings=settings,
        engine=engine,
        metrics=metrics,
        limits=decode_limits(settings),
        recipes=RecipeCatalog(settings.recipes_dir or settings.models_dir / RECIPES_DIR, settings.recipe),
        after_prediction=default_hooks(metrics),
        worker=worker,
        watch=LineWatch(engine, metrics.lifecycle, settings.drift_window, settings.drift_min_parts),
    )
    assert state.watch is not None
    state.after_prediction.append(state.watch.after_prediction)
    if settings.batch_max_size is not None and settings.batch_max_size > settings.max_inflight:
        # Admission lets at most max_inflight predictions reach the engine at once: batches never grow beyond.
        log.warning(
            "BRIDGENET_BATCH_MAX_SIZE=%d exceeds BRIDGENET_MAX_INFLIGHT=%d; batches stay at most %d parts",
            settings.batch_max_size,
            settings.max_inflight,
            settings.max_inflight,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("starting: models from %s", engine.options.models_dir)
        metrics_server = None
        try:
            if settings.metrics_port is not None and worker is None:  # first: a taken port fails the start early
                metrics_server = start_metrics_server(metrics.registry, settings.metrics_host, settings.metrics_port)
            if not engine.ready:
                # Loading sessions and warming up is blocking work; keep the loop free meanwhile.
                await run_in_threadpool(engine.start)
            await run_in_threadpool(state.recipes.load)  # a bad active recipe fails the start, naming it
        except Exception as exc:
            log.error("start-up failed: %s", exc)
            if engine.ready:
                engine.stop()
            if metrics_server is not None:
                metrics_server.stop()
            raise
        publish_models(engine, metrics)
        metrics.set_admission_limits(settings.max_inflight, settings.max_queue)
        if state.records is None:  # the audit trail: /v1/results and the review station (/ui) read it
            state.records = await Records.start(settings, metrics)
        records, watch = state.records, state.watch
        assert watch is not None
        try:
            db_engine = records.recorder.db_engine if records.recorder is not None else None
            await run_in_threadpool(watch.attach, db_engine)
            state.shadow = await run_in_threadpool(start_shadow, settings, engine, metrics, records)
            if settings.opcua_url:  # after the records: the PLC's results come from their outbox
                state.plc = await start_plc(state, state.recipes)
        except Exception as exc:  # e.g. the OPC UA port is taken: stop what started, and the start-up with it
            log.error("start-up failed: %s", exc)
            shadow, state.shadow = state.shadow, None
            if shadow is not None:
                await run_in_threadpool(shadow.stop)
            await records.stop()
            state.records = None
            engine.stop()
            if metrics_server is not None:
                metrics_server.stop()
            raise
        state.admission = Admission(settings.max_inflight, settings.max_queue, settings.request_timeout_s, metrics)
        log.info("ready", extra={"models": sorted(engine.models), "default_model": engine.options.default_model})
        watchdog = asyncio.create_task(watch_workers(state))
        on_sighup = install_sighup(state)
        try:
            yield
        finally:
            if worker is not None:
                worker.dir.mark_not_ready(worker.slot)
            watchdog.cancel()
            if on_sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            # Uvicorn has finished (or given up on) in-flight requests by now; work that outlived its
            # request after a timeout still holds a session, so wait for it before dropping the sessions.
            admission, state.admission = state.admission, None
            if admission is not None:
                await admission.drain(settings.request_timeout_s)
            shadow, state.shadow = state.shadow, None
            if shadow is not None:
                await run_in_threadpool(shadow.stop)
            plc, state.plc = state.plc, None
            if plc is not None:
                await plc.stop()
            records, state.records = state.records, None
            if records is not None:
                await records.stop()
            engine.stop()
            metrics.clear_model_info()
            if metrics_server is not None:
                metrics_server.stop()
            log.info("stopped")

    app = FastAPI(
        title="BridgeNet inspection service",
        description="RGB image + organized point cloud per part → anomaly score, OK/NG verdict, anomaly map.",
        version=_version(),
        lifespan=lifespan,
        # Served by docs_router instead: the contract behind the API key, Swagger UI from bundled assets.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(models_router)
    app.include_router(recipes_router)
    app.include_router(recipes_admin_router)
    app.include_router(predict_router)
    app.include_router(admin_router)
    app.include_router(lifecycle_router)
    app.include_router(commission_router)
    app.include_router(docs_router(settings.docs))
    if settings.metrics_port is None:  # otherwise on their own port (service.metrics_server)
        app.include_router(metrics_router)
    app.include_router(results_router)
    app.include_router(watch_router)
    mount_ui(app, settings)  # the review station at /ui (service.ui)
    # Outermost last: RequestMiddleware (request id, body limits and deadline, access log, metrics) wraps the
    # gate, which refuses or admits the predict paths from their headers before the body is read.
    # The side limit sits beside the gate: both decide from the headers, before any body is read.
    app.add_middleware(AdmissionGate, state=state, max_body_bytes=max_body_bytes(settings))
    app.add_middleware(SideTrafficLimit, limit=side_limit(settings.max_connections, settings.side_share))
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        max_body_bytes=max_body_bytes(settings),
        body_timeout_s=settings.body_timeout_s,
        form_body_timeout_s=settings.form_body_timeout_s,
    )
    # Outermost, so that every answer names its server, refusals before the body included.
    app.state.served_by = process_id()
    app.add_middleware(ServedByMiddleware)
    if settings.forwarded_allow_ips:
        # Outermost of all: behind a trusted TLS proxy, every layer (records, cookies' Secure flag, logs)
        # sees the client's address and scheme; anyone else's X-Forwarded-* headers are ignored.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.forwarded_allow_ips))
    return app
