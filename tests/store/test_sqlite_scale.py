"""SQLite at day scale: readers beside the writer, prune in batches, indexed lists,
summaries kept by triggers. Each query is checked against a brute-force answer
over every task; nothing here asserts a time."""

from __future__ import annotations

import random
import sqlite3
import statistics
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.api.status_page import StatusPage
from exporter.metrics.collector import TaskStoreCollector
from exporter.model import FINISHED_STATUSES, DiscoveredTask, Finish, Status, Task, TaskUpdate
from exporter.store import sqlite as sqlite_store
from exporter.store.base import FinishLabels
from exporter.store.sqlite import SqliteTaskStore
from tests.api.support import call
from tests.harness.updates import polled

MODELS = ("flux-pro", "veo-3", "sora-2", None)
ENDS = (Status.COMPLETED, Status.FAILED, Status.EXPIRED, Status.TIMEOUT, Status.CANCELLED)


def update(status: Status, now: float, model: str | None, duration: float | None) -> TaskUpdate:
    finish = Finish(status, duration) if status in FINISHED_STATUSES else None
    return polled(
        status,
        finish,
        at=now,
        next_poll_at=now + 5,
        created=now - 10,
        model=model,
        first_seen=now - 5,
        last_polled=now,
    )


def seed(store: SqliteTaskStore, count: int, rng: random.Random) -> None:
    """`count` tasks: about 80 % finished (at times 1000..2000), the rest in flight."""
    store.add(
        [DiscoveredTask(f"t{n:07d}", "file", rng.choice(MODELS)) for n in range(count)], 100.0
    )
    for task in store.list_tasks(limit=count):
        roll = rng.random()
        if roll < 0.1:
            continue  # unknown
        status = rng.choice((Status.PENDING, Status.PROCESSING)) if roll < 0.2 else rng.choice(ENDS)
        now = rng.uniform(1000.0, 2000.0)
        duration = round(rng.uniform(1, 300), 1) if rng.random() < 0.9 else None
        store.apply(
            task.task_id, update(Status.PROCESSING, now - 1, task.model, None), now - 1, None
        )
        labels = FinishLabels(task.model or "", status.value) if status in ENDS else None
        store.apply(task.task_id, update(status, now, task.model, duration), now, None, labels)


def everything(store: SqliteTaskStore) -> list[Task]:
    return store.list_tasks(limit=10_000_000)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> SqliteTaskStore:
    store = SqliteTaskStore(tmp_path_factory.mktemp("scale") / "store.db")
    seed(store, 4000, random.Random(14))
    return store


def test_list_filters_return_what_a_full_scan_finds(seeded: SqliteTaskStore) -> None:
    tasks = sorted(everything(seeded), key=lambda task: task.task_id)
    assert len(tasks) == 4000
    rng = random.Random(3)
    for status in (None, *Status):
        for model in (None, "flux-pro", "veo-3", "nope"):
            expected = [
                task.task_id
                for task in tasks
                if (status is None or task.status is status)
                and (model is None or task.model == model)
            ]
            after = None
            pages: list[str] = []
            limit = rng.choice((1, 7, 100, 1000))
            while True:  # walk every page with the cursor
                page = seeded.list_tasks(status, model, after, limit)
                pages += [task.task_id for task in page]
                if len(page) < limit:
                    break
                after = page[-1].task_id
            assert pages == expected, (status, model)


def test_latest_finished_and_in_flight_match_a_full_scan(seeded: SqliteTaskStore) -> None:
    tasks = everything(seeded)
    wanted = (Status.FAILED, Status.EXPIRED, Status.TIMEOUT)
    expected = sorted(
        (task for task in tasks if task.status in wanted),
        key=lambda task: (-(task.finished_at or 0), task.task_id),
    )[:20]
    assert seeded.latest_finished(wanted, 20) == expected
    active = sorted(
        (task for task in tasks if task.finished_at is None),
        key=lambda task: (
            task.created if task.created is not None else task.discovered_at,
            task.task_id,
        ),
    )
    assert seeded.in_flight(50) == active[:50]


def test_summaries_and_models_match_a_full_scan(seeded: SqliteTaskStore) -> None:
    tasks = everything(seeded)
    seeded._medians_at = -float("inf")  # the medians are cached for a minute
    summaries = {summary.model: summary for summary in seeded.model_summaries()}
    assert set(summaries) == set(MODELS)
    for model in MODELS:
        mine = [task for task in tasks if task.model == model]
        durations = [
            task.duration_seconds
            for task in mine
            if task.status is Status.COMPLETED and task.duration_seconds is not None
        ]
        summary = summaries[model]
        assert summary.active == sum(task.finished_at is None for task in mine)
        assert summary.finished == sum(task.finished_at is not None for task in mine)
        assert summary.failed == sum(task.status is Status.FAILED for task in mine)
        assert summary.median_duration_seconds == pytest.approx(statistics.median(durations))
    assert seeded.models() == sorted(model for model in MODELS if model is not None)
    counts = Counter(task.status for task in tasks)
    assert seeded.count_by_status() == dict(counts)


