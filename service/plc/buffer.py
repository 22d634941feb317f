"""The result buffer of one VisionSystem: results made ready to the PLC, in order, until it acknowledges
them; those that found it full wait behind it (an overrun), never dropped. Pure bookkeeping: the outbox
rows behind the entries are handled by service.plc.handshake."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.plc.results import PlcResult


class UnknownResultError(KeyError):
    """No result with this id is ready in this buffer (never made ready, acknowledged already, expired)."""


class NotReadyError(KeyError):
    """The result waits behind a full buffer: it was never announced, so it cannot be acknowledged yet."""


@dataclass(frozen=True)
class Entry:
    """A result and its outbox row; `queued_at`: when the record was committed (UTC), which its time to
    live counts from."""

    row_id: int
    result: PlcResult
    queued_at: datetime


class ResultBuffer:
    """At most `capacity` results ready (announced, waiting for AcknowledgeResult), oldest first; results
    beyond wait in arrival order and are made ready as acknowledgements make room. `overruns` counts the
    results that found the buffer full; `overrun` is true while any wait."""

    def __init__(self, model: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a result buffer holds at least 1 result, got capacity {capacity}")
        self.model = model
        self.capacity = capacity
        self.ready: OrderedDict[str, Entry] = OrderedDict()
        self.waiting: deque[Entry] = deque()
        self.overruns = 0
        self.acknowledged = 0
        self.expired = 0

    @property
    def overrun(self) -> bool:
        return bool(self.waiting)

    @property
    def oldest(self) -> Entry | None:
        return next(iter(self.ready.values()), None)

    def offer(self, entry: Entry) -> bool:
        """Make `entry` ready (True) or, when the buffer is full or others wait already, queue it (False)."""
        if self.waiting or len(self.ready) >= self.capacity:
            self.waiting.append(entry)
            self.overruns += 1
            return False
        self.ready[entry.result.result_id] = entry
        return True

    def ready_entry(self, result_id: str) -> Entry:
        """The ready entry of `result_id`; NotReadyError when it waits, UnknownResultError otherwise."""
        entry = self.ready.get(result_id)
        if entry is not None:
            return entry
        if any(e.result.result_id == result_id for e in self.waiting):
            raise NotReadyError(result_id)
        raise UnknownResultError(result_id)

    def remove(self, result_id: str) -> Entry:
        """Take an acknowledged result out of the buffer."""
        entry = self.ready.pop(result_id)
        self.acknowledged += 1
        return entry

    def promote(self) -> list[Entry]:
        """Make waiting results ready while there is room, in order; the ones made ready."""
        moved = []
        while self.waiting and len(self.ready) < self.capacity:
            entry = self.waiting.popleft()
            self.ready[entry.result.result_id] = entry
            moved.append(entry)
        return moved

    def expire(self, cutoff: datetime) -> list[Entry]:
        """Take out every result (ready or waiting) queued before `cutoff`; the ones taken."""
        gone = [e for e in self.ready.values() if e.queued_at < cutoff]
        for entry in gone:
            del self.ready[entry.result.result_id]
        kept = deque(e for e in self.waiting if e.queued_at >= cutoff)
        gone += [e for e in self.waiting if e.queued_at < cutoff]
        self.waiting = kept
        self.expired += len(gone)
        return gone

    def status(self, now: datetime) -> dict[str, Any]:
        """The acknowledgement state, as /v1/status shows it."""
        oldest = self.oldest
        return {
            "capacity": self.capacity,
            "unacknowledged": len(self.ready),
            "waiting": len(self.waiting),
            "overrun": self.overrun,
            "overruns": self.overruns,
            "acknowledged": self.acknowledged,
            "expired": self.expired,
            "oldest_result_id": oldest.result.result_id if oldest else None,
            "oldest_age_s": round((now - oldest.queued_at).total_seconds(), 3) if oldest else None,
        }
