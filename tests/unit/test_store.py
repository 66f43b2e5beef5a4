import sqlite3
from pathlib import Path

from exporter.model import DiscoveredTask, Finish, Status, TaskUpdate
from exporter.store.sqlite import SqliteTaskStore


def update(status: Status, finish: Finish | None = None, next_poll_at: float = 200.0) -> TaskUpdate:
    return TaskUpdate(
        status=status,
        next_poll_at=next_poll_at,
        consecutive_errors=0,
        created=90.0,
        model="flux",
        first_seen=100.0,
        processing_seen=None,
        last_polled=100.0,
        finish=finish,
    )


def test_add_is_idempotent_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteTaskStore(path)
    tasks = [DiscoveredTask("a", "file", model="m"), DiscoveredTask("b", "file")]
    assert len(store.add(tasks, 100.0)) == 2
    assert store.add(tasks, 101.0) == []
    store.close()
    reopened = SqliteTaskStore(path)
    assert {t.task_id for t in reopened.due(100.0, 10)} == {"a", "b"}
    assert reopened.count_by_status() == {Status.UNKNOWN: 2}


def test_due_orders_by_next_poll_and_skips_finished(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "s.db")
    store.add([DiscoveredTask("a", "x"), DiscoveredTask("b", "x")], 100.0)
    assert store.apply("a", update(Status.PROCESSING, next_poll_at=150.0), 100.0, None)
    assert [t.task_id for t in store.due(160.0, 10)] == ["b", "a"]
    assert [t.task_id for t in store.due(120.0, 10)] == ["b"]
    assert store.apply("b", update(Status.COMPLETED, Finish(Status.COMPLETED, 10.0)), 100.0, None)
    assert [t.task_id for t in store.due(1000.0, 10)] == ["a"]


def test_finish_happens_once(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "s.db")
    store.add([DiscoveredTask("a", "x")], 100.0)
    done = update(Status.FAILED, Finish(Status.FAILED, 5.0, error_message="boom"))
    assert store.apply("a", done, 101.0, "unknown")
    assert not store.apply("a", done, 102.0, "unknown")
    task = store.get("a")
    assert task is not None
    assert (task.status, task.finished_at, task.reason, task.error_message) == (
        Status.FAILED,
        101.0,
        "unknown",
        "boom",
    )
    assert not store.apply("missing", done, 102.0, None)


def test_oldest_prune_and_source_state(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "s.db")
    store.add([DiscoveredTask("a", "x"), DiscoveredTask("b", "x")], 100.0, ("file", "[1, 10]"))
    assert store.source_state("file") == "[1, 10]"
    assert store.oldest_active() == {Status.UNKNOWN: 100.0}
    store.apply("a", update(Status.COMPLETED, Finish(Status.COMPLETED)), 150.0, None)
    assert store.prune(140.0) == 0
    assert store.prune(160.0) == 1
    assert store.get("a") is None and store.get("b") is not None


def counted(path: Path) -> dict[Status, int]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
    return {Status(status): count for status, count in rows}


def test_status_counts_follow_every_write_and_older_files(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteTaskStore(path)
    store.add([DiscoveredTask(f"t{i}", "x") for i in range(10)], 100.0)
    store.apply("t1", update(Status.PROCESSING), 101.0, None)
    store.apply("t2", update(Status.PENDING), 101.0, None)
    store.apply("t2", update(Status.PROCESSING), 102.0, None)
    store.apply("t3", update(Status.FAILED, Finish(Status.FAILED, 1.0)), 103.0, "x")
    store.apply("t3", update(Status.COMPLETED, Finish(Status.COMPLETED)), 104.0, None)  # refused
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
    plan = reopened._db.execute(
        "EXPLAIN QUERY PLAN SELECT MIN(COALESCE(created, discovered_at)) FROM tasks"
        " WHERE status = 'unknown'"
    ).fetchall()
    assert "tasks_oldest" in str(plan)
