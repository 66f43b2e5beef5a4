"""Fixed-window limiter."""

from __future__ import annotations

import pytest

from exporter.simulator.ratelimit import FixedWindowLimiter


def test_counts_down_then_rejects_until_the_window_ends() -> None:
    limiter = FixedWindowLimiter(3, window_seconds=60)
    remaining = [limiter.hit("k", 100.0 + i).remaining for i in range(3)]
    assert remaining == [2, 1, 0]
    rejected = limiter.hit("k", 130.0)
    assert not rejected.allowed
    assert rejected.remaining == 0
    assert rejected.reset_at == 160.0
    assert rejected.retry_after == 30
    assert limiter.hit("k", 160.0).allowed


def test_retry_after_is_at_least_one_second() -> None:
    limiter = FixedWindowLimiter(1, window_seconds=60)
    limiter.hit("k", 0.0)
    assert limiter.hit("k", 59.9).retry_after == 1


def test_keys_are_independent() -> None:
    limiter = FixedWindowLimiter(1)
    assert limiter.hit("a", 0.0).allowed
    assert limiter.hit("b", 0.0).allowed
    assert not limiter.hit("a", 1.0).allowed


def test_headers() -> None:
    decision = FixedWindowLimiter(10).hit("k", 1000.2)
    assert dict(decision.headers()) == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "9",
        "X-RateLimit-Reset": "1061",
    }


def test_reset_forgets_windows() -> None:
    limiter = FixedWindowLimiter(1)
    limiter.hit("k", 0.0)
    limiter.reset()
    assert limiter.hit("k", 1.0).allowed


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        FixedWindowLimiter(-1)


def test_a_key_may_have_a_limit_of_its_own() -> None:
    limiter = FixedWindowLimiter(0, limits={"small": 1, "big": 3})
    assert limiter.hit("other", 0.0) is None  # not limited: no headers either
    small = [limiter.hit("small", 0.0 + i) for i in range(2)]
    big = [limiter.hit("big", 0.0 + i) for i in range(3)]
    assert [d.allowed for d in small if d] == [True, False]
    assert [d.allowed for d in big if d] == [True, True, True]
    assert big[0] is not None and big[0].limit == 3
