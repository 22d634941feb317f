"""Slow and flooding clients against a real `python -m service`: memory stays within the bound of
docs/DEPLOYMENT.md ("Memory under load"), late heads and bodies are cut off at their deadlines, and the
service answers throughout."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.reliability.conftest import ServiceProcess, StartService, part_files
from tests.service.fake_model import write_fake_model

KEY = "slow-clients-key-0123456789"
MIB = 1024 * 1024
UPLOAD_MIB = 8  # max_upload_bytes of the service under test
INFLIGHT, QUEUE = 1, 2
BODY_TIMEOUT_S, HEADER_TIMEOUT_S = 4.0, 2.0
# Enough connections that their bodies, held at once, would pass the bound: 24 × 7 MiB > 3 × 2 × 17 MiB + 32 MiB.
FLOOD = 16  # connections with a key, each sending a large body and stalling
ANONYMOUS = 8  # connections without a key doing the same
HALF_HEADS = 3  # connections that send half a request head and stall


def max_body_bytes() -> int:
    return 2 * UPLOAD_MIB * MIB + MIB  # service.main.max_body_bytes: two uploads + form overhead


def memory_bound(baseline: int) -> int:
    """docs/DEPLOYMENT.md: each admitted request holds at most its body twice while it is read (parser
    buffer + the bytes handed to the engine); requests beyond the admission limits hold nothing."""
    return baseline + (INFLIGHT + QUEUE) * 2 * max_body_bytes() + 32 * MIB  # + allocator slack


def stalled_upload(url: str, key: str | None, sent: list[int], answers: list[bytes]) -> None:
    """Announce a body just under the limit, send one upload of just under `max_upload_bytes` (the largest
    a form parser keeps in memory rather than spooling it to disk), then stall until answered."""
    address = urlsplit(url)
    length = max_body_bytes() - MIB
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {address.netloc}\r\n"
        + (f"X-API-Key: {key}\r\n" if key else "")
        + f"Content-Type: multipart/form-data; boundary=b0\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    part = b'--b0\r\nContent-Disposition: form-data; name="rgb"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    chunk = b"\x89" * (256 * 1024)
    with socket.create_connection((address.hostname, address.port), timeout=BODY_TIMEOUT_S * 4) as s:
        try:
            s.sendall(head + part)
            total = 0
            while total + len(chunk) < (UPLOAD_MIB - 1) * MIB:
                s.sendall(chunk)
                total += len(chunk)
            sent.append(total)
        except OSError:  # refused at the head: the server closed while we were still sending
            pass
        answer = b""
        try:
            while data := s.recv(65536):
                answer += data
        except OSError:
            pass
        answers.append(answer)


def half_head(url: str, closed_after: list[float]) -> None:
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=HEADER_TIMEOUT_S * 5) as s:
        started = time.monotonic()
        s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Ty".encode())
        try:
            while s.recv(1024):
                pass
        except OSError:
            pass
        closed_after.append(time.monotonic() - started)


def peak_rss_while(service: ServiceProcess, threads: list[threading.Thread]) -> int:
    peak = service.rss_bytes()
    while any(t.is_alive() for t in threads):
        peak = max(peak, service.rss_bytes())
        time.sleep(0.05)
    return peak


def test_a_flood_of_large_stalled_uploads_is_bounded_cut_off_and_survived(
    start_service: StartService, tmp_path: Path
) -> None:
    write_fake_model(tmp_path / "models", "fake")
    service = start_service(
        tmp_path / "models",
        api_key=KEY,
        max_upload_bytes=str(UPLOAD_MIB * MIB),
        max_inflight=str(INFLIGHT),
        max_queue=str(QUEUE),
        body_timeout_s=str(BODY_TIMEOUT_S),
        header_timeout_s=str(HEADER_TIMEOUT_S),
    )
    headers = {"X-API-Key": KEY}
    assert httpx.post(f"{service.url}/v1/predict", files=part_files(seed=1), headers=headers, timeout=10).is_success
    baseline = service.rss_bytes()
    sent: list[int] = []
    keyed: list[bytes] = []
    anonymous: list[bytes] = []
    closed_after: list[float] = []
    threads = [threading.Thread(target=stalled_upload, args=(service.url, KEY, sent, keyed)) for _ in range(FLOOD)]
    threads += [
        threading.Thread(target=stalled_upload, args=(service.url, None, [], anonymous)) for _ in range(ANONYMOUS)
    ]
    threads += [threading.Thread(target=half_head, args=(service.url, closed_after)) for _ in range(HALF_HEADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.5)
    # While the flood stalls, the service answers what does not need a slot.
    assert httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
    peak = peak_rss_while(service, threads)
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(1)
    assert peak <= memory_bound(baseline), (peak / MIB, baseline / MIB, memory_bound(baseline) / MIB)
    statuses = sorted(answer.split(b" ", 2)[1].decode() for answer in keyed if answer)
    # Admission holds INFLIGHT + QUEUE bodies; those are cut off by the body deadline, the rest refused at once.
    assert statuses == ["408"] * (INFLIGHT + QUEUE) + ["429"] * (FLOOD - INFLIGHT - QUEUE), statuses
    assert all(b" 401 " in answer for answer in anonymous), anonymous
    assert all(b"body_timeout" in a for a in keyed if b" 408 " in a)
    assert len(closed_after) == HALF_HEADS
    assert all(HEADER_TIMEOUT_S * 0.8 < s < HEADER_TIMEOUT_S + 3 for s in closed_after), closed_after
    assert elapsed < BODY_TIMEOUT_S + 10  # every connection ended by the deadlines
    # Still serving, nothing left in flight.
    assert httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
    assert httpx.post(f"{service.url}/v1/predict", files=part_files(seed=2), headers=headers, timeout=10).is_success
    metrics = httpx.get(f"{service.url}/metrics", headers=headers, timeout=5).text
    assert "bridgenet_inflight_requests 0.0" in metrics
    assert service.proc.poll() is None


def test_connections_beyond_the_limit_are_answered_503(start_service: StartService, tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models", "fake")
    service = start_service(tmp_path / "models", max_connections="4", header_timeout_s="3")
    address = urlsplit(service.url)
    idle = [socket.create_connection((address.hostname, address.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)
        assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 503
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
