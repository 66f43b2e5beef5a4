"""Slowing down on X-RateLimit-* headers, leaving the application its share."""

import threading

from prometheus_client import CollectorRegistry

from exporter.classify import ReasonClassifier
from exporter.config import DEFAULT_FAILURE_REASONS
from exporter.loops import build_poller
from exporter.metrics.recorder import Recorder
from exporter.model import DiscoveredTask, OutcomeKind, PollOutcome, RateLimitInfo, StatusReport
from exporter.poller.cycle import CycleSettings
from exporter.poller.ratecontrol import MIN_RATE
from exporter.poller.ratelimit import AccountShare, RequestBudget
from exporter.poller.transitions import PollPolicy
from exporter.store.sqlite import SqliteTaskStore

T = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_alone_on_the_account_it_takes_its_share_spread_over_the_window() -> None:
    clock = Clock()
    share = AccountShare(configured_rate=100, reserve_ratio=0.5, clock=clock)
    # 1,000 a minute, window ends in 60 s: half of it, over 60 s.
    assert share.observe(1000, 999, T + 60) == (500 - 1) / 60
    assert share.exhausted_for == 0
    # Never above the configured budget.
    assert AccountShare(5, 0.5, clock).observe(1000, 999, T + 60) == 5


def test_it_never_spends_more_than_its_share_of_a_window() -> None:
    clock = Clock()
    share = AccountShare(1000, 0.5, clock)
    for used in range(1, 500):
        clock.now = T + used * 0.1
        share.observe(1000, 1000 - used, T + 60)
    clock.now = T + 50
    assert share.observe(1000, 500, T + 60) == 0  # 500 spent: the rest is the application's
    assert share.exhausted_for == 10


def test_a_busy_application_makes_it_step_back_further() -> None:
    clock = Clock(T + 30)
    share = AccountShare(100, 0.5, clock)
    # Someone else used 900 of 1,000 in this window; 30 s left: half of the 100 left.
    assert share.observe(1000, 100, T + 60) == 50 / 30
    assert share.observe(1000, 10, T + 60) < 0.2
    share.observe(1000, 0, T + 60)
    assert share.exhausted_for == 30


def test_a_new_window_starts_afresh_and_stale_answers_are_ignored() -> None:
    clock = Clock(T + 59)
    share = AccountShare(100, 0.5, clock)
    share.observe(1000, 1, T + 60)
    assert share.allowed_rate < 1
    clock.now = T + 61
    assert share.observe(1000, 999, T + 120) == (500 - 1) / 59
    assert share.observe(1000, 0, T + 60) == (500 - 1) / 59  # late answer from the old window


def test_reset_as_seconds_and_missing_headers() -> None:
    clock = Clock()
    share = AccountShare(100, 0.25, clock)
    assert share.observe(None, None, None) == 100
    assert share.observe(None, 400, 40) == 0.75 * 400 / 40  # no limit header: share of remaining


class NoWaitBudget(RequestBudget):
    """Accounts like the real budget, but never sleeps (the clock is fake)."""

    def acquire(self, stop: threading.Event) -> bool:
        return True


class HeaderClient:
    """Answers `processing` with rate-limit headers that say the account runs low."""

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.sent = 0

    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        self.sent += 1
        return PollOutcome(
            OutcomeKind.REPORT,
            200,
            StatusReport("processing", created=T - 10),
            rate_limit=RateLimitInfo(1000, self.remaining, T + 30),
        )


def test_the_cycle_lowers_its_budget_takes_fewer_tasks_and_says_so() -> None:
    clock = Clock()
    store = SqliteTaskStore(":memory:")
    store.add([DiscoveredTask(f"t{i}", "x") for i in range(40)], T)
    registry = CollectorRegistry()
    classifier = ReasonClassifier(list(DEFAULT_FAILURE_REASONS))
    recorder = Recorder(
        registry,
        duration_buckets=[1],
        pending_buckets=[1],
        max_models=5,
        reasons=classifier.reasons,
        budget_rps=10,
    )
    budget = NoWaitBudget(1000, clock=clock)
    client = HeaderClient(remaining=60)
    cycle = build_poller(
        store,
        client,
        classifier,
        recorder,
        budget,
        PollPolicy(task_interval=5),
        CycleSettings(workers=1, batch_size=20),
        clock=clock,
        share=AccountShare(1000, 0.5, clock),
    ).cycle
    try:
        assert cycle.run_once().polled == 20
        # 60 left with 30 s to go: at most 30 for us, at 1/s.
        assert budget.rate == 1.0
        assert registry.get_sample_value("lemondata_poll_allowed_requests_per_second") == 1.0
        clock.now += 5
        # A cycle's batch shrinks with the allowed rate: 20 * 1 / 1000, at least one.
        assert cycle.run_once().polled == 1
        client.remaining = 0
        clock.now += 5
        cycle.run_once()
        assert budget.rate == MIN_RATE
        assert budget.reserve() >= 19  # paused until the window ends
    finally:
        cycle.stop()
        store.close()
