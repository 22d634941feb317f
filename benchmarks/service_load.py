"""Load on the real service: upload payloads, a `python -m service` subprocess on loopback, closed-loop clients.

No torch here, so the throughput benchmark and the GPU check's HTTP part run wherever the service does.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import REPO, stats

ENV_PREFIX = "BRIDGENET_"


# ---- payloads ----------------------------------------------------------------------------------------


def encode_part(rgb: np.ndarray, xyz: np.ndarray) -> tuple[bytes, bytes]:
    """`rgb` (H, W, 3) uint8, `xyz` (H, W, 3) float32 metres → (PNG bytes, uncompressed TIFF bytes), the
    formats of MVTec 3D-AD files as a line camera would upload them."""
    import cv2

    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not encode the RGB image as PNG")
    return png.tobytes(), _tiff_bytes(xyz)


def encode_rgb_tiff(rgb: np.ndarray) -> bytes:
    """`rgb` (H, W, 3) uint8 → uncompressed RGB TIFF bytes: what a client sends to skip PNG decoding."""
    return _tiff_bytes(rgb, photometric="rgb")


def _tiff_bytes(array: np.ndarray, **options: Any) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **options)
    return buf.getvalue()


@dataclass(frozen=True)
class Payload:
    """A ready-made multipart body for POST /v1/predict (built once, so timing excludes client encoding)."""

    body: bytes
    headers: dict[str, str]
    part_hw: tuple[int, int]


def build_payload(png: bytes, tiff: bytes, part_hw: tuple[int, int], return_map: str = "none") -> Payload:
    import httpx

    request = httpx.Request(
        "POST",
        "http://benchmark/v1/predict",
        files={"rgb": ("rgb.png", png, "image/png"), "xyz": ("xyz.tiff", tiff, "image/tiff")},
        data={"return_map": return_map},
    )
    body = request.read()
    return Payload(body, {"content-type": request.headers["content-type"]}, part_hw)


# ---- the real service in a subprocess ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service_env(settings: Mapping[str, str | int | float], root: Path = REPO) -> dict[str, str]:
    """The parent's environment without any BRIDGENET_* variable, plus `settings` (names without prefix);
    `root`'s `service` package comes first on the path (another checkout, to compare two versions)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update({f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    return env


class ServiceStartError(RuntimeError):
    """`python -m service` exited or did not become ready in time; the message carries its log's tail."""


