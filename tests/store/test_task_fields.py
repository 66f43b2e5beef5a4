"""A task's fields are declared once (`Task`); each store's layout follows it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exporter.model import (
    APPLIED_FIELDS,
    DEFAULT_ACCOUNT,
    TASK_FIELDS,
    DiscoveredTask,
    Finish,
    Status,
    Task,
)
from exporter.store.redis import _READ, FIELDS
from exporter.store.sqlite import SqliteTaskStore
from tests.harness.updates import polled


def test_the_sqlite_columns_are_the_task_fields_in_order(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    SqliteTaskStore(path).close()
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(tasks)")]
    assert tuple(columns) == TASK_FIELDS


def test_every_task_field_has_a_redis_hash_field() -> None:
    assert ("task_id", *FIELDS) == TASK_FIELDS
    assert len(set(FIELDS.values())) == len(FIELDS)  # short names never collide
    required = {"task_id", "source", "status", "discovered_at", "next_poll_at", "account"}
    assert {name for name, _, _ in _READ} | required == set(TASK_FIELDS)


def test_a_poll_sets_task_fields_only() -> None:
    assert set(APPLIED_FIELDS) <= set(TASK_FIELDS) - {"task_id", "attempts"}
    assert Task.__dataclass_fields__.keys() == set(TASK_FIELDS)


def test_sqlite_leaves_a_polled_task_as_the_update_says(tmp_path: Path) -> None:
    """SQLite writes only the columns that change: what is not written must
    already hold what the update says, whatever changed before."""
    store = SqliteTaskStore(tmp_path / "tasks.db")
    store.add([DiscoveredTask("a", "file", model="m")], 100.0)
    steps = [
        polled(Status.PROCESSING, model="m", processing_seen=100.0, progress=10.0, progress_at=9.0),
        polled(Status.PROCESSING, model="m", next_poll_at=300.0, last_error="HTTP 503"),
        polled(Status.PENDING, model="m", created=None, consecutive_errors=2),
        polled(Status.FAILED, Finish(Status.FAILED, 4.0, error_message="boom"), at=104.0),
    ]
    for n, update in enumerate(steps, start=1):
        reason = "unknown" if update.finish else None
        assert store.apply("a", update, 100.0 + n, reason)
        task = store.get("a")
        assert task is not None
        assert [getattr(task, name) for name in APPLIED_FIELDS] == [
            getattr(update.task, name) for name in APPLIED_FIELDS
        ]
        assert (task.reason, task.attempts) == (reason, n)


def test_a_store_from_before_accounts_gets_its_tasks_under_the_default_account(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    store.add([DiscoveredTask("old", "file")], 100.0)
    store.close()
    with sqlite3.connect(path) as db:  # the layout before the column existed
        db.execute("ALTER TABLE tasks DROP COLUMN account")
    store = SqliteTaskStore(path, per_account=True)
    task = store.get("old")
    assert task is not None and task.account == DEFAULT_ACCOUNT
    assert [t.task_id for t in store.due(100.0, 10, DEFAULT_ACCOUNT)] == ["old"]
    assert store.due(100.0, 10, "other") == []
    store.close()


def test_account_counts_are_made_from_the_tasks_when_accounts_are_configured(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)  # one account: no account counts kept
    store.add([DiscoveredTask("a", "api", account="team-a"), DiscoveredTask("d", "file")], 100.0)
    store.close()
    store = SqliteTaskStore(path, per_account=True)
    assert store.count_by_account() == {
        "team-a": {Status.UNKNOWN: 1},
        DEFAULT_ACCOUNT: {Status.UNKNOWN: 1},
    }
    store.close()
