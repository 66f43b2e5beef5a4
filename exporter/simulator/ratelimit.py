"""Per-key fixed-window request limit, in real time."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # unix time the window ends
    retry_after: int  # whole seconds to wait, >= 1 (meaningful when not allowed)

    def headers(self) -> tuple[tuple[str, str], ...]:
        return (
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(math.ceil(self.reset_at))),
        )


class FixedWindowLimiter:
    """A window opens with a key's first request and lasts `window_seconds`.

    Rejected requests are not counted, so a client that backs off gets its
    full budget back when the window ends. `limits`: keys with a limit of their
    own (0: not limited), as separate accounts have.
    """

    def __init__(
        self, limit: int, window_seconds: float = 60.0, limits: Mapping[str, int] | None = None
    ) -> None:
        if limit < 0 or window_seconds <= 0:
            raise ValueError("limit must be >= 0 and window_seconds > 0")
        self.limit = limit
        self.window_seconds = window_seconds
        self._limits = dict(limits or {})
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> RateDecision | None:
        """The decision on one request of `key`; None when the key is not limited."""
        limit = self._limits.get(key, self.limit)
        if limit <= 0:
            return None
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now >= start + self.window_seconds or now < start:
                start, count = now, 0
            allowed = count < limit
            if allowed:
                count += 1
            self._windows[key] = (start, count)
        reset_at = start + self.window_seconds
        return RateDecision(
            allowed=allowed,
            limit=limit,
            remaining=limit - count,
            reset_at=reset_at,
            retry_after=max(1, math.ceil(reset_at - now)),
        )

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()
