"""What one poll outcome does to a task. Pure: no I/O, no clock, no randomness.

`decide` is the single place where an upstream answer becomes a new task
state: status mapping, finishing, durations, backoff and the max-wait timeout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from exporter.model import (
    TASK_FIELDS,
    UNKNOWN_STATUS_KIND,
    Finish,
    OutcomeKind,
    PollOutcome,
    Status,
    StatusReport,
    Task,
    TaskUpdate,
)
from exporter.poller.adaptive import Eta, Planner, progress_eta
from exporter.poller.backoff import backoff_delay, retry_after_delay

# Statuses the API documents; anything else is counted and polled again.
_REPORTED_STATUSES = {
    "pending": Status.PENDING,
    "processing": Status.PROCESSING,
    "completed": Status.COMPLETED,
    "failed": Status.FAILED,
}
_CANCELLED_TEXT = re.compile(r"(?i)\bcancell?ed\b")
# Durations are observed for tasks that ran to an end upstream.
_TIMED_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
_TASK_VALUES = attrgetter(*TASK_FIELDS)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    task_interval: float = 5.0
    max_wait: float = 1800.0
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    # Upstream clocks may run ahead of ours; beyond this a timestamp is bogus.
    clock_skew: float = 300.0


def decide(
    task: Task,
    outcome: PollOutcome,
    now: float,
    policy: PollPolicy,
    jitter: float,
    plan: Planner | None = None,
) -> TaskUpdate:
    """The task's next state after `outcome`, observed at `now`.

    `plan` (adaptive polling) says when to poll a healthy unfinished task
    next; without it that is `policy.task_interval` away. The caller passes a
    snapshot of what the schedule knows (`AdaptiveSchedule.plan()`), so the
    decision reads values only.
    """
    # Only an answer that tells the task's status says it was unfinished then;
    # the uncertainty of a finish seen later is measured from that poll (an
    # error or an unknown status in between says nothing).
    report = outcome.report if outcome.kind is OutcomeKind.REPORT else None
    status_known = report is not None and report.status in _REPORTED_STATUSES
    # What a healthy poll sets; the outcome's own changes are laid over it.
    changes: dict[str, Any] = {
        "next_poll_at": now + policy.task_interval,
        "consecutive_errors": 0,
        "last_polled": now if status_known else task.last_polled,
        "last_error": None,
    }
    finish = pending_seconds = error_kind = None
    if report is not None:
        finish, pending_seconds, error_kind = _apply_report(
            task, report, now, policy, jitter, plan, changes
        )
    elif outcome.kind is OutcomeKind.NOT_FOUND:
        finish = Finish(Status.EXPIRED)
    else:
        _after_error(task, outcome, now, policy, jitter, changes)
    if finish is None:
        finish = _time_out(task, changes.get("created", task.created), now, policy)
    if finish is not None:
        changes["status"] = finish.status
    changes.update(
        finished_at=now if finish else None,
        duration_seconds=finish.duration if finish else None,
        error_message=finish.error_message if finish else None,
    )
    # One copy of the polled task (the caller's stays as it was) with the changes
    # set on it: a third of what `dataclasses.replace` costs, on every poll.
    after = Task(*_TASK_VALUES(task))
    for name, value in changes.items():
        setattr(after, name, value)
    return TaskUpdate(after, finish, pending_seconds, error_kind)


def _apply_report(
    task: Task,
    report: StatusReport,
    now: float,
    policy: PollPolicy,
    jitter: float,
    plan: Planner | None,
    changes: dict[str, Any],
) -> tuple[Finish | None, float | None, str | None]:
    """Lays a status answer's changes over `changes`; returns (finish, pending
    seconds to observe, an `api_errors_total` kind found in the body)."""
    created = (
        task.created if task.created is not None else _valid_created(report.created, now, policy)
    )
    model = task.model or report.model
    changes.update(created=created, model=model)
    changes["first_seen"] = task.first_seen if task.first_seen is not None else now
    status = _reported_status(report)
    if status is None:
        errors = task.consecutive_errors + 1
        changes.update(
            consecutive_errors=errors,
            next_poll_at=now
            + backoff_delay(errors, policy.backoff_base, policy.backoff_max, jitter),
            last_error=f"unknown status {report.status[:40]!r}",
        )
        return None, None, UNKNOWN_STATUS_KIND
    processing_seen, pending_seconds = _processing_start(task, status, created, now)
    finish = None
    if status in _TIMED_STATUSES:
        duration, exact, uncertainty = completion_duration(
            created, report.updated, task.last_polled, now, policy.clock_skew
        )
        finish = Finish(status, duration, exact, uncertainty, report.error)
    eta = None
    if status is Status.PROCESSING and report.progress is not None:
        progress, progress_at, eta = _progress_reading(
            task, report.progress, report.updated, created, now, with_eta=plan is not None
        )
        changes.update(progress=progress, progress_at=progress_at)
    if plan is not None and finish is None:
        age = now - (created if created is not None else task.discovered_at)
        changes["next_poll_at"] = now + plan.delay(model, age, eta)
    changes.update(status=status, processing_seen=processing_seen)
    return finish, pending_seconds, None


def _reported_status(report: StatusReport) -> Status | None:
    """The status an answer reports (a failure that says it was cancelled is
    cancelled); None for a status the API does not document."""
    status = _REPORTED_STATUSES.get(report.status)
    if status is Status.FAILED and (report.cancelled or _says_cancelled(report.error)):
        return Status.CANCELLED
    return status


def _processing_start(
    task: Task, status: Status, created: float | None, now: float
) -> tuple[float | None, float | None]:
    """(when the task was first seen processing, its pending time if that is now)."""
    if status is not Status.PROCESSING or task.processing_seen is not None:
        return task.processing_seen, None
    return now, max(0.0, now - created) if created is not None else None


def _progress_reading(
    task: Task,
    progress: float,
    updated: float | None,
    created: float | None,
    now: float,
    with_eta: bool,
) -> tuple[float | None, float | None, Eta | None]:
    """(progress anchor, its time, finish estimate) after a processing answer's progress."""
    # `updated` is when the progress last changed: a sharper time than ours.
    plausible = updated is not None and created is not None and created <= updated <= now
    at = updated if plausible and updated is not None else now
    # The first reading of the run is the anchor: the longer the span, the
    # sharper the rate. Progress going back (a retry upstream) starts anew.
    if task.progress is None or progress < task.progress:
        return progress, at, None
    eta = progress_eta(task.progress, task.progress_at, progress, at, now) if with_eta else None
    return task.progress, task.progress_at, eta


