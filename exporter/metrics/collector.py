"""Scrape-time metrics read from the task store: what is tracked right now."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.model import ACTIVE_STATUSES, Status
from exporter.store.base import TaskStore


class TaskStoreCollector(Collector):
    def __init__(self, store: TaskStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._store.reports_store_gauges():
            return  # another replica sharing this store reports them
        counts = self._store.count_by_status()
        oldest = self._store.oldest_active()
        now = self._clock()
        tasks = GaugeMetricFamily(
            "lemondata_tasks",
            "Tasks in the store now, by last seen status (finished ones until the retention).",
            labels=["status"],
        )
        for status in Status:
            tasks.add_metric([status.value], counts.get(status, 0))
        yield tasks
        age = GaugeMetricFamily(
            "lemondata_task_oldest_age_seconds",
            "Age (now - created) of the oldest unfinished task in each status; 0 when none.",
            labels=["status"],
        )
        for status in ACTIVE_STATUSES:
            created = oldest.get(status)
            age.add_metric([status.value], max(0.0, now - created) if created else 0.0)
        yield age
