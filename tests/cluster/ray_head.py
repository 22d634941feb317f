"""A real, small Ray instance for the cluster tests: `ray start --head --block` on loopback ports, stopped by
pid (the head and every process below it), plus `python -m service.cluster` run against it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.tools import REPO_ROOT, in_ci

START_TIMEOUT_S = 120
CLI_TIMEOUT_S = 240
STOP_GRACE_S = 3.0


def require_ray() -> None:
    """Skip when Ray is not installed (the `cluster` extra), but fail under CI, where `make install` has it."""
    try:
        import ray
        import ray.serve  # noqa: F401
    except ImportError as exc:
        if in_ci():
            pytest.fail(f"ray[serve] is not installed ({exc}); CI installs the `cluster` extra")
        pytest.skip(f"ray[serve] is not installed ({exc}); pip install '.[cluster]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(root: int) -> list[int]:
    """Every live process below `root` (Ray's workers start their own process groups: a group kill misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def clean_env(**extra: str) -> dict[str, str]:
    """This process' environment without BRIDGENET_* (the tests say every setting they depend on), for
    processes that run this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGENET_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    # Ray enables token authentication for a new local instance and keeps the token in ~/.ray, which later
    # heads then require too: the tests' loopback instances run without it, whatever ~/.ray holds.
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


@dataclass
class RayHead:
    process: subprocess.Popen[bytes]
    address: str
    http_port: int
    metrics_port: int
    temp_dir: Path

    def replica_pids(self, app: str) -> list[int]:
        prefix = f"ray::ServeReplica:{app}:"
        return [pid for pid in descendants(self.process.pid) if command_line(pid).startswith(prefix)]

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`python -m service.cluster ARGS --address <this head>`, bounded in time."""
        return subprocess.run(
            [sys.executable, "-m", "service.cluster", *args, "--address", self.address],
            cwd=REPO_ROOT,
            env=clean_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    def stop(self) -> None:
        pids = descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE_S)
        # Ray drains for up to 30 s on SIGTERM; the tests are done with it, so the rest is killed by pid.
        for pid in {*pids, *descendants(self.process.pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray_head(log_path: Path) -> Iterator[RayHead]:
    """A head node with 2 CPUs, no dashboard, a 100 MB object store; yields it and stops it."""
    require_ray()
    # Unix socket paths under Ray's temp dir must stay short (108 bytes): not under pytest's tmp_path.
    temp_dir = Path(tempfile.mkdtemp(prefix="bnray-"))
    gcs_port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = clean_env(
        RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="service.cluster.proxy:middlewares",
        # Ray exports metrics every second (the replicas copy theirs as often: test_ray_serve.settings_env).
        RAY_metrics_report_interval_ms="1000",
    )
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--object-store-memory={100 * 1024 * 1024}",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        f"--metrics-export-port={metrics_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    head = RayHead(process, f"127.0.0.1:{gcs_port}", http_port, metrics_port, temp_dir)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"will now block" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed or timed out:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield head
    finally:
        head.stop()
