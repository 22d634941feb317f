"""Failed review-station logins, counted per user name and per client address over a sliding window.

Past either limit a login is refused with 429 before its password is checked: a guesser gets a few tries
per window, and a flood of logins cannot keep the thread pool busy with slow hash checks. A success clears
the name's count (not the address's: one address may be a shared terminal or a proxy).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

# Names and addresses tracked at most; beyond, the stalest are forgotten (bounded memory under a flood
# of made-up names).
MAX_TRACKED = 10_000


class LoginLimiter:
    def __init__(
        self, per_user: int, per_address: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = {"user": per_user, "address": per_address}
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, user: str, address: str) -> float | None:
        """Seconds until a login for `user` from `address` may be tried again; None when it may now."""
        now = self._clock()
        with self._lock:
            waits = [
                times[-limit] + self.window_s - now
                for kind, value in (("user", user), ("address", address))
                if len(times := self._recent((kind, value), now)) >= (limit := self.limits[kind])
            ]
        return max(waits) if waits else None

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (("user", user), ("address", address)):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times
                while len(times) > max(self.limits.values()):
                    times.popleft()
            if len(self._failures) > MAX_TRACKED:
                stalest = sorted(self._failures, key=lambda k: self._failures[k][-1])[: len(self._failures) // 10]
                for key in stalest:
                    del self._failures[key]

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(("user", user), None)
