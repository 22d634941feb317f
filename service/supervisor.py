"""Several worker processes on one port (BRIDGENET_WORKERS=N): this process binds the socket, starts N
`python -m service` workers that accept on it, replaces a worker that ends, passes SIGHUP (hot reload) to
every worker, stops them all on SIGTERM/SIGINT, and serves the metrics port from the workers' shared
Prometheus files.

Our own supervisor rather than uvicorn's `workers=`: uvicorn answers SIGHUP by restarting every worker
(a cold start of each model set, capacity lost meanwhile) where ours passes it on as the service's hot
reload; and it pickles the server config into each worker, which our HTTP protocol class (built per
setting) does not survive.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from service.config import Settings
from service.metrics_server import MetricsServer, start_metrics_server
from service.workers_dir import WorkersDir

log = logging.getLogger("service.supervisor")

POLL_S = 0.2
BACKLOG = 2048  # uvicorn's default listen backlog
# A worker that ends sooner than this after its start is restarted after a growing pause (a crash loop
# must not burn the CPU the other workers serve with).
QUICK_EXIT_S = 30.0
MAX_PAUSE_S = 30.0
STOP_MARGIN_S = 10.0  # beyond the workers' own graceful shutdown, before SIGKILL


@dataclass
class Worker:
    slot: int
    proc: subprocess.Popen[bytes]
    started_at: float
    was_ready: bool = False


@dataclass
class Supervisor:
    settings: Settings
    host: str
    port: int
    workers: dict[int, Worker] = field(default_factory=dict)
    stopping: bool = False
    ever_ready: bool = False
    quick_exits: dict[int, int] = field(default_factory=dict)  # slot → ends in a row soon after a start
    _reload_requested: bool = False

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code (non-zero when the workers could not start)."""
        code = self._prepare_database()
        if code:
            return code
        root = Path(tempfile.mkdtemp(prefix="bridgenet-workers-"))
        shared = WorkersDir(root, self.settings.workers)
        shared.create()
        sock = socket.create_server((self.host, self.port), backlog=BACKLOG)
        sock.set_inheritable(True)
        metrics_server = None
        try:
            if self.settings.metrics_port is not None:
                metrics_server = _start_metrics(shared, self.settings)
            signal.signal(signal.SIGTERM, self._on_stop)
            signal.signal(signal.SIGINT, self._on_stop)
            signal.signal(signal.SIGHUP, self._on_hup)
            env = self._worker_env(shared)
            for slot in range(self.settings.workers):
                self.workers[slot] = self._spawn(slot, sock, shared, env)
            log.info("serving on http://%s:%d with %d worker processes", self.host, self.port, self.settings.workers)
            return self._supervise(sock, shared, env)
        finally:
            self._stop_all()
            sock.close()
            if metrics_server is not None:
                metrics_server.stop()
            shutil.rmtree(root, ignore_errors=True)

    def _prepare_database(self) -> int:
        """Migrate the records database once, before the workers open it (they then find it current)."""
        if self.settings.audit == "off":
            return 0
        from service.records.database import SchemaTooNewError, create_db_engine, database_url, migrate

        url = self.settings.database_url.get_secret_value() if self.settings.database_url else None
        db_engine = create_db_engine(database_url(self.settings.data_dir, url))
        try:
            migrate(db_engine)
        except SchemaTooNewError as exc:
            log.error("start-up failed: %s", exc)
            return 1
        finally:
            db_engine.dispose()
        return 0

    def _worker_env(self, shared: WorkersDir) -> dict[str, str]:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(shared.metrics_dir)
        if self.settings.ui_secret is None:
            # Each worker would draw its own key: a review station cookie signed by one would fail on the next.
            env["BRIDGENET_UI_SECRET"] = secrets.token_urlsafe(32)
        return env

    def _spawn(self, slot: int, sock: socket.socket, shared: WorkersDir, env: dict[str, str]) -> Worker:
        fd = sock.fileno()
        command = [sys.executable, "-m", "service", "--host", self.host, "--port", str(self.port)]
        command += ["--worker-slot", str(slot), "--listen-fd", str(fd), "--workers-dir", str(shared.root)]
        proc = subprocess.Popen(command, env=env, pass_fds=(fd,))
        shared.started(slot, proc.pid)
        log.info("worker %d started (pid %d)", slot, proc.pid)
        return Worker(slot, proc, time.monotonic())

    def _supervise(self, sock: socket.socket, shared: WorkersDir, env: dict[str, str]) -> int:
        pending: dict[int, float] = {}  # slot → when to restart it
        while not self.stopping:
            if self._reload_requested:
                self._reload_requested = False
                for worker in self.workers.values():
                    if worker.proc.poll() is None:
                        worker.proc.send_signal(signal.SIGHUP)
            ready = set(shared.ready())
            now = time.monotonic()
            for slot, worker in list(self.workers.items()):
                if slot in ready:
                    worker.was_ready = self.ever_ready = True
                code = worker.proc.poll()
                if code is None:
                    continue
                shared.ended(slot)
                _forget_metrics(shared, worker.proc.pid)
                del self.workers[slot]
                if not self.ever_ready:
                    # The first start failed (bad settings, a broken model): as one process would, stop here.
                    log.error("worker %d failed to start (exit code %d); stopping", slot, code)
                    return code or 1
                quick = now - worker.started_at < QUICK_EXIT_S
                self.quick_exits[slot] = self.quick_exits.get(slot, 0) + 1 if quick else 0
                pause = min(MAX_PAUSE_S, 2.0 ** (self.quick_exits[slot] - 1)) if quick else 0.0
                log.error(
                    "worker %d (pid %d) ended with exit code %d; replacing it in %.0f s",
                    slot,
                    worker.proc.pid,
                    code,
                    pause,
                )
                pending[slot] = now + pause
            for slot, when in list(pending.items()):
                if now >= when and not self.stopping:
                    del pending[slot]
                    self.workers[slot] = self._spawn(slot, sock, shared, env)
                    shared.count_restart()
            time.sleep(POLL_S)
        return 0

    def _stop_all(self) -> None:
        """SIGTERM to every worker (each drains its requests), SIGKILL to those still running after their
        graceful shutdown time."""
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.terminate()
        deadline = time.monotonic() + self.settings.request_timeout_s + STOP_MARGIN_S
        for worker in self.workers.values():
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", worker.slot)
                worker.proc.kill()
                worker.proc.wait(10)
        self.workers.clear()

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stopping = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP: every worker reloads its models")
        self._reload_requested = True


def _forget_metrics(shared: WorkersDir, pid: int) -> None:
    """A dead worker's gauges leave the view ("live" modes); its counters and histograms stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(shared.metrics_dir))


def _start_metrics(shared: WorkersDir, settings: Settings) -> MetricsServer:
    from service.metrics import workers_registry

    return start_metrics_server(workers_registry(shared), settings.metrics_host, settings.metrics_port or 0)
