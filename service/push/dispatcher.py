"""The outbox dispatcher: one asyncio task per destination delivers its outbox rows in `id` order.

At least once, in order: a row is deleted only after its destination acknowledged it, and the next row is
not tried before the current one went through (a failing head is retried with capped exponential
backoff). Rows survive restarts because they live in the records database, written in the record's own
transaction.

Bounded: a message the destination refuses for good (DeliveryError.permanent, a 4xx answer) moves to the
dead letters at once and the next one is tried; while a destination stays away, messages older than
`Bounds.max_age` and the oldest beyond `Bounds.max_backlog` move there too, so an outage of a side channel
cannot fill the disk (and through it stop the records the line needs). The newest results keep their place:
when the destination comes back it gets the current production first; the dead letters can be re-queued
(`requeue`, POST /v1/admin/push/retry). Dead letters beyond `Bounds.max_dead_letters` are deleted, oldest
first: the decision records themselves stay, readable through /v1/results.

With PostgreSQL and several replicas, a session-level advisory lock per destination lets one replica
deliver while the others wait their turn (they take over if it dies). With SQLite (several worker processes
on one host, service.supervisor) an exclusive lock on a file per destination beside the database does the
same: the kernel releases it when its holder ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    DateTime,
    Delete,
    Engine,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.cancellation import cancel_until_done, in_thread
from service.metrics import RecordsMetrics
from service.push.destinations import DeliveryError, Destination
from service.records.tables import DeadLetterRow, OutboxRow

log = logging.getLogger(__name__)

BATCH = 100


@dataclass(frozen=True)
class Backoff:
    """Delay after the n-th consecutive failure: first_s × 2^(n−1), at most max_s."""

    first_s: float = 0.5
    max_s: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.max_s, self.first_s * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class Bounds:
    """How much undelivered push the database keeps per destination (settings push_max_*)."""

    max_age: timedelta = timedelta(hours=24)
    max_backlog: int = 100_000
    max_dead_letters: int = 100_000


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
        bounds: Bounds | None = None,
        lock_dir: Path | None = None,
    ) -> None:
        """`lock_dir`: where the SQLite path keeps its per-destination lock files (PostgreSQL locks in the
        database); None: no lock (one process alone on this database)."""
        self.db_engine = db_engine
        self.lock_dir = lock_dir
        self.destinations = list(destinations)
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self.bounds = bounds or Bounds()
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
        await cancel_until_done(*self._tasks)
        self._tasks.clear()
        for d in self.destinations:
            await d.close()

    def _try_lock(self, destination: str) -> Connection | int | None:
        """Leadership of `destination`: a connection (PostgreSQL) or a file descriptor (SQLite) that holds
        its lock, or None when another process holds it."""
        if self.db_engine.dialect.name == "postgresql":
            return _try_leader_lock(self.db_engine, destination)
        assert self.lock_dir is not None
        return _try_file_lock(self.lock_dir, destination)

    async def _take_lock(self, destination: str) -> Connection | int | None:
        """`_try_lock` in a thread. A cancel (stop) cannot stop the thread, so whichever side comes second
        releases what the thread took: the thread, when the caller has gone; the caller, when the thread
        handed a lock over that the cancel keeps it from returning. Nothing is left to the garbage collector
        (nor held by a stopped dispatcher), whether or not the event loop still runs."""
        guard = threading.Lock()
        handed: list[Connection | int | None] = []
        gone = False

        def attempt() -> Connection | int | None:
            lock = self._try_lock(destination)
            with guard:
                if not gone:
                    handed.append(lock)
                    return lock
            _release(lock)
            return None

        try:
            return await asyncio.to_thread(attempt)
        except asyncio.CancelledError:
            with guard:
                gone = True
                taken = handed[0] if handed else None
            _release(taken)
            raise

    async def _run(self, destination: Destination) -> None:
        lock: Connection | int | None = None
        needs_lock = self.db_engine.dialect.name == "postgresql" or self.lock_dir is not None
        try:
            while True:
                if needs_lock and lock is None:
                    lock = await self._take_lock(destination.name)
                    if lock is None:  # another replica or worker delivers this destination
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
            _release(lock)

    async def _idle(self, name: str) -> None:
        event = self._events[name]
        # asyncio.timeout, not wait_for: see service.cancellation (a wake landing with stop()'s cancel).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_s):
                await event.wait()
        event.clear()

    async def _deliver_pending(self, destination: Destination) -> None:
        """Send the waiting rows in order until none is left. A transient failure backs off and retries
        the head (after applying the bounds, which may have moved it away); a permanent one dead-letters
        the row and goes on with the next."""
        name = destination.name
        failures = 0
        while True:
            await self._apply_bounds(name)
            rows = await in_thread(_head, self.db_engine, name, BATCH)
            self._set_backlog(name, await in_thread(_count, self.db_engine, name))
            if not rows:
                return
            for row_id, request_id, payload in rows:
                try:
                    await destination.send(request_id, payload)
                except DeliveryError as exc:
                    if self.metrics is not None:
                        self.metrics.push_failures.labels(destination=name).inc()
                    if exc.permanent:
                        log.error("push to %s refused %s for good, dead-lettered: %s", name, request_id, exc)
                        await in_thread(dead_letter_rows, self.db_engine, [row_id], "refused", str(exc))
                        self._count_dead(name, "refused", 1)
                        failures = 0
                        continue
                    failures += 1
                    delay = self.backoff.delay(failures)
                    log.warning("push to %s failed (attempt %d, retry in %.1f s): %s", name, failures, delay, exc)
                    await in_thread(_note_failure, self.db_engine, row_id, str(exc))
                    await asyncio.sleep(delay)
                    break  # read the head again: the bounds may have moved this row to the dead letters
                failures = 0
                await in_thread(delete_row, self.db_engine, row_id)
                if self.metrics is not None:
                    self.metrics.push_delivered.labels(destination=name).inc()

    async def _apply_bounds(self, name: str) -> None:
        expired, overflow, pruned = await in_thread(_enforce_bounds, self.db_engine, name, self.bounds)
        if expired:
            log.error("push to %s: %d result(s) older than %s dead-lettered", name, expired, self.bounds.max_age)
            self._count_dead(name, "expired", expired)
        if overflow:
            log.error(
                "push to %s: backlog over %d, the oldest %d result(s) dead-lettered",
                name,
                self.bounds.max_backlog,
                overflow,
            )
            self._count_dead(name, "overflow", overflow)
        if pruned:
            log.error(
                "push to %s: %d dead letter(s) beyond %d deleted (their records stay)",
                name,
                pruned,
                self.bounds.max_dead_letters,
            )
        if self.metrics is not None:
            dead = await in_thread(_count_dead, self.db_engine, name)
            self.metrics.push_dead_letters.labels(destination=name).set(dead)

    def _count_dead(self, name: str, reason: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.push_dead_lettered.labels(destination=name, reason=reason).inc(n)

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


def delete_row(db_engine: Engine, row_id: int) -> None:
    """Remove a delivered (or acknowledged) outbox row."""
    with Session(db_engine) as session, session.begin():
        session.execute(delete(OutboxRow).where(OutboxRow.id == row_id))


def _note_failure(db_engine: Engine, row_id: int, error: str) -> None:
    with Session(db_engine) as session, session.begin():
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.id == row_id)
            .values(attempts=OutboxRow.attempts + 1, last_error=error[:1000])
        )


def _count_dead(db_engine: Engine, destination: str) -> int:
    query = select(func.count()).select_from(DeadLetterRow).where(DeadLetterRow.destination == destination)
    with Session(db_engine) as session:
        return int(session.scalar(query) or 0)


def _move_to_dead(session: Session, where: ColumnElement[bool], reason: str, error: str | None = None) -> int:
    """Copy the outbox rows matching `where` into the dead letters, then delete them (one transaction)."""
    now = datetime.now(UTC)
    columns = ["destination", "request_id", "payload", "created_at", "attempts", "last_error", "dead_at", "reason"]
    last_error = OutboxRow.last_error if error is None else literal(error[:1000])
    source = select(
        OutboxRow.destination,
        OutboxRow.request_id,
        OutboxRow.payload,
        OutboxRow.created_at,
        OutboxRow.attempts,
        last_error,
        literal(now, DateTime(timezone=True)),
        literal(reason),
    ).where(where)
    session.execute(insert(DeadLetterRow).from_select(columns, source))
    return _deleted(session, delete(OutboxRow).where(where))


def _deleted(session: Session, statement: Delete) -> int:
    """Run a DELETE; how many rows it removed."""
    result = session.execute(statement)
    return int(cast(CursorResult[Any], result).rowcount or 0)


def dead_letter_rows(db_engine: Engine, row_ids: list[int], reason: str, error: str) -> None:
    """Move the outbox rows `row_ids` to the dead letters with `reason` and `error` (one transaction)."""
    with Session(db_engine) as session, session.begin():
        _move_to_dead(session, OutboxRow.id.in_(row_ids), reason, error)


def _enforce_bounds(db_engine: Engine, destination: str, bounds: Bounds) -> tuple[int, int, int]:
    """Dead-letter what is past the age bound, then the oldest beyond the count bound; delete the oldest
    dead letters beyond theirs. Returns (expired, overflowed, pruned) counts. Reads first and writes only
    when a bound is passed: this runs at every poll, and an empty write would still take SQLite's lock."""
    mine = OutboxRow.destination == destination
    dead = DeadLetterRow.destination == destination
    cutoff = datetime.now(UTC) - bounds.max_age
    # The newest row over each count bound: it and every older one go.
    newest_over = select(OutboxRow.id).where(mine).order_by(OutboxRow.id.desc()).offset(bounds.max_backlog).limit(1)
    newest_dead_over = (
        select(DeadLetterRow.id).where(dead).order_by(DeadLetterRow.id.desc()).offset(bounds.max_dead_letters).limit(1)
    )
    too_old = select(OutboxRow.id).where(mine & (OutboxRow.created_at < cutoff)).limit(1)
    with Session(db_engine) as session:
        if all(session.scalar(q) is None for q in (too_old, newest_over, newest_dead_over)):
            return 0, 0, 0
    with Session(db_engine) as session, session.begin():
        expired = _move_to_dead(session, mine & (OutboxRow.created_at < cutoff), "expired")
        over = session.scalar(newest_over)
        overflow = 0 if over is None else _move_to_dead(session, mine & (OutboxRow.id <= over), "overflow")
        last = session.scalar(newest_dead_over)
        pruned = (
            0 if last is None else _deleted(session, delete(DeadLetterRow).where(dead & (DeadLetterRow.id <= last)))
        )
    return expired, overflow, pruned


