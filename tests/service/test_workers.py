"""Workers that cannot hang the service: model outputs checked at load and warm-up, a batching worker that
survives any exception, a dead worker that turns readiness off and ends the process non-zero, timeouts on
every wait, and admission slots reclaimed from work that never ends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import helper

from service.api.admission import Admission
from service.engine import Batcher, Engine, InferenceError, ModelLoadError, WorkerDeadError
from service.main import create_app, engine_options
from tests.reliability.conftest import free_port, service_env
from tests.service.fake_model import (
    build_graph,
    make_part,
    make_settings,
    png_bytes,
    tiff_bytes,
    with_wide_scores,
    write_fake_model,
)

REPO = Path(__file__).resolve().parents[2]
RGB, XYZ = make_part(seed=11)
FILES = {"rgb": ("p.png", png_bytes(RGB), "image/png"), "xyz": ("p.tiff", tiff_bytes(XYZ), "image/tiff")}


def doubled_scores() -> onnx.ModelProto:
    """Declares scores [batch] but answers 2 × batch of them: only a run shows it."""
    model = build_graph()
    graph = model.graph
    next(n for n in graph.node if n.output[0] == "scores").output[0] = "raw_scores"
    graph.node.append(helper.make_node("Concat", ["raw_scores", "raw_scores"], ["scores"], axis=0))
    return model


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        (with_wide_scores(2), r"output scores is tensor\(float\) \['batch', 2\]; expected float32 \[batch\]"),
        (with_wide_scores(1), r"output scores is tensor\(float\) \['batch', 1\]; expected float32 \[batch\]"),
        (doubled_scores(), r"output scores is float32 \(2,\) at warm-up with batch 1; expected float32 \(1,\)"),
    ],
    ids=["scores-B-2", "scores-B-1", "scores-2B-at-warm-up"],
)
def test_a_model_with_wrong_outputs_refuses_to_load_naming_the_mismatch(
    tmp_path: Path, graph: onnx.ModelProto, expected: str
) -> None:
    write_fake_model(tmp_path, "fake", graph=graph)
    with pytest.raises(ModelLoadError, match=rf"model 'fake'.*{expected}"):
        Engine(engine_options(make_settings(tmp_path))).start()


def part(k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.full((3, 4, 4), k, np.float32), np.zeros((3, 4, 4), np.float32)


def test_an_exception_past_the_session_run_fails_its_batch_and_the_worker_goes_on() -> None:
    calls = []

    def run(rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(rgb))
        if len(calls) == 1:  # (B, 2) scores: float() of a row raises while the results are handed out
            return np.zeros((len(rgb), 2), np.float32), np.zeros((len(rgb), 4, 4), np.float32)
        return np.zeros(len(rgb), np.float32), np.zeros((len(rgb), 4, 4), np.float32)

    batcher = Batcher(run, max_size=1, wait_s=0.0, name="m")
    try:
        with pytest.raises(InferenceError, match="the batch failed"):
            batcher.submit(*part())
        assert batcher.submit(*part()).score == 0.0  # the worker is alive and serving
        assert batcher.failure is None
    finally:
        batcher.close(1.0)


class DyingBatcher(Batcher):
    """Its worker thread ends with an exception the loop does not catch (as a bug could)."""

    def _gather(self) -> Any:
        with self._cond:
            while not self._queue:
                self._cond.wait(0.05)
        raise SystemExit("simulated death of the worker thread")


def test_a_dead_worker_fails_its_parts_refuses_new_ones_and_reports_itself() -> None:
    batcher = DyingBatcher(lambda r, d: (r, d), max_size=2, wait_s=0.0, name="m")
    with pytest.raises(WorkerDeadError, match="died"):
        batcher.submit(*part())  # queued, then failed by the dying worker: no caller hangs
    assert batcher.failure is not None and "simulated death" in batcher.failure
    with pytest.raises(WorkerDeadError):
        batcher.submit(*part())
    batcher.close(1.0)


def test_a_result_that_never_comes_times_out() -> None:
    release = threading.Event()

    def stuck(rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        release.wait(10)
        return np.zeros(len(rgb), np.float32), np.zeros((len(rgb), 4, 4), np.float32)

    batcher = Batcher(stuck, max_size=1, wait_s=0.0, name="m", result_timeout_s=0.3)
    started = time.perf_counter()
    with pytest.raises(InferenceError, match=r"no result within 0\.3 s"):
        batcher.submit(*part())
    assert time.perf_counter() - started < 2
    release.set()
    batcher.close(2.0)


def test_a_dead_worker_turns_readiness_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_model(tmp_path, "fake")
    settings = make_settings(tmp_path, batch_max_size=2, batch_wait_ms=1.0)
    monkeypatch.setattr("service.engine.engine.Batcher", DyingBatcher)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        answer = client.post("/v1/predict", files=FILES)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "not_ready"
        assert "simulated death" not in answer.text  # the worker's exception goes to the log, not the client
        ready = client.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["Retry-After"]) >= 1
        assert client.post("/v1/predict", files=FILES).status_code == 503


DIE_AND_SERVE = """
import sys
from service.engine import batching
def _die(self):
    with self._cond:
        while not self._queue:
            self._cond.wait(0.05)
    raise SystemExit("simulated death of the worker thread")
batching.Batcher._gather = _die
from service.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_python_m_service_exits_non_zero_when_a_worker_dies(tmp_path: Path) -> None:
    """The real entry point (service.__main__.main) with the worker made to die on its first part."""
    write_fake_model(tmp_path / "models", "fake")
    port = free_port()
    env = service_env(tmp_path / "models", batch_max_size="2", batch_wait_ms="1")
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", DIE_AND_SERVE, "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "the service did not start"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.post(f"{url}/v1/predict", files=FILES, timeout=10).status_code == 503
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert code == 4, log[-3000:]
    messages = [json.loads(line)["message"] for line in log.splitlines() if line.startswith("{")]
    assert any("exiting for a restart" in m for m in messages), messages[-10:]


def test_a_slot_held_past_the_timeout_is_reclaimed() -> None:
    release = threading.Event()

    async def scenario() -> tuple[int, int, int]:
        admission = Admission(1, 0, timeout_s=0.1, reclaim_after_s=0.3)
        admitted = admission.admit()
        with pytest.raises(Exception, match="request_timeout_s"):
            await admission.run(admitted, release.wait, 10)
        admitted.release()  # the request is answered (503); its work still runs
        held = admission.admitted
        await asyncio.sleep(0.5)
        return held, admission.admitted, admission.reclaimed

    held, after, reclaimed = asyncio.run(scenario())
    release.set()
    assert (held, after, reclaimed) == (1, 0, 1)
