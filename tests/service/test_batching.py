"""Micro-batching: the batcher's gathering rule, limits, errors and shutdown; the engine's answers with batching
equal those without; batch sizes reach the metrics over HTTP."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.engine import Batcher, BatcherClosedError, BatchOutcome, Engine, InferenceError, Prediction
from service.main import create_app, engine_options
from tests.service.fake_model import make_part, make_settings, png_bytes, tiff_bytes

S = 4  # side of the parts the unit tests feed the batcher


class Recorder:
    """A stand-in for the session: (B, 3, S, S) → scores = per-part sum, maps = channel 0; records B.
    `gate`, when given, holds every run until the test sets it."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.gate = gate
        self.fail = fail
        self.started = threading.Event()

    def __call__(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.started.set()
        if self.gate is not None and not self.gate.wait(10):
            raise RuntimeError("the test never opened the gate")
        self.sizes.append(len(rgb))
        if self.fail:
            raise RuntimeError("session exploded")
        return (rgb + depth).sum(axis=(1, 2, 3)), rgb[:, 0].copy()


def part(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, S, S) float32 rgb and depth, distinct per k."""
    rgb = np.full((3, S, S), float(k), np.float32)
    return rgb, rgb * 0.5


def concurrently(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released together; each result, or the exception it raised."""
    barrier = threading.Barrier(n)

    def call(k: int) -> Any:
        barrier.wait(5)
        try:
            return fn(k)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def announced_submit(batcher: Batcher, k: int, delay_s: float = 0.0) -> BatchOutcome:
    """What the engine does: announce, "preprocess" for `delay_s`, submit."""
    with batcher.reserve() as ticket:
        time.sleep(delay_s)
        return ticket.submit(*part(k))


@pytest.fixture
def closing() -> Iterator[list[Batcher]]:
    """Batchers a test creates are closed after it, so no worker thread outlives the test."""
    made: list[Batcher] = []
    yield made
    for b in made:
        b.close(2)


def test_concurrent_parts_form_batches_no_larger_than_max(closing: list[Batcher]) -> None:
    run = Recorder()
    batcher = Batcher(run, max_size=3, wait_s=0.5, name="t")
    closing.append(batcher)
    outcomes = concurrently(8, lambda k: announced_submit(batcher, k, delay_s=0.01 * (k % 3)))
    assert all(isinstance(o, BatchOutcome) for o in outcomes), outcomes
    assert sum(run.sizes) == 8 and max(run.sizes) == 3 and len(run.sizes) >= 3  # 8 parts in batches of ≤ 3
    for k, o in enumerate(outcomes):  # each request gets its own part's answer back
        rgb, depth = part(k)
        assert o.score == pytest.approx(float((rgb + depth).sum()))
        np.testing.assert_array_equal(o.anomaly_map, rgb[0])
        assert o.batch_size in run.sizes and o.wait_ms >= 0 and o.inference_ms >= 0


def test_a_backlog_is_cut_into_batches_of_max_size(closing: list[Batcher]) -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, max_size=3, wait_s=0.0, name="t")
    closing.append(batcher)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, *part(0))
        assert run.started.wait(5)  # the first part's run holds the worker; the next 7 pile up
        rest = [pool.submit(batcher.submit, *part(k)) for k in range(1, 8)]
        deadline = time.monotonic() + 5
        while batcher.queued < 7:
            assert time.monotonic() < deadline, "the parts did not queue up"
            time.sleep(0.005)
        gate.set()
        outcomes = [f.result(5) for f in [first, *rest]]
    assert run.sizes == [1, 3, 3, 1]
    assert [o.batch_size for o in outcomes] == [1, 3, 3, 3, 3, 3, 3, 1]  # FIFO: oldest parts first


def test_a_lone_part_does_not_wait_for_the_window(closing: list[Batcher]) -> None:
    run = Recorder()
    batcher = Batcher(run, max_size=8, wait_s=1.0, name="t")
    closing.append(batcher)
    started = time.perf_counter()
    outcome = announced_submit(batcher, 1)
    assert time.perf_counter() - started < 0.2  # nobody else announced: no reason to wait 1 s
    assert outcome.batch_size == 1 and outcome.wait_ms < 200


