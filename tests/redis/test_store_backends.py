"""The store's behaviour, the same on SQLite and on Redis; then what only Redis does."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from exporter.backends import account_budget_key
from exporter.model import DiscoveredTask, Finish, Status
from exporter.poller.shared_budget import SharedRequestBudget
from exporter.store.base import FinishLabels, TaskStore
from exporter.store.redis import RedisTaskStore, redact_url
from exporter.store.sqlite import SqliteTaskStore, StoreError
from tests.harness import RedisServer
from tests.harness.updates import polled

MakeStore = Callable[..., TaskStore]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """A factory: each call opens the same store again (another connection or replica)."""
    opened: list[TaskStore] = []
    if request.param == "redis":
        client: redis.Redis = request.getfixturevalue("redis_client")
        url = request.getfixturevalue("redis_server").url

        def make(replica: str = "r1", lease: float = 30.0, per_account: bool = False) -> TaskStore:
            store = RedisTaskStore(url, prefix="t:", replica_id=replica, lease_seconds=lease)
            opened.append(store)
            return store

        assert client.ping()
    else:

        def make(replica: str = "r1", lease: float = 30.0, per_account: bool = False) -> TaskStore:
            store = SqliteTaskStore(tmp_path / "store.db", per_account=per_account)
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


@pytest.mark.integration
def test_add_is_idempotent_and_survives_reopen(make_store: MakeStore) -> None:
    store = make_store()
    tasks = [DiscoveredTask("a", "file", model="m"), DiscoveredTask("b", "file")]
    assert len(store.add(tasks, 100.0)) == 2
    assert store.add(tasks, 101.0) == []
    assert store.add([DiscoveredTask("c", "x"), DiscoveredTask("c", "x")], 101.0) == [
        DiscoveredTask("c", "x")
    ]
    store.close()
    reopened = make_store()
    assert {t.task_id for t in reopened.due(100.0, 10)} == {"a", "b"}
    assert reopened.count_by_status() == {Status.UNKNOWN: 3}
    task = reopened.get("a")
    assert task is not None
    assert (task.source, task.model, task.poll_url, task.discovered_at) == (
        "file",
        "m",
        None,
        100.0,
    )


@pytest.mark.integration
def test_due_orders_by_next_poll_and_skips_finished(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask("a", "x"), DiscoveredTask("b", "x")], 100.0)
    assert store.apply("a", polled(Status.PROCESSING, next_poll_at=150.0), 100.0, None)
    assert [t.task_id for t in store.due(160.0, 10)] == ["b", "a"]
    assert [t.task_id for t in store.due(120.0, 10)] == ["b"]
    assert store.apply(
        "b", polled(Status.COMPLETED, Finish(Status.COMPLETED, 10.0), at=100.0), 100.0, None
    )
    assert [t.task_id for t in store.due(1000.0, 10)] == ["a"]
    assert store.due(1000.0, 0) == []


@pytest.mark.integration
def test_finish_happens_once(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask("a", "x")], 100.0)
    done = polled(Status.FAILED, Finish(Status.FAILED, 5.0, error_message="boom"), at=101.0)
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
    assert task.duration_seconds == 5.0 and task.attempts == 1
    assert not store.apply("missing", done, 102.0, None)


@pytest.mark.integration
def test_oldest_prune_and_source_state(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask("a", "x"), DiscoveredTask("b", "x")], 100.0, ("file", "[1, 10]"))
    assert store.source_state("file") == "[1, 10]"
    assert store.source_state("other") is None
    assert store.oldest_active() == {Status.UNKNOWN: 100.0}
    store.apply("a", polled(Status.COMPLETED, Finish(Status.COMPLETED), at=150.0), 150.0, None)
    assert store.prune(140.0) == 0
    assert store.prune(160.0) == 1
    assert store.get("a") is None and store.get("b") is not None
    assert store.count_by_status() == {Status.UNKNOWN: 1}
    store.add([], 170.0, ("file", "[1, 20]"))
    assert store.source_state("file") == "[1, 20]"


@pytest.mark.integration
def test_counts_oldest_and_models_follow_updates(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask("a", "x", model="m1"), DiscoveredTask("b", "x")], 100.0)
    assert store.apply("a", polled(Status.PROCESSING), 101.0, None)
    assert store.count_by_status() == {Status.UNKNOWN: 1, Status.PROCESSING: 1}
    assert store.oldest_active() == {Status.UNKNOWN: 100.0, Status.PROCESSING: 90.0}
    assert store.apply("b", polled(Status.PENDING), 101.0, None)
    assert store.count_by_status() == {Status.PENDING: 1, Status.PROCESSING: 1}
    assert store.apply("a", polled(Status.TIMEOUT, Finish(Status.TIMEOUT), at=102.0), 102.0, None)
    assert store.count_by_status() == {Status.PENDING: 1, Status.TIMEOUT: 1}
    assert store.oldest_active() == {Status.PENDING: 90.0}
    # Models seen so far (SQLite: of the tasks kept; Redis: ever, until they are re-read).
    assert "flux" in store.models() and set(store.models()) <= {"m1", "flux"}


@pytest.mark.integration
def test_concurrent_finishes_record_once(make_store: MakeStore) -> None:
    """Two replicas (or connections) race to store the same finish: one wins each task."""
    first, second = make_store("r1"), make_store("r2")
    ids = [f"t{n}" for n in range(40)]
    first.add([DiscoveredTask(i, "x") for i in ids], 100.0)
    wins: dict[str, list[str]] = {"r1": [], "r2": []}
    barrier = threading.Barrier(2)

    def race(store: TaskStore, name: str) -> None:
        barrier.wait()
        for task_id in ids:
            done = polled(Status.COMPLETED, Finish(Status.COMPLETED, 1.0), at=105.0)
            if store.apply(task_id, done, 105.0, None):
                wins[name].append(task_id)

    threads = [
        threading.Thread(target=race, args=(s, n)) for s, n in ((first, "r1"), (second, "r2"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins["r1"] + wins["r2"]) == sorted(ids)
    assert first.count_by_status() == {Status.COMPLETED: len(ids)}


@pytest.mark.integration
def test_finish_totals_count_each_finish_once_and_outlive_pruning(make_store: MakeStore) -> None:
    first, second = make_store("r1"), make_store("r2")
    ids = [f"t{n}" for n in range(30)]
    first.add([DiscoveredTask(i, "x") for i in ids], 100.0)
    failed = FinishLabels("flux", "failed", "content_policy", "user")
    completed = FinishLabels("flux", "completed")

    def race(store: TaskStore) -> None:
        for n, task_id in enumerate(ids):
            if n % 3:
                store.apply(
                    task_id,
                    polled(Status.COMPLETED, Finish(Status.COMPLETED), at=105.0),
                    105.0,
                    None,
                    completed,
                )
            else:
                done = polled(Status.FAILED, Finish(Status.FAILED, error_message="nsfw"), at=105.0)
                store.apply(task_id, done, 105.0, "content_policy", failed)

    threads = [threading.Thread(target=race, args=(store,)) for store in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # An unfinished update counts nothing, even with labels.
    first.add([DiscoveredTask("u", "x")], 100.0)
    assert first.apply("u", polled(Status.PROCESSING), 106.0, None, completed)
    expected = {completed: 20, failed: 10}
    assert first.finish_totals() == expected == second.finish_totals()
    assert first.prune(200.0) == 30
    assert make_store("r3").finish_totals() == expected  # kept by the store, not the tasks


@pytest.mark.integration
def test_oldest_processing_by_model(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask(f"t{n}", "x") for n in range(6)], 100.0)

    def to(task_id: str, status: Status, model: str | None, created: float) -> None:
        finish = Finish(status) if status is Status.COMPLETED else None
        changed = polled(status, finish, at=110.0, model=model, created=created)
        assert store.apply(task_id, changed, 110.0, None)

    assert store.oldest_processing_by_model() == {}
    to("t0", Status.PROCESSING, "flux", 50.0)
    to("t1", Status.PROCESSING, "flux", 40.0)
    to("t2", Status.PROCESSING, "veo", 70.0)
    to("t3", Status.PENDING, "veo", 10.0)  # pending: not counted
    to("t4", Status.PROCESSING, None, 80.0)
    assert store.oldest_processing_by_model() == {"flux": 40.0, "veo": 70.0, None: 80.0}
    to("t1", Status.COMPLETED, "flux", 40.0)
    to("t2", Status.PROCESSING, "veo", 70.0)  # polled again, still processing
    assert store.remove("t4")
    assert store.oldest_processing_by_model() == {"flux": 50.0, "veo": 70.0}
    to("t0", Status.COMPLETED, "flux", 50.0)
    assert store.oldest_processing_by_model() == {"veo": 70.0}


# ---- Redis only -------------------------------------------------------------


def redis_store(server: RedisServer, replica: str, lease: float = 30.0) -> RedisTaskStore:
    return RedisTaskStore(server.url, prefix="t:", replica_id=replica, lease_seconds=lease)


@pytest.mark.integration
def test_due_leases_tasks_to_one_replica(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    one, two = redis_store(redis_server, "r1", 30), redis_store(redis_server, "r2", 30)
    one.add([DiscoveredTask(f"t{n}", "x") for n in range(6)], 100.0)
    mine = {t.task_id for t in one.due(100.0, 4)}
    assert len(mine) == 4
    assert {t.task_id for t in one.due(100.0, 4)} == mine  # the holder sees them again
    theirs = {t.task_id for t in two.due(101.0, 10)}
    assert theirs == {f"t{n}" for n in range(6)} - mine
    # The first replica died: its leases run out and the second takes over.
    assert {t.task_id for t in two.due(131.0, 10)} == {f"t{n}" for n in range(6)}
    late = next(iter(mine))
    done = polled(Status.COMPLETED, Finish(Status.COMPLETED, 1.0), at=132.0)
    assert not one.apply(late, done, 132.0, None)  # the lease is someone else's now
    assert two.apply(late, done, 132.0, None)
    assert two.finished_by(late) == "r2"
    assert not two.apply(late, done, 133.0, None)
    # A stored non-terminal result frees the task for any replica.
    other = sorted(theirs)[0]
    assert two.apply(other, polled(Status.PROCESSING, next_poll_at=140.0), 133.0, None)
    assert other in {t.task_id for t in one.due(141.0, 10)}
    one.close()
    two.close()


def test_unreachable_redis_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"redis://:\*\*\*@127.0.0.1:1/0"):
        RedisTaskStore("redis://:secret@127.0.0.1:1/0")
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.integration
def test_shared_budget_spaces_the_whole_group(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    a = SharedRequestBudget(redis_client, rate=10, burst=1, prefix="b:")
    b = SharedRequestBudget(redis_client, rate=10, burst=1, prefix="b:")
    waits = [budget.reserve() for budget in (a, b, a, b, a)]
    # One slot every 0.1 s across both, give or take the time the calls took.
    for number, wait in enumerate(waits):
        assert number * 0.1 - 0.05 <= wait <= number * 0.1 + 0.01
    b.pause_for(5)
    assert 4.5 < a.reserve() <= 5.0
    other_group = SharedRequestBudget(redis_client, rate=10, burst=1, prefix="c:")
    assert other_group.reserve() == 0.0


@pytest.mark.integration
def test_each_account_has_its_own_shared_budget(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    def budget(account: str) -> SharedRequestBudget:
        return SharedRequestBudget(
            redis_client, rate=10, burst=1, prefix="acc:", key=account_budget_key(account)
        )

    a_here, a_there, b = budget("team-a"), budget("team-a"), budget("team-b")
    a_here.pause_for(5)  # team-a's 429: every replica of the group waits, for team-a only
    assert 4.5 < a_there.reserve() <= 5.0
    assert b.reserve() == 0.0
    assert redis_client.exists("acc:acct:team-a:budget:pause", "acc:acct:team-b:budget") == 2


# ---- listing, history and removal (the task API and the status page) --------


@pytest.mark.integration
def test_list_tasks_pages_and_filters(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask(f"t{n}", "x", model="m" if n % 2 else None) for n in range(7)], 100.0)
    assert store.apply("t3", polled(Status.PROCESSING), 101.0, None)  # model becomes flux
    ids = [t.task_id for t in store.list_tasks(limit=3)]
    assert ids == ["t0", "t1", "t2"]
    assert [t.task_id for t in store.list_tasks(after="t2", limit=3)] == ["t3", "t4", "t5"]
    assert [t.task_id for t in store.list_tasks(status=Status.UNKNOWN, model="m")] == ["t1", "t5"]
    assert [t.task_id for t in store.list_tasks(status=Status.PROCESSING)] == ["t3"]
    assert store.list_tasks(after="t6") == []


@pytest.mark.integration
def test_events_record_status_changes(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask("a", "x")], 100.0)
    assert store.events("a") == []
    assert store.apply("a", polled(Status.PENDING), 101.0, None)
    assert store.apply("a", polled(Status.PENDING), 102.0, None)  # no change, no event
    assert store.apply(
        "a", polled(Status.COMPLETED, Finish(Status.COMPLETED, 3.0), at=103.0), 103.0, None
    )
    assert [(e.at, e.previous, e.status) for e in store.events("a")] == [
        (101.0, Status.UNKNOWN, Status.PENDING),
        (103.0, Status.PENDING, Status.COMPLETED),
    ]
    assert store.events("missing") == []
    assert store.remove("a")
    assert not store.remove("a")
    assert store.events("a") == [] and store.get("a") is None
    assert store.count_by_status() == {}


@pytest.mark.integration
def test_events_are_capped_per_task(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask("a", "x")], 100.0)
    for n in range(60):
        status = Status.PENDING if n % 2 else Status.PROCESSING
        assert store.apply("a", polled(status), 101.0 + n, None)
    events = store.events("a")
    assert len(events) == 50 and events[-1].at == 160.0


@pytest.mark.integration
def test_in_flight_and_latest_finished(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask(i, "x") for i in ("a", "b", "c", "d")], 100.0)
    later = polled(Status.PENDING, created=95.0, model=None, first_seen=101.0, last_polled=101.0)
    assert store.apply("c", later, 101.0, None)
    assert [t.task_id for t in store.in_flight(10)] == ["c", "a", "b", "d"]
    assert [t.task_id for t in store.in_flight(2)] == ["c", "a"]
    assert store.apply("a", polled(Status.FAILED, Finish(Status.FAILED, 1.0), at=110.0), 110.0, "x")
    assert store.apply(
        "b", polled(Status.COMPLETED, Finish(Status.COMPLETED, 2.0), at=120.0), 120.0, None
    )
    assert store.apply("d", polled(Status.FAILED, Finish(Status.FAILED, 1.0), at=130.0), 130.0, "x")
    assert [t.task_id for t in store.latest_finished([Status.FAILED], 10)] == ["d", "a"]
    both = store.latest_finished([Status.FAILED, Status.COMPLETED], 2)
    assert [t.task_id for t in both] == ["d", "b"]
    assert store.latest_finished([], 10) == []
    assert [t.task_id for t in store.in_flight(10)] == ["c"]


@pytest.mark.integration
def test_model_summaries(make_store: MakeStore) -> None:
    store = make_store()
    store.add(
        [
            DiscoveredTask("a", "x", model="flux"),
            DiscoveredTask("b", "x", model="flux"),
            DiscoveredTask("c", "x", model="flux"),
            DiscoveredTask("d", "x"),
        ],
        100.0,
    )
    for task_id, seconds in (("a", 4.0), ("b", 8.0)):
        done = polled(Status.COMPLETED, Finish(Status.COMPLETED, seconds), at=110.0)
        assert store.apply(task_id, done, 110.0, None)
    summaries = {s.model: s for s in store.model_summaries()}
    assert set(summaries) == {None, "flux"}
    flux = summaries["flux"]
    assert (flux.active, flux.finished, flux.failed, flux.median_duration_seconds) == (
        1,
        2,
        0,
        6.0,
    )
    assert (summaries[None].active, summaries[None].median_duration_seconds) == (1, None)
    assert [s.model for s in store.model_summaries()] == [None, "flux"]


@pytest.mark.integration
def test_progress_is_kept(make_store: MakeStore) -> None:
    store = make_store()
    store.add([DiscoveredTask("a", "x")], 100.0)
    moving = polled(
        Status.PROCESSING,
        created=95.0,
        model=None,
        first_seen=101.0,
        processing_seen=101.0,
        last_polled=101.0,
        progress=40.0,
        progress_at=100.5,
    )
    assert store.apply("a", moving, 101.0, None)
    task = store.get("a")
    assert task is not None and (task.progress, task.progress_at) == (40.0, 100.5)


@pytest.mark.integration
def test_model_stats_survive_reopen(make_store: MakeStore) -> None:
    from exporter.store.base import ModelStatsStore

    store = make_store()
    assert isinstance(store, ModelStatsStore)
    store.save_model_stats({"flux": "{1}", "veo": "{2}"})
    store.save_model_stats({"veo": None})
    store.close()
    reopened = make_store()
    assert isinstance(reopened, ModelStatsStore)
    assert reopened.load_model_stats() == {"flux": "{1}"}


@pytest.mark.integration
def test_one_replica_at_a_time_reports_the_store_gauges(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    one, two = redis_store(redis_server, "r1", 1), redis_store(redis_server, "r2", 1)
    assert one.reports_store_gauges()
    assert one.reports_store_gauges()  # renewed by its holder
    assert not two.reports_store_gauges()
    redis_client.delete("t:gauge_reporter")  # as if r1's lease ran out
    assert two.reports_store_gauges()
    assert not one.reports_store_gauges()
    one.close()
    two.close()


@pytest.mark.integration
def test_each_account_has_its_own_due_tasks(make_store: MakeStore) -> None:
    store = make_store(per_account=True)
    store.add(
        [
            DiscoveredTask("a1", "api", account="team-a"),
            DiscoveredTask("b1", "api", account="team-b"),
            DiscoveredTask("b2", "file", account="team-b"),
            DiscoveredTask("d1", "file"),
        ],
        100.0,
    )
    store.close()
    store = make_store(per_account=True)  # the account survives the round trip
    assert store.count_by_account() == {
        "team-a": {Status.UNKNOWN: 1},
        "team-b": {Status.UNKNOWN: 2},
        "default": {Status.UNKNOWN: 1},
    }
    assert [t.task_id for t in store.due(100.0, 10, "team-a")] == ["a1"]
    assert sorted(t.task_id for t in store.due(100.0, 10, "team-b")) == ["b1", "b2"]
    assert [t.task_id for t in store.due(100.0, 10, "default")] == ["d1"]
    task = store.get("b1")
    assert task is not None and task.account == "team-b"
    # A poll moves the task within its own account's queue only.
    assert store.apply("b1", polled(Status.PROCESSING, next_poll_at=300.0), 101.0, None)
    assert [t.task_id for t in store.due(200.0, 10, "team-b")] == ["b2"]
    assert sorted(t.task_id for t in store.due(300.0, 10, "team-b")) == ["b1", "b2"]
    assert store.due(300.0, 10, "team-a")[0].task_id == "a1"
    finish = Finish(Status.COMPLETED, duration=10.0)
    assert store.apply("a1", polled(Status.COMPLETED, finish), 102.0, None)
    assert store.due(400.0, 10, "team-a") == []
    assert store.remove("b2")
    assert [t.task_id for t in store.due(400.0, 10, "team-b")] == ["b1"]
    got = store.get("a1")
    assert got is not None and got.account == "team-a"
    assert store.count_by_account() == {
        "team-a": {Status.COMPLETED: 1},
        "team-b": {Status.PROCESSING: 1},
        "default": {Status.UNKNOWN: 1},
    }
    assert store.prune(200.0) == 1  # a1, finished at 102
    assert store.count_by_account() == {
        "team-b": {Status.PROCESSING: 1},
        "default": {Status.UNKNOWN: 1},
    }


@pytest.mark.integration
def test_tasks_of_the_default_account_keep_the_old_redis_layout(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    store = RedisTaskStore(redis_server.url, prefix="old:", replica_id="r1")
    store.add([DiscoveredTask("d1", "file"), DiscoveredTask("n1", "file", account="n")], 100.0)
    assert redis_client.hget("old:t:d1", "ac") is None  # as older versions wrote it
    assert redis_client.zrange("old:q", 0, -1) == ["d1"]
    assert redis_client.zrange("old:q:n", 0, -1) == ["n1"]
    assert [t.task_id for t in store.due(100.0, 10)] == ["d1"]
    task = store.get("d1")
    assert task is not None and task.account == "default"
    store.close()
