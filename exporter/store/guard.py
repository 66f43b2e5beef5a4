"""A store that fails loudly: every call to the task store goes through here.

A failing store (full disk, a deleted or replaced SQLite file, Redis down)
must not look healthy, lose what it acknowledged, or fill the log. So:

- every failure is counted (`lemondata_store_errors_total{op}`) and turns
  `lemondata_store_up` to 0; callers get `StoreUnavailable`, whose message
  says what is wrong and what to do (the task API answers 503 with it);
- the log gets one line when the trouble starts, one a minute while it
  lasts, and one when it ends, never one per task;
- while the store is down, `usable()` says so: the agent pauses polling and
  discovery, and a probe write (at most every `probe_interval` seconds) tells
  when the store works again, so they resume by themselves;
- before every write the store checks that its file is still the one it
  opened (`check`): a store deleted or replaced under the running exporter
  would otherwise accept writes that are gone at the next start. That
  trouble does not heal: the exporter has to be restarted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.model import DiscoveredTask, Status, Task, TaskUpdate
from exporter.store.base import (
    FinishLabels,
    ModelStatsStore,
    ModelSummary,
    TaskEvent,
    TaskStore,
)
from exporter.store.sqlite import FileReplaced, StoreDamaged, StoreError

log = logging.getLogger(__name__)

# The `op` label: what the store was asked to do. Bounded: these and no other.
OPS = ("add", "apply", "prune", "remove", "save_stats", "read", "check")
_WRITES = frozenset(("add", "apply", "prune", "remove", "save_stats"))
LOG_INTERVAL_SECONDS = 60.0
PROBE_INTERVAL_SECONDS = 5.0
# What a store raises when it cannot do its work (a bug, e.g. a TypeError, is not one).
STORE_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.Error,
    redis.RedisError,
    OSError,
    StoreError,
)
T = TypeVar("T")


class StoreUnavailable(StoreError):
    """The store cannot be written (or read) now; the message says why and what to do."""


@runtime_checkable
class CheckedStore(Protocol):
    """A store that can tell whether it still works, cheaply."""

    def check(self) -> None:
        """Raise FileReplaced if the store's file is no longer the one opened."""
        ...

    def probe(self) -> None:
        """One small write and read; raises what a real write would."""
        ...


