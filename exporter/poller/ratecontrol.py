"""Rate limiting in one place: the request budget, the account's share, pauses.

The `RateController` owns the budget every poll worker waits on. As a poll
listener it pauses every request after a 429 (its Retry-After is the
account's, not one task's) and, from X-RateLimit-* headers, lowers the rate
before the account runs out (`AccountShare`). The poll cycle asks it how many
tasks a cycle may take. What a 429 does to one task (its backoff) is
`transitions.decide`'s; parsing the headers is the client's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from exporter.model import OutcomeKind, PollOutcome
from exporter.poller.events import PollListener
from exporter.poller.ratelimit import AccountShare, Budget

# Never slower than this when X-RateLimit headers say the account runs low.
MIN_RATE = 0.2


class RateController(PollListener):
    def __init__(
        self,
        budget: Budget,
        *,
        pause_default: float,
        share: AccountShare | None = None,
        on_rate: Callable[[float], None] = lambda rate: None,
    ) -> None:
        """`pause_default`: the pause after a 429 without Retry-After. `on_rate`
        hears every change of the allowed rate (the metric)."""
        self.budget = budget
        self._pause_default = pause_default
        self._share = share
        self._on_rate = on_rate
        self._configured_rate = budget.rate
        self._allowed_rate = budget.rate

    def acquire(self, stop: threading.Event) -> bool:
        """Block until a request may be sent; False if `stop` was set meanwhile."""
        return self.budget.acquire(stop)

    def limit(self, batch_size: int) -> int:
        """Tasks per cycle: `batch_size`, less when the headers lowered the rate."""
        configured = self._configured_rate
        share = self.budget.rate / configured if configured else 1.0
        return max(1, min(batch_size, math.ceil(batch_size * share)))

    def answer(self, outcome: PollOutcome, probe: bool) -> None:
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            self.budget.pause_for(outcome.retry_after or self._pause_default)
        if self._share is not None and outcome.rate_limit is not None:
            self._follow_headers(self._share, outcome)

    def _follow_headers(self, share: AccountShare, outcome: PollOutcome) -> None:
        info = outcome.rate_limit
        assert info is not None
        allowed = share.observe(info.limit, info.remaining, info.reset)
        if share.exhausted_for > 0:
            self.budget.pause_for(share.exhausted_for)
        rate = max(MIN_RATE, allowed)
        if rate != self._allowed_rate:
            self._allowed_rate = rate
            self.budget.rate = rate
            self._on_rate(rate)
