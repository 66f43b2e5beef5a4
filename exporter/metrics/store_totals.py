"""Store-wide finish counts, read from the store at scrape time.

The store counts every finish in the same transaction that records it
(`TaskStore.apply`), so these counters survive a crash of any replica and
hold what no scrape saw before it. Every replica of a group exports the same
values: aggregate with `max without(instance, pod)` (docs/metrics.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from exporter.metrics.recorder import Recorder
from exporter.model import FINISHED_STATUSES, Status
from exporter.store.base import MetricsReader
from exporter.store.guard import StoreUnavailable

log = logging.getLogger(__name__)


class StoreTotalsCollector(Collector):
    def __init__(self, store: MetricsReader, recorder: Recorder) -> None:
        self._store = store
        self._recorder = recorder

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            totals = self._store.finish_totals()
        except StoreUnavailable:  # the store guard counts and logs it (once a minute)
            return
        except Exception:  # the store's own metrics say it is unwell; /metrics stays up
            log.warning("could not read the finish totals from the store", exc_info=True)
            return
        recorder = self._recorder
        # A model first known since the start shows zeros in one scrape before
        # its counts: a series that starts above zero hides its first increase.
        # That includes models only other replicas of a group have finished.
        recorder.add_model_labels({labels.model for labels in totals} - set(recorder.models()))
        unshown = recorder.unshown_models()
        finished: Counter[tuple[str, str]] = Counter()
        failures: Counter[tuple[str, str, str]] = Counter()
        for model in recorder.models():
            for status in FINISHED_STATUSES:
                finished[(model, status.value)] += 0
            for reason, failure_class in recorder.reason_classes.items():
                failures[(model, reason, failure_class)] += 0
        for labels, count in totals.items():
            n = 0 if labels.model in unshown else count
            finished[(labels.model, labels.status)] += n
            if labels.status == Status.FAILED.value and labels.reason is not None:
                failure_class = labels.failure_class or recorder.class_of(labels.reason)
                failures[(labels.model, labels.reason, failure_class)] += n
        finished_family = CounterMetricFamily(
            "lemondata_store_tasks_finished",
            "Tasks that reached a finished status, counted by the store (all replicas, "
            "across restarts); aggregate with max without(instance, pod).",
            labels=["model", "status"],
        )
        for key, n in sorted(finished.items()):
            finished_family.add_metric(list(key), n)
        yield finished_family
        failures_family = CounterMetricFamily(
            "lemondata_store_task_failures",
            "Failed tasks by reason and class, counted by the store (all replicas, across "
            "restarts); aggregate with max without(instance, pod).",
            labels=["model", "reason", "class"],
        )
        for reason_key, n in sorted(failures.items()):
            failures_family.add_metric(list(reason_key), n)
        yield failures_family
