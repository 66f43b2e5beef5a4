"""A task's fields are declared once (`Task`); each store's layout follows it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exporter.model import APPLIED_FIELDS, TASK_FIELDS, Task
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
    required = {"task_id", "source", "status", "discovered_at", "next_poll_at"}
    assert {name for name, _, _ in _READ} | required == set(TASK_FIELDS)


def test_a_poll_sets_task_fields_only() -> None:
    assert set(APPLIED_FIELDS) <= set(TASK_FIELDS) - {"task_id", "attempts"}
    assert Task.__dataclass_fields__.keys() == set(TASK_FIELDS)
