"""SQLite store: tasks by status kept by triggers, and the oldest task through an index,
so a scrape does not read every task (bench/scale.py)."""

import sqlite3
from pathlib import Path

from exporter.model import DiscoveredTask, Finish, Status
from exporter.store.sqlite import SqliteTaskStore
from tests.harness.updates import polled


def counted(path: Path) -> dict[Status, int]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
    return {Status(status): count for status, count in rows}


def test_status_counts_follow_every_write_and_older_files(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteTaskStore(path)
    store.add([DiscoveredTask(f"t{i}", "x") for i in range(10)], 100.0)
    store.apply("t1", polled(Status.PROCESSING), 101.0, None)
    store.apply("t2", polled(Status.PENDING), 101.0, None)
    store.apply("t2", polled(Status.PROCESSING), 102.0, None)
    store.apply("t3", polled(Status.FAILED, Finish(Status.FAILED, 1.0)), 103.0, "x")
    store.apply("t3", polled(Status.COMPLETED, Finish(Status.COMPLETED)), 104.0, None)  # refused
    store.remove("t4")
    store.prune(200.0)
    assert store.count_by_status() == counted(path) == {Status.UNKNOWN: 6, Status.PROCESSING: 2}
    store.close()
    # A file written before the counts existed gets them, counted, on open.
    with sqlite3.connect(path) as db:
        db.executescript(
            "DROP TRIGGER tasks_count_insert; DROP TRIGGER tasks_count_delete;"
            " DROP TRIGGER tasks_count_update; DROP TABLE status_counts;"
            " UPDATE tasks SET status = 'pending' WHERE task_id = 't0';"
        )
    reopened = SqliteTaskStore(path)
    assert reopened.count_by_status() == counted(path)
    assert reopened.count_by_status()[Status.PENDING] == 1
    reopened.close()
    with sqlite3.connect(path) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT MIN(COALESCE(created, discovered_at)) FROM tasks"
            " WHERE status = 'unknown'"
        ).fetchall()
    assert "tasks_oldest" in str(plan)
