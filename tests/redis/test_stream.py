"""Discovery through a Redis Stream and a consumer group."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import CollectorRegistry

from exporter.discovery.redis_stream import RedisStreamSource, parse_entry, store_knows
from exporter.discovery.runner import run_discovery
from exporter.metrics.recorder import Recorder
from exporter.model import DiscoveredTask
from exporter.store.redis import RedisTaskStore
from exporter.store.sqlite import SqliteTaskStore
from tests.harness import RedisServer, wait_for

STREAM = "s:tasks"


def recorder() -> Recorder:
    return Recorder(
        CollectorRegistry(),
        duration_buckets=[1.0],
        pending_buckets=[1.0],
        max_models=10,
        reasons=["unknown"],
        budget_rps=1.0,
    )


def source(
    client: redis.Redis, store: RedisTaskStore, consumer: str, idle: float = 30.0
) -> RedisStreamSource:
    return RedisStreamSource(
        client, STREAM, "g", consumer, store.known, claim_idle_seconds=idle, batch_size=50
    )


def pending(client: redis.Redis) -> int:
    return int(client.xpending(STREAM, "g")["pending"])


def idle_ms(client: redis.Redis) -> int:
    """How long the least idle pending entry has waited, in milliseconds."""
    entries = client.xpending_range(STREAM, "g", "-", "+", 100)
    return min(int(entry["time_since_delivered"]) for entry in entries)


def discovered(rec: Recorder) -> float:
    return rec.discovered.labels("stream")._value.get()


def test_parse_entry() -> None:
    assert parse_entry({"task_id": "img_1", "model": "m", "poll_url": "/v1/tasks/img_1"}) == (
        DiscoveredTask("img_1", "", model="m", poll_url="/v1/tasks/img_1")
    )
    assert parse_entry({"id": "img_2"}) == DiscoveredTask("img_2", "")
    assert parse_entry({"task_id": "bad id"}) == "task_id missing or not valid"
    assert str(parse_entry({"task_id": "a", "poll_url": "https://evil.example/x"})).startswith(
        "poll_url must be a path"
    )
    assert parse_entry(None) == "entry has no fields (deleted?)"


@pytest.mark.integration
def test_each_entry_goes_to_one_replica_and_is_acknowledged_once_stored(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = RedisTaskStore(redis_server.url, prefix="t:", replica_id="r1")
    # Entries written before any replica ran are read too.
    for n in range(30):
        redis_client.xadd(STREAM, {"task_id": f"img_{n}", "model": "flux"})
    one, two = source(redis_client, store, "r1"), source(redis_client, store, "r2")
    rec_one, rec_two = recorder(), recorder()
    first = [t.task_id for t in one.discover(None).tasks]
    second = [t.task_id for t in two.discover(None).tasks]
    assert len(first) == 30 and second == []  # the first took them all (batch of 50)
    for n in range(30, 80):
        redis_client.xadd(STREAM, {"task_id": f"img_{n}", "poll_url": f"/v1/tasks/img_{n}"})
    # Two passes each: offer, then acknowledge.
    for _ in range(2):
        run_discovery([two], store, rec_two, 100.0)
        run_discovery([one], store, rec_one, 100.0)
    assert discovered(rec_one) + discovered(rec_two) == 80
    assert discovered(rec_two) > 0
    assert pending(redis_client) == 0
    task = store.get("img_40")
    assert task is not None and task.poll_url == "/v1/tasks/img_40" and task.source == "stream"
    # Acknowledged entries are trimmed away.
    one._last_trim = -100.0
    one.discover(None)
    assert redis_client.xlen(STREAM) <= 1


@pytest.mark.integration
def test_a_dead_consumers_entries_are_claimed_by_another(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = RedisTaskStore(redis_server.url, prefix="t:", replica_id="r2")
    redis_client.xadd(STREAM, {"task_id": "img_a"})
    redis_client.xadd(STREAM, {"task_id": "img_b"})
    dead = source(redis_client, store, "dead", idle=0.2)
    assert len(dead.discover(None).tasks) == 2  # read, then killed before storing them
    alive = source(redis_client, store, "alive", idle=0.2)
    rec = recorder()
    run_discovery([alive], store, rec, 100.0)
    assert discovered(rec) == 0  # not idle long enough yet
    wait_for(lambda: idle_ms(redis_client) > 200, 10, "the entries to be idle 0.2 s", every=0.02)
    run_discovery([alive], store, rec, 101.0)
    assert discovered(rec) == 2
    run_discovery([alive], store, rec, 102.0)
    assert pending(redis_client) == 0
    assert discovered(rec) == 2


@pytest.mark.integration
def test_bad_entries_are_counted_and_dropped(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = RedisTaskStore(redis_server.url, prefix="t:", replica_id="r1")
    redis_client.xadd(STREAM, {"task_id": "img_ok"})
    redis_client.xadd(STREAM, {"task_id": "no spaces allowed"})
    redis_client.xadd(STREAM, {"task_id": "img_x", "poll_url": "//evil.example/x"})
    rec = recorder()
    run_discovery([source(redis_client, store, "r1")], store, rec, 100.0)
    assert discovered(rec) == 1
    assert rec.discovery_errors.labels("stream")._value.get() == 2
    run_discovery([source(redis_client, store, "r1")], store, rec, 100.0)
    assert pending(redis_client) == 0


def test_store_knows_works_with_any_store() -> None:
    store = SqliteTaskStore(":memory:")
    store.add([DiscoveredTask("a", "x")], 1.0)
    assert store_knows(store.get)(["a", "b"]) == {"a"}
