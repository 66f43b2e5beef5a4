"""The requests-per-second budget shared by every poll worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Budget(Protocol):
    """The requests-per-second budget every poll worker waits on: this process's
    token bucket (`RequestBudget`) or a group's in Redis (`SharedRequestBudget`)."""

    rate: float

    def pause_for(self, seconds: float) -> None:
        """No request goes out for `seconds` (a 429's Retry-After is the account's)."""

    def reserve(self) -> float:
        """Take one request slot; how long the caller must wait before using it."""
        ...

    def acquire(self, stop: threading.Event) -> bool:
        """Block until a request may be sent; False if `stop` was set meanwhile."""
        ...


def wait_for_slot(reserve: Callable[[], float], stop: threading.Event) -> bool:
    """Take a slot and wait for it; False if `stop` was set meanwhile."""
    wait = reserve()
    if wait > 0:
        return not stop.wait(wait)
    return not stop.is_set()


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
        return wait_for_slot(self.reserve, stop)


class AccountShare:
    """Keeps the agent to its share of the account's rate limit, from X-RateLimit-* headers.

    The account's limit (`limit` requests per window) is shared with the
    application that creates the tasks; `reserve_ratio` of it is left to the
    application. Within a window (the same `reset`) the agent may spend:

        min((1 - reserve) * limit - spent_by_us, (1 - reserve) * remaining)

    spread evenly over the time left until `reset`. The first term caps our own
    use; the second steps back further when the application uses more than
    its share, so the account slows down well before it hits the limit.
    `allowed_rate` never exceeds the configured budget.
    """

    def __init__(
        self,
        configured_rate: float,
        reserve_ratio: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.configured_rate = configured_rate
        self.reserve_ratio = reserve_ratio
        self._clock = clock
        self._window: float | None = None
        self._spent = 0
        self._remaining: float | None = None
        self._limit: float | None = None
        self.allowed_rate = configured_rate
        # Seconds until the window ends, when nothing may be sent before it.
        self.exhausted_for = 0.0

    def observe(self, limit: float | None, remaining: float | None, reset: float | None) -> float:
        """Account for one answered request of ours; returns the rate now allowed."""
        if remaining is None or reset is None:
            return self.allowed_rate
        now = self._clock()
        # Some servers send seconds until the reset instead of a unix time.
        reset_at = reset if reset > 1e9 else now + reset
        if self._window is None or abs(reset_at - self._window) > 1.5:
            if self._window is not None and reset_at < self._window:
                return self.allowed_rate  # a late answer from the previous window
            self._window, self._spent, self._remaining = reset_at, 0, None
        self._spent += 1
        self._remaining = remaining if self._remaining is None else min(remaining, self._remaining)
        if limit is not None:
            self._limit = limit
        share = 1.0 - self.reserve_ratio
        left = share * self._remaining
        if self._limit is not None:
            left = min(left, share * self._limit - self._spent)
        time_left = max(1.0, self._window - now)
        self.exhausted_for = time_left if left < 1 else 0.0
        self.allowed_rate = min(self.configured_rate, max(left, 0.0) / time_left)
        return self.allowed_rate
