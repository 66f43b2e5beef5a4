"""A SIGKILLed replica loses no finish from the store-wide totals (three replicas).

Three replicas share one Redis store. The busiest is killed in the middle of
a burst of finishes, after finishing tasks that no scrape of it saw. What
Prometheus computes from the scrapes with the documented query (`increase()`
of `max without(instance, pod) (lemondata_store_tasks_finished_total)`)
equals the simulator's ground truth; the per-replica counters, summed, miss
what the dead replica never showed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis

from exporter.simulator import Simulator, SimulatorSettings
from tests.e2e.counting import Labels, by, max_over_instances, series, total_increase
from tests.harness import ExporterProcess, RedisServer, free_port, wait_for
from tests.redis.test_group import KEY, MODELS, STREAM, finished_by, replica_config

TASKS = 90


@pytest.mark.integration
def test_store_totals_count_what_a_killed_replica_never_showed(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sim = Simulator(
        SimulatorSettings(port=0, api_keys=(KEY,), time_scale=60, seed=5, rate_limit_per_minute=0)
    )
    sim.start()
    replicas: dict[str, ExporterProcess] = {}
    for name in ("r1", "r2", "r3"):
        workdir = tmp_path / name
        workdir.mkdir()
        config = replica_config(sim.url, redis_server.url, name, free_port())
        config["proxy"] = {"enabled": False}
        config["polling"]["requests_per_second"] = 100
        replicas[name] = ExporterProcess(workdir, config, KEY)
    store_rounds: list[dict[str, dict[Labels, float]]] = []
    process_rounds: list[dict[str, dict[Labels, float]]] = []
    live = set(replicas)

    def scrape_round() -> None:
        stored, counted = {}, {}
        for name in sorted(live):
            samples = replicas[name].metrics()
            stored[name] = series(samples, "lemondata_store_tasks_finished_total")
            counted[name] = series(samples, "lemondata_tasks_finished_total")
        store_rounds.append(stored)
        process_rounds.append(counted)

    def wins() -> Counter[str]:
        return Counter(winner for winner in finished_by(redis_client).values() if winner)

    try:
        for process in replicas.values():
            process.start()
        scrape_round()
        for number in range(TASKS):
            kind, model = MODELS[number % len(MODELS)]
            task = sim.create_task(model=model, kind=kind)  # type: ignore[arg-type]
            fields = {"task_id": task["task_id"], "model": model, "poll_url": task["poll_url"]}
            redis_client.xadd(STREAM, fields)

        def some_finished() -> bool:
            scrape_round()
            return sum(wins().values()) >= TASKS // 4

        wait_for(some_finished, 60, "a quarter of the tasks finished", every=0.3)
        victim = wins().most_common(1)[0][0]
        live.discard(victim)  # never scraped again
        shown = wins()[victim]
        wait_for(lambda: wins()[victim] >= shown + 3, 60, f"{victim} to finish more", every=0.02)
        replicas[victim].kill()
        unseen = wins()[victim] - shown
        # Its leases run out (3 s), the survivors take its tasks over.

        def all_finished() -> bool:
            scrape_round()
            return sum(wins().values()) == TASKS

        wait_for(all_finished, 120, "every task finished by the group", every=0.3)

        def totals_settled() -> bool:
            # Models new to a process show zeros in one scrape first: scrape
            # until the totals Prometheus would compute count every task.
            scrape_round()
            stored = by(total_increase(max_over_instances(store_rounds)), "status")
            return sum(stored.values()) == TASKS

        wait_for(totals_settled, 30, "the store totals to count every task", every=0.3)
    finally:
        for process in replicas.values():
            process.kill()
        sim.stop()

    truth = Counter(str(t["status"]) for t in sim.ground_truth())
    assert sum(truth.values()) == TASKS
    stored = by(total_increase(max_over_instances(store_rounds)), "status")
    assert stored == {status: float(n) for status, n in truth.items()}
    per_replica = sum(
        sum(total_increase([r[name] for r in process_rounds if name in r]).values())
        for name in replicas
    )
    print(
        f"\n{TASKS} tasks; {victim} killed with {unseen} finishes no scrape saw; store totals "
        f"count {sum(stored.values()):.0f}, per-replica counters summed {per_replica:.0f}"
    )
    assert unseen >= 3
    assert per_replica <= TASKS - unseen
