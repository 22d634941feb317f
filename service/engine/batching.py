"""Micro-batching: one worker thread per model gathers concurrent parts into one (B, 3, S, S) session run.

Rule for gathering: the worker takes the oldest queued part and waits for company only while the batch is
not full, the oldest part has waited less than `wait_s`, and another request for the model has announced
itself (it is between `reserve()` and `submit()`, i.e. preprocessing). A lone request therefore never waits
for the window: with nobody else on the way, waiting could only add latency. No part waits longer than
`wait_s` for gathering; it may also wait for the previous batch of its model to finish (`wait_ms` counts
both).

Pre- and postprocessing stay in each request's own thread; only the core stage is shared.

A worker cannot hang its callers: any exception inside the loop fails the parts it holds and the loop goes
on; if the thread ends anyway, it fails every queued part, refuses new ones and reports itself dead
(`Batcher.failure`, which the engine turns into "not ready" and the service into a non-zero exit); and a
caller waits for its result at most `result_timeout_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from service.engine.errors import BatcherClosedError, InferenceError, WorkerDeadError

log = logging.getLogger(__name__)

# `run`: rgb, depth (B, 3, S, S) float32 → scores (B,) float32, maps (B, S, S) float32.
RunFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BatchOutcome:
    """One part's share of a batch run.

    `score`: float, raw image score; `anomaly_map`: (S, S) float32 at the model's resolution;
    `batch_size`: parts in the run; `first_in_batch`: whether this part came first in it (exactly one part of
    each run is, so per-run metrics count a run once); `wait_ms`: from `submit` to the start of the run
    (gathering plus any previous run of the model); `inference_ms`: the whole batch's session time.
    """

    score: float
    anomaly_map: np.ndarray
    batch_size: int
    first_in_batch: bool
    wait_ms: float
    inference_ms: float


@dataclass(eq=False)  # compared by identity: a queued part is removed as itself, never by its arrays
class _Item:
    rgb: np.ndarray
    depth: np.ndarray
    submitted_at: float
    future: Future[BatchOutcome]


class Ticket:
    """A request's announcement to the batcher (see `Batcher.reserve`); `submit` at most once."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self.submitted = False

    def submit(self, rgb: np.ndarray, depth: np.ndarray) -> BatchOutcome:
        """`rgb`, `depth`: (3, S, S) float32, the preprocessed part. Blocks until its batch has run.

        Raises InferenceError when the batch run failed, BatcherClosedError when the batcher is closed.
        """
        if self.submitted:
            raise RuntimeError("a ticket submits one part only")
        self.submitted = True
        return self._batcher._submit(rgb, depth, announced=True)


