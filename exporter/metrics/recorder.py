"""Counters and histograms fed by the pipeline as things happen.

Everything here is in memory and starts from zero at each start, as
Prometheus counters do; finished tasks are recorded only when the store
accepted their terminal record, so none is counted twice.

Series exist at zero before their first increment, else `increase()` cannot
see it: every (model, status) and (model, reason, class) set is created when
the model is first known, and for a model first known after the start, the
increments wait until one scrape has shown the zeros (`ScrapeMark`).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

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
from exporter.config import default_failure_class
from exporter.model import (
    FINISHED_STATUSES,
    UNKNOWN_STATUS_KIND,
    Finish,
    OutcomeKind,
    PollOutcome,
    RateLimitInfo,
    TaskUpdate,
)
from exporter.poller.events import Change, CycleEnd, PollListener

# The exemplar label: the task behind an observation, never a series label.
EXEMPLAR_LABEL = "task_id"
# OpenMetrics caps an exemplar's label set at 128 UTF-8 characters, names and
# values together; task IDs may be 128 long. A longer one gets no exemplar: a
# cut ID would point at another task or none, which is worse than no link.
MAX_EXEMPLAR_CHARS = 128

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
ACCOUNT_STATES = ("ok", "key_rejected", "quota_exhausted")


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

    def overflows(self, model: str | None, label: str) -> bool:
        """Whether `label` stands for `model` only because the cap was reached."""
        return label == OTHER_MODEL and model is not None and model.strip() != OTHER_MODEL


# A model first known after the start whose zeros no scrape has shown within
# this time (nobody scrapes?) gets its increments anyway.
NEW_SERIES_WAIT_SECONDS = 120.0


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
        reason_classes: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        model_labels: ModelLabels | None = None,
    ) -> None:
        """`model_labels`: shared by the Recorders of several accounts, so that the
        cap on model labels is one for all of them."""
        self.model_label = model_labels or ModelLabels(max_models)
        classes = dict(reason_classes or {})
        self.reason_classes = {r: classes.get(r) or default_failure_class(r) for r in reasons}
        # Model label -> scrape number when it was first known (-1: known at the start).
        self._models_born: dict[str, tuple[int, float]] = {}
        # Increments of models whose zeros no scrape has shown yet.
        self._held: Tally[tuple[str, str, str | None]] = Tally()
        self._scrapes = 0
        self._lock = threading.Lock()
        self._clock = clock
        self.finished = Counter(
            "lemondata_tasks_finished",
            "Tasks that reached a finished status, seen by this process.",
            ["model", "status"],
            registry=registry,
        )
        self.failures = Counter(
            "lemondata_task_failures",
            "Failed tasks seen by this process, by the reason classified from their error "
            "text and its class (user: the caller's request; service: everything else).",
            ["model", "reason", "class"],
            registry=registry,
        )
        self.duration = Histogram(
            "lemondata_task_duration_seconds",
            "Time from a task's creation to its finish (exact when the API sends `updated`, "
            "else the midpoint between the last poll that saw it unfinished and the first "
            "that saw it finished).",
            ["model", "status"],
            buckets=duration_buckets,
            registry=registry,
        )
        self.uncertainty = Histogram(
            "lemondata_task_duration_uncertainty_seconds",
            "For durations measured without `updated`: how far the true finish may be from "
            "the measured one (half the time between the two polls around it).",
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
        self.label_overflow = Counter(
            "lemondata_model_label_overflow",
            "Finished tasks counted under model `other` because `metrics.max_models` "
            "distinct models were already seen.",
            registry=registry,
        )
        self.api_requests = Counter(
            "lemondata_api_requests",
            "Status requests sent upstream (probes included), by HTTP status code "
            "(`none` when no response came).",
            ["code"],
            registry=registry,
        )
        # Its child per code, looked up once: every request counts here.
        self._requests_by_code: dict[int | None, Counter] = {}
        self.api_probes = Counter(
            "lemondata_api_probes",
            "Status requests for a task that does not exist, sent when no other request "
            "went out for `polling.probe_interval_seconds`, to learn whether the API answers.",
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
        self.account_state = Gauge(
            "lemondata_api_account_state",
            "1 for the account's state as the API last told it (ok, key_rejected after a "
            "401/403, quota_exhausted after a 402), 0 for the others; a problem holds until "
            "an answer about a task proves otherwise.",
            ["state"],
            registry=registry,
        )
        self.set_account_state("ok")
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
        self.last_seen = LastSeenValues(clock)
        registry.register(self.last_seen)
        # Registered last by whoever completes the registry (see `scrape_mark`).
        self.scrape_mark = ScrapeMark(self._scrape_done)

    # ---- label sets that exist before their first increment -------------------

    def restore_models(self, labels: Iterable[str]) -> None:
        """Model labels known before this start (from the store): their zeros are
        created now, and a first increment after a restart reads as a counter
        reset, which `increase()` counts in full."""
        for label in labels:
            if label not in (OTHER_MODEL, UNKNOWN_MODEL):
                label = self.model_label(label)
            self._init_model(label, at_start=True)

    def add_model_labels(self, labels: Iterable[str]) -> None:
        """Model labels first seen in the store's totals (another replica finished
        them): new to this process, so their zeros show in one scrape first."""
        for label in labels:
            self._init_model(label)

    def add_models(self, models: Iterable[str | None]) -> None:
        """Create zero series for models, so rates and ratios exist from the start."""
        for model in models:
            self._init_model(self.model_label(model))

    def add_sources(self, sources: Iterable[str]) -> None:
        """Zero series for every discovery source configured."""
        for source in sources:
            self.discovered.labels(source)
            self.discovery_errors.labels(source)

    def _init_model(self, label: str, at_start: bool = False) -> None:
        with self._lock:
            if label in self._models_born:
                return
            self._models_born[label] = (-1 if at_start else self._scrapes, self._clock())
        for status in FINISHED_STATUSES:
            self.finished.labels(label, status.value)
        for reason, failure_class in self.reason_classes.items():
            self.failures.labels(label, reason, failure_class)

    def models(self) -> list[str]:
        """Every model label with series."""
        with self._lock:
            return list(self._models_born)

    def unshown_models(self) -> set[str]:
        """Model labels first known after the start whose zeros no scrape has shown."""
        with self._lock:
            return {label for label in self._models_born if not self._shown(label)}

    def _shown(self, label: str) -> bool:
        born, at = self._models_born[label]
        return born < self._scrapes or self._clock() - at >= NEW_SERIES_WAIT_SECONDS

    def _scrape_done(self) -> None:
        """After a scrape: its zeros were shown, so held increments apply now."""
        with self._lock:
            self._scrapes += 1
            held, self._held = self._held, Tally()
        self._count(held)

    def _count(
        self,
        counts: Mapping[tuple[str, str, str | None], int],
        exemplar: dict[str, str] | None = None,
    ) -> None:
        for (label, status, reason), n in counts.items():
            self.finished.labels(label, status).inc(n, exemplar)
            if reason is not None:
                self.failures.labels(label, reason, self.class_of(reason)).inc(n, exemplar)

    def class_of(self, reason: str) -> str:
        return self.reason_classes.get(reason) or default_failure_class(reason)

    # ---- events ---------------------------------------------------------------

    def tasks_discovered(self, source: str, count: int) -> None:
        self.discovered.labels(source).inc(count)

    def discovery_error(self, source: str) -> None:
        self.discovery_errors.labels(source).inc()

    def api_response(self, outcome: PollOutcome, probe: bool = False) -> None:
        requests = self._requests_by_code.get(outcome.code)
        if requests is None:
            requests = self.api_requests.labels(str(outcome.code) if outcome.code else "none")
            self._requests_by_code[outcome.code] = requests
        requests.inc()
        self.api_latency.observe(outcome.latency)
        if probe:
            self.api_probes.inc()
        # A probe asks for a task that does not exist: not found is its good answer.
        if outcome.kind is not OutcomeKind.REPORT and not (
            probe and outcome.kind is OutcomeKind.NOT_FOUND
        ):
            self.api_errors.labels(outcome.kind.value).inc()
        if outcome.rate_limit is not None:
            self.last_seen.rate_limit(outcome.rate_limit)
        if outcome.answered:
            self.last_seen.last_answer = self._clock()

    def api_reachable(self, answered: bool) -> None:
        self.last_seen.api_up = 1.0 if answered else 0.0

    def set_account_state(self, state: str) -> None:
        for name in ACCOUNT_STATES:
            self.account_state.labels(name).set(1.0 if name == state else 0.0)

    def task_update(
        self,
        model: str | None,
        update: TaskUpdate,
        reason: str | None,
        seen_at: float | None = None,
        task_id: str | None = None,
    ) -> None:
        """Observe what a stored update means; call only once the store accepted it.

        A finish is recorded here whole: its count, failure reason, duration,
        uncertainty and, with `seen_at` (when the API saw it), detection delay.
        With `task_id`, the observations carry it as an exemplar."""
        if update.error_kind:
            self.api_errors.labels(update.error_kind).inc()
        label = self.model_label(model)
        self._init_model(label)
        exemplar = task_exemplar(task_id)
        if update.pending_seconds is not None:
            self.pending.labels(label).observe(update.pending_seconds, exemplar)
        finish = update.finish
        if finish is None:
            return
        if self.model_label.overflows(model, label):
            self.label_overflow.inc()
        counts = {(label, finish.status.value, reason): 1}
        with self._lock:
            if not self._shown(label):
                self._held.update(counts)
                counts = {}
        # A held increment is applied later in a batch: it carries no exemplar.
        self._count(counts, exemplar)
        if finish.duration is not None:
            self._observe_duration(label, finish, update.task.created, seen_at, exemplar)

    def _observe_duration(
        self,
        label: str,
        finish: Finish,
        created: float | None,
        seen_at: float | None,
        exemplar: dict[str, str] | None = None,
    ) -> None:
        assert finish.duration is not None
        self.duration.labels(label, finish.status.value).observe(finish.duration, exemplar)
        if not finish.exact and finish.uncertainty is not None:
            self.uncertainty.observe(finish.uncertainty)
        delay = detection_delay(finish, created, seen_at) if seen_at is not None else None
        if delay is not None:
            self.detection.observe(max(0.0, delay))

    def allowed_rate(self, rps: float) -> None:
        self.allowed_rps.set(rps)

    def cycle_done(self, duration: float, lag: float, ended_at: float) -> None:
        self.cycles.inc()
        self.cycle_duration.observe(duration)
        self.poll_lag.set(lag)
        self.last_cycle.set(ended_at)


def task_exemplar(task_id: str | None) -> dict[str, str] | None:
    """The exemplar naming `task_id`, or None when there is none or it is too long."""
    if not task_id or len(EXEMPLAR_LABEL) + len(task_id) > MAX_EXEMPLAR_CHARS:
        return None
    return {EXEMPLAR_LABEL: task_id}


def detection_delay(finish: Finish, created: float | None, seen_at: float) -> float | None:
    """Seconds from a finish upstream to seeing it: exact with `updated`, else the
    whole gap since the previous poll (an upper bound); None if unknown."""
    if finish.duration is None:
        return None
    if finish.exact and created is not None:
        return seen_at - (created + finish.duration)
    if finish.uncertainty is not None:
        return 2 * finish.uncertainty
    return None


class PollRecording(PollListener):
    """The poll path's metrics: a listener of the outcome handler."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def answer(self, outcome: PollOutcome, probe: bool) -> None:
        self._recorder.api_response(outcome, probe=probe)

    def changed(self, change: Change) -> None:
        self._recorder.task_update(
            change.model, change.update, change.reason, change.seen_at, change.before.task_id
        )

    def reachable(self, answered: bool) -> None:
        self._recorder.api_reachable(answered)

    def cycle_done(self, end: CycleEnd) -> None:
        self._recorder.cycle_done(end.duration, end.lag, end.ended_at)


