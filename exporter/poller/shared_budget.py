"""The request budget of a group of replicas, kept in Redis (GCRA on the server's clock).

With `store.backend: redis` every replica takes its request slots here, so
`polling.requests_per_second` is the whole group's budget, and a 429's pause
applies to every replica.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from exporter.poller.ratelimit import wait_for_slot

# GCRA on the server's clock (replicas' clocks may differ): every call takes
# one request slot and returns, as a string, how long to wait before using it.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX',
  math.ceil((new_tat - now) * 1000) + 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused - now > wait then wait = paused - now end
return string.format('%.6f', wait)
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > paused then
  redis.call('SET', KEYS[1], string.format('%.6f', until_), 'PX',
    math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""


def _text(value: float) -> str:
    """A value for a script argument."""
    return repr(value)


class SharedRequestBudget:
    """The request budget of a whole group of replicas, kept in Redis.

    A `Budget` like `RequestBudget`; `rate` is read on every call, so a
    change to it applies to the group at once. A 429's pause applies to every
    replica.
    """

    def __init__(
        self,
        client: redis.Redis,
        rate: float,
        burst: float | None = None,
        *,
        prefix: str = "lemondata:",
        key: str = "budget",
    ) -> None:
        """`key`: where the budget is kept under `prefix` (one per account)."""
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._keys = [prefix + key, prefix + key + ":pause"]
        self._reserve = client.register_script(_RESERVE)
        self._pause = client.register_script(_PAUSE)

    def pause_for(self, seconds: float) -> None:
        self._pause(keys=self._keys[1:], args=[_text(float(seconds))])

    def reserve(self) -> float:
        """Take one request slot of the group; how long to wait before using it."""
        interval = 1.0 / self.rate
        tolerance = max(0.0, self.burst - 1.0) * interval
        result: Any = self._reserve(keys=self._keys, args=[_text(interval), _text(tolerance)])
        return float(result)

    def acquire(self, stop: threading.Event) -> bool:
        """Block until the group may send a request; False if `stop` was set meanwhile."""
        return wait_for_slot(self.reserve, stop)
