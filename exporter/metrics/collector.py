"""Scrape-time metrics read from the task store: what is tracked right now."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.metrics.recorder import Recorder
from exporter.model import ACTIVE_STATUSES, Status
from exporter.store.base import MetricsReader
from exporter.store.guard import STORE_ERRORS


class TaskStoreCollector(Collector):
    def __init__(
        self,
        store: MetricsReader,
        clock: Callable[[], float] = time.time,
        recorder: Recorder | None = None,
        reports: Callable[[], bool] = lambda: True,
        accounts: Sequence[str] | None = None,
    ) -> None:
        """`accounts`: with several accounts, their names: `lemondata_tasks` then has
        an `account` label (each account's series, zeros included)."""
        self._store = store
        self._accounts = tuple(accounts) if accounts is not None else None
        # Whether this replica exports the store-wide gauges: a store shared by
        # several replicas names one of them, so that summing over replicas, as
        # dashboards do, does not multiply the counts (see backends.py).
        self._reports = reports
        self._clock = clock
        # Maps models to labels, and knows which models get a 0 when idle.
        self._recorder = recorder

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            if not self._reports():
                return  # another replica sharing this store reports them
            counts: dict[str | None, Mapping[Status, int]] = {}
            if self._accounts is None:
                counts[None] = self._store.count_by_status()
            else:
                counts.update(self._store.count_by_account())
            oldest = self._store.oldest_active()
            processing = self._store.oldest_processing_by_model()
        except STORE_ERRORS:
            # /metrics stays up with the exporter's own metrics; lemondata_store_up
            # and lemondata_store_errors_total say why these are missing.
            return
        now = self._clock()
        yield self._tasks(counts)
        age = GaugeMetricFamily(
            "lemondata_task_oldest_age_seconds",
            "Age (now - created) of the oldest unfinished task in each status; 0 when none.",
            labels=["status"],
        )
        for status in ACTIVE_STATUSES:
            created = oldest.get(status)
            age.add_metric([status.value], max(0.0, now - created) if created else 0.0)
        yield age
        if self._recorder is not None:
            yield self._processing_age(self._recorder, now, processing)

    def _tasks(self, counts: Mapping[str | None, Mapping[Status, int]]) -> GaugeMetricFamily:
        accounts = self._accounts
        tasks = GaugeMetricFamily(
            "lemondata_tasks",
            "Tasks in the store now, by last seen status (finished ones until the retention)"
            + (", per account." if accounts is not None else "."),
            labels=["status"] if accounts is None else ["account", "status"],
        )
        for account in accounts if accounts is not None else (None,):
            found = counts.get(account, {})
            for status in Status:
                labels = [status.value] if account is None else [account, status.value]
                tasks.add_metric(labels, found.get(status, 0))
        return tasks

    def _processing_age(
        self, recorder: Recorder, now: float, processing: dict[str | None, float]
    ) -> GaugeMetricFamily:
        """A task stuck in processing shows here long before it times out."""
        oldest: dict[str, float] = {label: now for label in recorder.models()}
        for model, created in processing.items():
            label = recorder.model_label(model)
            oldest[label] = min(oldest.get(label, now), created)
        family = GaugeMetricFamily(
            "lemondata_task_processing_oldest_age_seconds",
            "Age (now - created) of the oldest task in processing, per model; 0 when none.",
            labels=["model"],
        )
        for label, created in sorted(oldest.items()):
            family.add_metric([label], max(0.0, now - created))
        return family