class ScrapeMark(Collector):
    """Registered last: its collect runs once every other metric of a scrape was read."""

    def __init__(self, on_scrape: Callable[[], None]) -> None:
        self._on_scrape = on_scrape

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self._on_scrape()
        return iter(())


class LastSeenValues(Collector):
    """Values known only once the API has answered; absent until then.

    Exporting 0 before the first answer would claim the API is down or the
    rate-limit budget is exhausted. Rate-limit values are dropped once their
    reset time has passed: they describe a window that is over.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.api_up: float | None = None
        self.last_answer: float | None = None
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
        window_over = self._reset is not None and self._reset <= self._clock()
        for name, help_text, value in (
            (
                "lemondata_api_up",
                "1 if the API gave a usable answer to the latest status requests (a task's "
                "status, task-not-found or 429), 0 if not; absent until the first request.",
                self.api_up,
            ),
            (
                "lemondata_api_last_answer_timestamp_seconds",
                "When the API last gave a usable answer (unix time); absent until then.",
                self.last_answer,
            ),
            (
                "lemondata_api_rate_limit_limit",
                "X-RateLimit-Limit of the last response that had it (absent once its "
                "window's reset time has passed).",
                None if window_over else self._limit,
            ),
            (
                "lemondata_api_rate_limit_remaining",
                "X-RateLimit-Remaining of the last response that had it (absent once its "
                "window's reset time has passed).",
                None if window_over else self._remaining,
            ),
            (
                "lemondata_api_rate_limit_reset_timestamp_seconds",
                "X-RateLimit-Reset (unix time) of the last response that had it (absent once "
                "it has passed).",
                None if window_over else self._reset,
            ),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