def test_waiting_for_an_announced_part_is_bounded_by_the_window(closing: list[Batcher]) -> None:
    run = Recorder()
    batcher = Batcher(run, max_size=8, wait_s=0.2, name="t")
    closing.append(batcher)
    release = threading.Event()
    slow_done: list[BatchOutcome] = []

    def slow_request() -> None:  # announces itself, then "preprocesses" for a long time
        with batcher.reserve() as ticket:
            release.wait(5)
            slow_done.append(ticket.submit(*part(2)))

    slow = threading.Thread(target=slow_request)
    slow.start()
    time.sleep(0.05)
    started = time.perf_counter()
    outcome = announced_submit(batcher, 1)
    elapsed = time.perf_counter() - started
    release.set()
    slow.join(5)
    assert 0.15 < elapsed < 0.2 + 0.25  # waited for company, but not beyond the window (+ margin)
    assert outcome.batch_size == 1 and slow_done and slow_done[0].batch_size == 1


def test_a_withdrawn_announcement_ends_the_wait(closing: list[Batcher]) -> None:
    run = Recorder()
    batcher = Batcher(run, max_size=8, wait_s=2.0, name="t")
    closing.append(batcher)
    refused = threading.Event()

    def refused_request() -> None:  # announces, then preprocessing refuses the input: no submit
        with pytest.raises(ValueError), batcher.reserve():
            time.sleep(0.1)
            raise ValueError("no foreground")
        refused.set()

    other = threading.Thread(target=refused_request)
    other.start()
    time.sleep(0.02)
    started = time.perf_counter()
    announced_submit(batcher, 1)
    other.join(5)
    assert refused.is_set() and time.perf_counter() - started < 1.0


def test_a_failed_run_reaches_every_request_of_the_batch(closing: list[Batcher]) -> None:
    run = Recorder(fail=True)
    batcher = Batcher(run, max_size=4, wait_s=0.5, name="bad")
    closing.append(batcher)
    errors = concurrently(4, lambda k: announced_submit(batcher, k))
    assert all(isinstance(e, InferenceError) for e in errors), errors
    assert len({id(e) for e in errors}) == 4  # one exception object per thread, not a shared one
    assert all("model 'bad'" in str(e) and isinstance(e.__cause__, RuntimeError) for e in errors)
    assert announced_submit(Batcher(Recorder(), max_size=2, wait_s=0, name="ok"), 3).batch_size == 1


def test_close_drains_queued_parts() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, max_size=2, wait_s=0.0, name="t")
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.submit, *part(k)) for k in range(5)]
        assert run.started.wait(5)
        time.sleep(0.05)  # the first batch runs, the rest queue behind it
        threading.Timer(0.1, gate.set).start()
        assert batcher.close(5)  # returns once every queued part has run
        outcomes = [f.result(5) for f in futures]
    assert sum(run.sizes) == 5 and all(isinstance(o, BatchOutcome) for o in outcomes)
    with pytest.raises(BatcherClosedError, match="stopping"):
        batcher.submit(*part(9))


def test_close_with_a_hung_run_gives_up_in_time_and_fails_the_queue() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, max_size=1, wait_s=0.0, name="t")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, *part(k)) for k in range(4)]
        assert run.started.wait(5)
        time.sleep(0.05)
        started = time.perf_counter()
        assert not batcher.close(0.2)
        assert time.perf_counter() - started < 1.0
        gate.set()  # the hung run ends after all
        results = [f.exception(5) or f.result() for f in futures]
    assert sum(isinstance(r, BatchOutcome) for r in results) == 1
    assert sum(isinstance(r, BatcherClosedError) for r in results) == 3


# --- the engine and the app over the fake ONNX model ---------------------------------------------------


def started_engine(models_dir: Path, **overrides: Any) -> Engine:
    engine = Engine(engine_options(make_settings(models_dir, **overrides)))
    engine.start()
    return engine


