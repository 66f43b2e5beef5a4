"""The Redis store at day scale, against a real redis-server: filters read only
matching tasks, summaries come from counters, prune loses nothing, a finished
task takes well under the 1.2 KB of the old layout, an old store is converted."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest
import redis

from exporter.model import DiscoveredTask, Status, Task
from exporter.store.base import TaskEvent
from exporter.store.redis import RedisTaskStore, migrate
from tests.harness import RedisServer
from tests.store.test_sqlite_scale import MODELS, seed

pytestmark = pytest.mark.integration


def make(redis_server: RedisServer, redis_client: redis.Redis) -> RedisTaskStore:
    return RedisTaskStore(redis_server.url, prefix="s:", replica_id="r1", client=redis_client)


def everything(store: RedisTaskStore) -> list[Task]:
    return store.list_tasks(limit=10_000_000)


def test_filters_summaries_and_prune_match_a_full_scan(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = make(redis_server, redis_client)
    seed(store, 3000, random.Random(14))  # type: ignore[arg-type]
    tasks = everything(store)
    assert len(tasks) == 3000
    assert [task.task_id for task in tasks] == sorted(task.task_id for task in tasks)
    for status in (None, *Status):
        for model in (None, "flux-pro", "veo-3", "nope"):
            expected = [
                task.task_id
                for task in tasks
                if (status is None or task.status is status)
                and (model is None or task.model == model)
            ]
            pages: list[str] = []
            after = None
            while True:
                page = store.list_tasks(status, model, after, 250)
                pages += [task.task_id for task in page]
                if len(page) < 250:
                    break
                after = page[-1].task_id
            assert pages == expected, (status, model)
    wanted = (Status.FAILED, Status.EXPIRED, Status.TIMEOUT)
    latest = sorted(
        (task for task in tasks if task.status in wanted),
        key=lambda task: (-(task.finished_at or 0), task.task_id),
    )[:20]
    assert [t.task_id for t in store.latest_finished(wanted, 20)] == [t.task_id for t in latest]
    summaries = {summary.model: summary for summary in store.model_summaries()}
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
        # Durations are counted to 3 significant digits.
        assert summary.median_duration_seconds == pytest.approx(
            statistics.median(durations), rel=0.005
        )
    assert store.models() == sorted(model for model in MODELS if model is not None)

    totals = store.finish_totals()
    events = {task.task_id: store.events(task.task_id) for task in tasks}
    removed = store.prune(1500.0)
    gone = {t.task_id for t in tasks if t.finished_at is not None and t.finished_at < 1500.0}
    assert removed == len(gone) > 1000
    after_prune = everything(store)
    assert after_prune == [task for task in tasks if task.task_id not in gone]
    for task_id, kept in events.items():
        assert store.events(task_id) == ([] if task_id in gone else kept)
    assert store.finish_totals() == totals
    assert store.count_by_status() == dict(Counter(task.status for task in after_prune))
    store._medians_at = -float("inf")
    for summary in store.model_summaries():
        mine = [task for task in after_prune if task.model == summary.model]
        assert summary.finished == sum(task.finished_at is not None for task in mine)
    for task in after_prune:
        assert store.remove(task.task_id)
    assert store.count_by_status() == {}
    assert store.model_summaries() == []
    leftover = sorted(key for key in redis_client.scan_iter("s:*") if not key.startswith("s:fin"))
    assert set(leftover) <= {"s:n", "s:ma", "s:mf", "s:mx", "s:ms", "s:finish_totals"}, leftover


def test_a_finished_task_takes_under_600_bytes(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = make(redis_server, redis_client)
    seed(store, 200, random.Random(2))  # type: ignore[arg-type]
    before = int(redis_client.info("memory")["used_memory"])
    count = 20_000
    rng = random.Random(7)
    batch = []
    for n in range(count):
        model = rng.choice(("flux-pro", "veo-3", "sora-2"))
        task = Task(
            task_id=f"img_{rng.getrandbits(96):024x}",
            source="file",
            model=model,
            poll_url=None,
            status=Status.COMPLETED,
            discovered_at=1_764_600_000.0 + n,
            next_poll_at=0.0,
            created=1_764_599_999.5 + n,
            first_seen=1_764_600_000.9 + n,
            last_polled=1_764_600_090.2 + n,
            processing_seen=1_764_600_003.1 + n,
            attempts=9,
            consecutive_errors=0,
            finished_at=1_764_600_090.7 + n,
            duration_seconds=round(rng.uniform(20, 200), 3),
        )
        at = task.discovered_at
        history = [
            TaskEvent(at + 1, Status.PENDING, Status.UNKNOWN),
            TaskEvent(at + 3, Status.PROCESSING, Status.PENDING),
            TaskEvent(at + 90, Status.COMPLETED, Status.PROCESSING),
        ]
        batch.append((task, history))
    assert store.restore(batch) == count
    per_task = (int(redis_client.info("memory")["used_memory"]) - before) / count
    print(f"bytes per finished task: {per_task:.0f}")
    assert per_task < 600, per_task


def test_an_old_store_is_converted(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Keys as the previous layout wrote them: converted on open, nothing lost."""
    p = "old:"
    for n, status in enumerate(("processing", "completed", "unknown")):
        task_id = f"task-{n}"
        fields = {
            "task_id": task_id,
            "source": "file",
            "status": status,
            "discovered_at": "100.0",
            "next_poll_at": "200.0",
            "attempts": "2",
            "consecutive_errors": "0",
            "model": "veo-3",
            "created": "99.5",
        }
        if status == "completed":
            fields |= {"finished_at": "150.25", "duration_seconds": "50.75", "finished_by": "r9"}
            redis_client.zadd(p + "finished", {task_id: 150.25})
        else:
            redis_client.zadd(p + "due", {task_id: 200.0})
            redis_client.zadd(f"{p}active:{status}", {task_id: 99.5})
        redis_client.hset(f"{p}task:{task_id}", mapping=fields)
        redis_client.rpush(f"{p}events:{task_id}", f"101.0 {status} unknown")
        redis_client.zadd(p + "ids", {task_id: 0})
        redis_client.hincrby(p + "count", status, 1)
    redis_client.hset(p + "finish_totals", "veo-3\tcompleted\t\t", 1)
    store = RedisTaskStore(redis_server.url, prefix=p, replica_id="r1", client=redis_client)
    assert [task.task_id for task in everything(store)] == ["task-0", "task-1", "task-2"]
    done = store.get("task-1")
    assert done is not None and (done.finished_at, done.duration_seconds) == (150.25, 50.75)
    assert store.events("task-1") == [TaskEvent(101.0, Status.COMPLETED, Status.UNKNOWN)]
    assert store.count_by_status() == {
        Status.PROCESSING: 1,
        Status.COMPLETED: 1,
        Status.UNKNOWN: 1,
    }
    assert [task.task_id for task in store.due(1000.0, 10)] == ["task-0", "task-2"]
    assert store.oldest_processing_by_model() == {"veo-3": 99.5}
    assert len(store.finish_totals()) == 1
    assert not list(redis_client.scan_iter(p + "task:*"))
    assert not redis_client.exists(p + "ids", p + "finished", p + "count", p + "due")
    assert migrate(store) == 0  # once
    store.add([DiscoveredTask("task-3", "api")], 300.0)
    assert store.get("task-3") is not None
