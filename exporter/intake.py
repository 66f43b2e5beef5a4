"""Every way in: the cap on tracked tasks, and registering what it lets through.

Every way in (discovery sources, the task API, the proxy) asks `admit` before
it adds tasks, so nobody, with or without credentials, can grow the store (and
every poll cycle's work) without bound. Only unfinished tasks count: finished
ones are pruned after `store.retention_seconds`. The count comes from the
store's status counts, so replicas sharing a Redis store share the cap; two
registrations racing near the cap may overshoot it by one batch.

`register_tasks` is how every source (discovery, the task API, the proxy) adds
tasks: the store takes the new ones and the metrics count them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.logsetup import EveryInterval
from exporter.model import ACTIVE_STATUSES, DiscoveredTask
from exporter.store.base import IntakeStore

log = logging.getLogger(__name__)
LIMIT_SETTING = "store.max_tracked_tasks"
REASONS = ("limit", "invalid")
# With several accounts: a task naming an account that is not configured.
ACCOUNT_REASON = "account"
LOG_INTERVAL_SECONDS = 300.0


class RegistrationRecorder(Protocol):
    """The part of `metrics.recorder.Recorder` registration feeds."""

    def tasks_discovered(self, source: str, count: int) -> None: ...

    def add_models(self, models: Iterable[str | None]) -> None: ...


class TaskAdder(Protocol):
    def add(
        self,
        tasks: Iterable[DiscoveredTask],
        now: float,
        source_state: tuple[str, str] | None = None,
    ) -> list[DiscoveredTask]: ...


def register_tasks(
    store: TaskAdder,
    recorder: RegistrationRecorder,
    source: str,
    tasks: Sequence[DiscoveredTask],
    now: float,
    state: tuple[str, str] | None = None,
) -> list[DiscoveredTask]:
    """Add `tasks` (and a source's position) to the store; the new ones are counted
    by source and their models get series. Returns the tasks that were new."""
    added = store.add(tasks, now, state)
    if added:
        recorder.tasks_discovered(source, len(added))
        recorder.add_models(task.model for task in added)
        log.debug("%s: %d new task(s)", source, len(added))
    return added


@dataclass(frozen=True, slots=True)
class Admission:
    """What may be added (new tasks within the cap, and known ones) and how many
    new ones were turned away."""

    tasks: list[DiscoveredTask]
    rejected: int


class TaskIntake:
    def __init__(
        self,
        store: IntakeStore,
        registry: CollectorRegistry,
        limit: int,
        accounts: Sequence[str] | None = None,
    ) -> None:
        """`accounts`: the configured accounts' names (None: one account, no check)."""
        self._store = store
        self.limit = limit
        self.accounts = frozenset(accounts) if accounts is not None else None
        self._reasons = REASONS if accounts is None else (*REASONS, ACCOUNT_REASON)
        Gauge(
            "lemondata_tracked_tasks_limit",
            f"The most unfinished tasks the store tracks ({LIMIT_SETTING}); "
            "new ones beyond it are rejected.",
            registry=registry,
        ).set(limit)
        self._rejected = Counter(
            "lemondata_tasks_rejected_total",
            "Tasks offered by a source but not tracked, by source and reason "
            "(limit: the store was full; invalid: the task was malformed; account: it "
            "named no configured account).",
            ["source", "reason"],
            registry=registry,
        )
        self._log_due = EveryInterval(LOG_INTERVAL_SECONDS)

    def add_sources(self, names: Iterable[str]) -> None:
        """Series at zero for these sources, so that the first rejection is an increase."""
        for name in names:
            for reason in self._reasons:
                self._rejected.labels(name, reason)

    def tracked(self) -> int:
        counts = self._store.count_by_status()
        return sum(counts.get(status, 0) for status in ACTIVE_STATUSES)

    def admit(self, source: str, tasks: Sequence[DiscoveredTask]) -> Admission:
        """The tasks that fit under the cap, whole batches first: a batch with too
        little room has its new tasks taken in order until the store is full."""
        if not tasks:
            return Admission([], 0)
        accounts = self.accounts
        if accounts is not None and any(task.account not in accounts for task in tasks):
            # Never put under another account: refused, counted, the rest goes on.
            unknown = sum(1 for task in tasks if task.account not in accounts)
            self.reject(source, ACCOUNT_REASON, unknown)
            tasks = [task for task in tasks if task.account in accounts]
            return self._admit(source, tasks, unknown)
        return self._admit(source, tasks, 0)

    def _admit(self, source: str, tasks: Sequence[DiscoveredTask], refused: int) -> Admission:
        if not tasks:
            return Admission([], refused)
        room = self.limit - self.tracked()
        if room >= len(tasks):
            return Admission(list(tasks), refused)
        known = [task for task in tasks if self._store.get(task.task_id) is not None]
        known_ids = {task.task_id for task in known}
        new = [task for task in tasks if task.task_id not in known_ids]
        taken = new[: max(0, room)]
        rejected = len(new) - len(taken)
        if rejected:
            self.reject(source, "limit", rejected)
        return Admission(known + taken, rejected + refused)

    def would_reject(self, tasks: Sequence[DiscoveredTask]) -> int:
        """How many of `tasks` are new and would not fit (nothing is counted)."""
        room = self.limit - self.tracked()
        if room >= len(tasks):
            return 0
        new = [task for task in tasks if self._store.get(task.task_id) is None]
        return max(0, len(new) - max(0, room))

    def reject(self, source: str, reason: str, count: int = 1) -> None:
        """Count `count` tasks turned away; log once per interval and source."""
        self._rejected.labels(source, reason).inc(count)
        if reason not in ("limit", ACCOUNT_REASON):
            return
        if not self._log_due.due((source, reason)):
            return
        if reason == ACCOUNT_REASON:
            log.warning(
                "%s: %d task(s) not tracked: they name no configured account (accounts); "
                "lemondata_tasks_rejected_total counts every one",
                source,
                count,
            )
            return
        log.warning(
            "%s: %d task(s) not tracked: %d unfinished tasks is the limit (%s); "
            "lemondata_tasks_rejected_total counts every one",
            source,
            count,
            self.limit,
            LIMIT_SETTING,
        )
