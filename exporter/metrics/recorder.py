"""Counters and histograms fed by the pipeline as things happen.

Everything here is in memory and starts from zero at each start, as
Prometheus counters do; finished tasks are recorded only when the store
accepted their terminal record, so none is counted twice.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.model import (
    FINISHED_STATUSES,
    UNKNOWN_STATUS_KIND,
    OutcomeKind,
    PollOutcome,
    RateLimitInfo,
    TaskUpdate,
)

# `_created` series double the series count and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

UNKNOWN_MODEL = "unknown"
OTHER_MODEL = "other"
MAX_LABEL_CHARS = 64
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._:/-]")
# Latency of one status request: loopback to a slow upstream.
API_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UNCERTAINTY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
DETECTION_BUCKETS = (0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
API_ERROR_KINDS = (
    *(k.value for k in OutcomeKind if k is not OutcomeKind.REPORT),
    UNKNOWN_STATUS_KIND,
)
# A usable answer, even if not good news: the API is reachable and takes the key.
_API_ANSWERED = (OutcomeKind.REPORT, OutcomeKind.NOT_FOUND, OutcomeKind.RATE_LIMITED)


class ModelLabels:
    """Maps free-form model names to a bounded set of label values."""

    def __init__(self, max_models: int) -> None:
        self._max = max_models
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, model: str | None) -> str:
        if not model:
            return UNKNOWN_MODEL
        label = _LABEL_UNSAFE.sub("_", model.strip())[:MAX_LABEL_CHARS] or UNKNOWN_MODEL
        with self._lock:
            if label in self._known:
                return label
            if len(self._known) >= self._max:
                return OTHER_MODEL
            self._known.add(label)
            return label


class Recorder:
    """The exporter's metrics, in a registry of their own."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        duration_buckets: Sequence[float],
        pending_buckets: Sequence[float],
        max_models: int,
        reasons: Sequence[str],
        budget_rps: float,
    ) -> None:
        self.model_label = ModelLabels(max_models)
        self._reasons = tuple(reasons)
        self._initialised_models: set[str] = set()
        self._lock = threading.Lock()
        self.finished = Counter(
            "lemondata_tasks_finished",
            "Tasks that reached a finished status.",
            ["model", "status"],
            registry=registry,
        )
        self.failures = Counter(
            "lemondata_task_failures",
            "Failed tasks by the reason classified from their error text.",
            ["model", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "lemondata_task_duration_seconds",
            "Time from a task's creation to its finish (exact when the API sends `updated`).",
            ["model", "status"],
            buckets=duration_buckets,
            registry=registry,
        )
        self.uncertainty = Histogram(
            "lemondata_task_duration_uncertainty_seconds",
            "For durations measured without `updated`: how late the finish may have been seen "
            "(time since the previous poll).",
            buckets=UNCERTAINTY_BUCKETS,
            registry=registry,
        )
        self.pending = Histogram(
            "lemondata_task_pending_seconds",
            "Time from a task's creation to the first poll that saw it processing.",
            ["model"],
            buckets=pending_buckets,
            registry=registry,
        )
        self.discovered = Counter(
            "lemondata_tasks_discovered",
            "New tasks added to the store, by discovery source.",
            ["source"],
            registry=registry,
        )
        self.discovery_errors = Counter(
            "lemondata_discovery_errors",
            "Discovery reads or entries that could not be used, by source.",
            ["source"],
            registry=registry,
        )
        self.api_requests = Counter(
            "lemondata_api_requests",
            "Status requests sent upstream, by HTTP status code (`none` when no response came).",
            ["code"],
            registry=registry,
        )
        self.api_latency = Histogram(
            "lemondata_api_request_duration_seconds",
            "Latency of status requests.",
            buckets=API_LATENCY_BUCKETS,
            registry=registry,
        )
        self.api_errors = Counter(
            "lemondata_api_errors",
            "Status requests that failed or gave an unusable answer.",
            ["kind"],
            registry=registry,
        )
        for kind in API_ERROR_KINDS:
            self.api_errors.labels(kind)
        self.cycles = Counter("lemondata_poll_cycles", "Poll cycles run.", registry=registry)
        self.cycle_duration = Histogram(
            "lemondata_poll_cycle_duration_seconds",
            "Wall time of a poll cycle.",
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.last_cycle = Gauge(
            "lemondata_last_poll_cycle_timestamp_seconds",
            "When the last poll cycle ended (unix time).",
            registry=registry,
        )
        self.poll_lag = Gauge(
            "lemondata_poll_lag_seconds",
            "In the last poll cycle, how long the most overdue task had been due; "
            "it grows when the request budget is too small.",
            registry=registry,
        )
        Gauge(
            "lemondata_poll_budget_requests_per_second",
            "Configured budget of status requests per second.",
            registry=registry,
        ).set(budget_rps)
        self.allowed_rps = Gauge(
            "lemondata_poll_allowed_requests_per_second",
            "Request rate the agent allows itself now: the configured budget, lowered "
            "when X-RateLimit headers show the account running low.",
            registry=registry,
        )
        self.allowed_rps.set(budget_rps)
        self.detection = Histogram(
            "lemondata_task_detection_delay_seconds",
            "Time from a task's finish upstream to the agent seeing it: exact when the API "
            "sends `updated`, otherwise the time since the previous poll (an upper bound).",
            buckets=DETECTION_BUCKETS,
            registry=registry,
        )
        Gauge(
            "lemondata_exporter_build_info",
            "Version of the exporter; always 1.",
            ["version"],
            registry=registry,
        ).labels(__version__).set(1)
        self.last_seen = LastSeenValues()
        registry.register(self.last_seen)

    def add_models(self, models: Iterable[str | None]) -> None:
        """Create zero series for models, so rates and ratios exist from the start."""
        for model in models:
            self._init_model(self.model_label(model))

    def _init_model(self, label: str) -> None:
        with self._lock:
            if label in self._initialised_models:
                return
            self._initialised_models.add(label)
        for status in FINISHED_STATUSES:
            self.finished.labels(label, status.value)
        for reason in self._reasons:
            self.failures.labels(label, reason)

    def tasks_discovered(self, source: str, count: int) -> None:
        self.discovered.labels(source).inc(count)

    def discovery_error(self, source: str) -> None:
        self.discovery_errors.labels(source).inc()

    def api_response(self, outcome: PollOutcome) -> None:
        self.api_requests.labels(str(outcome.code) if outcome.code else "none").inc()
        self.api_latency.observe(outcome.latency)
        if outcome.kind is not OutcomeKind.REPORT:
            self.api_errors.labels(outcome.kind.value).inc()
        if outcome.rate_limit is not None:
            self.last_seen.rate_limit(outcome.rate_limit)

    def api_reachable(self, answered: bool) -> None:
        self.last_seen.api_up = 1.0 if answered else 0.0

    def task_update(self, model: str | None, update: TaskUpdate, reason: str | None) -> None:
        """Observe what a stored update means; call only once the store accepted it."""
        if update.error_kind:
            self.api_errors.labels(update.error_kind).inc()
        label = self.model_label(model)
        if update.pending_seconds is not None:
            self.pending.labels(label).observe(update.pending_seconds)
        finish = update.finish
        if finish is None:
            return
        self._init_model(label)
        self.finished.labels(label, finish.status.value).inc()
        if reason is not None:
            self.failures.labels(label, reason).inc()
        if finish.duration is not None:
            self.duration.labels(label, finish.status.value).observe(finish.duration)
            if not finish.exact and finish.uncertainty is not None:
                self.uncertainty.observe(finish.uncertainty)

    def detection_delay(self, seconds: float) -> None:
        self.detection.observe(max(0.0, seconds))

    def allowed_rate(self, rps: float) -> None:
        self.allowed_rps.set(rps)

    def cycle_done(self, duration: float, lag: float, ended_at: float) -> None:
        self.cycles.inc()
        self.cycle_duration.observe(duration)
        self.poll_lag.set(lag)
        self.last_cycle.set(ended_at)


def answered(outcome: PollOutcome) -> bool:
    return outcome.kind in _API_ANSWERED


class LastSeenValues(Collector):
    """Values known only once the API has answered; absent until then.

    Exporting 0 before the first answer would claim the API is down or the
    rate-limit budget is exhausted.
    """

    def __init__(self) -> None:
        self.api_up: float | None = None
        self._limit: float | None = None
        self._remaining: float | None = None
        self._reset: float | None = None

    def rate_limit(self, info: RateLimitInfo) -> None:
        """Keep each header's last value; a response without one changes nothing."""
        self._limit = info.limit if info.limit is not None else self._limit
        self._remaining = info.remaining if info.remaining is not None else self._remaining
        self._reset = info.reset if info.reset is not None else self._reset

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, help_text, value in (
            (
                "lemondata_api_up",
                "1 if the last poll cycle got a usable answer from the API "
                "(absent until the first answer).",
                self.api_up,
            ),
            (
                "lemondata_api_rate_limit_limit",
                "X-RateLimit-Limit of the last response that had it.",
                self._limit,
            ),
            (
                "lemondata_api_rate_limit_remaining",
                "X-RateLimit-Remaining of the last response that had it.",
                self._remaining,
            ),
            (
                "lemondata_api_rate_limit_reset_timestamp_seconds",
                "X-RateLimit-Reset (unix time) of the last response that had it.",
                self._reset,
            ),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
