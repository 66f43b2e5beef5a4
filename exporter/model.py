"""Domain types shared by every stage of the pipeline.

Nothing here does I/O: discovery produces `DiscoveredTask`, the store keeps
`Task`, the upstream client produces `PollOutcome`, and the poller turns the
two into a `TaskUpdate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import StrEnum


class Status(StrEnum):
    """Last seen status of a tracked task."""

    UNKNOWN = "unknown"  # not yet answered by the API
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # 404 async_task_not_found
    TIMEOUT = "timeout"  # the agent gave up after polling.max_wait_seconds


ACTIVE_STATUSES = (Status.UNKNOWN, Status.PENDING, Status.PROCESSING)
FINISHED_STATUSES = (
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
    Status.EXPIRED,
    Status.TIMEOUT,
)

# Task IDs end up in URLs and in the store, never in labels. Upstream IDs look
# like `img_abc123` or `ldtask_...`; anything outside this set is refused.
TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def valid_task_id(task_id: str) -> bool:
    return bool(TASK_ID_PATTERN.fullmatch(task_id))  # `$` alone would accept a final newline


# The account of every task when the config lists no `accounts:` (one key).
DEFAULT_ACCOUNT = "default"
# An account's name: a metric label value and part of Redis key names, so short and plain.
ACCOUNT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def valid_account(name: str) -> bool:
    return bool(ACCOUNT_PATTERN.fullmatch(name))


@dataclass(frozen=True, slots=True)
class DiscoveredTask:
    """A task ID offered by a discovery source."""

    task_id: str
    source: str
    model: str | None = None
    poll_url: str | None = None  # a path on the API base, checked by discovery
    account: str = DEFAULT_ACCOUNT  # whose key polls it (config `accounts:`)


@dataclass(slots=True)
class Task:
    """A tracked task as the store keeps it."""

    task_id: str
    source: str
    model: str | None
    poll_url: str | None
    status: Status
    discovered_at: float
    next_poll_at: float
    created: float | None = None  # upstream `created`, unix seconds
    first_seen: float | None = None  # first usable answer
    last_polled: float | None = None  # last poll that told the task's status
    processing_seen: float | None = None
    attempts: int = 0
    consecutive_errors: int = 0
    finished_at: float | None = None
    duration_seconds: float | None = None
    reason: str | None = None
    error_message: str | None = None  # raw upstream text, for people; never a label
    last_error: str | None = None  # last poll problem, for people
    # First `progress` reading (0-100) of this run while processing, and when it was
    # true (upstream `updated`, or ours): adaptive polling extrapolates from it.
    progress: float | None = None
    progress_at: float | None = None
    account: str = DEFAULT_ACCOUNT  # whose key polls it; never changes


# A task's fields, in the one order every store uses (SQLite's columns, rows).
TASK_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(Task))


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The useful fields of a 200 status response, already type-checked."""

    status: str  # raw value; may be one we do not know
    created: float | None = None
    updated: float | None = None
    model: str | None = None
    error: str | None = None
    cancelled: bool = False
    progress: float | None = None


# An `api_errors_total` kind that is not an outcome: a 200 with a status we do not know.
UNKNOWN_STATUS_KIND = "unknown_status"


class OutcomeKind(StrEnum):
    """What a status request came back with. Values are `api_errors_total` kinds."""

    REPORT = "report"  # a parsed 200 body
    NOT_FOUND = "not_found"  # 404 async_task_not_found
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    PAYMENT_REQUIRED = "payment_required"
    CLIENT_ERROR = "client_error"  # other 4xx
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INVALID_RESPONSE = "invalid_response"
    RESPONSE_TOO_LARGE = "response_too_large"
    REDIRECT = "redirect"  # never followed: the key must not leave the API base


_ANSWER_KINDS = (OutcomeKind.REPORT, OutcomeKind.NOT_FOUND, OutcomeKind.RATE_LIMITED)


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """Result of one status request, whatever happened."""

    kind: OutcomeKind
    code: int | None = None  # HTTP status; None when no response came
    report: StatusReport | None = None
    retry_after: float | None = None
    rate_limit: RateLimitInfo | None = None
    latency: float = 0.0
    detail: str = ""  # short, secret-free description for logs and the store

    @property
    def answered(self) -> bool:
        """A usable answer, even if not good news: the API is reachable and takes the key.

        The one definition of an answer (`lemondata_api_up`, the last answer's time)."""
        return self.kind in _ANSWER_KINDS


@dataclass(frozen=True, slots=True)
class Finish:
    status: Status
    duration: float | None = None  # created -> finished; None when not measurable
    exact: bool = False  # True when taken from the API's `updated`
    uncertainty: float | None = None  # when not exact: how late it may have been seen
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """What one poll did: the task's next state and what to record of it.

    `task.reason` is not decided with the rest: the failure reason of a failed
    finish is classified afterwards and handed to the store beside the update."""

    task: Task  # the next state of every field in APPLIED_FIELDS
    finish: Finish | None = None
    pending_seconds: float | None = None  # to observe now (first sight of processing)
    error_kind: str | None = None  # an `api_errors_total` kind found in a 200 body


# The fields of `Task` a poll sets, in the one order every store writes them: all
# but the task's identity and origin (its account included), `attempts` (a store
# counts it up) and `reason` (classified after the poll; the store is handed it
# beside the update).
APPLIED_FIELDS: tuple[str, ...] = tuple(
    name
    for name in TASK_FIELDS
    if name
    not in ("task_id", "source", "poll_url", "discovered_at", "account", "attempts", "reason")
)
