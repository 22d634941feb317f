"""The folder that the worker processes of one service share (service.supervisor): which process holds each
worker slot and whether it is ready, the workers' Prometheus value files, and the process series (CPU,
memory) summed over the supervisor and its workers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class WorkersDir:
    """`root`/procs/<slot>: the pid the supervisor started for a slot; `root`/ready/<slot>: the same pid,
    written by the worker once its models are loaded and warm; `root`/metrics: PROMETHEUS_MULTIPROC_DIR;
    `root`/supervisor: the supervisor's pid; `root`/restarts: workers replaced so far."""

    root: Path
    count: int

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def create(self) -> None:
        for sub in ("procs", "ready", "metrics"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _write(self.root / "supervisor", str(os.getpid()))
        _write(self.root / "restarts", "0")

    def started(self, slot: int, pid: int) -> None:
        _write(self.root / "procs" / str(slot), str(pid))

    def ended(self, slot: int) -> None:
        """The slot's process is gone (the supervisor reaped it)."""
        for sub in ("ready", "procs"):
            with contextlib.suppress(FileNotFoundError):
                (self.root / sub / str(slot)).unlink()

    def mark_ready(self, slot: int) -> None:
        _write(self.root / "ready" / str(slot), str(os.getpid()))

    def mark_not_ready(self, slot: int) -> None:
        if _read_int(self.root / "ready" / str(slot)) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (self.root / "ready" / str(slot)).unlink()

    def count_restart(self) -> None:
        _write(self.root / "restarts", str(self.restarts() + 1))

    def restarts(self) -> int:
        return _read_int(self.root / "restarts") or 0

    def running(self) -> dict[int, int]:
        """slot → pid of the worker processes alive now."""
        out = {}
        for slot in range(self.count):
            pid = _read_int(self.root / "procs" / str(slot))
            if pid is not None and pid_alive(pid):
                out[slot] = pid
        return out

    def ready(self) -> list[int]:
        """The slots whose running process has said it is ready."""
        return [slot for slot, pid in self.running().items() if _read_int(self.root / "ready" / str(slot)) == pid]

    def supervisor_pid(self) -> int | None:
        return _read_int(self.root / "supervisor")


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process's place: its slot number in the shared folder."""

    dir: WorkersDir
    slot: int


def _write(path: Path, text: str) -> None:
    """Replace `path` at once: a reader sees the old or the new content, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _proc_stat(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds, virtual bytes, resident bytes) of `pid` from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return cpu, int(fields[20]), int(fields[21]) * _PAGE_BYTES


class WorkersProcessCollector(Collector):
    """The usual process_* series, summed over the supervisor and the live workers (a replaced worker's CPU
    time leaves the sum: rate() reads that as a counter reset), and the workers' count by state."""

    def __init__(self, workers: WorkersDir) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        running = self.workers.running()
        pids = list(running.values())
        supervisor = self.workers.supervisor_pid()
        if supervisor is not None:
            pids.append(supervisor)
        stats = [s for s in (_proc_stat(pid) for pid in pids) if s is not None]
        cpu, virtual = sum(s[0] for s in stats), sum(s[1] for s in stats)
        yield CounterMetricFamily("process_cpu_seconds", "CPU time (user + system) of the service's processes.", cpu)
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory of the service's processes.", virtual)
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory of the service's processes, bytes (pages shared between them count once per process).",
            sum(s[2] for s in stats),
        )
        states = GaugeMetricFamily("bridgenet_workers", "Worker processes, by state.", labels=["state"])
        states.add_metric(["configured"], self.workers.count)
        states.add_metric(["running"], len(running))
        states.add_metric(["ready"], len(self.workers.ready()))
        yield states
        yield CounterMetricFamily(
            "bridgenet_worker_restarts", "Worker processes replaced after they ended.", self.workers.restarts()
        )
