"""Overload a real `python -m service`: only 200 or clean 429/503, bounded accepted latency, steady memory,
and ready afterwards.

N closed-loop clients (no pause between requests, 429s included) offer several times what the service can
serve. The service runs with micro-batching on (the new concurrent path under stress) and small admission
limits. Duration: BRIDGENET_LOAD_SECONDS (default 60); clients: BRIDGENET_LOAD_CLIENTS (default 16); models:
BRIDGENET_TEST_MODELS_DIR (default: the tiny fake model, see conftest).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from tests.reliability.conftest import ModelsUnderTest, ServiceProcess, StartService, part_files

LOAD_SECONDS = float(os.environ.get("BRIDGENET_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("BRIDGENET_LOAD_CLIENTS", "16"))
REQUEST_TIMEOUT_S = 5.0
SERVICE_SETTINGS = {
    "max_inflight": "4",
    "max_queue": "2",  # 16 clients against 4 + 2 places
    "request_timeout_s": str(REQUEST_TIMEOUT_S),
    "batch_max_size": "4",
    "batch_wait_ms": "2",
}
RSS_GROWTH_LIMIT = 50 * 1024 * 1024  # second half of the run vs the first
REFUSALS = {429: "queue_full", 503: "timeout"}


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    accepted_s: list[float] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # answers that break the contract, described
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)


async def client_loop(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str], stop_at: float, out: LoadResult
) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        started = loop.time()
        try:
            response = await client.post("/v1/predict", content=body, headers=headers)
        except httpx.TimeoutException:
            out.bad.append("client timeout (a hang)")
            continue
        except httpx.TransportError as exc:
            out.bad.append(f"transport error {exc!r}")
            continue
        out.statuses[response.status_code] += 1
        if response.status_code == 200:
            out.accepted_s.append(loop.time() - started)
        elif response.status_code in REFUSALS:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError):
                error = {}
            if error.get("code") != REFUSALS[response.status_code] or not response.headers.get("retry-after"):
                out.bad.append(f"{response.status_code} without its code or Retry-After: {response.text[:200]}")
        else:
            out.bad.append(f"{response.status_code}: {response.text[:200]}")


def sample_rss(service: ServiceProcess, stop: threading.Event, out: LoadResult) -> None:
    started = time.monotonic()
    while True:  # the first sample is taken before any load
        out.rss.append((time.monotonic() - started, service.rss_bytes()))
        if stop.wait(0.5):
            return


async def drive(service: ServiceProcess, seconds: float, clients: int) -> LoadResult:
    out = LoadResult()
    # One encoded body for every request: the load generator must stay cheaper than the service.
    request = httpx.Request("POST", service.url, files=part_files(96, 128, seed=11))
    body, headers = request.read(), {"content-type": request.headers["content-type"]}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S + 10.0)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(service, stop, out), daemon=True)
    sampler.start()
    try:
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=timeout) as client:
            stop_at = asyncio.get_running_loop().time() + seconds
            await asyncio.gather(*(client_loop(client, body, headers, stop_at, out) for _ in range(clients)))
    finally:
        stop.set()
        sampler.join(5)
    return out


def mean_batch_size(metrics_text: str) -> float:
    """Mean parts per session run, from the bridgenet_batch_size histogram's _sum and _count."""
    # Summed over models: every served model has its series from start-up, at 0 when it saw no traffic.
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in re.findall(r"^bridgenet_batch_size_(sum|count)\{[^}]*\} (\S+)$", metrics_text, flags=re.M):
        totals[kind] += float(value)
    return totals["sum"] / max(totals["count"], 1.0)


def summary(out: LoadResult, seconds: float, batch_mean: float) -> str:
    lat = np.array(out.accepted_s) * 1e3
    total = sum(out.statuses.values())
    half = len(out.rss) // 2
    rows = [
        f"load: {CLIENTS} clients, {seconds:.0f} s, {total} answers ({total / seconds:.0f}/s offered and answered)",
        *(
            f"  status {status}: {count:6d}  ({count / seconds:6.1f}/s)"
            for status, count in sorted(out.statuses.items())
        ),
        f"  accepted latency ms: p50 {np.percentile(lat, 50):.1f}  p99 {np.percentile(lat, 99):.1f}  "
        f"max {lat.max():.1f}",
        f"  service RSS MB: start {out.rss[0][1] / 2**20:.1f}  end {out.rss[-1][1] / 2**20:.1f}  "
        f"median 1st half {np.median([r for _, r in out.rss[:half]]) / 2**20:.1f}  "
        f"2nd half {np.median([r for _, r in out.rss[half:]]) / 2**20:.1f}",
        f"  mean batch size {batch_mean:.2f}; contract breaches: {len(out.bad)}",
    ]
    return "\n".join(rows)


@pytest.mark.slow
@pytest.mark.timeout(LOAD_SECONDS + 120)
def test_overload_is_refused_cleanly_with_bounded_latency_and_steady_memory(
    start_service: StartService, models_under_test: ModelsUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    service = start_service(models_under_test.models_dir, models_under_test.default_model, **SERVICE_SETTINGS)
    out = asyncio.run(drive(service, LOAD_SECONDS, CLIENTS))
    batch_mean = mean_batch_size(httpx.get(f"{service.url}/metrics", timeout=10).text)
    with capsys.disabled():  # the summary is the point of a load run: show it even when the test passes
        print("\n" + summary(out, LOAD_SECONDS, batch_mean))

    assert not out.bad, out.bad[:5]
    assert set(out.statuses) <= {200, *REFUSALS}, out.statuses
    assert out.statuses[200] > 0 and out.statuses[429] > 0  # it served, and it really was overloaded
    assert batch_mean > 1.0  # batches formed under load
    assert np.percentile(out.accepted_s, 99) < REQUEST_TIMEOUT_S
    half = len(out.rss) // 2
    assert half >= 2, "too few memory samples"
    first, second = (np.median([r for _, r in part]) for part in (out.rss[:half], out.rss[half:]))
    assert second - first < RSS_GROWTH_LIMIT, f"RSS grew {(second - first) / 2**20:.1f} MB"

    # Afterwards: nothing left in flight, ready, and a normal part is scored.
    with httpx.Client(base_url=service.url, timeout=10) as client:
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 5
        while "bridgenet_inflight_requests 0.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "requests still in flight after the load stopped"
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200
        answer = client.post("/v1/predict", files=part_files(seed=12))
    assert answer.status_code == 200 and answer.json()["model"]["name"] == models_under_test.default_model
    assert service.proc.poll() is None
