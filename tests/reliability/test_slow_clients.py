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
        workers="1",  # the counts below are one process's limits (with N workers, each has its own)
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
    # One process's connection limit (with N workers, each has its own).
    service = start_service(tmp_path / "models", max_connections="4", header_timeout_s="3", workers="1")
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


def trickled_form(url: str, path: str, answers: list[tuple[bytes, float]], stop: threading.Event) -> None:
    """Send a form's head, then its body one byte every 0.2 s, as a slow or hostile review-station client
    would; keep the answer (and when it came) once the server answers or closes."""
    address = urlsplit(url)
    body = b"operator=a&api_key=" + b"x" * 200
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = b""
    with socket.create_connection((address.hostname, address.port), timeout=30) as s:
        s.settimeout(0.2)
        try:
            s.sendall(head)
            for byte in body:
                if stop.is_set():
                    break
                s.sendall(bytes([byte]))
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    continue
                answer += data
                break
            s.settimeout(5)
            while data := s.recv(65536):
                answer += data
        except OSError:  # closed by the server while we were still sending
            pass
    answers.append((answer, time.monotonic() - started))


def test_slow_review_station_clients_leave_the_line_its_connections(
    start_service: StartService, tmp_path: Path
) -> None:
    """40 clients trickle login forms (the one form read before a session exists) into a service allowing
    20 connections: a quarter of them (side_share) is let in and cut at the form deadline, the rest refused
    at once; the line's predictions answer 200 all along."""
    write_fake_model(tmp_path / "models", "fake")
    form_deadline = 2.0
    service = start_service(
        tmp_path / "models",
        api_key=KEY,
        max_connections="20",
        body_timeout_s="30",
        form_body_timeout_s=str(form_deadline),
        workers="1",  # one process's connection limit (with N workers, each has its own)
    )
    headers = {"X-API-Key": KEY}
    stop = threading.Event()
    answers: list[tuple[bytes, float]] = []
    threads = [
        threading.Thread(target=trickled_form, args=(service.url, "/ui/login", answers, stop)) for _ in range(40)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    statuses = []
    with httpx.Client(timeout=10) as line:
        deadline = time.monotonic() + form_deadline + 1
        while time.monotonic() < deadline:
            statuses.append(
                line.post(f"{service.url}/v1/predict", files=part_files(seed=3), headers=headers).status_code
            )
    stop.set()
    for t in threads:
        t.join(15)
    assert statuses and set(statuses) == {200}, statuses
    codes = sorted(answer.split(b" ", 2)[1].decode() for answer, _ in answers if answer)
    assert codes == ["408"] * 5 + ["503"] * 35, codes
    assert all(b"side_busy" in a for a, _ in answers if b" 503 " in a)
    cut = [seconds for answer, seconds in answers if b" 408 " in answer]
    assert all(form_deadline * 0.8 < s < form_deadline + 2 for s in cut), cut


def test_review_and_logout_forms_without_a_session_are_refused_before_their_body(
    start_service: StartService, tmp_path: Path
) -> None:
    write_fake_model(tmp_path / "models", "fake")
    service = start_service(tmp_path / "models", api_key=KEY, form_body_timeout_s="4")
    stop = threading.Event()
    for path in ("/ui/logout", "/ui/parts/req-1/review"):
        answers: list[tuple[bytes, float]] = []
        trickled_form(service.url, path, answers, stop)
        [(answer, seconds)] = answers
        assert answer.startswith(b"HTTP/1.1 401 ") and b"login_required" in answer, answer[:200]
        assert seconds < 1.0, seconds  # from the headers: the form deadline (4 s) never came into it