def requeue(db_engine: Engine, destinations: Sequence[str]) -> dict[str, int]:
    """Move the dead letters of `destinations` back to the end of their outbox, as new messages (age from
    now, no attempts), in their original order. Returns how many per destination."""
    out: dict[str, int] = {}
    now = datetime.now(UTC)
    with Session(db_engine) as session, session.begin():
        for destination in destinations:
            dead = DeadLetterRow.destination == destination
            source = (
                select(
                    DeadLetterRow.destination,
                    DeadLetterRow.request_id,
                    DeadLetterRow.payload,
                    literal(now, DateTime(timezone=True)),
                    literal(0),
                )
                .where(dead)
                .order_by(DeadLetterRow.id)
            )
            columns = ["destination", "request_id", "payload", "created_at", "attempts"]
            session.execute(insert(OutboxRow).from_select(columns, source))
            out[destination] = _deleted(session, delete(DeadLetterRow).where(dead))
    return out


def _release(lock: Connection | int | None) -> None:
    if isinstance(lock, int):
        os.close(lock)  # releases the file lock
    elif lock is not None:
        lock.invalidate()  # closes the database session itself, which releases the advisory lock
        lock.close()


def _try_file_lock(lock_dir: Path, destination: str) -> int | None:
    """A descriptor holding the exclusive lock of `lock_dir`/push-<destination>.lock, or None when another
    process holds it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"push-{destination}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_leader_lock(db_engine: Engine, destination: str) -> Connection | None:
    """A connection holding this destination's advisory lock, or None when another replica holds it."""
    key = zlib.crc32(f"bridgenet-push-{destination}".encode())
    conn = db_engine.connect()
    if conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
        conn.commit()  # end the implicit transaction; the session-level lock stays until the connection closes
        return conn
    conn.close()
    return None