def test_batch_prune_removes_exactly_what_is_past_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "PRUNE_ROUND", 400)  # several rounds of reads too
    store = SqliteTaskStore(tmp_path / "store.db")
    seed(store, 3000, random.Random(9))
    before = everything(store)
    totals = store.finish_totals()
    events = {task.task_id: store.events(task.task_id) for task in before}
    cutoff = 1500.0
    removed = store.prune(cutoff, batch=37)  # many batches, the last one partial
    gone = {t.task_id for t in before if t.finished_at is not None and t.finished_at < cutoff}
    assert removed == len(gone) > 1000
    after = everything(store)
    assert {task.task_id for task in after} == {task.task_id for task in before} - gone
    assert after == [task for task in before if task.task_id not in gone]  # untouched
    for task_id, kept in events.items():
        assert store.events(task_id) == ([] if task_id in gone else kept)
    assert store.finish_totals() == totals  # store-wide totals are never pruned
    assert store.count_by_status() == dict(Counter(task.status for task in after))
    store._medians_at = -float("inf")
    for summary in store.model_summaries():
        mine = [task for task in after if task.model == summary.model]
        assert (summary.active, summary.finished) == (
            sum(task.finished_at is None for task in mine),
            sum(task.finished_at is not None for task in mine),
        )
    assert store.prune(cutoff, batch=37) == 0  # nothing left past retention
    wal = Path(f"{store.path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed and cut back


def test_reads_and_scrapes_go_on_while_the_writer_is_busy(tmp_path: Path) -> None:
    """A prune's batch (or any write) holds the writer's lock and a write
    transaction; readers neither wait for it nor see its uncommitted rows."""
    store = SqliteTaskStore(tmp_path / "store.db")
    seed(store, 2000, random.Random(5))
    counts = store.count_by_status()
    holding, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with pytest.raises(RuntimeError), store._transaction() as db:
            db.execute("DELETE FROM tasks WHERE finished_at IS NOT NULL")
            holding.set()
            release.wait(60)
            raise RuntimeError("rolled back")

    writer = threading.Thread(target=long_write)
    writer.start()
    try:
        assert holding.wait(30)
        registry = CollectorRegistry()
        registry.register(TaskStoreCollector(store))
        assert registry.get_sample_value("lemondata_tasks", {"status": "completed"}) == counts.get(
            Status.COMPLETED, 0
        )
        assert len(store.list_tasks(Status.COMPLETED, limit=10)) == 10
        assert store.model_summaries()
        assert store.latest_finished((Status.FAILED,), 5)
        assert store.due(10_000.0, 10)
        page = call(StatusPage(store), "GET", "/status")
        assert page.status == 200
        assert writer.is_alive()  # all of the above ran while the write was open
    finally:
        release.set()
        writer.join(30)
    assert store.count_by_status() == counts


def test_a_scrape_completes_while_a_big_prune_runs(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "store.db")
    seed(store, 6000, random.Random(6))
    batches = 0
    in_prune, go_on = threading.Event(), threading.Event()
    original = store._transaction

    @contextmanager
    def pausing_transaction() -> Iterator[sqlite3.Connection]:
        nonlocal batches
        with original() as db:
            batches += 1
            if batches == 3:  # a few batches in, holding the writer's lock mid-batch
                in_prune.set()
                go_on.wait(60)
            yield db

    store._transaction = pausing_transaction  # type: ignore[method-assign]
    pruner = threading.Thread(target=lambda: store.prune(3000.0, batch=100))
    pruner.start()
    try:
        assert in_prune.wait(30)
        registry = CollectorRegistry()
        registry.register(TaskStoreCollector(store))
        assert registry.get_sample_value("lemondata_tasks", {"status": "completed"}) is not None
        assert store.list_tasks(Status.COMPLETED, limit=5)
        assert pruner.is_alive() and batches == 3
    finally:
        go_on.set()
        pruner.join(60)
    assert not any(task.finished_at is not None for task in everything(store))


def test_status_page_renders_at_most_once_per_interval(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "store.db")
    seed(store, 50, random.Random(1))
    renders = 0
    original = store.count_by_status

    def counting() -> dict[Status, int]:
        nonlocal renders
        renders += 1
        return original()

    store.count_by_status = counting  # type: ignore[method-assign]
    now = [0.0]
    page = StatusPage(store, monotonic=lambda: now[0])
    bodies = {call(page, "GET", "/status").body for _ in range(20)}
    assert renders == 1 and len(bodies) == 1
    now[0] += 2.0
    call(page, "GET", "/status")
    assert renders == 2


def test_close_stops_a_prune_after_its_batch(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "store.db")
    seed(store, 1500, random.Random(8))
    finished = sum(task.finished_at is not None for task in everything(store))
    original = store._transaction
    batches = 0

    @contextmanager
    def closing_after_first() -> Iterator[sqlite3.Connection]:
        nonlocal batches
        with original() as db:
            yield db
        batches += 1
        if batches == 1:
            store._closing = True  # what close() does first

    store._transaction = closing_after_first  # type: ignore[method-assign]
    removed = store.prune(10_000.0, batch=100)
    assert removed == 100 and batches == 1
    store._closing = False
    store._transaction = original  # type: ignore[method-assign]
    assert store.prune(10_000.0, batch=100) == finished - 100  # the rest, next time
