"""Fixtures for the reliability tests: a real `python -m service` subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.fake_model import make_part, png_bytes, tiff_bytes, write_fake_model

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"  # loopback only: these tests never reach another address
# Run the subprocess tests against real exported models instead of the tiny fake one, e.g. the demo model.
MODELS_DIR_ENV = "BRIDGENET_TEST_MODELS_DIR"
DEFAULT_MODEL_ENV = "BRIDGENET_TEST_DEFAULT_MODEL"  # with MODELS_DIR_ENV; default "demo"
# Run every subprocess test with this many worker processes (BRIDGENET_WORKERS), e.g. 2; unset: one.
WORKERS_ENV = "BRIDGENET_TEST_WORKERS"
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ModelsUnderTest:
    """Where the service under test finds its models and which one answers by default."""

    models_dir: Path
    default_model: str


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago (the service binds it right after)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def service_env(models_dir: Path, default_model: str = "fake", **settings: str) -> dict[str, str]:
    """The child's environment: ours without any BRIDGENET_* variable, plus the models and `settings`
    (field name → value, e.g. max_inflight="2" becomes BRIDGENET_MAX_INFLIGHT=2)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGENET_")}
    env.update(
        BRIDGENET_MODELS_DIR=str(models_dir),
        BRIDGENET_DEFAULT_MODEL=default_model,
        BRIDGENET_PROVIDERS="cpu",
        BRIDGENET_INTRA_OP_THREADS="1",
        # The audit trail's database and evidence in a folder of their own, never in the working directory.
        BRIDGENET_DATA_DIR=tempfile.mkdtemp(prefix="bridgenet-service-data-"),
        PYTHONPATH=str(REPO),
    )
    if os.environ.get(WORKERS_ENV):
        env["BRIDGENET_WORKERS"] = os.environ[WORKERS_ENV]
    env.update({f"BRIDGENET_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class ServiceProcess:
    """A running `python -m service`; its JSON log lines go to `log_path`."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rss_bytes(self) -> int:
        """Resident set size of the service process (VmRSS from /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS line for pid {self.pid}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait for a clean exit (SIGKILL after `timeout_s`); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def launch(env: dict[str, str], log_path: Path, port: int) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "--host", HOST, "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()  # the child holds its own descriptor


def wait_ready(service: ServiceProcess, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise AssertionError(f"the service exited with {service.proc.returncode}:\n{service.log_text()[-4000:]}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the service was not ready within {timeout_s:g} s:\n{service.log_text()[-4000:]}")


StartService = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """`start_service(models_dir, default_model="fake", **settings)` starts the service and waits for
    /readyz 200; every service started is stopped after the test."""
    started: list[ServiceProcess] = []

    def start(models_dir: Path, default_model: str = "fake", **settings: str) -> ServiceProcess:
        port = free_port()
        log_path = tmp_path / f"service-{len(started)}.log"
        env = service_env(models_dir, default_model, **settings)
        service = ServiceProcess(launch(env, log_path, port), f"http://{HOST}:{port}", log_path)
        started.append(service)
        wait_ready(service)
        return service

    yield start
    for service in started:
        service.stop()


def run_until_exit(models_dir: Path, tmp_path: Path, **settings: str) -> tuple[int, str]:
    """Start the service expecting it to refuse start-up; its exit code and log. Fails if it keeps running."""
    log_path = tmp_path / "refused.log"
    proc = launch(service_env(models_dir, **settings), log_path, free_port())
    try:
        code = proc.wait(READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the service did not exit within {READY_TIMEOUT_S:g} s") from None
    return code, log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def models_under_test(tmp_path_factory: pytest.TempPathFactory) -> ModelsUnderTest:
    """BRIDGENET_TEST_MODELS_DIR (+ BRIDGENET_TEST_DEFAULT_MODEL) when set, else the tiny fake model."""
    given = os.environ.get(MODELS_DIR_ENV)
    if given:
        return ModelsUnderTest(Path(given).resolve(), os.environ.get(DEFAULT_MODEL_ENV, "demo"))
    root = tmp_path_factory.mktemp("models")
    write_fake_model(root, "fake")
    return ModelsUnderTest(root, "fake")


def part_files(height: int = 96, width: int = 128, seed: int = 0) -> dict[str, tuple[str, bytes, str]]:
    """A valid multipart upload: a synthetic part as PNG + TIFF."""
    rgb, xyz = make_part(height, width, seed=seed)
    return {"rgb": ("part.png", png_bytes(rgb), "image/png"), "xyz": ("part.tiff", tiff_bytes(xyz), "image/tiff")}
