"""A hanging request holds back only its own task, not the poll cycle."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from exporter.classify import ReasonClassifier
from exporter.config import DEFAULT_FAILURE_REASONS
from exporter.loops import build_poller
from exporter.metrics.recorder import Recorder
from exporter.model import DiscoveredTask, OutcomeKind, PollOutcome, Status, StatusReport
from exporter.poller.cycle import CycleSettings, PollCycle
from exporter.poller.ratelimit import RequestBudget
from exporter.poller.transitions import PollPolicy
from exporter.store.sqlite import SqliteTaskStore


class HangingClient:
    """Answers `completed` at once, except for `hang_id`, which waits for `release`."""

    def __init__(self, hang_id: str) -> None:
        self.hang_id = hang_id
        self.release = threading.Event()
        self.calls: list[str] = []

    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        self.calls.append(task_id)
        if task_id == self.hang_id:
            self.release.wait(10)
        report = StatusReport(status="completed", created=time.time() - 5)
        return PollOutcome(OutcomeKind.REPORT, 200, report)


def make_cycle(store: SqliteTaskStore, client: HangingClient, wait: float | None) -> PollCycle:
    reasons = ReasonClassifier(list(DEFAULT_FAILURE_REASONS))
    recorder = Recorder(
        CollectorRegistry(),
        duration_buckets=[1, 10],
        pending_buckets=[1, 10],
        max_models=5,
        reasons=reasons.reasons,
        budget_rps=1000,
    )
    return build_poller(
        store,
        client,
        reasons,
        recorder,
        RequestBudget(1000),
        PollPolicy(task_interval=0.01),
        CycleSettings(workers=4, batch_size=10, straggler_wait=wait),
    ).cycle


def test_a_hanging_request_does_not_hold_back_the_others() -> None:
    store = SqliteTaskStore(":memory:")
    client = HangingClient("img_slow")
    cycle = make_cycle(store, client, wait=0.2)
    store.add([DiscoveredTask("img_slow", "config")], time.time())
    try:
        started = time.monotonic()
        cycle.run_once()  # img_slow hangs
        assert time.monotonic() - started < 2
        store.add([DiscoveredTask(f"img_{n}", "config") for n in range(3)], time.time())
        cycle.run_once()
        counts = store.count_by_status()
        assert counts.get(Status.COMPLETED) == 3  # the others finished meanwhile
        assert client.calls.count("img_slow") == 1  # in flight: not sent twice
        client.release.set()
        deadline = time.monotonic() + 5
        while store.count_by_status().get(Status.COMPLETED) != 4:
            assert time.monotonic() < deadline
            cycle.run_once()  # a later cycle applies the straggler's answer
        assert client.calls.count("img_slow") == 1
    finally:
        client.release.set()
        cycle.stop()
        store.close()


def test_settle_applies_answers_in_flight_at_shutdown() -> None:
    store = SqliteTaskStore(":memory:")
    client = HangingClient("img_slow")
    cycle = make_cycle(store, client, wait=0.1)
    store.add([DiscoveredTask("img_slow", "config")], time.time())
    try:
        cycle.run_once()
        cycle.stop()
        assert cycle.settle(0.1) == 1  # still hanging: abandoned
        threading.Timer(0.2, client.release.set).start()
        assert cycle.settle(5) == 0
        assert store.count_by_status().get(Status.COMPLETED) == 1
    finally:
        client.release.set()
        store.close()
