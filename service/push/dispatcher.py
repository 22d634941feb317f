"""The outbox dispatcher: one asyncio task per destination delivers its outbox rows in `id` order.

At least once, in order: a row is deleted only after its destination acknowledged it, and the next row is
not tried before the current one went through (a failing head is retried with capped exponential
backoff). Rows survive restarts because they live in the records database, written in the record's own
transaction. With PostgreSQL and several replicas, a session-level advisory lock per destination lets one
replica deliver while the others wait their turn (they take over if it dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.metrics import RecordsMetrics
from service.push.destinations import DeliveryError, Destination
from service.records.tables import OutboxRow

log = logging.getLogger(__name__)

BATCH = 100


@dataclass(frozen=True)
class Backoff:
    """Delay after the n-th consecutive failure: first_s × 2^(n−1), at most max_s."""

    first_s: float = 0.5
    max_s: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.max_s, self.first_s * 2 ** max(0, failures - 1)))


class Dispatcher:
    """Delivers the outbox of `db_engine` to `destinations`. `start()`/`stop()` from the app's event loop;
    `wake()` from any thread after a commit, so a new result goes out without waiting for the poll."""

    def __init__(
        self,
        db_engine: Engine,
        destinations: Sequence[Destination],
        metrics: RecordsMetrics | None = None,
        backoff: Backoff | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.db_engine = db_engine
        self.destinations = list(destinations)
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self.poll_s = poll_s  # also picks up rows that another replica wrote
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        if metrics is not None:
            for d in self.destinations:
                metrics.declare_destination(d.name)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for d in self.destinations:
            self._events[d.name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._run(d), name=f"push-{d.name}"))

    def wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for event in self._events.values():
            loop.call_soon_threadsafe(event.set)

    async def stop(self) -> None:
        """Cancel the delivery tasks (what is undelivered stays in the outbox) and close the destinations."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for d in self.destinations:
            await d.close()

    async def _run(self, destination: Destination) -> None:
        lock: Connection | None = None
        try:
            while True:
                if self.db_engine.dialect.name == "postgresql" and lock is None:
                    lock = await asyncio.to_thread(_try_leader_lock, self.db_engine, destination.name)
                    if lock is None:  # another replica delivers this destination
                        await self._idle(destination.name)
                        continue
                try:
                    await self._deliver_pending(destination)
                except SQLAlchemyError as exc:  # the database is away for a while: try again later
                    log.warning("push to %s paused: the outbox is unreadable: %s", destination.name, exc)
                    await asyncio.sleep(self.backoff.max_s / 4)
                await self._idle(destination.name)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not silently end delivery for the life of the process
            log.exception("push to %s stopped", destination.name)
            raise
        finally:
            if lock is not None:
                lock.invalidate()  # closes the database session itself, which releases the advisory lock
                lock.close()

    async def _idle(self, name: str) -> None:
        event = self._events[name]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.poll_s)
        event.clear()

    async def _deliver_pending(self, destination: Destination) -> None:
        """Send the waiting rows in order until none is left; back off and retry on a failing head."""
        failures = 0
        while True:
            rows = await asyncio.to_thread(_head, self.db_engine, destination.name, BATCH)
            self._set_backlog(destination.name, await asyncio.to_thread(_count, self.db_engine, destination.name))
            if not rows:
                return
            for row_id, request_id, payload in rows:
                while True:
                    try:
                        await destination.send(request_id, payload)
                    except DeliveryError as exc:
                        failures += 1
                        delay = self.backoff.delay(failures)
                        log.warning(
                            "push to %s failed (attempt %d, retry in %.1f s): %s",
                            destination.name,
                            failures,
                            delay,
                            exc,
                        )
                        if self.metrics is not None:
                            self.metrics.push_failures.labels(destination=destination.name).inc()
                        await asyncio.to_thread(_note_failure, self.db_engine, row_id, str(exc))
                        await asyncio.sleep(delay)
                        continue
                    failures = 0
                    await asyncio.to_thread(_delete, self.db_engine, row_id)
                    if self.metrics is not None:
                        self.metrics.push_delivered.labels(destination=destination.name).inc()
                    break

    def _set_backlog(self, name: str, count: int) -> None:
        if self.metrics is not None:
            self.metrics.push_backlog.labels(destination=name).set(count)


# ---- blocking database steps (run in a worker thread)


def _head(db_engine: Engine, destination: str, limit: int) -> list[tuple[int, str, str]]:
    query = (
        select(OutboxRow.id, OutboxRow.request_id, OutboxRow.payload)
        .where(OutboxRow.destination == destination)
        .order_by(OutboxRow.id)
        .limit(limit)
    )
    with Session(db_engine) as session:
        return [(r[0], r[1], r[2]) for r in session.execute(query)]


def _count(db_engine: Engine, destination: str) -> int:
    query = select(func.count()).select_from(OutboxRow).where(OutboxRow.destination == destination)
    with Session(db_engine) as session:
        return int(session.scalar(query) or 0)


def _delete(db_engine: Engine, row_id: int) -> None:
    with Session(db_engine) as session, session.begin():
        session.execute(delete(OutboxRow).where(OutboxRow.id == row_id))


def _note_failure(db_engine: Engine, row_id: int, error: str) -> None:
    with Session(db_engine) as session, session.begin():
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.id == row_id)
            .values(attempts=OutboxRow.attempts + 1, last_error=error[:1000])
        )


def _try_leader_lock(db_engine: Engine, destination: str) -> Connection | None:
    """A connection holding this destination's advisory lock, or None when another replica holds it."""
    key = zlib.crc32(f"bridgenet-push-{destination}".encode())
    conn = db_engine.connect()
    if conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
        conn.commit()  # end the implicit transaction; the session-level lock stays until the connection closes
        return conn
    conn.close()
    return None
