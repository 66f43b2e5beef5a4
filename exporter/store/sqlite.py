"""The task store: every tracked task and its state, in SQLite.

It survives restarts (WAL journal: a SIGKILL loses at most the transaction in
flight). A task is finished by a conditional UPDATE, so its terminal record,
and with it its metric observation, happens once even if two pollers race.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exporter.model import ACTIVE_STATUSES, DiscoveredTask, Status, Task, TaskUpdate

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    model TEXT,
    poll_url TEXT,
    status TEXT NOT NULL,
    discovered_at REAL NOT NULL,
    next_poll_at REAL NOT NULL,
    created REAL,
    first_seen REAL,
    last_polled REAL,
    processing_seen REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    consecutive_errors INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    duration_seconds REAL,
    reason TEXT,
    error_message TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (next_poll_at) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, created);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS source_state (
    source TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
"""
_COLUMNS = (
    "task_id, source, model, poll_url, status, discovered_at, next_poll_at, created, "
    "first_seen, last_polled, processing_seen, attempts, consecutive_errors, finished_at, "
    "duration_seconds, reason, error_message, last_error"
)


class StoreError(Exception):
    """The store file cannot be opened or used."""


class SqliteTaskStore:
    """Thread-safe: one connection, one lock; every write is one transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer version (schema {version})")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the task store {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(
        self,
        tasks: Iterable[DiscoveredTask],
        now: float,
        source_state: tuple[str, str] | None = None,
    ) -> list[DiscoveredTask]:
        """Track new tasks; known IDs are left alone. Returns the ones added.

        `source_state` (source name, read position) is saved in the same
        transaction, so a crash can neither skip a discovered line (position
        saved, tasks lost) nor re-add a pruned task (tasks saved, position lost).
        """
        added = []
        with self._transaction() as db:
            for task in tasks:
                cursor = db.execute(
                    "INSERT INTO tasks (task_id, source, model, poll_url, status, discovered_at,"
                    " next_poll_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        task.task_id,
                        task.source,
                        task.model,
                        task.poll_url,
                        Status.UNKNOWN.value,
                        now,
                        now,
                    ),
                )
                if cursor.rowcount:
                    added.append(task)
            if source_state is not None:
                db.execute(
                    "INSERT INTO source_state (source, state) VALUES (?, ?)"
                    " ON CONFLICT (source) DO UPDATE SET state = excluded.state",
                    source_state,
                )
        return added

    def due(self, now: float, limit: int) -> list[Task]:
        """Unfinished tasks whose next poll is due, most overdue first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE finished_at IS NULL AND next_poll_at <= ?"
                " ORDER BY next_poll_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_task(row) for row in rows]

    def apply(self, task_id: str, update: TaskUpdate, now: float, reason: str | None) -> bool:
        """Store a poll's result. False if the task is gone or already finished."""
        finish = update.finish
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = ?, next_poll_at = ?, consecutive_errors = ?,"
                " created = ?, model = ?, first_seen = ?, processing_seen = ?, last_polled = ?,"
                " attempts = attempts + 1, last_error = ?, finished_at = ?,"
                " duration_seconds = ?, reason = ?, error_message = ?"
                " WHERE task_id = ? AND finished_at IS NULL",
                (
                    update.status.value,
                    update.next_poll_at,
                    update.consecutive_errors,
                    update.created,
                    update.model,
                    update.first_seen,
                    update.processing_seen,
                    update.last_polled,
                    update.last_error,
                    now if finish else None,
                    finish.duration if finish else None,
                    reason,
                    finish.error_message if finish else None,
                    task_id,
                ),
            )
            return cursor.rowcount == 1

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        return _task(row) if row else None

    def count_by_status(self) -> dict[Status, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
        return {Status(status): count for status, count in rows}

    def oldest_active(self) -> dict[Status, float]:
        """Per unfinished status, the earliest creation (or discovery) time."""
        result = {}
        with self._lock:
            for status in ACTIVE_STATUSES:
                row = self._db.execute(
                    "SELECT MIN(COALESCE(created, discovered_at)) FROM tasks WHERE status = ?",
                    (status.value,),
                ).fetchone()
                if row[0] is not None:
                    result[status] = float(row[0])
        return result

    def models(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT model FROM tasks WHERE model IS NOT NULL LIMIT 1000"
            ).fetchall()
        return [row[0] for row in rows]

    def prune(self, finished_before: float) -> int:
        """Forget finished tasks older than the retention."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?",
                (finished_before,),
            ).rowcount

    def source_state(self, source: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM source_state WHERE source = ?", (source,)
            ).fetchone()
        return row[0] if row else None


def _task(row: tuple[Any, ...]) -> Task:
    values = list(row)
    values[4] = Status(values[4])
    return Task(*values)
