"""The requests-per-second budget shared by every poll worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RequestBudget:
    """A token bucket: `rate` requests per second, bursts of at most `burst`.

    `pause_until` stops all requests until a moment (a 429's Retry-After
    applies to the whole account, not to one task).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self._burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = 1.0
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def pause_for(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def reserve(self) -> float:
        """Take one token; returns how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            return max(wait, self._paused_until - now)

    def acquire(self, stop: threading.Event) -> bool:
        """Block until a request may be sent; False if `stop` was set meanwhile."""
        wait = self.reserve()
        if wait > 0:
            return not stop.wait(wait)
        return not stop.is_set()
