"""The store methods behind the API and the status page (SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.model import DiscoveredTask, Finish, Status, TaskUpdate
from exporter.store.base import ModelSummary, TaskEvent
from exporter.store.sqlite import MAX_EVENTS_PER_TASK, SqliteTaskStore
from tests.harness.updates import polled


def update(
    status: Status,
    finish: Finish | None = None,
    created: float | None = 90.0,
    model: str | None = None,
    at: float = 100.0,
) -> TaskUpdate:
    return polled(status, finish, at=at, created=created, model=model)


@pytest.fixture
def store(tmp_path: Path) -> SqliteTaskStore:
    return SqliteTaskStore(tmp_path / "store.db")


def test_status_changes_are_recorded_with_their_time(store: SqliteTaskStore) -> None:
    store.add([DiscoveredTask("a", "api")], 100.0)
    assert store.events("a") == []
    store.apply("a", update(Status.PENDING), 101.0, None)
    store.apply("a", update(Status.PENDING), 102.0, None)  # no change: no event
    store.apply("a", update(Status.PROCESSING), 103.0, None)
    done = update(Status.FAILED, Finish(Status.FAILED, 4.0, error_message="<b>boom</b>"), at=104.0)
    store.apply("a", done, 104.0, "unknown")
    store.apply("a", done, 105.0, "unknown")  # already finished: refused, no event
    assert store.events("a") == [
        TaskEvent(101.0, Status.PENDING, Status.UNKNOWN),
        TaskEvent(103.0, Status.PROCESSING, Status.PENDING),
        TaskEvent(104.0, Status.FAILED, Status.PROCESSING),
    ]
    assert store.events("missing") == []


def test_events_are_bounded_per_task(store: SqliteTaskStore) -> None:
    store.add([DiscoveredTask("flap", "api"), DiscoveredTask("calm", "api")], 100.0)
    store.apply("calm", update(Status.PENDING), 100.5, None)
    for n in range(MAX_EVENTS_PER_TASK * 2 + 1):
        status = Status.PROCESSING if n % 2 == 0 else Status.PENDING
        store.apply("flap", update(status), 101.0 + n, None)
    events = store.events("flap")
    assert len(events) == MAX_EVENTS_PER_TASK
    assert events[-1].at == 101.0 + MAX_EVENTS_PER_TASK * 2  # the newest are kept
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert store.events("calm") == [TaskEvent(100.5, Status.PENDING, Status.UNKNOWN)]


def test_remove_and_prune_drop_the_events(store: SqliteTaskStore) -> None:
    store.add([DiscoveredTask("a", "api"), DiscoveredTask("b", "api")], 100.0)
    for task_id in ("a", "b"):
        store.apply(
            task_id, update(Status.COMPLETED, Finish(Status.COMPLETED, 1.0), at=110.0), 110.0, None
        )
    assert store.remove("a")
    assert not store.remove("a")
    assert store.get("a") is None and store.events("a") == []
    assert store.prune(200.0) == 1
    assert store.events("b") == []
    # A removed task may be registered again, and starts afresh.
    assert store.add([DiscoveredTask("a", "api")], 300.0)
    task = store.get("a")
    assert task is not None and task.status is Status.UNKNOWN


def test_removed_task_is_not_polled_and_a_late_result_is_dropped(store: SqliteTaskStore) -> None:
    store.add([DiscoveredTask("a", "api")], 100.0)
    assert [t.task_id for t in store.due(100.0, 10)] == ["a"]
    store.remove("a")
    assert store.due(1000.0, 10) == []
    assert not store.apply("a", update(Status.PROCESSING), 101.0, None)
    assert store.events("a") == []


def test_list_tasks_filters_and_pages_in_id_order(store: SqliteTaskStore) -> None:
    ids = [f"t{n:03d}" for n in range(25)]
    store.add(
        [DiscoveredTask(i, "api", model="m1" if n % 2 else "m2") for n, i in enumerate(ids)], 1
    )
    for task_id in ids[:5]:
        store.apply(task_id, update(Status.PROCESSING, model="m1"), 2.0, None)
    assert [t.task_id for t in store.list_tasks(limit=3)] == ids[:3]
    seen, after = [], None
    while True:
        page = store.list_tasks(after=after, limit=7)
        if not page:
            break
        seen += [t.task_id for t in page]
        after = page[-1].task_id
    assert seen == ids
    assert [t.task_id for t in store.list_tasks(status=Status.PROCESSING)] == ids[:5]
    m2 = [t.task_id for t in store.list_tasks(model="m2", limit=100)]
    assert m2 == [i for n, i in enumerate(ids[5:], start=5) if n % 2 == 0]
    assert store.list_tasks(status=Status.FAILED) == []
    assert store.list_tasks(after="zzz") == []
    assert [t.task_id for t in store.list_tasks(after="t02", limit=1)] == ["t020"]


def test_in_flight_oldest_first_and_latest_finished_newest_first(store: SqliteTaskStore) -> None:
    store.add([DiscoveredTask(i, "api") for i in ("new", "old", "mid", "f1", "f2", "ok")], 100.0)
    store.apply("old", update(Status.PENDING, created=10.0), 101.0, None)
    store.apply("mid", update(Status.PROCESSING, created=50.0), 101.0, None)
    store.apply("new", update(Status.PENDING, created=None), 101.0, None)  # discovered at 100
    store.apply(
        "f1", update(Status.FAILED, Finish(Status.FAILED, error_message="x"), at=120.0), 120.0, "r"
    )
    store.apply("f2", update(Status.TIMEOUT, Finish(Status.TIMEOUT), at=130.0), 130.0, None)
    store.apply(
        "ok", update(Status.COMPLETED, Finish(Status.COMPLETED, 3.0), at=140.0), 140.0, None
    )
    assert [t.task_id for t in store.in_flight(10)] == ["old", "mid", "new"]
    assert [t.task_id for t in store.in_flight(1)] == ["old"]
    failures = store.latest_finished((Status.FAILED, Status.TIMEOUT, Status.EXPIRED), 10)
    assert [t.task_id for t in failures] == ["f2", "f1"]
    assert [t.task_id for t in store.latest_finished((Status.COMPLETED,), 10)] == ["ok"]
    assert store.latest_finished((), 10) == []


def test_model_summaries_with_medians(store: SqliteTaskStore) -> None:
    durations = {"a": [5.0, 1.0, 3.0], "b": [4.0, 1.0, 2.0, 10.0]}
    for model, values in durations.items():
        for n, value in enumerate(values):
            task_id = f"{model}{n}"
            store.add([DiscoveredTask(task_id, "api", model=model)], 1.0)
            finish = Finish(Status.COMPLETED, value)
            store.apply(task_id, update(Status.COMPLETED, finish, model=model, at=2.0), 2.0, None)
    store.add([DiscoveredTask("bf", "api", model="b"), DiscoveredTask("x", "api")], 1.0)
    failed = update(Status.FAILED, Finish(Status.FAILED, 99.0), model="b", at=2.0)
    store.apply("bf", failed, 2.0, None)
    store.add([DiscoveredTask("c0", "api", model="c")], 1.0)
    assert store.model_summaries() == [
        ModelSummary(None, 1, 0, 0, None),
        ModelSummary("a", 0, 3, 0, 3.0),
        ModelSummary("b", 0, 5, 1, 3.0),  # the failed task's duration is left out
        ModelSummary("c", 1, 0, 0, None),
    ]
