"""Counters exist at zero in a scrape before their first increment.

Prometheus's `increase()` cannot see the increment that creates a series; these
tests scrape the registry as Prometheus would (`generate_latest`), with the
real recorder and store-totals collector on a SQLite store.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from exporter.classify import ReasonClassifier
from exporter.config import DEFAULT_FAILURE_REASONS
from exporter.metrics.collector import TaskStoreCollector
from exporter.metrics.recorder import NEW_SERIES_WAIT_SECONDS, Recorder
from exporter.metrics.store_totals import StoreTotalsCollector
from exporter.model import DiscoveredTask, Finish, Status
from exporter.store.base import FinishLabels
from exporter.store.sqlite import SqliteTaskStore
from tests.harness import Samples, parse_metrics
from tests.harness.updates import polled

T = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, store: SqliteTaskStore, max_models: int = 50) -> None:
        self.clock = Clock()
        self.store = store
        self.registry = CollectorRegistry()
        self.classifier = ReasonClassifier(list(DEFAULT_FAILURE_REASONS))
        self.recorder = Recorder(
            self.registry,
            duration_buckets=[1],
            pending_buckets=[1],
            max_models=max_models,
            reasons=self.classifier.reasons,
            reason_classes=self.classifier.classes,
            budget_rps=1,
            clock=self.clock,
        )
        self.recorder.restore_models(
            [*(labels.model for labels in store.finish_totals()), *store.models()]
        )
        self.registry.register(TaskStoreCollector(store, self.clock, self.recorder))
        self.registry.register(StoreTotalsCollector(store, self.recorder))
        self.registry.register(self.recorder.scrape_mark)

    def scrape(self) -> Samples:
        return parse_metrics(generate_latest(self.registry).decode())

    def finish(self, task_id: str, model: str | None, status: Status, error: str = "") -> None:
        """What the poll cycle does with a finishing answer (cycle._apply)."""
        reason = self.classifier.classify(error) if status is Status.FAILED else None
        label = self.recorder.model_label(model)
        klass = self.classifier.class_of(reason) if reason else None
        done = polled(
            status,
            Finish(status, 10.0, True, 0.0, error or None),
            at=self.clock(),
            next_poll_at=T,
            created=T - 10,
            model=model,
            first_seen=T,
            last_polled=T,
        )
        labels = FinishLabels(label, status.value, reason, klass)
        assert self.store.apply(task_id, done, self.clock(), reason, labels)
        self.recorder.task_update(model, done, reason)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_a_model_first_named_by_its_finishing_answer_shows_zero_first() -> None:
    store = SqliteTaskStore(":memory:")
    rig = Rig(store)
    store.add([DiscoveredTask("img_1", "file")], T)
    rig.scrape()
    # The first answer names the model and says the task failed: one call.
    rig.finish("img_1", "flux-pro", Status.FAILED, "blocked by the safety system")
    first = rig.scrape()
    for name in ("lemondata_tasks_finished_total", "lemondata_store_tasks_finished_total"):
        assert value(first, name, model="flux-pro", status="failed") == 0
        assert value(first, name, model="flux-pro", status="completed") == 0
    for name in ("lemondata_task_failures_total", "lemondata_store_task_failures_total"):
        labels = {"model": "flux-pro", "reason": "content_policy", "class": "user"}
        assert value(first, name, **labels) == 0
        assert value(first, name, model="flux-pro", reason="timeout", **{"class": "service"}) == 0
    second = rig.scrape()
    for name in ("lemondata_tasks_finished_total", "lemondata_store_tasks_finished_total"):
        assert value(second, name, model="flux-pro", status="failed") == 1
    labels = {"model": "flux-pro", "reason": "content_policy", "class": "user"}
    assert value(second, "lemondata_task_failures_total", **labels) == 1
    assert value(second, "lemondata_store_task_failures_total", **labels) == 1


def test_models_from_discovery_count_at_once_after_a_scrape() -> None:
    store = SqliteTaskStore(":memory:")
    rig = Rig(store)
    store.add([DiscoveredTask("a", "file", model="veo-3")], T)
    rig.recorder.add_models(["veo-3"])
    assert (
        value(rig.scrape(), "lemondata_tasks_finished_total", model="veo-3", status="completed")
        == 0
    )
    rig.finish("a", "veo-3", Status.COMPLETED)
    samples = rig.scrape()
    assert value(samples, "lemondata_tasks_finished_total", model="veo-3", status="completed") == 1
    assert (
        value(samples, "lemondata_store_tasks_finished_total", model="veo-3", status="completed")
        == 1
    )


def test_models_in_the_store_at_start_count_at_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    before = Rig(SqliteTaskStore(path))
    before.store.add([DiscoveredTask("a", "file", model="veo-3"), DiscoveredTask("b", "file")], T)
    before.recorder.add_models(["veo-3"])
    before.scrape()
    before.finish("a", "veo-3", Status.COMPLETED)
    before.store.close()
    # A restart: the store's models are known from the start, and a first
    # sample below the last one reads as a counter reset (counted in full).
    after = Rig(SqliteTaskStore(path))
    after.finish("b", "veo-3", Status.COMPLETED)
    samples = after.scrape()
    assert value(samples, "lemondata_tasks_finished_total", model="veo-3", status="completed") == 1
    assert (
        value(samples, "lemondata_store_tasks_finished_total", model="veo-3", status="completed")
        == 2
    )
    after.store.close()


def test_held_increments_apply_without_scrapes_after_a_while() -> None:
    rig = Rig(SqliteTaskStore(":memory:"))
    rig.store.add([DiscoveredTask("a", "file")], T)
    rig.finish("a", "flux", Status.COMPLETED)
    assert (
        rig.registry.get_sample_value(
            "lemondata_tasks_finished_total", {"model": "flux", "status": "completed"}
        )
        == 0
    )
    rig.clock.now += NEW_SERIES_WAIT_SECONDS
    rig.store.add([DiscoveredTask("b", "file")], T)
    rig.finish("b", "flux", Status.COMPLETED)
    samples = rig.scrape()  # the first increment is still held for one scrape...
    assert value(samples, "lemondata_tasks_finished_total", model="flux", status="completed") == 1
    samples = rig.scrape()  # ...then both are there
    assert value(samples, "lemondata_tasks_finished_total", model="flux", status="completed") == 2


def test_overflowing_models_are_counted() -> None:
    rig = Rig(SqliteTaskStore(":memory:"), max_models=2)
    rig.store.add([DiscoveredTask(f"t{n}", "file") for n in range(5)], T)
    rig.scrape()
    assert value(rig.scrape(), "lemondata_model_label_overflow_total") == 0
    for n, model in enumerate(("a", "b", "c", "d", "other")):
        rig.finish(f"t{n}", model, Status.COMPLETED)
    rig.scrape()
    samples = rig.scrape()
    assert value(samples, "lemondata_model_label_overflow_total") == 2  # c and d, not "other"
    assert value(samples, "lemondata_tasks_finished_total", model="other", status="completed") == 3


def test_oldest_processing_age_per_model() -> None:
    rig = Rig(SqliteTaskStore(":memory:"))
    rig.store.add([DiscoveredTask("a", "file", model="veo-3")], T)
    rig.recorder.add_models(["veo-3", "flux"])
    processing = polled(
        Status.PROCESSING,
        next_poll_at=T + 5,
        created=T - 100,
        model="veo-3",
        first_seen=T,
        processing_seen=T,
        last_polled=T,
    )
    assert rig.store.apply("a", processing, T, None)
    rig.clock.now = T + 500
    samples = rig.scrape()
    name = "lemondata_task_processing_oldest_age_seconds"
    assert value(samples, name, model="veo-3") == 600
    assert value(samples, name, model="flux") == 0
