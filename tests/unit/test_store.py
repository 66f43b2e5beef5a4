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