class Batcher:
    """Gathers parts for one model's session into batches of at most `max_size`; see the module docstring."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_size: int,
        wait_s: float,
        name: str = "model",
        result_timeout_s: float = 60.0,
    ) -> None:
        if max_size < 1 or wait_s < 0 or result_timeout_s <= 0:
            raise ValueError(
                f"batcher {name!r}: expected max_size ≥ 1, wait_s ≥ 0, result_timeout_s > 0; "
                f"got {max_size}, {wait_s}, {result_timeout_s}"
            )
        self.name = name
        self.max_size = max_size
        self.wait_s = wait_s
        self.result_timeout_s = result_timeout_s
        self.failure: str | None = None  # why the worker thread ended while the batcher was open
        self._run = run
        self._queue: deque[_Item] = deque()
        self._announced = 0  # requests between reserve() and submit(): parts that are on their way
        self._closed = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._loop, name=f"bridgenet-batcher-{name}", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    @contextmanager
    def reserve(self) -> Iterator[Ticket]:
        """Announce a coming part before preprocessing it, so the worker knows company is worth waiting for.

        Leaving the block without `ticket.submit` (e.g. preprocessing refused the input) withdraws it.
        """
        with self._cond:
            self._announced += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            if not ticket.submitted:
                with self._cond:
                    self._announced -= 1
                    self._cond.notify_all()  # the worker may be waiting for this part only

    def submit(self, rgb: np.ndarray, depth: np.ndarray) -> BatchOutcome:
        """Submit without an announcement. `rgb`, `depth`: (3, S, S) float32. Blocks until the batch ran."""
        return self._submit(rgb, depth, announced=False)

    def _submit(self, rgb: np.ndarray, depth: np.ndarray, *, announced: bool) -> BatchOutcome:
        item = _Item(rgb, depth, time.perf_counter(), Future())
        with self._cond:
            if announced:
                self._announced -= 1
            if self.failure is not None:
                raise WorkerDeadError(f"model {self.name!r}: the batching worker is dead ({self.failure})")
            if self._closed:
                raise BatcherClosedError(f"model {self.name!r}: the engine is stopping; the part was not run")
            self._queue.append(item)
            self._cond.notify_all()
        # The worker resolves every future it takes, close() and a dying worker fail the ones left queued;
        # the timeout covers what none of them can: a session run that never returns.
        try:
            return item.future.result(timeout=self.result_timeout_s)
        except TimeoutError:
            with self._cond:
                if item in self._queue:
                    self._queue.remove(item)
            raise InferenceError(
                f"model {self.name!r}: no result within {self.result_timeout_s:g} s (a session run is stuck)"
            ) from None

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop taking parts, run what is queued (drain), stop the worker. Returns whether it finished within
        `timeout_s`; parts still queued after that are failed with BatcherClosedError, so no caller hangs."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout_s)
        if not self._worker.is_alive():
            return True
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for item in left:
            item.future.set_exception(
                BatcherClosedError(f"model {self.name!r}: the engine stopped before this part's batch could run")
            )
        log.warning(
            "batcher %s: a batch was still running after %.1f s; %d queued part(s) failed",
            self.name,
            timeout_s,
            len(left),
        )
        return False

    def _loop(self) -> None:
        try:
            while True:
                batch = self._gather()
                if batch is None:
                    return
                try:
                    self._run_batch(batch)
                except Exception as exc:  # a bug past the run itself: fail this batch, keep serving
                    log.exception("batcher %s: a batch of %d failed outside the session run", self.name, len(batch))
                    self._fail(batch, InferenceError(f"model {self.name!r}: the batch failed: {exc!r}"))
        except BaseException as exc:  # the thread ends here (not re-raised: it is reported, not lost)
            self._died(repr(exc))
        finally:
            if not self._closed and self.failure is None:
                self._died("the worker thread ended")

    def _died(self, reason: str) -> None:
        """The worker ends while the batcher is open: refuse new parts and fail every queued one."""
        with self._cond:
            self.failure = reason
            left = list(self._queue)
            self._queue.clear()
        log.critical("batcher %s: the worker thread died (%s); %d queued part(s) failed", self.name, reason, len(left))
        self._fail(left, WorkerDeadError(f"model {self.name!r}: the batching worker died ({reason})"))

    @staticmethod
    def _fail(items: list[_Item], error: Exception) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _gather(self) -> list[_Item] | None:
        """The next batch per the gathering rule; None once closed and empty."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait(1.0)  # idle; notified on every submit and on close
            deadline = self._queue[0].submitted_at + self.wait_s
            while len(self._queue) < self.max_size and self._announced > 0 and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            size = min(self.max_size, len(self._queue))
            return [self._queue.popleft() for _ in range(size)]

    def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            scores, maps = self._run(np.stack([i.rgb for i in batch]), np.stack([i.depth for i in batch]))
            if len(scores) != len(batch) or len(maps) != len(batch):
                raise ValueError(f"the session answered {len(scores)} scores / {len(maps)} maps for {len(batch)} parts")
        except Exception as exc:  # any failure of the run must reach every waiting request
            log.error("batch of %d for model %s failed: %s", len(batch), self.name, exc)
            for item in batch:
                error = InferenceError(f"model {self.name!r}: the batched run of {len(batch)} part(s) failed: {exc}")
                error.__cause__ = exc
                item.future.set_exception(error)
            return
        inference_ms = (time.perf_counter() - started) * 1e3
        for k, item in enumerate(batch):
            # Copies: a view would keep the whole batch's output alive as long as any one request holds it.
            item.future.set_result(
                BatchOutcome(
                    score=float(scores[k]),
                    anomaly_map=np.array(maps[k], dtype=np.float32),
                    batch_size=len(batch),
                    first_in_batch=k == 0,
                    wait_ms=(started - item.submitted_at) * 1e3,
                    inference_ms=inference_ms,
                )
            )
