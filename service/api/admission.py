"""Admission control: at most `max_inflight` predictions run, at most `max_queue` more are admitted (their
bodies streaming in, or waiting for a slot), the rest get 429.

A request is admitted from its headers alone (`Admission.admit`, called by `service.api.gate` before one
byte of the body is read) and holds its `AdmissionPass` until its answer is sent; the prediction then runs
under that pass (`Admission.run`), so a slot is counted once from the headers to the answer. Latency stays
bounded: a prediction either starts within `timeout_s` or is answered 503, and work that outlives its
request (a thread cannot be interrupted) keeps its slot until it ends, or until `reclaim_after_s`: then the
slot is reclaimed (logged, counted) so a hung thread cannot take the service's capacity with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from service.api.errors import QueueFullError, RequestTimeoutError
from service.metrics import Metrics

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

QUEUE_FULL_RETRY_AFTER_S = 1
TIMEOUT_RETRY_AFTER_S = 2


class AdmissionPass:
    """One admitted request's place. Held by the request (until its answer) and, while it runs, by its
    prediction (until the work ends or is reclaimed); the place comes back when both let go."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._holders = 1  # the request itself
        self.used = False  # a pass runs one prediction

    def _hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        """Let go of one hold; idempotence is the caller's (each holder releases exactly once)."""
        self._holders -= 1
        if self._holders == 0:
            self._admission._returned()


class _Work:
    """A running prediction's hold on its slot; `end` releases it exactly once (work end or reclaim)."""

    def __init__(self, admission: Admission, admitted: AdmissionPass) -> None:
        self._admission = admission
        self._admitted = admitted
        self.ended = False

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._admission._running -= 1
        self._admission._slots.release()
        self._admitted.release()


class Admission:
    """Admits requests from their headers and runs their blocking work in the thread pool under a
    concurrency limit, a capacity limit and a deadline.

    Create it inside the running event loop (the app's lifespan): asyncio primitives belong to one loop.
    """

    def __init__(
        self,
        max_inflight: int,
        max_queue: int,
        timeout_s: float,
        metrics: Metrics | None = None,
        reclaim_after_s: float | None = None,
    ) -> None:
        if max_inflight < 1 or max_queue < 0 or timeout_s <= 0:
            raise ValueError(
                f"admission limits must be max_inflight ≥ 1, max_queue ≥ 0, timeout_s > 0; "
                f"got {max_inflight}, {max_queue}, {timeout_s}"
            )
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        # Work still running this long after it started gives its slot back (default: twice the timeout).
        self.reclaim_after_s = reclaim_after_s if reclaim_after_s is not None else 2 * timeout_s
        self._metrics = metrics
        self._slots = asyncio.Semaphore(max_inflight)
        self._admitted = 0  # passes not yet returned: bodies streaming in, waiting, running, or outliving
        self._running = 0  # slots held, including work whose request already timed out
        self._waiting = 0
        self.reclaimed = 0  # slots taken back from work that never ended
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def admit(self) -> AdmissionPass:
        """A place for one request, taken from its headers; QueueFullError when every place is taken.
        The caller releases the pass once the answer is sent, whatever happened (`AdmissionPass.release`)."""
        if self._admitted >= self.max_inflight + self.max_queue:
            raise QueueFullError(
                f"the service is at capacity ({self._running} running, {self._admitted - self._running} admitted "
                f"beyond those; limits {self.max_inflight} + {self.max_queue}); retry later",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        self._admitted += 1
        if self._metrics:
            self._metrics.inflight.inc()
        return AdmissionPass(self)

    def _returned(self) -> None:
        self._admitted -= 1
        if self._metrics:
            self._metrics.inflight.dec()

    async def run(self, admitted: AdmissionPass, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` in the thread pool under `admitted` once a slot is free.

        Raises RequestTimeoutError when the slot or the result is not there within `timeout_s`. After a
        timeout the work finishes in the background and keeps its slot until then (or until reclaimed), so
        the limit on concurrent work holds even when callers give up.
        """
        if admitted.used:
            raise RuntimeError("an admission pass runs one prediction")
        admitted.used = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise self._timeout("waiting for a free slot") from None
        finally:
            self._waiting -= 1
        self._running += 1
        admitted._hold()
        work = _Work(self, admitted)
        reclaim = loop.call_later(self.reclaim_after_s, self._reclaim, work)
        task = asyncio.ensure_future(self._work(work, reclaim, fn, *args, **kwargs))
        self._tasks.add(task)  # keep a reference: an abandoned task must not be garbage-collected
        task.add_done_callback(self._forget)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            raise self._timeout("running the prediction") from None

    async def _work(
        self, work: _Work, reclaim: asyncio.TimerHandle, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        finally:
            reclaim.cancel()
            work.end()

    def _reclaim(self, work: _Work) -> None:
        if work.ended:
            return
        self.reclaimed += 1
        log.error(
            "a prediction still runs %.1f s after it started; its slot is reclaimed (the thread is stuck)",
            self.reclaim_after_s,
        )
        if self._metrics:
            self._metrics.reclaimed_slots.inc()
        work.end()

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        # Retrieve the outcome of work whose caller timed out, so asyncio does not log it as unretrieved.
        if not task.cancelled() and task.exception() is not None:
            log.debug("background prediction ended with %r", task.exception())

    def _timeout(self, stage: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the request did not finish within {self.timeout_s:g} s (request_timeout_s) while {stage}; retry later",
            retry_after_s=TIMEOUT_RETRY_AFTER_S,
        )

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for work that outlived its request (after a timeout), e.g. before the
        engine stops. Returns whether everything finished; a hung thread must not block shutdown forever."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(list(self._tasks), timeout=timeout_s)
        if pending:
            log.warning("%d prediction(s) still running after %.1f s; stopping anyway", len(pending), timeout_s)
        return not pending
