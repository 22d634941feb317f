"""Serve the configured models with uvicorn: POST /v1/predict, /v1/models, /healthz, /readyz, /metrics.

`python -m service users add|remove|list` manages the review station's users instead (service.ui.users_cli).
With BRIDGENET_WORKERS=N above 1 this process supervises N worker processes on the port (service.supervisor).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from service.http_protocol import with_deadline
from service.logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.config import Settings
    from service.workers_dir import WorkerSlot

log = logging.getLogger("service")

# Extra seconds beyond request_timeout_s that SIGTERM waits for in-flight requests to finish.
SHUTDOWN_MARGIN_S = 5.0
EXIT_WORKER_DIED = 4  # a batching worker died: the orchestrator restarts the container (restart: policy)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from service.config import settings_help  # pydantic-settings only; imported late like the app (see main)

    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__,
        epilog="settings, from the environment (empty counts as unset):\n" + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    # A worker of service.supervisor: which slot, the listening socket it inherited, the shared folder.
    parser.add_argument("--worker-slot", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_server(app: FastAPI, settings: Settings, host: str, port: int) -> uvicorn.Server:
    """The uvicorn server for `app`. On SIGTERM it stops accepting, lets in-flight requests finish (each
    ends by request_timeout_s) for up to `timeout_graceful_shutdown`, then the lifespan stops the engine.
    Connections are bounded (`max_connections`; more are answered 503) and their request heads must arrive
    within `header_timeout_s` (service.http_protocol)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=with_deadline(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        # Forwarded headers are handled by the app (service.main, BRIDGENET_FORWARDED_ALLOW_IPS): uvicorn's own
        # default would trust 127.0.0.1 whatever the settings say.
        proxy_headers=False,
        log_config=None,  # keep our JSON handler on the root logger
        access_log=False,  # the request middleware logs every request with its id
        lifespan="on",
        timeout_graceful_shutdown=int(settings.request_timeout_s + SHUTDOWN_MARGIN_S),
    )
    return uvicorn.Server(config)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM. Returns non-zero when the settings or a model fail to load."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        from service.ui.users_cli import main as users_main

        return users_main(argv[1:])
    args = parse_args(argv)
    configure_logging("INFO")
    # Imported here so that a broken environment still gets a JSON log line rather than a bare traceback.
    from service.config import get_settings
    from service.main import create_app

    try:
        settings = get_settings()
    except Exception as exc:  # SettingsError names every bad BRIDGENET_* variable
        log.error("invalid settings: %s", exc)
        return 2
    configure_logging(settings.log_level)
    worker = None
    if args.worker_slot is not None:
        from service.workers_dir import WorkersDir, WorkerSlot

        worker = WorkerSlot(WorkersDir(args.workers_dir, settings.workers), args.worker_slot)
        configure_logging(settings.log_level, fields={"worker": worker.slot})
    elif settings.workers > 1:
        from service.supervisor import Supervisor

        return Supervisor(settings, args.host, args.port).run()
    app = create_app(settings, worker=worker)
    server = build_server(app, settings, args.host, args.port)
    state = app.state.service

    def stop_for_restart(reason: str) -> None:  # a worker died: drain, then exit non-zero (see below)
        server.should_exit = True

    state.on_fatal = stop_for_restart
    if worker is not None:
        _watch_as_worker(server, lambda: state.ready, worker)
        server.run(sockets=[socket.socket(fileno=args.listen_fd)])
    else:
        server.run()
    if not server.started:
        log.error("the service did not start; see the start-up error above")
        return 1
    if state.fatal is not None:
        log.critical("exiting for a restart: %s", state.fatal)
        return EXIT_WORKER_DIED
    return 0


def _watch_as_worker(server: uvicorn.Server, ready: Callable[[], bool], worker: WorkerSlot) -> None:
    """Tell the supervisor's folder once this worker is ready and accepting (the lifespan has loaded the models,
    then uvicorn starts accepting), and stop if the supervisor is gone (killed) rather than serve unsupervised."""
    parent = os.getppid()

    def watch() -> None:
        marked = False
        while not server.should_exit:
            if not marked and server.started and ready():
                worker.dir.mark_ready(worker.slot)
                marked = True
            if os.getppid() != parent:
                log.error("the supervisor (pid %d) is gone; stopping", parent)
                server.should_exit = True
            threading.Event().wait(1.0 if marked else 0.05)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
