"""BRIDGENET_WORKERS=2 on a real `python -m service`: every answered part recorded exactly once under 8
clients, push in order from one dispatcher, SIGHUP reaching every worker, a killed worker replaced, one
/metrics view over the workers, and a start that fails as one process's would."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.push.dispatcher import _try_file_lock
from tests.records.servers import WebhookReceiver
from tests.reliability.conftest import ServiceProcess, StartService, free_port, part_files, run_until_exit
from tests.service.fake_model import write_fake_model

CLIENTS = 8
WAIT_S = 60.0


def fake_models(root: Path) -> Path:
    write_fake_model(root / "models", "fake")
    return root / "models"


def data_dir(service: ServiceProcess) -> Path:
    """The service's BRIDGENET_DATA_DIR, from its start-up log line."""
    marker = "recording to sqlite:///"
    for line in service.log_text().splitlines():
        if marker in line:
            return Path(line.split(marker, 1)[1].split(" ", 1)[0]).parent
    raise AssertionError("no 'recording to' line in the log")


def send_parts(url: str, total: int, clients: int, per_connection: int = 10) -> tuple[list[list[str]], Counter[str]]:
    """`total` predictions from `clients` threads, each sending its share one after the other on keep-alive
    connections of `per_connection` requests; per client the request ids answered (in order), and how many
    answers each worker gave. (The kernel gives each new connection to either worker: with 20 or more
    connections, the chance that one worker gets them all is below one in a million.)"""
    files = part_files(48, 64)
    per_client: list[list[str]] = [[] for _ in range(clients)]
    served: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[str] = []

    def client(index: int) -> None:
        share = total // clients
        for first in range(0, share, per_connection):
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(min(per_connection, share - first)):
                    answer = http.post("/v1/predict", files=files)
                    if answer.status_code != 200:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")
                        return
                    per_client[index].append(answer.json()["request_id"])
                    with lock:
                        served[answer.headers["X-Served-By"]] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return per_client, served


def log_entries(service: ServiceProcess) -> list[dict[str, object]]:
    """The JSON log lines of the supervisor and its workers (which share the log file)."""
    entries = []
    for line in service.log_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:  # a library's plain line
            continue
    return entries


def recorded_ids(service: ServiceProcess) -> list[str]:
    """Request ids of the decision records, in the order they were committed."""
    with sqlite3.connect(data_dir(service) / "records.db") as db:
        return [row[0] for row in db.execute("SELECT request_id FROM decisions ORDER BY rowid")]


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def worker_pids(url: str, answers: int = 20) -> set[int]:
    return {int(httpx.get(f"{url}/healthz").headers["X-Served-By"].rsplit(":", 1)[1]) for _ in range(answers)}


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


@pytest.mark.slow
def test_two_workers_record_every_part_of_8_clients_once(start_service: StartService, tmp_path: Path) -> None:
    service = start_service(fake_models(tmp_path), workers="2", max_inflight="4", max_queue="16")
    per_client, served = send_parts(service.url, 2000, CLIENTS)
    answered = [rid for ids in per_client for rid in ids]
    assert len(answered) == 2000 and len(set(answered)) == 2000
    assert len(served) == 2, served  # both workers took part
    assert metric(service.url, "bridgenet_predictions_total{") == 2000  # one view over both workers
    assert service.stop() == 0
    recorded = recorded_ids(service)
    assert len(recorded) == len(set(recorded)) == 2000
    assert set(recorded) == set(answered)


