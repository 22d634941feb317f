"""Admission control: at most `max_inflight` predictions run, at most `max_queue` wait, the rest get 429.

Latency stays bounded: a request either starts within `timeout_s` or is answered 503, and a full queue
is refused at once instead of growing a backlog.
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


class Admission:
    """Runs blocking work in the thread pool under a concurrency limit, a queue limit and a deadline.

    Create it inside the running event loop (the app's lifespan): asyncio primitives belong to one loop.
    """

    def __init__(self, max_inflight: int, max_queue: int, timeout_s: float, metrics: Metrics | None = None) -> None:
        if max_inflight < 1 or max_queue < 0 or timeout_s <= 0:
            raise ValueError(
                f"admission limits must be max_inflight ≥ 1, max_queue ≥ 0, timeout_s > 0; "
                f"got {max_inflight}, {max_queue}, {timeout_s}"
            )
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._metrics = metrics
        self._slots = asyncio.Semaphore(max_inflight)
        self._running = 0  # slots held, including work whose request already timed out
        self._waiting = 0
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` in the thread pool once a slot is free.

        Raises QueueFullError when every slot and queue place is taken, RequestTimeoutError when the
        slot or the result is not there within `timeout_s`. A thread cannot be interrupted: after a
        timeout the work finishes in the background and keeps its slot until then, so the limit on
        concurrent work holds even when callers give up.
        """
        if self._running + self._waiting >= self.max_inflight + self.max_queue:
            raise QueueFullError(
                f"the service is at capacity ({self._running} running, {self._waiting} queued; limits "
                f"{self.max_inflight} + {self.max_queue}); retry later",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        if self._metrics:
            self._metrics.inflight.inc()
        try:
            self._waiting += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._timeout("waiting for a free slot") from None
            finally:
                self._waiting -= 1
            self._running += 1
            task = asyncio.ensure_future(self._work(fn, *args, **kwargs))
            self._tasks.add(task)  # keep a reference: an abandoned task must not be garbage-collected
            task.add_done_callback(self._forget)
            try:
                async with asyncio.timeout_at(deadline):
                    return await asyncio.shield(task)
            except TimeoutError:
                raise self._timeout("running the prediction") from None
        finally:
            if self._metrics:
                self._metrics.inflight.dec()

    async def _work(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        finally:
            self._running -= 1
            self._slots.release()

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
