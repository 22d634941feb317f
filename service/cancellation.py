"""Cancelling background tasks so that they end.

On Python 3.11 (the service's interpreter), `asyncio.wait_for` drops a cancel that lands in the loop step
where what it awaits completes (fixed in 3.12). A background task that waits that way, in our code or in a
library's (aiomqtt waits for each PUBACK so), then goes on running after `cancel()`, and a shutdown that
awaits it waits for ever. `cancel_until_done` cancels again until the tasks end. Our own timed waits use
`asyncio.timeout`, which keeps a cancel from outside apart from its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

RECANCEL_S = 0.5  # how long a cancelled task gets to end before it is cancelled again


async def cancel_until_done(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel `tasks` (None entries skipped) and return once every one has ended. Their exceptions are
    taken (each task logs its own failure), so none is reported again as never retrieved."""
    pending = {task for task in tasks if task is not None}
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for task in done:
            if not task.cancelled():
                task.exception()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the default thread pool, for background tasks' database work. A cancel cannot stop
    the thread, so it waits (until cancelled again) for the call to end before it goes on: a task that has
    ended leaves no call in flight, and its owner may dispose the database engine at once (a call that
    outlived it would hand its connection back to a disposed pool, left open for the garbage collector)."""
    call = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        await asyncio.wait([call])
        if not call.cancelled():
            call.exception()  # taken: the cancel is what goes on
        raise
