"""What the API's answers say now: api_up, the last answer, the account, rate-limit windows.

The poll cycle runs with a fake client and clock; the probe is the real
code path (`PollCycle._run_probe`), its request answered by the fake.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import pytest
from prometheus_client import CollectorRegistry

from exporter.classify import ReasonClassifier
from exporter.config import DEFAULT_FAILURE_REASONS
from exporter.loops import build_poller
from exporter.metrics.recorder import LastSeenValues, Recorder
from exporter.model import DiscoveredTask, OutcomeKind, PollOutcome, RateLimitInfo, StatusReport
from exporter.poller.account import AccountState, account_state_after
from exporter.poller.cycle import PROBE_TASK_ID, CycleSettings
from exporter.poller.ratelimit import RequestBudget
from exporter.poller.transitions import PollPolicy
from exporter.store.sqlite import SqliteTaskStore

T = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        return self.now


class NoWaitBudget(RequestBudget):
    def __init__(self) -> None:
        super().__init__(1000)
        self.taken = 0

    def acquire(self, stop: threading.Event) -> bool:
        self.taken += 1
        return True


class ScriptedClient:
    """Answers every request with `answer(task_id)`; remembers what was asked."""

    def __init__(self, answer: Callable[[str], PollOutcome]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        self.asked.append(task_id)
        return self.answer(task_id)


def outcome(kind: OutcomeKind, code: int | None) -> PollOutcome:
    return PollOutcome(kind, code)


NOT_FOUND = outcome(OutcomeKind.NOT_FOUND, 404)
UNAUTHORIZED = outcome(OutcomeKind.UNAUTHORIZED, 401)
PAYMENT = outcome(OutcomeKind.PAYMENT_REQUIRED, 402)
DOWN = outcome(OutcomeKind.CONNECTION, None)


class Rig:
    def __init__(self, answer: Callable[[str], PollOutcome], probe_interval: float = 60) -> None:
        self.clock = Clock()
        self.store = SqliteTaskStore(":memory:")
        self.registry = CollectorRegistry()
        classifier = ReasonClassifier(list(DEFAULT_FAILURE_REASONS))
        self.recorder = Recorder(
            self.registry,
            duration_buckets=[1],
            pending_buckets=[1],
            max_models=5,
            reasons=classifier.reasons,
            reason_classes=classifier.classes,
            budget_rps=10,
            clock=self.clock,
        )
        self.budget = NoWaitBudget()
        self.client = ScriptedClient(answer)
        self.cycle = build_poller(
            self.store,
            self.client,
            classifier,
            self.recorder,
            self.budget,
            PollPolicy(task_interval=5, backoff_base=300, backoff_max=1000),
            CycleSettings(workers=1, batch_size=10, probe_interval=probe_interval),
            clock=self.clock,
        ).cycle

    def run(self, seconds: float = 0.0) -> None:
        """Advance the clock, run a cycle, and wait for a probe it sent to be applied."""
        self.clock.now += seconds
        self.cycle.run_once()
        probe = self.cycle._probe
        if probe is not None:
            futures.wait([probe], timeout=10)
            self.cycle.run_once()  # applies it (and sends no other: one just went out)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def state(self) -> str:
        states = [
            s
            for s in ("ok", "key_rejected", "quota_exhausted")
            if self.value("lemondata_api_account_state", state=s) == 1
        ]
        assert len(states) == 1, states
        return states[0]

    def close(self) -> None:
        self.cycle.stop()
        self.store.close()


@pytest.fixture
def answers() -> dict[str, PollOutcome]:
    return {"now": NOT_FOUND}


@pytest.fixture
def rig(answers: dict[str, PollOutcome]) -> Iterator[Rig]:
    made = Rig(lambda _: answers["now"])
    yield made
    made.close()


def test_idle_agent_probes_and_api_up_follows_the_api(
    rig: Rig, answers: dict[str, PollOutcome]
) -> None:
    assert rig.value("lemondata_api_up") is None  # nothing asked yet
    rig.run()
    assert rig.client.asked == [PROBE_TASK_ID]
    assert rig.budget.taken == 1  # the probe counts against the budget
    assert rig.value("lemondata_api_up") == 1
    assert rig.value("lemondata_api_last_answer_timestamp_seconds") == T
    assert rig.value("lemondata_api_probes_total") == 1
    assert rig.value("lemondata_api_requests_total", code="404") == 1
    # A probe's not-found is its good answer, not an API error.
    assert rig.value("lemondata_api_errors_total", kind="not_found") == 0

    answers["now"] = DOWN
    rig.run(30)
    assert len(rig.client.asked) == 1  # at most one probe per interval
    rig.run(30)
    assert rig.value("lemondata_api_up") == 0
    assert rig.value("lemondata_api_last_answer_timestamp_seconds") == T
    assert rig.value("lemondata_api_errors_total", kind="connection") == 1

    answers["now"] = NOT_FOUND
    rig.run(60)
    assert rig.value("lemondata_api_up") == 1  # back without a single task to poll
    assert rig.value("lemondata_api_last_answer_timestamp_seconds") == T + 120
    assert len(rig.client.asked) == 3


def test_no_probe_while_tasks_are_polled(rig: Rig, answers: dict[str, PollOutcome]) -> None:
    answers["now"] = PollOutcome(OutcomeKind.REPORT, 200, StatusReport("processing", created=T))
    rig.store.add([DiscoveredTask("img_1", "config")], T)
    for _ in range(30):
        rig.run(5)
    assert PROBE_TASK_ID not in rig.client.asked
    assert rig.value("lemondata_api_probes_total") == 0


def test_after_an_outage_backed_off_tasks_leave_room_for_the_probe(
    rig: Rig, answers: dict[str, PollOutcome]
) -> None:
    answers["now"] = DOWN
    rig.store.add([DiscoveredTask("img_1", "config")], T)
    rig.run()
    assert rig.client.asked == ["img_1"] and rig.value("lemondata_api_up") == 0
    answers["now"] = NOT_FOUND
    rig.run(61)  # the task backs off for 150 s or more; the probe finds the API back
    assert rig.client.asked[-1] == PROBE_TASK_ID
    assert rig.value("lemondata_api_up") == 1


def test_account_state_holds_until_an_answer_proves_the_key_works(
    rig: Rig, answers: dict[str, PollOutcome]
) -> None:
    rig.run()
    assert rig.state() == "ok"
    answers["now"] = UNAUTHORIZED
    rig.run(60)
    assert rig.state() == "key_rejected"
    assert rig.value("lemondata_api_up") == 0
    answers["now"] = DOWN  # an outage proves nothing about the key
    rig.run(60)
    assert rig.state() == "key_rejected"
    answers["now"] = PAYMENT
    rig.run(60)
    assert rig.state() == "quota_exhausted"
    answers["now"] = NOT_FOUND  # the slow probe notices the fix without any task
    rig.run(60)
    assert rig.state() == "ok"


@pytest.mark.parametrize(
    ("before", "kind", "after"),
    [
        (AccountState.OK, OutcomeKind.UNAUTHORIZED, AccountState.KEY_REJECTED),
        (AccountState.OK, OutcomeKind.PAYMENT_REQUIRED, AccountState.QUOTA_EXHAUSTED),
        (AccountState.KEY_REJECTED, OutcomeKind.RATE_LIMITED, AccountState.KEY_REJECTED),
        (AccountState.KEY_REJECTED, OutcomeKind.SERVER_ERROR, AccountState.KEY_REJECTED),
        (AccountState.QUOTA_EXHAUSTED, OutcomeKind.REPORT, AccountState.OK),
        (AccountState.KEY_REJECTED, OutcomeKind.NOT_FOUND, AccountState.OK),
        (AccountState.OK, OutcomeKind.TIMEOUT, AccountState.OK),
    ],
)
def test_account_state_after(before: AccountState, kind: OutcomeKind, after: AccountState) -> None:
    assert account_state_after(before, kind) is after


def test_rate_limit_gauges_go_once_their_window_is_over() -> None:
    clock = Clock()
    values = LastSeenValues(clock)
    values.rate_limit(RateLimitInfo(limit=1000, remaining=10, reset=T + 30))

    def names() -> set[str]:
        return {family.name for family in values.collect()}

    assert names() == {
        "lemondata_api_rate_limit_limit",
        "lemondata_api_rate_limit_remaining",
        "lemondata_api_rate_limit_reset_timestamp_seconds",
    }
    clock.now = T + 30
    assert names() == set()  # a reset in the past is never shown
    values.rate_limit(RateLimitInfo(limit=1000, remaining=999, reset=T + 90))
    assert "lemondata_api_rate_limit_remaining" in names()
