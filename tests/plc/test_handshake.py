"""The result handshake over a real (SQLite) outbox, without a network: order, acknowledgement, overrun,
expiry into the dead letters, rows it cannot use, and every result queued whatever BRIDGENET_PUSH_ON says."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from service.metrics import PlcMetrics, RecordsMetrics
from service.plc.buffer import NotReadyError, UnknownResultError
from service.plc.handshake import Handshake
from service.records.database import create_db_engine, database_url, migrate
from service.records.runtime import PLC_DESTINATION
from service.records.store import Recorder
from service.records.tables import DeadLetterRow, OutboxRow
from tests.records.conftest import T0, decision


@pytest.fixture
def db_engine(tmp_path: Path) -> Engine:
    engine = create_db_engine(database_url(tmp_path / "data", None))
    migrate(engine)
    return engine


def recorder(db_engine: Engine, push_on: str = "all") -> Recorder:
    return Recorder(db_engine, destinations=("mqtt", PLC_DESTINATION), push_on=push_on, every_result=(PLC_DESTINATION,))  # type: ignore[arg-type]


def dead_letters(db_engine: Engine) -> list[tuple[str, str]]:
    with Session(db_engine) as session:
        return [(r.request_id, r.reason) for r in session.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id))]


def test_every_result_reaches_the_plc_even_when_only_ng_is_pushed(db_engine: Engine) -> None:
    rec = recorder(db_engine, push_on="ng")
    assert rec.record(decision(1)).queued == (PLC_DESTINATION,)
    assert rec.record(replace(decision(2, ng=True), meas_id="m-2")).queued == ("mqtt", PLC_DESTINATION)
    with Session(db_engine) as session:
        payloads = [json.loads(p) for p in session.scalars(select(OutboxRow.payload).order_by(OutboxRow.id))]
    assert [p.get("meas_id") for p in payloads] == [None, "m-2", "m-2"]


def test_acknowledge_overrun_and_order(db_engine: Engine) -> None:
    rec = recorder(db_engine)
    metrics = PlcMetrics(CollectorRegistry())
    handshake = Handshake(db_engine, ["demo"], capacity=2, ttl=timedelta(days=3650), metrics=metrics)

    async def scenario() -> None:
        for i in range(4):
            rec.record(decision(i))
        await handshake.read_outbox()
        buffer = handshake.buffers["demo"]
        assert list(buffer.ready) == ["req-00000", "req-00001"]
        assert [e.result.result_id for e in buffer.waiting] == ["req-00002", "req-00003"]
        assert buffer.overrun and buffer.overruns == 2
        assert metrics.overruns.labels(model="demo")._value.get() == 2
        with pytest.raises(NotReadyError):
            await handshake.acknowledge("demo", "req-00003")
        with pytest.raises(UnknownResultError):
            await handshake.acknowledge("demo", "req-99999")
        await handshake.acknowledge("demo", "req-00001")  # out of order is allowed: the PLC has that one
        assert list(buffer.ready) == ["req-00000", "req-00002"]
        await handshake.read_outbox()  # nothing read twice
        assert list(buffer.ready) == ["req-00000", "req-00002"] and len(buffer.waiting) == 1
        # An id freed by the acknowledgement may be reused by SQLite: the next record is still read.
        await handshake.acknowledge("demo", "req-00000")
        await handshake.acknowledge("demo", "req-00002")
        await handshake.acknowledge("demo", "req-00003")
        rec.record(decision(4))
        await handshake.read_outbox()
        assert list(buffer.ready) == ["req-00004"] and not buffer.overrun
        assert handshake.status()["demo"]["acknowledged"] == 4

    asyncio.run(scenario())
    with Session(db_engine) as session:
        left = list(session.scalars(select(OutboxRow.request_id).where(OutboxRow.destination == PLC_DESTINATION)))
    assert left == ["req-00004"]


def test_unacknowledged_results_expire_into_the_dead_letters_and_unusable_rows_are_refused(db_engine: Engine) -> None:
    rec = recorder(db_engine)
    registry = CollectorRegistry()
    metrics, push = PlcMetrics(registry), RecordsMetrics(registry)
    handshake = Handshake(
        db_engine, ["demo"], capacity=1, ttl=timedelta(seconds=0.3), metrics=metrics, push_metrics=push
    )

    async def scenario() -> None:
        rec.record(decision(1))
        rec.record(decision(2))
        rec.record(decision(3, model="gone"))
        with Session(db_engine) as session, session.begin():
            session.execute(
                insert(OutboxRow).values(
                    destination=PLC_DESTINATION, request_id="req-00001", payload="{}", created_at=T0, attempts=0
                )
            )
        await handshake.read_outbox()
        assert list(handshake.buffers["demo"].ready) == ["req-00001"]
        await asyncio.sleep(0.4)
        await handshake.read_outbox()
        assert not handshake.buffers["demo"].ready and not handshake.buffers["demo"].waiting

    asyncio.run(scenario())
    assert dead_letters(db_engine) == [
        ("req-00003", "refused"),  # its model has no VisionSystem
        ("req-00001", "refused"),  # not a result
        ("req-00001", "expired"),
        ("req-00002", "expired"),
    ]
    assert metrics.expired.labels(model="demo")._value.get() == 2
    dead = {
        r: push.push_dead_lettered.labels(destination=PLC_DESTINATION, reason=r)._value.get()
        for r in ("refused", "expired")
    }
    assert dead == {"refused": 2, "expired": 2}
    assert push.push_backlog.labels(destination=PLC_DESTINATION)._value.get() == 0
    assert handshake.status()["demo"]["expired"] == 2
