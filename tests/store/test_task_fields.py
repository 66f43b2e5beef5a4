"""A task's fields are declared once (`Task`); each store's layout follows it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exporter.model import (
    APPLIED_FIELDS,
    DEFAULT_ACCOUNT,
    TASK_FIELDS,
    DiscoveredTask,
    Status,
    Task,
)
from exporter.store.redis import _READ, FIELDS
from exporter.store.sqlite import SqliteTaskStore


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
