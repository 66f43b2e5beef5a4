"""The poll path's parts on their own: the loop, the outcome handler, the listeners.

No store, no Recorder, no HTTP: each part takes narrow Protocols, so plain
fakes stand in for its neighbours.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

from exporter.model import (
    OutcomeKind,
    PollOutcome,
    RateLimitInfo,
    Status,
    StatusReport,
    Task,
    TaskUpdate,
)
from exporter.poller.account import AccountWatcher
from exporter.poller.cycle import CycleSettings, PollCycle
from exporter.poller.events import Change, CycleEnd, PollListener
from exporter.poller.handler import OutcomeHandler
from exporter.poller.ratecontrol import MIN_RATE, RateController
from exporter.poller.ratelimit import AccountShare, RequestBudget
from exporter.poller.transitions import PollPolicy
from exporter.store.base import FinishLabels

NOW = 1_700_000_000.0


def task(task_id: str = "img_1") -> Task:
    return Task(
        task_id=task_id,
        source="config",
        model="m",
        poll_url=None,
        status=Status.PROCESSING,
        discovered_at=NOW - 50,
        next_poll_at=NOW - 1,
        created=NOW - 50,
    )


class Tasks:
    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks

    def due(self, now: float, limit: int) -> list[Task]:
        return self.tasks[:limit]


class Fetcher:
    def __init__(self, outcome: PollOutcome) -> None:
        self.outcome = outcome
        self.asked: list[str] = []

    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        self.asked.append(task_id)
        return self.outcome


class Gate:
    def acquire(self, stop: threading.Event) -> bool:
        return True

    def limit(self, batch_size: int) -> int:
        return batch_size


class Handler:
    def __init__(self) -> None:
        self.handled: list[tuple[str, OutcomeKind]] = []
        self.probes: list[PollOutcome] = []
        self.reached: list[bool] = []
        self.ends: list[CycleEnd] = []

    def handle(self, task: Task, outcome: PollOutcome, seen_at: float) -> bool:
        self.handled.append((task.task_id, outcome.kind))
        return outcome.kind is OutcomeKind.REPORT

    def probe(self, outcome: PollOutcome) -> None:
        self.probes.append(outcome)

    def reachable(self, answered: bool) -> None:
        self.reached.append(answered)

    def cycle_done(self, end: CycleEnd) -> None:
        self.ends.append(end)


def test_the_loop_hands_every_answer_to_the_handler_and_decides_nothing() -> None:
    handler = Handler()
    fetcher = Fetcher(PollOutcome(OutcomeKind.REPORT, 200, StatusReport(status="completed")))
    cycle = PollCycle(
        Tasks([task("a"), task("b"), task("c")]),
        fetcher,
        handler,
        Gate(),
        CycleSettings(workers=2, batch_size=2),
        clock=lambda: NOW,
    )
    try:
        result = cycle.run_once()
    finally:
        cycle.stop()
    assert (result.polled, result.finished) == (2, 2)
    assert sorted(handler.handled) == [("a", OutcomeKind.REPORT), ("b", OutcomeKind.REPORT)]
    assert handler.reached == [True]
    assert len(handler.ends) == 1 and handler.ends[0].lag == 1.0


class Writer:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.applied: list[tuple[str, TaskUpdate, str | None, FinishLabels | None]] = []

    def apply(
        self,
        task_id: str,
        update: TaskUpdate,
        now: float,
        reason: str | None,
        labels: FinishLabels | None = None,
    ) -> bool:
        self.applied.append((task_id, update, reason, labels))
        return self.accept


class Reasons:
    def classify(self, error: str | None) -> str:
        return "content_policy" if error and "policy" in error else "unknown"

    def class_of(self, reason: str) -> str:
        return "user" if reason == "content_policy" else "service"


class Heard(PollListener):
    def __init__(self) -> None:
        self.answers: list[tuple[OutcomeKind, bool]] = []
        self.changes: list[Change] = []

    def answer(self, outcome: PollOutcome, probe: bool) -> None:
        self.answers.append((outcome.kind, probe))

    def changed(self, change: Change) -> None:
        self.changes.append(change)


def failed(error: str) -> PollOutcome:
    report = StatusReport(status="failed", created=NOW - 50, updated=NOW - 5, error=error)
    return PollOutcome(OutcomeKind.REPORT, 200, report)


def test_a_finish_is_classified_stored_once_and_heard_once() -> None:
    writer, heard = Writer(), Heard()
    handler = OutcomeHandler(
        writer, Reasons(), PollPolicy(), [heard], model_label=lambda m: m or "unknown"
    )
    assert handler.handle(task(), failed("policy violation"), NOW)
    [(task_id, update, reason, labels)] = writer.applied
    assert (task_id, update.task.status, reason) == ("img_1", Status.FAILED, "content_policy")
    assert labels == FinishLabels("m", "failed", "content_policy", "user")
    assert heard.answers == [(OutcomeKind.REPORT, False)]
    [change] = heard.changes
    assert change.update is update and change.reason == "content_policy" and change.seen_at == NOW


def test_a_finish_the_store_refuses_is_not_heard() -> None:
    writer, heard = Writer(accept=False), Heard()
    handler = OutcomeHandler(writer, Reasons(), PollPolicy(), [heard], model_label=str)
    assert not handler.handle(task(), failed("boom"), NOW)
    assert heard.answers and not heard.changes  # the answer still tells about the API


def test_a_probe_is_an_answer_and_says_whether_the_api_answers() -> None:
    heard = Heard()
    reached: list[bool] = []

    class Reach(PollListener):
        def reachable(self, answered: bool) -> None:
            reached.append(answered)

    handler = OutcomeHandler(Writer(), Reasons(), PollPolicy(), [heard, Reach()], model_label=str)
    handler.probe(PollOutcome(OutcomeKind.NOT_FOUND, 404))
    handler.probe(PollOutcome(OutcomeKind.CONNECTION))
    assert heard.answers == [(OutcomeKind.NOT_FOUND, True), (OutcomeKind.CONNECTION, True)]
    assert reached == [True, False]


def test_the_rate_controller_owns_pauses_and_the_allowed_rate() -> None:
    now = [NOW]
    budget = RequestBudget(10, clock=lambda: now[0])
    rates: list[float] = []
    rate = RateController(
        budget, pause_default=7, share=AccountShare(10, 0.5, lambda: now[0]), on_rate=rates.append
    )
    rate.answer(PollOutcome(OutcomeKind.RATE_LIMITED, 429), probe=False)
    assert budget.reserve() >= 6.9  # no Retry-After: the default pause
    low = RateLimitInfo(limit=1000, remaining=0, reset=NOW + 30)
    rate.answer(PollOutcome(OutcomeKind.REPORT, 200, rate_limit=low), probe=False)
    assert rates == [MIN_RATE] and budget.rate == MIN_RATE
    assert rate.limit(20) == 1  # a cycle's batch shrinks with the rate


def test_the_account_watcher_reports_each_change_once() -> None:
    states: list[str] = []
    watcher = AccountWatcher(states.append)
    for kind in (
        OutcomeKind.UNAUTHORIZED,
        OutcomeKind.UNAUTHORIZED,
        OutcomeKind.SERVER_ERROR,
        OutcomeKind.NOT_FOUND,
    ):
        watcher.answer(PollOutcome(kind), probe=False)
    assert states == ["key_rejected", "ok"]


def test_the_store_does_not_import_the_poller_and_the_poller_not_metrics() -> None:
    """Imports follow the data flow discover -> store -> poll -> classify -> record ->
    expose: no stage imports a later one."""
    root = Path(__file__).resolve().parents[2] / "exporter"
    later = {
        "discovery": ("poller", "metrics", "api", "web"),
        "store": ("poller", "metrics", "api", "web", "discovery"),
        "poller": ("metrics", "api", "web", "discovery", "classify", "upstream"),
        "metrics": ("api", "web"),
        # Every source registers through `intake.register_tasks`, never the metrics directly.
        "proxy": ("metrics", "poller"),
        "api": ("metrics", "poller"),
    }
    found = []
    for package, forbidden in later.items():
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    parts = node.module.split(".")
                    if parts[0] == "exporter" and len(parts) > 1 and parts[1] in forbidden:
                        found.append(f"{package}/{path.name} imports {node.module}")
    assert found == []


def test_every_source_registers_through_one_function() -> None:
    root = Path(__file__).resolve().parents[2] / "exporter"
    for path in ("discovery/runner.py", "api/app.py", "proxy/__init__.py"):
        text = (root / path).read_text()
        assert "register_tasks(" in text and ".add(" not in text, path
        assert "tasks_discovered" not in text, path
