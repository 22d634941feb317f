"""Prometheus metrics on their own port (BRIDGENET_METRICS_PORT): prometheus_client's small HTTP server
in a daemon thread, serving one registry. Kept off the API port so only the scraper's network reaches it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Listen on host:port now; an OSError (port taken, bad address) stops the service's start."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    running = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", host, running.port)
    return running