def _after_error(
    task: Task,
    outcome: PollOutcome,
    now: float,
    policy: PollPolicy,
    jitter: float,
    changes: dict[str, Any],
) -> None:
    """Lays a failed request's backoff over `changes`."""
    errors = task.consecutive_errors + 1
    if outcome.kind is OutcomeKind.RATE_LIMITED:
        delay = retry_after_delay(
            outcome.retry_after, errors, policy.backoff_base, policy.backoff_max, jitter
        )
    else:
        delay = backoff_delay(errors, policy.backoff_base, policy.backoff_max, jitter)
    changes.update(
        consecutive_errors=errors,
        next_poll_at=now + delay,
        last_error=outcome.detail or outcome.kind.value,
    )


def _time_out(task: Task, created: float | None, now: float, policy: PollPolicy) -> Finish | None:
    """The timeout finish of a task unfinished `policy.max_wait` after its creation
    (`created`, as decided now) or discovery; else None."""
    start = created if created is not None else task.discovered_at
    if now - start < policy.max_wait:
        return None
    return Finish(Status.TIMEOUT)


def completion_duration(
    created: float | None,
    updated: float | None,
    last_polled: float | None,
    now: float,
    clock_skew: float,
) -> tuple[float | None, bool, float | None]:
    """(duration, exact, uncertainty) of a task first seen finished at `now`.

    Exact when the API's `updated` is plausible. Otherwise the finish happened
    between the last poll that saw the task unfinished (or its creation) and
    `now`: the midpoint of that gap, unbiased when a finish is as likely
    anywhere in it, is the estimate, and half the gap its uncertainty.
    """
    if created is None:
        return None, False, None
    if updated is not None and created <= updated <= now + clock_skew:
        return updated - created, True, 0.0
    since = last_polled if last_polled is not None and last_polled >= created else created
    half_gap = max(0.0, now - since) / 2
    return max(0.0, now - half_gap - created), False, half_gap


def _says_cancelled(error: str | None) -> bool:
    """The image path has no `cancelled` field; its error text still says so."""
    return error is not None and _CANCELLED_TEXT.search(error[:200]) is not None


def _valid_created(created: float | None, now: float, policy: PollPolicy) -> float | None:
    if created is None or created > now + policy.clock_skew:
        return None
    return created