def test_batched_answers_equal_unbatched_answers(models_dir: Path) -> None:
    parts = [make_part(40 + 4 * k, 48, seed=10 + k) for k in range(8)]
    plain = started_engine(models_dir)
    batched = started_engine(models_dir, batch_max_size=8, batch_wait_ms=200.0)
    try:
        expected = [plain.predict(rgb, xyz) for rgb, xyz in parts]
        got: list[Prediction] = concurrently(8, lambda k: batched.predict(*parts[k]))
    finally:
        plain.stop()
        batched.stop()
    assert all(isinstance(p, Prediction) for p in got), got
    for want, have in zip(expected, got, strict=True):
        assert have.score == pytest.approx(want.score, abs=1e-5)
        assert have.anomaly_map.shape == want.anomaly_map.shape
        np.testing.assert_allclose(have.anomaly_map, want.anomaly_map, atol=1e-5)
        assert have.is_anomalous == want.is_anomalous
        assert {"preprocess", "batch_wait", "inference", "postprocess"} <= set(have.timings_ms)
    sizes = [p.batch_size for p in got if p.first_in_batch]  # one report per session run
    assert sum(sizes) == 8 and max(sizes) > 1  # batches really formed, every part in one of them
    assert all(p.batch_size == 1 and p.first_in_batch and p.timings_ms["batch_wait"] == 0.0 for p in expected)


class GatedInferEngine(Engine):
    """Session runs wait for `gate` (once started), so a test can hold parts in the batcher's queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.sizes: list[int] = []  # parts of each session run that reached the gate

    def infer(self, model: Any, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.ready:  # not during warm-up
            self.sizes.append(len(rgb))
            assert self.gate.wait(10), "the test never opened the gate"
        return super().infer(model, rgb, depth)


def test_engine_stop_with_queued_parts_drains_them(models_dir: Path) -> None:
    engine = GatedInferEngine(engine_options(make_settings(models_dir, batch_max_size=2, batch_wait_ms=0.0)))
    engine.start()
    rgb, xyz = make_part(seed=3)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(engine.predict, rgb, xyz) for _ in range(5)]
        deadline = time.monotonic() + 5
        # Every part submitted: one batch (of 1 or 2) held at the gate, the rest queued behind it.
        batcher = engine._served["fake"].batcher
        assert batcher is not None
        while not engine.sizes or engine.sizes[0] + batcher.queued < 5:
            assert time.monotonic() < deadline, "the parts did not queue up"
            time.sleep(0.005)
        threading.Timer(0.2, engine.gate.set).start()
        started = time.perf_counter()
        engine.stop(drain_timeout_s=5)
        stop_s = time.perf_counter() - started
        outcomes = [f.result(5) for f in futures]
    assert 0.1 < stop_s < 3.0  # waited for the queue, did not hang
    assert all(isinstance(o, Prediction) for o in outcomes) and not engine.ready
    with pytest.raises(Exception, match="not loaded"):
        engine.predict(rgb, xyz)


def metric(text: str, name: str) -> float:
    match = re.search(rf'^{re.escape(name)}{{model="fake"}} (\S+)$', text, flags=re.MULTILINE)
    assert match, f"{name} not in the exposition"
    return float(match.group(1))


def test_batch_sizes_reach_the_metrics_over_http(models_dir: Path) -> None:
    settings = make_settings(models_dir, batch_max_size=4, batch_wait_ms=100.0, max_inflight=4)
    rgb, xyz = make_part(seed=4)
    files = {"rgb": ("p.png", png_bytes(rgb), "image/png"), "xyz": ("p.tiff", tiff_bytes(xyz), "image/tiff")}
    with TestClient(create_app(settings)) as client:
        answers = concurrently(4, lambda k: client.post("/v1/predict", files=files))
        text = client.get("/metrics").text
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.json()["score"] for a in answers}) == 1  # same part, same score, whatever its batch
    assert metric(text, "bridgenet_batch_size_sum") == 4  # every part counted once
    assert 1 <= metric(text, "bridgenet_batch_size_count") <= 4