@dataclass
class Service:
    """A running `python -m service` on loopback: its URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)

    def status_kb(self, key: str) -> int | None:
        """A `/proc/<pid>/status` memory field in kB, e.g. VmHWM (peak RSS) or VmRSS."""
        try:
            text = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        return int(found.group(1)) if found else None

    def metric_sum(self, name: str) -> float | None:
        """Sum over labels of a Prometheus sample `name` from /metrics; None when the service lacks it."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
        return sum(values) if values else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until_ready(service: Service, timeout_s: float, poll_s: float = 0.2) -> None:
    """Poll `service`'s /readyz until 200; ServiceStartError with its log's tail when it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if service.process.poll() is not None:
            raise ServiceStartError(f"the service exited with {service.process.returncode}:\n{service.log_tail()}")
        if time.monotonic() > deadline:
            raise ServiceStartError(f"the service was not ready after {timeout_s:.0f} s:\n{service.log_tail()}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)


@contextmanager
def running_service(
    models_dir: Path,
    model: str,
    settings: Mapping[str, str | int | float],
    log_path: Path,
    ready_timeout_s: float = 180,
    own_session: bool = False,
    root: Path = REPO,
) -> Iterator[Service]:
    """Start `python -m service` serving `models_dir/model` with `settings` (BRIDGENET_* names, no prefix),
    wait for /readyz, yield it, and stop it with SIGTERM (SIGKILL after 30 s).

    `own_session`: in a session of its own, the service gets its own share of the CPU under Linux's
    autogroup scheduling instead of sharing the benchmark's (whose client threads run there); a benchmark
    that compares it with another server started that way must start both alike. `root`: the checkout
    whose `service` package runs (default: this one)."""
    port = free_port()
    values = {"models_dir": str(models_dir), "models": model, "default_model": model, "log_level": "WARNING"}
    values.update({k: str(v) for k, v in settings.items()})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=service_env(values, root),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )
    service = Service(f"http://127.0.0.1:{port}", process, log_path, values)
    try:
        wait_until_ready(service, ready_timeout_s)
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---- HTTP load -------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    latency_ms: float
    status: int
    server_ms: dict[str, float]
    provider: str | None


NO_ANSWER = 0  # RequestResult.status when the connection failed (refused, reset, timed out)


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection from the standard library, for the timed requests.

    Not httpx: its per-request cost on this machine (GET /healthz: 2.6 ms with httpx, 1.3 ms with this) is
    client time that would be charged to the service, and in the throughput runs the clients share the
    service's cores. A dropped connection is reopened on the next request.
    """

    def __init__(self, url: str, timeout_s: float = 120) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body). Raises OSError / http.client.HTTPException when the connection fails.

        The server closes a keep-alive connection after a few idle seconds (uvicorn: 5 s), which the
        slow WRN-50-2 rounds exceed; a request that finds its reused connection closed before any answer
        is sent once more on a new connection, as browsers and HTTP libraries do.
        """
        reused = self._conn is not None
        try:
            return self._send(method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            return self._send(method, path, body, headers)

    def _send(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            self._conn.request(method, path, body=body, headers=dict(headers or {}))
            response = self._conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post_part(client: KeepAliveClient, payload: Payload) -> RequestResult:
    """One POST /v1/predict with a pre-built body; latency is the client's wall time to the parsed answer.
    A failed connection is a result too (status NO_ANSWER), so that one lost request cannot end a client."""
    start = time.perf_counter()
    try:
        status, data = client.request("POST", "/v1/predict", payload.body, payload.headers)
    except (OSError, http.client.HTTPException):
        return RequestResult((time.perf_counter() - start) * 1e3, NO_ANSWER, {}, None)
    body = json.loads(data)
    latency = (time.perf_counter() - start) * 1e3
    if status != 200:
        return RequestResult(latency, status, {}, None)
    return RequestResult(latency, 200, dict(body["timings_ms"]), body.get("provider"))


def closed_loop(url: str, payload: Payload, clients: int, duration_s: float, warmup_s: float = 1.0) -> LoadRound:
    """`clients` threads, each posting back to back for `warmup_s` (discarded) then `duration_s`.

    Closed loop: a client sends its next part as soon as the last answer arrives, like a line controller
    with `clients` stations. Requests still running at the deadline are waited for and counted.
    """
    results: list[list[RequestResult]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    bounds: dict[str, float] = {}

    def client_loop(index: int) -> None:
        with KeepAliveClient(url) as client:
            barrier.wait()
            while time.perf_counter() < bounds["warm_end"]:
                post_part(client, payload)
            while True:  # at least one measured request per client, however slow the warm-up was
                results[index].append(post_part(client, payload))
                if time.perf_counter() >= bounds["end"]:
                    break

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    bounds.update(warm_end=now + warmup_s, end=now + warmup_s + duration_s)
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = max(time.perf_counter() - bounds["warm_end"], 1e-9)
    if all(r.status == NO_ANSWER for rs in results for r in rs):
        raise ServiceStartError(f"no request to {url} got an answer: has the service died?")
    return LoadRound(clients, elapsed, [r for rs in results for r in rs])


@dataclass
class LoadRound:
    """One closed-loop run: every measured request's result and the window's length in seconds."""

    clients: int
    elapsed_s: float
    results: list[RequestResult]

    @property
    def throughput(self) -> float:
        return sum(r.status == 200 for r in self.results) / self.elapsed_s


def summarise_rounds(rounds: list[LoadRound]) -> dict[str, Any]:
    """Throughput median (and range) over rounds; latency and server stage medians over all answers."""
    ok = [r for rnd in rounds for r in rnd.results if r.status == 200]
    refused: dict[str, int] = {}
    for rnd in rounds:
        for r in rnd.results:
            if r.status != 200:
                key = "no_answer" if r.status == NO_ANSWER else str(r.status)
                refused[key] = refused.get(key, 0) + 1
    rates = [rnd.throughput for rnd in rounds]
    out: dict[str, Any] = {
        "clients": rounds[0].clients,
        "rounds": len(rounds),
        "seconds": round(sum(rnd.elapsed_s for rnd in rounds), 2),
        "answered": len(ok),
        "refused": refused,
        "throughput_parts_per_s": round(float(np.median(rates)), 3),
        "throughput_range": [round(min(rates), 3), round(max(rates), 3)],
    }
    if ok:
        out["latency"] = stats([r.latency_ms for r in ok])
        out["server_median_ms"] = {
            key: round(float(np.median([r.server_ms.get(key, 0.0) for r in ok])), 3) for key in ok[0].server_ms
        }
        out["provider"] = ok[0].provider
    return out


def _cpu_and_parts(service: Service) -> tuple[float, float]:
    """CPU seconds of the service's processes so far, and the parts it has scored."""
    cpu = service.metric_sum("process_cpu_seconds_total") or 0.0
    return cpu, service.metric_sum("bridgenet_predictions_total") or 0.0


def alternating_throughput(
    configs: Mapping[str, tuple[Path, Mapping[str, str | int | float]]],
    payload: Payload,
    clients: int,
    rounds: int,
    seconds: float,
    log_dir: Path,
    cpu_per_part: bool = False,
) -> dict[str, Any]:
    """Closed-loop parts/s of several services, each `name: (model folder, BRIDGENET_* settings)`, all
    started at once and measured in turn, round after round (so a change of load on the machine hits
    every configuration alike). Returns each one's summary and its throughput paired by round with the
    first configuration's (`paired_ratio`). `cpu_per_part`: also each service's CPU time per part (all its
    processes, from its /metrics: warm-up parts included on both sides), median over rounds."""
    per_round: dict[str, list[LoadRound]] = {name: [] for name in configs}
    cpu_ms: dict[str, list[float]] = {name: [] for name in configs}
    with ExitStack() as stack:
        services = {
            name: stack.enter_context(
                running_service(folder.parent, folder.name, settings, log_dir / f"service-{name}.log")
            )
            for name, (folder, settings) in configs.items()
        }
        for _ in range(rounds):
            for name, svc in services.items():
                time.sleep(0.5)
                before = _cpu_and_parts(svc) if cpu_per_part else (0.0, 0.0)
                per_round[name].append(closed_loop(svc.url, payload, clients, seconds, warmup_s=1.0))
                if cpu_per_part:
                    after = _cpu_and_parts(svc)
                    cpu_ms[name].append(1e3 * (after[0] - before[0]) / max(1.0, after[1] - before[1]))
    out: dict[str, Any] = {name: summarise_rounds(rnds) for name, rnds in per_round.items()}
    if cpu_per_part:
        for name, values in cpu_ms.items():
            out[name]["cpu_ms_per_part"] = round(float(np.median(values)), 2)
    first, *others = configs
    base = np.array([r.throughput for r in per_round[first]])
    out["paired_ratio"] = {
        f"{name}/{first}": round(float(np.median(np.array([r.throughput for r in per_round[name]]) / base)), 3)
        for name in others
    }
    return out
