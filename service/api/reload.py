"""Model reloads at run time: `POST /v1/admin/reload` and SIGHUP both run `reload_models`, and the outcome
reaches the metrics (`publish_models`, also called once at start-up)."""

from __future__ import annotations

import asyncio
import logging
import signal

from starlette.concurrency import run_in_threadpool

from service.api.deps import ServiceState
from service.api.errors import refusal_codes
from service.engine import Engine, ReloadReport
from service.metrics import Metrics

log = logging.getLogger("service.main")


def publish_models(engine: Engine, metrics: Metrics) -> None:
    """The served and the failed models on the metrics (after start and after each reload), and a log line
    per served model."""
    metrics.clear_model_info()
    metrics.model_unavailable.clear()
    for name, loaded in engine.models.items():
        metrics.set_model_info(name, loaded.manifest.version, loaded.provider, loaded.manifest.backbone)
        metrics.set_good_scores(name, loaded.manifest.score_stats.model_dump())
        log.info("serving model %s", name, extra={"model_info": loaded.info()})  # "name" would clash
    for name, reason in engine.unavailable.items():
        metrics.model_unavailable.labels(model=name).set(1)
        log.error("model %s is unavailable: %s", name, reason)
    metrics.init_series(engine.models, refusal_codes())


async def reload_models(state: ServiceState) -> ReloadReport:
    """Reload the model folders and the recipe files (one reload at a time) and publish the models' outcome
    on the metrics; the recipes' outcome is logged and shown by GET /v1/recipes."""
    async with state.reload_lock:
        report = await run_in_threadpool(state.engine.reload)
        await run_in_threadpool(state.recipes.reload)
        publish_models(state.engine, state.metrics)
        return report


def install_sighup(state: ServiceState) -> bool:
    """SIGHUP reloads the models (`python -m service` only: signal handlers live in the main thread)."""
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        log.info("SIGHUP: reloading the models")
        task = loop.create_task(reload_models(state))
        state.background.add(task)
        task.add_done_callback(state.background.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread (tests), or no SIGHUP here
        return False
    return True
