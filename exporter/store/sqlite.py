"""The task store: every tracked task and its state, in SQLite.

It survives restarts (WAL journal: a SIGKILL loses at most the transaction in
flight). A task is finished by a conditional UPDATE, so its terminal record,
and with it its metric observation, happens once even if two pollers race.
"""

from __future__ import annotations

import functools
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path
from typing import Any

from exporter.model import (
    ACTIVE_STATUSES,
    APPLIED_FIELDS,
    DEFAULT_ACCOUNT,
    TASK_FIELDS,
    DiscoveredTask,
    Status,
    Task,
    TaskUpdate,
)
from exporter.store.base import FinishLabels, ModelSummary, TaskEvent, counts_by_account

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
DROP INDEX IF EXISTS tasks_status;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS source_state (
    source TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_events (
    seq INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    at REAL NOT NULL,
    previous TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, seq);
CREATE TABLE IF NOT EXISTS store_probe (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_stats (
    model TEXT PRIMARY KEY,
    stats TEXT NOT NULL
);
"""
# Tasks by status, kept by triggers in the same transaction as every write to
# `tasks`: a scrape reads a few rows instead of counting the whole table.
_STATUS_COUNTS = """
CREATE TABLE status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
    INSERT OR IGNORE INTO status_counts (status, n) VALUES (NEW.status, 0);
    UPDATE status_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
    UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
END;
CREATE TRIGGER tasks_count_update AFTER UPDATE OF status ON tasks
WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT OR IGNORE INTO status_counts (status, n) VALUES (NEW.status, 0);
    UPDATE status_counts SET n = n + 1 WHERE status = NEW.status;
END;
INSERT INTO status_counts (status, n) SELECT status, COUNT(*) FROM tasks GROUP BY status;
"""
# The oldest unfinished task per status, without reading every row of it.
_OLDEST_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_oldest ON tasks (status, COALESCE(created, discovered_at))"
)
# The oldest task in `processing` per model: one seek per model (see
# `oldest_processing_by_model`), on an index of processing tasks only.
_PROCESSING_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_processing_model ON tasks"
    " (model, COALESCE(created, discovered_at)) WHERE status = 'processing'"
)
# Walks the distinct models of that index (a skip scan: one seek per model),
# then the earliest time of each; the literal `status = 'processing'` lets
# SQLite use the partial index.
_OLDEST_PROCESSING = """
WITH RECURSIVE m(model, n) AS (
    SELECT (SELECT MIN(model) FROM tasks INDEXED BY tasks_processing_model
        WHERE status = 'processing' AND model IS NOT NULL), 0
    UNION ALL
    SELECT (SELECT MIN(model) FROM tasks INDEXED BY tasks_processing_model
        WHERE status = 'processing' AND model > m.model), n + 1
    FROM m WHERE m.model IS NOT NULL AND n < ?
)
SELECT model, (SELECT MIN(COALESCE(created, discovered_at))
    FROM tasks INDEXED BY tasks_processing_model
    WHERE status = 'processing' AND model = m.model)
FROM m WHERE model IS NOT NULL
UNION ALL
SELECT NULL, MIN(COALESCE(created, discovered_at)) FROM tasks INDEXED BY tasks_processing_model
    WHERE status = 'processing' AND model IS NULL
"""
# Finishes per label set, counted in the finish's own transaction (`apply`);
# never pruned. '' stands for no reason or class.
_FINISH_TOTALS = """
CREATE TABLE IF NOT EXISTS finish_totals (
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    class TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (model, status, reason, class)
) WITHOUT ROWID
"""
# What the task API's list and the status page filter and order by: each query
# reads its page from an index, never sorts a whole status or model.
_LIST_INDEXES = (
    "CREATE INDEX IF NOT EXISTS tasks_status_id ON tasks (status, task_id)",
    "CREATE INDEX IF NOT EXISTS tasks_model_id ON tasks (model, task_id)",
    "CREATE INDEX IF NOT EXISTS tasks_model_status_id ON tasks (model, status, task_id)",
    "CREATE INDEX IF NOT EXISTS tasks_finished_status ON tasks (status, finished_at)"
    " WHERE finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_in_flight ON tasks"
    " (COALESCE(created, discovered_at), task_id) WHERE finished_at IS NULL",
    # Medians of completed durations per model: a seek to the middle entry.
    "CREATE INDEX IF NOT EXISTS tasks_completed_duration ON tasks (model, duration_seconds)"
    " WHERE status = 'completed' AND duration_seconds IS NOT NULL",
)
# Tasks per model (in flight, finished, failed, completed with a duration), kept
# by triggers like the status counts: the status page and `models()` read a few
# rows instead of grouping every task. '' stands for no model. What a row counts
# for is said once (`_MODEL_COUNTED`, `{row}` being NEW, OLD or the table); the
# triggers and the first count are generated from it. Files that already have
# the table keep their triggers: the generated ones do the same.
_MODEL_COUNTED = {
    "active": "{row}finished_at IS NULL",
    "finished": "{row}finished_at IS NOT NULL",
    "failed": "{row}status = 'failed'",
    "timed": "{row}status = 'completed' AND {row}duration_seconds IS NOT NULL",
}


def _model_count_add(row: str) -> str:
    columns = ", ".join(_MODEL_COUNTED)
    values = ", ".join(f"({what.format(row=row + '.')})" for what in _MODEL_COUNTED.values())
    sums = ", ".join(f"{name} = {name} + excluded.{name}" for name in _MODEL_COUNTED)
    return (
        f"INSERT INTO model_counts (model, {columns})"
        f" VALUES (COALESCE({row}.model, ''), {values})"
        f" ON CONFLICT (model) DO UPDATE SET {sums};"
    )


def _model_count_remove(row: str) -> str:
    less = ", ".join(
        f"{name} = {name} - ({what.format(row=row + '.')})" for name, what in _MODEL_COUNTED.items()
    )
    return f"UPDATE model_counts SET {less} WHERE model = COALESCE({row}.model, '');"


_MODEL_SUMS = ", ".join(f"SUM({what.format(row='')})" for what in _MODEL_COUNTED.values())
_MODEL_COUNTS = f"""
CREATE TABLE model_counts (
    model TEXT PRIMARY KEY,
    {", ".join(f"{name} INTEGER NOT NULL" for name in _MODEL_COUNTED)}
);
CREATE TRIGGER tasks_model_insert AFTER INSERT ON tasks BEGIN
    {_model_count_add("NEW")}
END;
CREATE TRIGGER tasks_model_delete AFTER DELETE ON tasks BEGIN
    {_model_count_remove("OLD")}
END;
CREATE TRIGGER tasks_model_update AFTER UPDATE OF model, status, finished_at, duration_seconds
ON tasks WHEN OLD.model IS NOT NEW.model OR OLD.status IS NOT NEW.status
    OR OLD.finished_at IS NOT NEW.finished_at
    OR OLD.duration_seconds IS NOT NEW.duration_seconds BEGIN
    {_model_count_remove("OLD")}
    {_model_count_add("NEW")}
END;
INSERT INTO model_counts (model, {", ".join(_MODEL_COUNTED)})
SELECT COALESCE(model, ''), {_MODEL_SUMS}
FROM tasks GROUP BY COALESCE(model, '');
"""
# Tasks by account and status, for the accounts other than `default` (whose
# counts are the status counts less these), kept by triggers like the status
# counts; made when several accounts are configured, counted from the tasks then.
_ACCOUNT_COUNTS = """
CREATE TABLE account_counts (
    account TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (account, status)
) WITHOUT ROWID;
CREATE TRIGGER tasks_account_insert AFTER INSERT ON tasks WHEN NEW.account != 'default' BEGIN
    INSERT INTO account_counts (account, status, n) VALUES (NEW.account, NEW.status, 1)
    ON CONFLICT (account, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_account_delete AFTER DELETE ON tasks WHEN OLD.account != 'default' BEGIN
    UPDATE account_counts SET n = n - 1 WHERE account = OLD.account AND status = OLD.status;
END;
CREATE TRIGGER tasks_account_update AFTER UPDATE OF status ON tasks
WHEN OLD.status IS NOT NEW.status AND NEW.account != 'default' BEGIN
    UPDATE account_counts SET n = n - 1 WHERE account = OLD.account AND status = OLD.status;
    INSERT INTO account_counts (account, status, n) VALUES (NEW.account, NEW.status, 1)
    ON CONFLICT (account, status) DO UPDATE SET n = n + 1;
END;
INSERT INTO account_counts (account, status, n)
SELECT account, status, COUNT(*) FROM tasks WHERE account != 'default' GROUP BY account, status;
"""
# Rows deleted per prune transaction. Between batches the prune pauses so that
# it works at most PRUNE_DUTY_CYCLE of the time (`prune_pause`): polls and
# registrations wait at most one batch for the writer's lock, and scrapes keep
# the CPU most of the time. Config: store.prune_duty_cycle.
PRUNE_BATCH = 250
PRUNE_ROUND = 50_000
PRUNE_DUTY_CYCLE = 0.25
PRUNE_PAUSE_SECONDS = 0.005


def prune_pause(batch_seconds: float, duty_cycle: float) -> float:
    """How long to pause after a prune batch that took `batch_seconds` so that
    the prune works at most `duty_cycle` of the time (never less than
    PRUNE_PAUSE_SECONDS, so that a waiting writer always gets in)."""
    return max(PRUNE_PAUSE_SECONDS, batch_seconds * (1.0 - duty_cycle) / duty_cycle)


# Medians are recomputed at most this often (the status page shows them).
MEDIAN_MAX_AGE_SECONDS = 60.0
# Readers beside the one writer: WAL lets them read while it writes.
READERS = 4
# The WAL is cut back to this size after checkpoints (a big prune grew it).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
WRITER_CACHE_KIB = 64 * 1024

# Columns added after the first release: (name, type), added to older files on open.
_ADDED_COLUMNS = (
    ("progress", "REAL"),
    ("progress_at", "REAL"),
    # Older files' tasks belong to the one account they had: `default`.
    ("account", f"TEXT NOT NULL DEFAULT '{DEFAULT_ACCOUNT}'"),
)
# Due tasks of one account (several accounts, each polled by its own loop): an
# index only a store with several accounts pays for on every poll's write.
_ACCOUNT_DUE_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_account_due ON tasks (account, next_poll_at)"
    " WHERE finished_at IS NULL"
)
# The tasks table's columns are the Task's fields, same names and order (the
# schema above is what is on disk; a test holds the two together).
_COLUMNS = ", ".join(TASK_FIELDS)
# What a poll's result writes: the fields it decided and the classified reason.
_WRITTEN = (*APPLIED_FIELDS, "reason")
_STATUS = _WRITTEN.index("status")
_APPLIED_VALUES = attrgetter(*APPLIED_FIELDS)
_BEFORE_APPLY = f"SELECT {', '.join(_WRITTEN)} FROM tasks WHERE task_id = ? AND finished_at IS NULL"


@functools.lru_cache(maxsize=512)
def _apply_statement(columns: tuple[int, ...]) -> str:
    """The UPDATE that writes these of `_WRITTEN` (by position) and counts the attempt."""
    sets = "".join(f"{_WRITTEN[i]} = ?, " for i in columns)
    return f"UPDATE tasks SET {sets}attempts = attempts + 1 WHERE task_id = ?"


class StoreError(Exception):
    """The store file cannot be opened or used."""


class FileReplaced(StoreError):
    """The store's file is not the one it opened: deleted, moved or replaced."""


class StoreDamaged(StoreError):
    """SQLite found the store's file damaged (`PRAGMA quick_check`)."""


# A file up to this size is checked before the exporter starts (well under a
# second); a bigger one (a day of a large account is 1 GB: several seconds) is
# checked in the background just after, so that readiness does not wait for it.
QUICK_CHECK_AT_START_BYTES = 128 * 1024 * 1024


_DAMAGED_ADVICE = (
    "stop the exporter, then restore the file from a backup, or move it (and its -wal and "
    "-shm files) aside to start with an empty store (the tasks it tracked are forgotten)"
)


class SqliteTaskStore:
    """Thread-safe. One writer connection behind a lock (every write is one
    transaction) and a few reader connections that never take that lock: in WAL
    mode readers see the last commit while the writer goes on."""

    def __init__(
        self,
        path: Path | str,
        integrity_check: bool = True,
        per_account: bool = False,
        prune_duty_cycle: float = PRUNE_DUTY_CYCLE,
    ) -> None:
        """`per_account`: several accounts poll, each asking `due` for its own tasks."""
        self.path = str(path)
        self.prune_duty_cycle = prune_duty_cycle
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder of the task store {self.path}: "
                    f"{exc.strerror or exc}; choose a writable store.path"
                ) from None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # Whether `quick_check()` is still to be run (by the store guard, in the background).
            self.check_pending = integrity_check and self._size() > QUICK_CHECK_AT_START_BYTES
            if integrity_check and not self.check_pending:
                _quick_check(self._db, self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            # Deletes touch a dozen index pages each, spread over the file: a page
            # cache that holds the hot ones makes a day's prune several times faster.
            self._db.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer version (schema {version})")
            self._db.executescript(_SCHEMA)
            _add_columns(self._db)
            _add_counts(self._db, "status_counts", _STATUS_COUNTS)
            self._db.execute(_OLDEST_INDEX)
            self._db.execute(_FINISH_TOTALS)
            self._db.execute(_PROCESSING_INDEX)
            for index in _LIST_INDEXES:
                self._db.execute(index)
            if per_account:
                self._db.execute(_ACCOUNT_DUE_INDEX)
                _add_counts(self._db, "account_counts", _ACCOUNT_COUNTS)
            _add_counts(self._db, "model_counts", _MODEL_COUNTS)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
            self._reader_list: list[sqlite3.Connection] = []
            if self.path != ":memory:":  # another connection would be another database
                for _ in range(READERS):
                    reader = sqlite3.connect(
                        self.path, check_same_thread=False, isolation_level=None
                    )
                    reader.execute("PRAGMA query_only=1")
                    reader.execute("PRAGMA busy_timeout=5000")
                    self._reader_list.append(reader)
                    self._readers.put(reader)
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc) or "not a database" in str(exc):
                raise StoreDamaged(
                    f"the task store {self.path} is damaged ({exc}); {_DAMAGED_ADVICE}"
                ) from None
            raise StoreError(f"cannot open the task store {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the task store {self.path}: {exc}") from None
        self._identity = self._file_identity()
        self._lock = threading.Lock()
        self._closing = False
        self._closed = threading.Event()  # wakes a prune's pause at shutdown
        self._clock = time.monotonic  # times the prune's batches
        self._medians: dict[str | None, float] = {}
        self._medians_at = -float("inf")
        self._medians_lock = threading.Lock()

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size if self.path != ":memory:" else 0
        except OSError:
            return 0

    def quick_check(self) -> None:
        """StoreDamaged if SQLite finds the file damaged. Reads every page, on a
        connection of its own: neither the writer nor the readers wait for it."""
        self.check_pending = False
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA query_only=1")
            _quick_check(db, self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreDamaged(
                f"the task store {self.path} is damaged ({exc}); {_DAMAGED_ADVICE}"
            ) from None
        finally:
            db.close()

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return (-1, -1)
        return (found.st_dev, found.st_ino)

    def check(self) -> None:
        """FileReplaced if the file at `path` is not the one this store opened.

        A deleted file stays writable through the open connection, and a replaced
        one is not where the writes go: either way, what is written from now on
        would be gone at the next start. A stat call: cheap enough for every write."""
        if self._identity is None:
            return
        found = self._file_identity()
        if found == self._identity:
            return
        what = "deleted" if found == (-1, -1) else "replaced by another file"
        raise FileReplaced(
            f"the task store {self.path} was {what} while the exporter ran; nothing more is "
            "stored, as it would be lost: restart the exporter (it opens whatever file is "
            "at that path then, or starts an empty one)"
        )

    def probe(self) -> None:
        """One small write and a read: whether the store takes writes again."""
        self.check()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO store_probe (id, at) VALUES (1, julianday('now'))"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at"
            )
        self.count_by_status()

    def close(self) -> None:
        self._closing = True  # a prune in progress stops after its batch
        self._closed.set()
        with self._lock:
            self._db.close()
            for reader in self._reader_list:
                reader.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A reader connection (the writer's, under its lock, for :memory:)."""
        if not self._reader_list:
            with self._lock:
                yield self._db
            return
        reader = self._readers.get()
        try:
            yield reader
        finally:
            if reader.in_transaction:  # a read cut short: release its snapshot
                reader.execute("ROLLBACK")
            self._readers.put(reader)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closing:
                raise StoreError(f"the task store {self.path} is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) leaves the transaction open: end it,
                # or every later write fails with "within a transaction".
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

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
                    " next_poll_at, account) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (
                        task.task_id,
                        task.source,
                        task.model,
                        task.poll_url,
                        Status.UNKNOWN.value,
                        now,
                        now,
                        task.account,
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

    def due(self, now: float, limit: int, account: str | None = None) -> list[Task]:
        """Unfinished tasks whose next poll is due, most overdue first (of one account
        if given: an index walk of that account's due tasks)."""
        of_account, params = ("account = ? AND ", (account,)) if account is not None else ("", ())
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE {of_account}finished_at IS NULL"
                " AND next_poll_at <= ? ORDER BY next_poll_at LIMIT ?",
                (*params, now, limit),
            ).fetchall()
        return [_task(row) for row in rows]

    def apply(
        self,
        task_id: str,
        update: TaskUpdate,
        now: float,
        reason: str | None,
        labels: FinishLabels | None = None,
    ) -> bool:
        """Store a poll's result. False if the task is gone or already finished."""
        task = update.task
        values = (*_APPLIED_VALUES(task), reason)
        with self._transaction() as db:
            before = db.execute(_BEFORE_APPLY, (task_id,)).fetchone()
            if before is None:
                return False
            # Only the columns whose value changes are written: SQLite updates each
            # index on a written column even if its value stays, and a poll of a
            # running task changes only a few of the columns it may set.
            columns = tuple(i for i, value in enumerate(values) if value != before[i])
            db.execute(_apply_statement(columns), (*[values[i] for i in columns], task_id))
            if before[_STATUS] != task.status.value:
                _record_event(db, task_id, now, before[_STATUS], task.status.value)
            if update.finish is not None and labels is not None:
                _count_finish(db, labels)
            return True

    def finish_totals(self) -> dict[FinishLabels, int]:
        """Store-wide count of finishes per label set."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT model, status, reason, class, n FROM finish_totals"
            ).fetchall()
        return {
            FinishLabels(model, status, reason or None, failure_class or None): n
            for model, status, reason, failure_class, n in rows
        }

    def get(self, task_id: str) -> Task | None:
        with self._reading() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        return _task(row) if row else None

    def count_by_status(self) -> dict[Status, int]:
        with self._reading() as db:
            rows = db.execute("SELECT status, n FROM status_counts WHERE n > 0").fetchall()
        return {Status(status): count for status, count in rows}

    def count_by_account(self) -> dict[str, dict[Status, int]]:
        """Tasks by account and status, from the count tables (one snapshot, no scan)."""
        with self._reading() as db:
            db.execute("BEGIN")
            totals = db.execute("SELECT status, n FROM status_counts WHERE n > 0").fetchall()
            named = []
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'account_counts'").fetchone():
                named = db.execute(
                    "SELECT account, status, n FROM account_counts WHERE n > 0"
                ).fetchall()
            db.execute("COMMIT")
        return counts_by_account(totals, named)

    def oldest_active(self) -> dict[Status, float]:
        """Per unfinished status, the earliest creation (or discovery) time."""
        result = {}
        with self._reading() as db:
            for status in ACTIVE_STATUSES:
                row = db.execute(
                    "SELECT MIN(COALESCE(created, discovered_at)) FROM tasks WHERE status = ?",
                    (status.value,),
                ).fetchone()
                if row[0] is not None:
                    result[status] = float(row[0])
        return result

    def oldest_processing_by_model(self, limit: int = 1000) -> dict[str | None, float]:
        """Per model (None: no model known), the earliest creation (or discovery)
        time of its tasks in `processing`; models with none are left out."""
        with self._reading() as db:
            rows = db.execute(_OLDEST_PROCESSING, (limit,)).fetchall()
        return {model: float(oldest) for model, oldest in rows if oldest is not None}

    def models(self) -> list[str]:
        """Models with tasks in the store, from the per-model counts (no scan)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT model FROM model_counts WHERE model != '' AND active + finished > 0"
                " ORDER BY model LIMIT 1000"
            ).fetchall()
        return [row[0] for row in rows]

    def prune(self, finished_before: float, batch: int = PRUNE_BATCH) -> int:
        """Forget finished tasks older than the retention, `batch` per transaction.

        The IDs due are read on a reader (up to PRUNE_ROUND at a time, sorted by
        SQLite, not in Python, so that the GIL stays free for a scrape) and
        deleted in ID order, which keeps each batch's changes on few pages of the
        ID-keyed indexes. After each batch the prune pauses (`prune_pause`) so
        that it holds the writer's lock and a core at most `prune_duty_cycle` of
        the time: a poll's result or a registration waits at most one batch, and
        readers never wait for it at all. The WAL it grew is checkpointed and cut
        back at the end."""
        removed = 0
        while True:
            with self._reading() as db:
                due = [
                    row[0]
                    for row in db.execute(
                        "SELECT task_id FROM (SELECT task_id FROM tasks INDEXED BY"
                        " tasks_finished WHERE finished_at IS NOT NULL AND finished_at < ?"
                        " LIMIT ?) ORDER BY task_id",
                        (finished_before, PRUNE_ROUND),
                    )
                ]
            for start in range(0, len(due), batch):
                if self._closing:  # shutting down: the rest waits for the next start
                    return removed
                ids = due[start : start + batch]
                began = self._clock()
                removed += self._prune_batch(ids, finished_before)
                self._closed.wait(prune_pause(self._clock() - began, self.prune_duty_cycle))
            if len(due) < PRUNE_ROUND:
                break
        if removed:
            self.checkpoint()
        return removed

    def _prune_batch(self, ids: list[str], finished_before: float) -> int:
        """One transaction: those of these tasks still past the retention, and
        their events; the triggers keep the counts in step."""
        where = (
            f"task_id IN ({', '.join('?' for _ in ids)})"
            " AND finished_at IS NOT NULL AND finished_at < ?"
        )
        params = (*ids, finished_before)
        with self._transaction() as db:
            db.execute(
                "DELETE FROM task_events WHERE task_id IN"
                f" (SELECT task_id FROM tasks WHERE {where})",
                params,
            )
            return int(db.execute(f"DELETE FROM tasks WHERE {where}", params).rowcount)

    def checkpoint(self) -> None:
        """Copy the WAL into the database and cut it back (to 0 when no reader
        holds an old snapshot; else journal_size_limit applies at the next one)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def source_state(self, source: str) -> str | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT state FROM source_state WHERE source = ?", (source,)
            ).fetchone()
        return row[0] if row else None

    def load_model_stats(self) -> dict[str, str]:
        """What adaptive polling learnt per model (see poller/adaptive.py)."""
        with self._reading() as db:
            rows = db.execute("SELECT model, stats FROM model_stats LIMIT 1000").fetchall()
        return {model: stats for model, stats in rows}

    def save_model_stats(self, stats: dict[str, str | None]) -> None:
        """Replace the saved stats of these models (None: forget the model)."""
        with self._transaction() as db:
            for model, text in stats.items():
                if text is None:
                    db.execute("DELETE FROM model_stats WHERE model = ?", (model,))
                else:
                    db.execute(
                        "INSERT INTO model_stats (model, stats) VALUES (?, ?)"
                        " ON CONFLICT (model) DO UPDATE SET stats = excluded.stats",
                        (model, text),
                    )

    def list_tasks(
        self,
        status: Status | None = None,
        model: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Tasks ordered by ID, after `after`, filtered by status and model."""
        where, params = [], []
        for clause, value in (("status = ?", status), ("model = ?", model), ("task_id > ?", after)):
            if value is not None:
                where.append(clause)
                params.append(str(value))
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM tasks{condition} ORDER BY task_id LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_task(row) for row in rows]

    def events(self, task_id: str) -> list[TaskEvent]:
        """The task's status changes, oldest first."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT at, status, previous FROM task_events WHERE task_id = ? ORDER BY seq",
                (task_id,),
            ).fetchall()
        return [TaskEvent(at, Status(status), Status(previous)) for at, status, previous in rows]

    def remove(self, task_id: str) -> bool:
        """Stop tracking a task; False if it was not in the store."""
        with self._transaction() as db:
            db.execute("DELETE FROM task_events WHERE task_id = ?", (task_id,))
            return db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,)).rowcount == 1

    def in_flight(self, limit: int) -> list[Task]:
        """Unfinished tasks, oldest first."""
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE finished_at IS NULL"
                " ORDER BY COALESCE(created, discovered_at), task_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [_task(row) for row in rows]

    def latest_finished(self, statuses: Sequence[Status], limit: int) -> list[Task]:
        """Finished tasks with one of these statuses, most recently finished first.

        One index walk per status (newest first, `limit` rows each), merged: never
        a sort of every failed task."""
        found: list[Task] = []
        with self._reading() as db:
            for status in dict.fromkeys(statuses):
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM tasks INDEXED BY tasks_finished_status"
                    " WHERE status = ? AND finished_at IS NOT NULL"
                    " ORDER BY finished_at DESC LIMIT ?",
                    (status.value, limit),
                ).fetchall()
                found += [_task(row) for row in rows]
        found.sort(key=lambda task: (-(task.finished_at or 0.0), task.task_id))
        return found[:limit]

    def model_summaries(self) -> list[ModelSummary]:
        """Per model: tasks in flight, finished, failed (kept by triggers, always
        current), median duration of completed ones (at most MEDIAN_MAX_AGE_SECONDS
        old: a seek into an index per model, done once a minute at most)."""
        with self._reading() as db:
            counts = db.execute(
                "SELECT model, active, finished, failed, timed FROM model_counts"
                " WHERE active + finished > 0 ORDER BY model LIMIT 1000"
            ).fetchall()
        medians = self._cached_medians([(model or None, timed) for model, *_, timed in counts])
        return [
            ModelSummary(model or None, active, finished, failed, medians.get(model or None))
            for model, active, finished, failed, _ in counts
        ]

    def _cached_medians(self, timed: list[tuple[str | None, int]]) -> dict[str | None, float]:
        with self._medians_lock:  # one computation at a time; the others wait for it
            now = time.monotonic()
            if now - self._medians_at < MEDIAN_MAX_AGE_SECONDS:
                return self._medians
            medians = {}
            with self._reading() as db:
                for model, count in timed:
                    if count > 0:
                        value = _median_of(db, model, count)
                        if value is not None:
                            medians[model] = value
            self._medians, self._medians_at = medians, time.monotonic()
            return medians


def _median_of(db: sqlite3.Connection, model: str | None, count: int) -> float | None:
    """The median completed duration of a model: the middle one or two entries of
    its part of the `tasks_completed_duration` index (`count` from model_counts)."""
    rows = db.execute(
        "SELECT duration_seconds FROM tasks INDEXED BY tasks_completed_duration"
        " WHERE model IS ? AND status = 'completed' AND duration_seconds IS NOT NULL"
        " ORDER BY duration_seconds LIMIT ? OFFSET ?",
        (model, 2 - count % 2, (count - 1) // 2),
    ).fetchall()
    if not rows:
        return None
    return float(sum(row[0] for row in rows) / len(rows))


# Status changes kept per task: a task that flaps must not grow the store.
MAX_EVENTS_PER_TASK = 50


def _record_event(
    db: sqlite3.Connection, task_id: str, at: float, previous: str, status: str
) -> None:
    db.execute(
        "INSERT INTO task_events (task_id, at, previous, status) VALUES (?, ?, ?, ?)",
        (task_id, at, previous, status),
    )
    db.execute(
        "DELETE FROM task_events WHERE task_id = ? AND seq <= (SELECT seq FROM task_events"
        " WHERE task_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (task_id, task_id, MAX_EVENTS_PER_TASK),
    )


def _count_finish(db: sqlite3.Connection, labels: FinishLabels) -> None:
    db.execute(
        "INSERT INTO finish_totals (model, status, reason, class, n) VALUES (?, ?, ?, ?, 1)"
        " ON CONFLICT DO UPDATE SET n = n + 1",
        (labels.model, labels.status, labels.reason or "", labels.failure_class or ""),
    )


def _add_columns(db: sqlite3.Connection) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    for name, kind in _ADDED_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")


def _add_counts(db: sqlite3.Connection, table: str, script: str) -> None:
    """Creates a counts table and its triggers (`script`), counted from the tasks, once."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
        return
    try:
        db.executescript(f"BEGIN IMMEDIATE;{script}COMMIT;")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _quick_check(db: sqlite3.Connection, path: str) -> None:
    """StoreError naming the file and what to do if SQLite finds it damaged."""
    rows = [row[0] for row in db.execute("PRAGMA quick_check(5)").fetchall()]
    if rows != ["ok"]:
        found = "; ".join(str(row) for row in rows)[:500]
        raise StoreDamaged(
            f"the task store {path} is damaged (quick_check: {found}); {_DAMAGED_ADVICE}"
        )


def _task(row: tuple[Any, ...]) -> Task:
    values = list(row)
    values[4] = Status(values[4])
    return Task(*values)
