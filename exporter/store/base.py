"""The interface every task store implements (SQLite now; others may follow)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from exporter.model import DEFAULT_ACCOUNT, DiscoveredTask, Status, Task, TaskUpdate


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A status change of a task, as `apply` saw it (the store keeps the last 50 per task)."""

    at: float  # unix seconds: the `now` passed to `apply`
    status: Status
    previous: Status


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """Tasks of one model in the store (`model` None: tasks nobody named a model for)."""

    model: str | None
    active: int  # unknown, pending or processing
    finished: int  # any finished status
    failed: int  # status failed only
    median_duration_seconds: float | None  # over completed tasks with a duration


@dataclass(frozen=True, slots=True)
class FinishLabels:
    """The label values a finish is counted under in the store-wide totals
    (`lemondata_store_tasks_finished_total`, `lemondata_store_task_failures_total`)."""

    model: str  # the model label, already bounded
    status: str
    reason: str | None = None  # failed tasks only
    failure_class: str | None = None


class TaskWriter(Protocol):
    """What the outcome handler uses: store one poll's result, once."""

    def apply(
        self,
        task_id: str,
        update: TaskUpdate,
        now: float,
        reason: str | None,
        labels: FinishLabels | None = None,
    ) -> bool:
        """Store a poll's result; False if the task is gone or already finished.

        A finish with `labels` adds one to those labels' store-wide total in the
        same transaction, so the totals survive any crash."""
        ...


class PollStore(TaskWriter, Protocol):
    """What the poll loop and the outcome handler use: pick due tasks, store answers."""

    def due(self, now: float, limit: int, account: str | None = None) -> list[Task]:
        """Unfinished tasks whose next poll is due, most overdue first; with `account`,
        only that account's (None: every task, as with one account)."""
        ...


class IntakeStore(Protocol):
    """What discovery and registration use: track new tasks, remember where a source was."""

    def add(
        self,
        tasks: Iterable[DiscoveredTask],
        now: float,
        source_state: tuple[str, str] | None = None,
    ) -> list[DiscoveredTask]:
        """Track new tasks (known IDs are left alone) and save a source's position."""
        ...

    def source_state(self, source: str) -> str | None: ...

    def get(self, task_id: str) -> Task | None: ...

    def count_by_status(self) -> dict[Status, int]: ...


class TaskReader(Protocol):
    """What the task API (/api/v1/) and the pages (/status, /tasks) read and do."""

    def get(self, task_id: str) -> Task | None: ...

    def count_by_status(self) -> dict[Status, int]: ...

    def list_tasks(
        self,
        status: Status | None = None,
        model: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Up to `limit` tasks ordered by task ID, those whose ID sorts after `after`
        (None: from the start), with that status and model if given (model: exact match)."""
        ...

    def events(self, task_id: str) -> list[TaskEvent]:
        """The task's status changes, oldest first; [] for an unknown task.

        `apply` records one, in its own write, whenever a task's status changes;
        the oldest are dropped beyond 50 per task; `prune` and `remove` drop them too."""
        ...

    def remove(self, task_id: str) -> bool:
        """Stop tracking a task (and drop its events); False if it was not in the store."""
        ...

    def in_flight(self, limit: int) -> list[Task]:
        """Unfinished tasks, oldest first (by created, else discovered_at)."""
        ...

    def latest_finished(self, statuses: Sequence[Status], limit: int) -> list[Task]:
        """Finished tasks with one of these statuses, most recently finished first."""
        ...

    def model_summaries(self) -> list[ModelSummary]:
        """One summary per model (None included), ordered by model; at most 1000."""
        ...


class MetricsReader(Protocol):
    """What the scrape-time collectors and the agent's health read."""

    def count_by_status(self) -> dict[Status, int]: ...

    def oldest_active(self) -> dict[Status, float]:
        """Per unfinished status, the earliest creation (or discovery) time."""
        ...

    def count_by_account(self) -> dict[str, dict[Status, int]]:
        """Tasks by account and status (accounts with none left out), from counts the
        store keeps: never a scan."""
        ...

    def oldest_processing_by_model(self, limit: int = 1000) -> dict[str | None, float]:
        """Per model (None: no model known), the earliest creation (or discovery) time
        of its tasks in `processing`; models with none are left out. A few index
        reads per model, never a scan of the tasks."""
        ...

    def finish_totals(self) -> dict[FinishLabels, int]:
        """Store-wide count of finishes per label set, since the store was created."""
        ...

    def models(self) -> list[str]: ...


class Maintenance(Protocol):
    """What the agent does to the store itself: drop old finished tasks, close it."""

    def prune(self, finished_before: float) -> int: ...

    def close(self) -> None: ...


def counts_by_account(
    totals: Iterable[tuple[str, int]], named: Iterable[tuple[str, str, int]]
) -> dict[str, dict[Status, int]]:
    """Tasks by account and status from the status counts (`totals`: status, n) and
    those of every account but the default one (`named`: account, status, n): the
    default account has the rest (so tasks stored before accounts existed count
    there without a count of their own)."""
    rest = {Status(status): int(n) for status, n in totals}
    found: dict[str, dict[Status, int]] = {}
    for account, status, n in named:
        if account == DEFAULT_ACCOUNT or int(n) <= 0:
            continue
        found.setdefault(account, {})[Status(status)] = int(n)
        rest[Status(status)] = rest.get(Status(status), 0) - int(n)
    default = {status: n for status, n in rest.items() if n > 0}
    if default:
        found[DEFAULT_ACCOUNT] = default
    return found


class TaskStore(PollStore, IntakeStore, TaskReader, MetricsReader, Maintenance, Protocol):
    """Everything a backend implements (SQLite, Redis) and the guard wraps; callers
    depend on the small protocol above that names what they use."""


@runtime_checkable
class ModelStatsStore(Protocol):
    """A store that keeps what adaptive polling learnt per model across restarts."""

    def load_model_stats(self) -> dict[str, str]: ...

    def save_model_stats(self, stats: dict[str, str | None]) -> None:
        """Replace these models' saved texts; None forgets a model."""
        ...