def test_push_goes_out_once_in_record_order_from_one_dispatcher(start_service: StartService, tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    receiver.start()
    try:
        service = start_service(fake_models(tmp_path), workers="2", webhook_url=receiver.url, push_on="all")
        per_client, served = send_parts(service.url, 200, 4)
        assert len(served) == 2, served

        def delivered() -> list[str]:
            with receiver.lock:
                return [json.loads(r.body)["request_id"] for r in receiver.received]

        wait_until(lambda: len(set(delivered())) >= 200, "every result delivered")
        got = delivered()
        assert sorted(got) == sorted(rid for ids in per_client for rid in ids)  # each once: one dispatcher
        assert got == recorded_ids(service)  # the outbox's order is the records' commit order
        for ids in per_client:  # a client's parts arrive in the order it sent them
            positions = [got.index(rid) for rid in ids]
            assert positions == sorted(positions)
    finally:
        receiver.stop()


def test_the_push_file_lock_has_one_holder_and_passes_on_when_released(tmp_path: Path) -> None:
    first = _try_file_lock(tmp_path, "webhook")
    assert first is not None
    assert _try_file_lock(tmp_path, "webhook") is None  # held (flock conflicts across descriptors too)
    other = _try_file_lock(tmp_path, "mqtt")  # each destination has its own
    assert other is not None
    os.close(first)
    second = _try_file_lock(tmp_path, "webhook")
    assert second is not None
    os.close(second)
    os.close(other)


def versions_by_worker(url: str) -> dict[str, str]:
    """Worker (X-Served-By) → the version of model "fake" it serves, from 30 answers."""
    seen: dict[str, str] = {}
    for _ in range(30):
        answer = httpx.get(f"{url}/v1/models", timeout=10)
        seen[answer.headers["X-Served-By"]] = answer.json()["models"][0]["version"]
    return seen


@pytest.mark.parametrize("how", ["sighup", "admin-route"])
def test_a_reload_reaches_every_worker(start_service: StartService, tmp_path: Path, how: str) -> None:
    models = fake_models(tmp_path)
    service = start_service(models, workers="2", admin_key="k" * 32)
    assert set(versions_by_worker(service.url).values()) == {"1"}
    write_fake_model(models, "fake", version="2")
    if how == "sighup":
        os.kill(service.pid, signal.SIGHUP)  # to the supervisor, as `docker kill -s HUP` does
    else:  # answered by one worker, which passes it on through the supervisor
        answer = httpx.post(f"{service.url}/v1/admin/reload", headers={"X-Admin-Key": "k" * 32}, timeout=30)
        assert answer.status_code == 200 and answer.json()["reloaded"] == ["fake"], answer.text
    wait_until(lambda: set(versions_by_worker(service.url).values()) == {"2"}, "both workers serve version 2")
    assert len(versions_by_worker(service.url)) == 2


def test_a_killed_worker_is_replaced_and_readiness_waits_for_it(start_service: StartService, tmp_path: Path) -> None:
    service = start_service(fake_models(tmp_path), workers="2")
    before = worker_pids(service.url)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Not ready until the replacement has loaded its models (the orchestrator sees the lost capacity).
    wait_until(lambda: httpx.get(f"{service.url}/readyz").status_code == 503, "readiness 503 after the kill", 10)
    wait_until(lambda: httpx.get(f"{service.url}/readyz").status_code == 200, "ready again")
    assert httpx.get(f"{service.url}/readyz").json()["workers"] == {"ready": 2, "configured": 2}
    after = worker_pids(service.url)  # a worker says it is ready once it accepts connections
    assert len(after) == 2 and victim not in after
    assert metric(service.url, "bridgenet_worker_restarts_total") == 1
    replaced = [line for line in service.log_text().splitlines() if "ended with exit code" in line]
    assert len(replaced) == 1 and f"(pid {victim})" in replaced[0]
    assert {0, 1} <= {entry.get("worker") for entry in log_entries(service)}  # each worker's lines name it
    assert service.stop() == 0


def test_a_start_that_fails_in_the_workers_ends_the_service(tmp_path: Path) -> None:
    code, log = run_until_exit(fake_models(tmp_path), tmp_path, workers="2", default_model="missing")
    assert code != 0
    assert "failed to start" in log


def test_the_metrics_port_shows_every_worker(start_service: StartService, tmp_path: Path) -> None:
    port = free_port()
    service = start_service(fake_models(tmp_path), workers="2", metrics_port=str(port))
    _, served = send_parts(service.url, 40, 4, per_connection=2)
    assert len(served) == 2, served
    assert httpx.get(f"{service.url}/metrics").status_code == 404  # on its own port only, as with one process
    url = f"http://127.0.0.1:{port}"
    assert metric(url, "bridgenet_predictions_total{") == 40
    assert metric(url, 'bridgenet_workers{state="ready"}') == 2
    assert metric(url, 'bridgenet_admission_limit{kind="inflight"}') == 2 * 2  # the host's: both workers' slots
    assert metric(url, "process_resident_memory_bytes") > 3 * 20 * 2**20  # supervisor and both workers