class StoreGuard:
    """The `TaskStore` protocol around another store, with its health and metrics."""

    def __init__(
        self,
        inner: TaskStore,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = LOG_INTERVAL_SECONDS,
        probe_interval: float = PROBE_INTERVAL_SECONDS,
        model_stats: ModelStatsStore | None = None,
    ) -> None:
        self.inner = inner
        self._stats = model_stats  # the backend's, if it keeps them (see backends.py)
        self._clock = clock
        self._log_interval = log_interval
        self._probe_interval = probe_interval
        self._lock = threading.Lock()
        self._reason: str | None = None  # None: the store works
        self._fatal = False  # a replaced file: only a restart helps
        self._since = 0.0
        self._last_log = 0.0
        self._last_probe = 0.0
        self._failed_since_log = 0
        self._failed_in_episode = 0
        self._up = Gauge(
            "lemondata_store_up",
            "1 if the task store could be written and read at the last attempt, 0 if not "
            "(the exporter pauses polling and answers 503 on health and the task API).",
            registry=registry,
        )
        self._up.set(1)
        self._errors = Counter(
            "lemondata_store_errors_total",
            "Task store operations that failed, by operation (add, apply, prune, remove, "
            "save_stats, read, check).",
            ["op"],
            registry=registry,
        )
        for op in OPS:
            self._errors.labels(op)

    # ---- health -------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the store cannot be used now (None: it works). Probes a failing store
        at most every `probe_interval` seconds, so this heals by itself."""
        self._probe_if_due()
        return self._reason

    def needs_restart(self) -> bool:
        """Whether the store fails for good: its file deleted, replaced or damaged.
        Only a restart (which opens the file at the path anew) mends that."""
        return self._fatal

    def usable(self) -> bool:
        """Whether polling and discovery may go on (see `problem`)."""
        return self.problem() is None

    def check_in_background(self) -> threading.Thread | None:
        """Run the store's deferred integrity check (a big SQLite file: see
        QUICK_CHECK_AT_START_BYTES) in a thread; damage makes the store fail for
        good, like a deleted file: health 503, writes refused, one log line."""
        check = getattr(self.inner, "quick_check", None)
        if check is None or not getattr(self.inner, "check_pending", False):
            return None

        def run() -> None:
            started = self._clock()
            try:
                check()
            except STORE_ERRORS as exc:
                self._failed("check", exc)
                return
            log.info("task store: quick_check ok (%.1f s)", self._clock() - started)

        thread = threading.Thread(target=run, name="store-check", daemon=True)
        thread.start()
        return thread

    def _probe_if_due(self) -> None:
        with self._lock:
            if self._reason is None or self._fatal:
                return
            now = self._clock()
            if now - self._last_probe < self._probe_interval:
                return
            self._last_probe = now
        inner = self.inner
        try:
            if isinstance(inner, CheckedStore):
                inner.check()
                inner.probe()
            else:
                inner.count_by_status()
        except STORE_ERRORS as exc:
            self._failed("check", exc)
            return
        self._healed()

    def _failed(self, op: str, exc: BaseException) -> None:
        self._errors.labels(op).inc()
        self._up.set(0)
        fatal = isinstance(exc, (FileReplaced, StoreDamaged))
        reason = _reason(self.inner, op, exc)
        with self._lock:
            now = self._clock()
            first = self._reason is None
            if first:
                self._since = now
                self._last_probe = now
                self._failed_in_episode = 0
                self._failed_since_log = 0
            self._failed_in_episode += 1
            self._failed_since_log += 1
            if fatal or first:
                self._reason = reason
            self._fatal = self._fatal or fatal
            due = first or now - self._last_log >= self._log_interval
            if due:
                self._last_log = now
                count, self._failed_since_log = self._failed_since_log, 0
        if due and first:
            log.error("task store: %s; polling pauses until it works again", reason)
        elif due:
            log.error(
                "task store: still failing (%d failed operation(s) in the last %.0f s): %s",
                count,
                self._log_interval,
                self._reason,
            )

    def _healed(self) -> None:
        with self._lock:
            if self._reason is None or self._fatal:
                return
            self._reason = None
            took = self._clock() - self._since
            failed = self._failed_in_episode
        self._up.set(1)
        log.warning(
            "task store: works again after %.0f s (%d operation(s) failed meanwhile); "
            "polling resumes",
            took,
            failed,
        )

    def _run(self, op: str, call: Callable[[], T]) -> T:
        if self._fatal:  # SQLite fails reads of a deleted file too ("disk I/O error")
            self._errors.labels(op).inc()
            raise StoreUnavailable(self._reason or "the task store is unusable")
        inner = self.inner
        try:
            if op in _WRITES and isinstance(inner, CheckedStore):
                inner.check()
            result = call()
        except STORE_ERRORS as exc:
            self._failed(op, exc)
            raise StoreUnavailable(self._reason or str(exc)) from None
        if op in _WRITES and self._reason is not None:
            self._healed()
        return result

    # ---- the TaskStore protocol -------------------------------------------

    def add(
        self,
        tasks: Iterable[DiscoveredTask],
        now: float,
        source_state: tuple[str, str] | None = None,
    ) -> list[DiscoveredTask]:
        offered = list(tasks)
        return self._run("add", lambda: self.inner.add(offered, now, source_state))

    def due(self, now: float, limit: int, account: str | None = None) -> list[Task]:
        return self._run("read", lambda: self.inner.due(now, limit, account))

    def apply(
        self,
        task_id: str,
        update: TaskUpdate,
        now: float,
        reason: str | None,
        labels: FinishLabels | None = None,
    ) -> bool:
        return self._run("apply", lambda: self.inner.apply(task_id, update, now, reason, labels))

    def finish_totals(self) -> dict[FinishLabels, int]:
        return self._run("read", self.inner.finish_totals)

    def get(self, task_id: str) -> Task | None:
        return self._run("read", lambda: self.inner.get(task_id))

    def count_by_status(self) -> dict[Status, int]:
        return self._run("read", self.inner.count_by_status)

    def count_by_account(self) -> dict[str, dict[Status, int]]:
        return self._run("read", self.inner.count_by_account)

    def oldest_active(self) -> dict[Status, float]:
        return self._run("read", self.inner.oldest_active)

    def oldest_processing_by_model(self, limit: int = 1000) -> dict[str | None, float]:
        return self._run("read", lambda: self.inner.oldest_processing_by_model(limit))

    def models(self) -> list[str]:
        return self._run("read", self.inner.models)

    def prune(self, finished_before: float) -> int:
        return self._run("prune", lambda: self.inner.prune(finished_before))

    def source_state(self, source: str) -> str | None:
        return self._run("read", lambda: self.inner.source_state(source))

    def list_tasks(
        self,
        status: Status | None = None,
        model: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        return self._run("read", lambda: self.inner.list_tasks(status, model, after, limit))

    def events(self, task_id: str) -> list[TaskEvent]:
        return self._run("read", lambda: self.inner.events(task_id))

    def remove(self, task_id: str) -> bool:
        return self._run("remove", lambda: self.inner.remove(task_id))

    def in_flight(self, limit: int) -> list[Task]:
        return self._run("read", lambda: self.inner.in_flight(limit))

    def latest_finished(self, statuses: Sequence[Status], limit: int) -> list[Task]:
        return self._run("read", lambda: self.inner.latest_finished(statuses, limit))

    def model_summaries(self) -> list[ModelSummary]:
        return self._run("read", self.inner.model_summaries)

    def read(self, call: Callable[[], T]) -> T:
        """Run another read of the backend (e.g. the gauge lease) under the guard."""
        return self._run("read", call)

    def load_model_stats(self) -> dict[str, str]:
        stats = self._stats
        return self._run("read", stats.load_model_stats) if stats is not None else {}

    def save_model_stats(self, stats: dict[str, str | None]) -> None:
        keeper = self._stats
        if keeper is not None:
            self._run("save_stats", lambda: keeper.save_model_stats(stats))

    def close(self) -> None:
        self.inner.close()


def _reason(store: TaskStore, op: str, exc: BaseException) -> str:
    """What is wrong, for the log, health and the API's 503; never a secret (the
    Redis URL is shown redacted, and errors never carry the password)."""
    where = getattr(store, "path", None) or getattr(store, "url", None) or "the task store"
    if isinstance(exc, (FileReplaced, StoreDamaged)):
        return str(exc)
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "disk is full" in lowered or "no space" in lowered or "file too large" in lowered:
        advice = "free space on its file system (or raise its size limit)"
    elif isinstance(exc, redis.RedisError):
        advice = "check that Redis runs and takes writes"
    elif "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
        advice = "make the file and its folder writable by the exporter"
    elif "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered:
        advice = "stop the exporter and restore the file from a backup, or move it aside"
    else:
        advice = "see the error"
    kind = "write" if op in _WRITES else "read" if op == "read" else "check"
    return f"cannot {kind} {where}: {text}; {advice}"
