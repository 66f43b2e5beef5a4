import threading

from exporter.poller.backoff import backoff_delay, retry_after_delay
from exporter.poller.ratelimit import RequestBudget


def test_backoff_doubles_up_to_cap_with_jitter_in_upper_half() -> None:
    assert [backoff_delay(n, 2, 60, 0.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff_delay(10, 2, 60, 0.0) == 30
    assert backoff_delay(10, 2, 60, 0.999) < 60
    assert backoff_delay(0, 2, 60, 1.0) == 2


def test_retry_after_takes_precedence() -> None:
    assert retry_after_delay(12, 5, 2, 60, 0.5) == 12
    assert retry_after_delay(None, 1, 2, 60, 0.0) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_spaces_requests_at_the_rate() -> None:
    clock = FakeClock()
    budget = RequestBudget(rate=4, burst=1, clock=clock)
    waits = [budget.reserve() for _ in range(5)]
    assert waits == [0.0, 0.25, 0.5, 0.75, 1.0]
    clock.now = 10.0
    assert budget.reserve() == 0.0


def test_pause_delays_everyone() -> None:
    clock = FakeClock()
    budget = RequestBudget(rate=100, clock=clock)
    budget.pause_for(30)
    assert budget.reserve() == 30


def test_acquire_gives_up_when_stopping() -> None:
    budget = RequestBudget(rate=0.01, burst=1)
    stop = threading.Event()
    assert budget.acquire(stop)
    stop.set()
    assert not budget.acquire(stop)
