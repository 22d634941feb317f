"""The result handshake: reads the `opcua` outbox rows in order into one ResultBuffer per model, announces
each result made ready, and deletes a row only when the PLC acknowledged its result.

Durable: an unacknowledged result is still an outbox row, so after a restart it is made ready (and
announced) again, in order (at least once: a PLC dedupes on ResultId). Bounded without silent loss: a
result that finds the buffer full waits in the outbox (an overrun: counted, flagged, announced); a result
unacknowledged past its time to live goes to the dead letters (reason "expired", re-queued by POST
/v1/admin/push/retry), logged and counted; a row that is no result, or names a model that has no
VisionSystem, goes there too (reason "refused").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from service.cancellation import cancel_until_done, in_thread
from service.metrics import PlcMetrics, RecordsMetrics
from service.plc.buffer import Entry, ResultBuffer
from service.plc.results import PayloadError, PlcResult, parse_result
from service.push.dispatcher import dead_letter_rows, delete_row
from service.records.runtime import PLC_DESTINATION as DESTINATION
from service.records.store import utc
from service.records.tables import OutboxRow

log = logging.getLogger(__name__)

BATCH = 200


class HandshakeListener(Protocol):
    """What the address space does when the buffers change (service.plc.nodes)."""

    async def result_ready(self, result: PlcResult) -> None: ...

    async def overrun(self, result: PlcResult, buffer: ResultBuffer) -> None: ...

    async def buffer_changed(self, buffer: ResultBuffer) -> None: ...


class Handshake:
    """One buffer per model in `models`. `start()`/`stop()` from the app's event loop; `wake()` from any
    thread after a commit; `acknowledge(model, result_id)` from an OPC UA method call."""

    def __init__(
        self,
        db_engine: Engine,
        models: Iterable[str],
        *,
        capacity: int,
        ttl: timedelta,
        metrics: PlcMetrics | None = None,
        push_metrics: RecordsMetrics | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.db_engine = db_engine
        self.buffers = {model: ResultBuffer(model, capacity) for model in models}
        self.ttl = ttl
        self.metrics = metrics
        self.push_metrics = push_metrics  # the outbox's own series (backlog, dead letters) for "opcua" too
        self.poll_s = poll_s  # also picks up rows re-queued from the dead letters
        self.listener: HandshakeListener | None = None
        # The outbox rows in the buffers. Not "the last id read": SQLite reuses the id of a deleted
        # (acknowledged) row that had the highest one, so new rows need not come after what was read.
        self._known: set[int] = set()
        self._lock = asyncio.Lock()
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:
            for model in self.buffers:
                metrics.declare_model(model)
        if push_metrics is not None:
            push_metrics.declare_destination(DESTINATION)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.read_outbox()  # the results left unacknowledged before a restart, before any client comes
        self._task = asyncio.create_task(self._run(), name="plc-handshake")

    async def stop(self) -> None:
        await cancel_until_done(self._task)
        self._task = None

    def wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._event.set)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):  # not wait_for: see service.cancellation
                    await self._event.wait()
            self._event.clear()
            try:
                await self.read_outbox()
            except Exception:  # the database is away for a while, or a bug: logged, tried again at the next poll
                log.exception("OPC UA results: reading the outbox failed")

    async def read_outbox(self) -> None:
        """Take the new rows into the buffers, then expire what is past its time to live."""
        async with self._lock:
            changed: set[str] = set()
            ids = await in_thread(_row_ids, self.db_engine)
            new = [row_id for row_id in ids if row_id not in self._known]
            for start in range(0, len(new), BATCH):
                rows = await in_thread(_rows, self.db_engine, new[start : start + BATCH])
                for row_id, payload, queued_at in rows:
                    model = await self._take(row_id, payload, queued_at)
                    if model is not None:
                        changed.add(model)
            changed |= await self._expire()
            for model in changed:
                await self._changed(self.buffers[model])

    async def _take(self, row_id: int, payload: str, queued_at: datetime) -> str | None:
        try:
            result = parse_result(payload)
        except PayloadError as exc:
            await self._refuse(row_id, str(exc))
            return None
        buffer = self.buffers.get(result.model)
        if buffer is None:
            await self._refuse(row_id, f"no VisionSystem for model {result.model!r} (not loaded)")
            return None
        self._known.add(row_id)
        if buffer.offer(Entry(row_id, result, utc(queued_at))):
            await self._announce(result)
        else:
            log.warning(
                "OPC UA result buffer of %s is full (%d unacknowledged): result %s waits",
                buffer.model,
                len(buffer.ready),
                result.result_id,
            )
            if self.metrics is not None:
                self.metrics.overruns.labels(model=buffer.model).inc()
            if self.listener is not None:
                await self.listener.overrun(result, buffer)
        return buffer.model

    async def _refuse(self, row_id: int, error: str) -> None:
        log.error("OPC UA results: outbox row %d dead-lettered: %s", row_id, error)
        await self._dead_letter([row_id], "refused", error)

    async def _dead_letter(self, row_ids: list[int], reason: str, error: str) -> None:
        await in_thread(dead_letter_rows, self.db_engine, row_ids, reason, error)
        if self.push_metrics is not None:
            self.push_metrics.push_dead_lettered.labels(destination=DESTINATION, reason=reason).inc(len(row_ids))

    async def _expire(self) -> set[str]:
        cutoff = datetime.now(UTC) - self.ttl
        changed = set()
        for buffer in self.buffers.values():
            gone = buffer.expire(cutoff)
            if not gone:
                continue
            changed.add(buffer.model)
            error = f"not acknowledged within {self.ttl.total_seconds():g} s"
            await self._dead_letter([e.row_id for e in gone], "expired", error)
            self._known.difference_update(e.row_id for e in gone)
            log.warning(
                "OPC UA results of %s expired unacknowledged (dead letters): %s",
                buffer.model,
                [e.result.result_id for e in gone],
            )
            if self.metrics is not None:
                self.metrics.expired.labels(model=buffer.model).inc(len(gone))
            for entry in buffer.promote():
                await self._announce(entry.result)
        return changed

    async def acknowledge(self, model: str, result_id: str) -> None:
        """The PLC has the result: delete its outbox row, then make the next waiting result ready.
        KeyError (buffer.UnknownResultError, buffer.NotReadyError) when `result_id` is not ready here."""
        async with self._lock:
            buffer = self.buffers[model]
            entry = buffer.ready_entry(result_id)
            await in_thread(delete_row, self.db_engine, entry.row_id)  # first: a failure keeps it ready
            buffer.remove(result_id)
            self._known.discard(entry.row_id)
            if self.metrics is not None:
                self.metrics.acknowledged.labels(model=model).inc()
            for promoted in buffer.promote():
                await self._announce(promoted.result)
            await self._changed(buffer)

    async def _announce(self, result: PlcResult) -> None:
        if self.listener is not None:
            await self.listener.result_ready(result)

    async def _changed(self, buffer: ResultBuffer) -> None:
        if self.metrics is not None:
            self.metrics.unacknowledged.labels(model=buffer.model).set(len(buffer.ready))
            self.metrics.waiting.labels(model=buffer.model).set(len(buffer.waiting))
        if self.push_metrics is not None:
            held = sum(len(b.ready) + len(b.waiting) for b in self.buffers.values())
            self.push_metrics.push_backlog.labels(destination=DESTINATION).set(held)
        if self.listener is not None:
            await self.listener.buffer_changed(buffer)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model: the acknowledgement state of its buffer (for /v1/status)."""
        now = datetime.now(UTC)
        return {model: buffer.status(now) for model, buffer in sorted(self.buffers.items())}


def _row_ids(db_engine: Engine) -> list[int]:
    """The ids of the PLC's outbox rows, in order: newer rows have higher ids than every row still there."""
    query = select(OutboxRow.id).where(OutboxRow.destination == DESTINATION).order_by(OutboxRow.id)
    with Session(db_engine) as session:
        return list(session.scalars(query))


def _rows(db_engine: Engine, row_ids: list[int]) -> list[tuple[int, str, datetime]]:
    query = (
        select(OutboxRow.id, OutboxRow.payload, OutboxRow.created_at)
        .where(OutboxRow.id.in_(row_ids))
        .order_by(OutboxRow.id)
    )
    with Session(db_engine) as session:
        return [(r[0], r[1], r[2]) for r in session.execute(query)]
