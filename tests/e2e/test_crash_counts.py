"""A SIGKILL loses no finish from the store-wide totals (single agent).

The agent is killed in the middle of a burst of finishes, after finishing
tasks that no scrape saw, then restarted. What Prometheus computes from the
scrapes with the documented query (`increase()` of
`max without(instance, pod) (lemondata_store_tasks_finished_total)`) equals the
simulator's ground truth; the per-process counters miss what the dead process
never showed.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from exporter.simulator import Simulator
from tests.e2e.counting import Labels, by, max_over_instances, series, total_increase
from tests.harness import ExporterProcess, total, wait_for
from tests.harness.fixtures import KEY, create_tasks, exporter_config

TASKS = 120
FINISHED = ("completed", "failed", "cancelled", "expired", "timeout")


def finished_in_store(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM tasks WHERE finished_at IS NOT NULL").fetchone()[0]
        )


@pytest.mark.integration
def test_store_totals_count_what_the_killed_agent_never_showed(
    simulator: Simulator, tmp_path: Path
) -> None:
    config = exporter_config(simulator.url, tmp_path)
    store = tmp_path / "store.db"
    store_rounds: list[dict[str, dict[Labels, float]]] = []
    # The per-process counters as one instance (the same address): a restart
    # reads as a counter reset there, the most they can get.
    process_rounds: list[dict[Labels, float]] = []

    def scrape(exporter: ExporterProcess, instance: str) -> float:
        samples = exporter.metrics()
        store_rounds.append({instance: series(samples, "lemondata_store_tasks_finished_total")})
        process_rounds.append(series(samples, "lemondata_tasks_finished_total"))
        return total(samples, "lemondata_tasks_finished_total")

    first = ExporterProcess(tmp_path, config, KEY).start()
    try:
        scrape(first, "first")
        create_tasks(simulator, tmp_path / "tasks.jsonl", TASKS)
        wait_for(lambda: scrape(first, "first") >= 25, 60, "some finishes, scraped", every=0.3)
        shown = scrape(first, "first")
        # No scrape from here on: the agent finishes more, then dies.
        wait_for(
            lambda: shown + 8 <= finished_in_store(store) < TASKS - 20,
            60,
            "finishes no scrape saw",
            every=0.02,
        )
    finally:
        first.kill()
    unseen = finished_in_store(store) - shown
    # Restarted under another instance label (a new pod, say): the aggregation
    # over instances must carry the count across.
    second = ExporterProcess(tmp_path, config, KEY, port=first.port).start()
    try:

        def all_finished() -> bool:
            scrape(second, "second")
            return finished_in_store(store) == TASKS

        wait_for(all_finished, 120, "every task finished", every=0.3)
        for _ in range(2):  # models new to this process show zeros in one scrape first
            scrape(second, "second")
    finally:
        second.terminate()

    truth = Counter(str(t["status"]) for t in simulator.ground_truth())
    assert sum(truth.values()) == TASKS
    stored = by(total_increase(max_over_instances(store_rounds)), "status")
    assert stored == {status: float(n) for status, n in truth.items()}

    # The per-process counters: short by at least what died unseen.
    per_process = sum(total_increase(process_rounds).values())
    print(
        f"\n{TASKS} tasks; killed with {unseen} finishes no scrape saw; store totals count "
        f"{sum(stored.values()):.0f}, per-process counters {per_process:.0f}"
    )
    assert unseen >= 8
    assert per_process <= TASKS - unseen
    assert set(truth) <= set(FINISHED)
