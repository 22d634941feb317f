"""The PLC interface end to end: a real `python -m service` with an OPC UA address, a real asyncua client
that browses its VisionSystem, subscribes to ResultReady, posts parts over HTTP, acknowledges, overruns the
buffer, and finds its unacknowledged results again after a restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
from asyncua import Client, ua

from tests.plc.opcua_client import VisionSystem, post_part, start_service, wait_until
from tests.reliability.conftest import ServiceProcess
from tests.service.fake_model import write_fake_model

pytestmark = pytest.mark.slow

BUFFER = 3


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    write_fake_model(tmp_path / "models", "fake")
    return tmp_path / "models"


def stop_cleanly(service: ServiceProcess) -> None:
    """SIGTERM; the lifespan ran to its end (uvicorn re-raises the signal, so the exit code says SIGTERM)."""
    code = service.stop()
    assert code in (0, -signal.SIGTERM), service.log_text()[-3000:]
    assert '"stopped"' in service.log_text(), service.log_text()[-3000:]


def plc_status(url: str) -> dict[str, object]:
    answer = httpx.get(f"{url}/v1/status", timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["plc"]["fake"])


def test_results_are_announced_in_order_acknowledged_overrun_and_kept_across_a_restart(
    models_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    service, url = start_service(models_dir, tmp_path / "service.log", data_dir, opcua_buffer_size=str(BUFFER))

    async def first_run() -> list[str]:
        async with Client(url, timeout=10) as client:
            vs = await VisionSystem.find(client, "fake")
            assert await vs.read("VisionStateMachine/CurrentState") == "Operational"
            assert await vs.read("VisionStateMachine/CurrentSubState") == "Ready"
            assert await vs.read("ResultManagement/BufferCapacity") == BUFFER
            ready = await vs.subscribe("ResultReadyEventType")
            overruns = await vs.subscribe("ResultBufferOverrunEventType")

            # Three parts, each announced once, in order, with the client's ids; then acknowledged.
            ids = [await asyncio.to_thread(post_part, service, f"part-{i}", f"meas-{i}", seed=i) for i in range(3)]
            events = await ready.wait_for(3, "ResultReady events")
            assert [e.ResultId for e in events] == ids
            assert [e.PartId for e in events] == ["part-0", "part-1", "part-2"]
            assert [e.MeasId for e in events] == ["meas-0", "meas-1", "meas-2"]
            assert all(e.ResultState == 1 and e.IsPartial is False for e in events)
            assert all(e.Verdict in ("ok", "ng") and e.VerdictCode in (1, 3) for e in events)
            assert all(e.Threshold > 0 and e.ProcessingTime > 0 for e in events)
            assert all(e.InternalRecipeId.startswith("fake@") for e in events)
            assert await vs.read("ResultManagement/Unacknowledged") == 3
            assert await vs.read("ResultManagement/OldestResult/ResultId") == ids[0]
            for result_id in ids:
                await vs.acknowledge(result_id)
            assert await vs.read("ResultManagement/Unacknowledged") == 0
            assert await vs.read("ResultManagement/OldestResult/ResultId") == ""
            with pytest.raises(ua.UaStatusCodeError) as twice:
                await vs.acknowledge(ids[0])
            assert twice.value.code == ua.StatusCodes.BadNotFound

            # The PLC stops acknowledging: three become ready, two wait; flag, state, counter and events say so.
            more = [await asyncio.to_thread(post_part, service, f"late-{i}", seed=10 + i) for i in range(5)]
            await overruns.wait_for(2, "overrun events")
            assert [e.ResultId for e in overruns.received] == more[3:]
            assert [e.ResultId for e in await ready.wait_for(6)] == ids + more[:3]
            assert await vs.read("ResultManagement/Overrun") is True
            assert await vs.read("ResultManagement/OverrunCount") == 2
            assert await vs.read("ResultManagement/Waiting") == 2
            assert await vs.read("VisionStateMachine/CurrentState") == "Error"
            assert await vs.read("VisionStateMachine/ErrorCode") == 2
            with pytest.raises(ua.UaStatusCodeError) as early:
                await vs.acknowledge(more[4])  # waits: never announced
            assert early.value.code == ua.StatusCodes.BadInvalidState
            status = plc_status(service.url)
            assert status["unacknowledged"] == 3 and status["waiting"] == 2 and status["overrun"] is True
            assert status["overruns"] == 2 and status["acknowledged"] == 3 and status["oldest_result_id"] == more[0]
            metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
            assert 'bridgenet_plc_overruns_total{model="fake"} 2.0' in metrics
            assert 'bridgenet_plc_unacknowledged_results{model="fake"} 3.0' in metrics

            # One acknowledgement makes room: the next waiting result is announced, in order.
            await vs.acknowledge(more[0])
            assert [e.ResultId for e in await ready.wait_for(7)][-1] == more[3]
            assert await vs.read("ResultManagement/Waiting") == 1
            assert await vs.read("ResultManagement/Overrun") is True
            return more

    try:
        more = asyncio.run(first_run())
    finally:
        stop_cleanly(service)

    # A restart loses nothing: the three unacknowledged results are ready again, the fourth still waits.
    service, url = start_service(models_dir, tmp_path / "service-2.log", data_dir, opcua_buffer_size=str(BUFFER))

    async def after_restart() -> None:
        async with Client(url, timeout=10) as client:
            vs = await VisionSystem.find(client, "fake")
            assert await vs.read("ResultManagement/Unacknowledged") == 3
            assert await vs.read("ResultManagement/Waiting") == 1
            assert await vs.read("ResultManagement/OldestResult/ResultId") == more[1]
            ready = await vs.subscribe("ResultReadyEventType")
            for result_id in more[1:4]:
                await vs.acknowledge(result_id)
            assert [e.ResultId for e in await ready.wait_for(1)] == [more[4]]
            await vs.acknowledge(more[4])

            async def drained() -> bool:
                return bool(
                    await vs.read("ResultManagement/Unacknowledged") == 0
                    and await vs.read("ResultManagement/Overrun") is False
                    and await vs.read("VisionStateMachine/CurrentState") == "Operational"
                )

            await wait_until(drained, "buffer empty and the VisionSystem Operational again")
            assert httpx.get(f"{service.url}/v1/status", timeout=10).json()["push"]["opcua"]["waiting"] == 0

    try:
        asyncio.run(after_restart())
    finally:
        stop_cleanly(service)
