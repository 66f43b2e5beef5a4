"""One poll outcome, one handler: an answer becomes a stored change, listeners hear of it.

    answer -> listeners.answer          (metrics, account state, rate controller)
           -> transitions.decide        (pure: the task's next state)
           -> classify                  (a failure's reason and class)
           -> store.apply               (once: a finish another replica stored is not ours)
           -> listeners.changed         (metrics, duration learning)

This is where a status answer becomes a metric; the poll cycle (`cycle.py`)
only picks due tasks, sends the requests and hands each answer here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from exporter.model import PollOutcome, Status, Task, TaskUpdate
from exporter.poller.adaptive import AdaptiveSchedule
from exporter.poller.events import Change, CycleEnd, PollListener
from exporter.poller.transitions import PollPolicy, decide
from exporter.store.base import FinishLabels, TaskWriter


class Classifier(Protocol):
    """Free-text errors -> a bounded failure reason, and the reason's class."""

    def classify(self, error: str | None) -> str: ...

    def class_of(self, reason: str) -> str: ...


class OutcomeHandler:
    def __init__(
        self,
        store: TaskWriter,
        classifier: Classifier,
        policy: PollPolicy,
        listeners: Sequence[PollListener],
        *,
        model_label: Callable[[str | None], str],
        schedule: AdaptiveSchedule | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """`model_label`: the model's metric label, kept with the store's finish
        totals. `schedule`: adaptive polling (None: fixed intervals)."""
        self._store = store
        self._classifier = classifier
        self._policy = policy
        self._listeners = tuple(listeners)
        self._model_label = model_label
        self._schedule = schedule
        self._jitter = jitter

    def handle(self, task: Task, outcome: PollOutcome, seen_at: float) -> bool:
        """Apply one task's answer, as of `seen_at` (when the API saw the task so).
        True if the task finished (and this process stored the finish)."""
        self.answer(outcome)
        plan = self._schedule.plan() if self._schedule is not None else None
        update = decide(task, outcome, seen_at, self._policy, self._jitter(), plan)
        reason, labels = self._finish_labels(update)
        if not self._store.apply(task.task_id, update, seen_at, reason, labels):
            return False  # finished or removed meanwhile: already recorded
        change = Change(task, update, reason, seen_at)
        for listener in self._listeners:
            listener.changed(change)
        return update.finish is not None

    def _finish_labels(self, update: TaskUpdate) -> tuple[str | None, FinishLabels | None]:
        finish = update.finish
        if finish is None:
            return None, None
        reason = None
        if finish.status is Status.FAILED:
            reason = self._classifier.classify(finish.error_message)
        labels = FinishLabels(
            self._model_label(update.task.model),
            finish.status.value,
            reason,
            self._classifier.class_of(reason) if reason is not None else None,
        )
        return reason, labels

    def answer(self, outcome: PollOutcome, probe: bool = False) -> None:
        """What any answer tells about the API, the account and the rate limit."""
        for listener in self._listeners:
            listener.answer(outcome, probe)

    def probe(self, outcome: PollOutcome) -> None:
        """A probe's answer: about the API and the account only."""
        self.answer(outcome, probe=True)
        self.reachable(outcome.answered)

    def reachable(self, answered: bool) -> None:
        for listener in self._listeners:
            listener.reachable(answered)

    def cycle_done(self, end: CycleEnd) -> None:
        for listener in self._listeners:
            listener.cycle_done(end)
