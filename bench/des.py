"""Discrete-event run of the agent's real poll path against the simulator's lifecycle model.

Nothing is reimplemented: a simulated clock drives the real `PollCycle`
(`store.due` -> pick -> `decide` with the real schedule -> classify ->
`SqliteTaskStore.apply` -> `Recorder`), wired like `Agent` wires it from a
`PollingConfig`. Only the network is replaced: a fake client answers each
status request with the simulator's own payload for the task's state at that
simulated instant (`lifecycle.observe` + `payloads`), parsed by the real
`parse_status_body`. One poll cycle runs per `cycle_interval_seconds` of
simulated time, taking at most `requests_per_second * cycle_interval_seconds`
tasks (what the request budget allows per cycle).

Because time is simulated, hours of traffic take seconds, and fixed and
adaptive polling see exactly the same tasks.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from bench.workload import WorkloadTask
from exporter.classify import ReasonClassifier
from exporter.config import DEFAULT_FAILURE_REASONS, PollingConfig
from exporter.loops import build_poller
from exporter.metrics.recorder import Recorder
from exporter.model import (
    DiscoveredTask,
    OutcomeKind,
    PollOutcome,
    RateLimitInfo,
    Status,
    TaskUpdate,
)
from exporter.poller.adaptive import build_schedule
from exporter.poller.cycle import CycleSettings
from exporter.poller.ratelimit import AccountShare, RequestBudget
from exporter.poller.transitions import PollPolicy
from exporter.simulator.lifecycle import TaskPlan, observe
from exporter.simulator.payloads import image_status_payload, unified_status_payload
from exporter.store.base import FinishLabels
from exporter.store.sqlite import SqliteTaskStore
from exporter.upstream.parse import parse_status_body

FINISHED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
LATENCY = 0.08  # seconds from a cycle's start to its answers (queueing, network, upstream)


class SimClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeClient:
    """Answers like the simulator would at the simulated instant, with rate-limit headers."""

    def __init__(self, clock: SimClock, tasks: Sequence[WorkloadTask], limit_per_minute: int):
        self._clock = clock
        self._plans: dict[str, tuple[TaskPlan, bool]] = {
            t.plan.task_id: (t.plan, t.unified) for t in tasks
        }
        self.requests: Counter[str] = Counter()
        self._limit = limit_per_minute
        self._window = (0.0, 0)

    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        now = self._clock()
        self.requests[task_id] += 1
        plan, unified = self._plans[task_id]
        obs = observe(plan, now)
        rate = self._rate_headers(now)
        if not obs.visible:
            return PollOutcome(OutcomeKind.NOT_FOUND, 404, rate_limit=rate, latency=0.05)
        make = unified_status_payload if unified else image_status_payload
        body = json.dumps(make(plan, obs, False)).encode()  # integer timestamps, as the API
        report = parse_status_body(body)
        return PollOutcome(OutcomeKind.REPORT, 200, report, rate_limit=rate, latency=0.05)

    def _rate_headers(self, now: float) -> RateLimitInfo | None:
        if not self._limit:
            return None
        start, count = self._window
        if now >= start + 60:
            start, count = now, 0
        count += 1
        self._window = (start, count)
        return RateLimitInfo(self._limit, max(0, self._limit - count), math.ceil(start + 60))


class RecordingStore(SqliteTaskStore):
    """The real store, noting when each task's finish was stored (= seen)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.seen: dict[str, tuple[float, Status]] = {}

    def apply(
        self,
        task_id: str,
        update: TaskUpdate,
        now: float,
        reason: str | None,
        labels: FinishLabels | None = None,
    ) -> bool:
        stored = super().apply(task_id, update, now, reason, labels)
        if stored and update.finish is not None:
            self.seen[task_id] = (now, update.finish.status)
        return stored


class _CycleBudget(RequestBudget):
    """The budget as the cycle sees it: `rate` sets how many tasks a cycle takes
    (`batch_size` scaled by rate / configured rate); within a cycle nothing waits."""

    def acquire(self, stop: threading.Event) -> bool:
        return not stop.is_set()


@dataclass
class DesResult:
    label: str
    tasks: int  # measured tasks that really finished
    requests: int  # requests spent on measured tasks
    delays: list[float] = field(default_factory=list)  # seen - finished, per measured finish
    missed: int = 0  # measured finishes never seen as such (timeout, or still open)
    task_delays: dict[str, float] = field(default_factory=dict)
    task_requests: dict[str, int] = field(default_factory=dict)
    by_path: dict[str, tuple[int, int, list[float]]] = field(default_factory=dict)

    @property
    def per_task(self) -> float:
        return self.requests / self.tasks if self.tasks else math.nan

    def quantile(self, q: float, delays: list[float] | None = None) -> float:
        values = sorted(self.delays if delays is None else delays)
        if not values:
            return math.nan
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "tasks": self.tasks,
            "requests": self.requests,
            "requests_per_task": round(self.per_task, 2),
            "delay_p50": round(self.quantile(0.5), 2),
            "delay_p95": round(self.quantile(0.95), 2),
            "delay_p99": round(self.quantile(0.99), 2),
            "delay_mean": round(statistics.fmean(self.delays), 2) if self.delays else None,
            "missed": self.missed,
        }


def run(
    label: str,
    workload: Sequence[WorkloadTask],
    polling: dict[str, Any],
    *,
    measure_from: float,
    measure_until: float,
    end: float,
    limit_per_minute: int = 0,
    seed: int = 1,
) -> DesResult:
    """Runs the agent's poll path over `workload` until `end` (simulated unix time).

    Tasks created in [measure_from, measure_until) are measured; the ones before
    are the warm-up (adaptive polling learns from them).
    """
    config = PollingConfig(**polling)
    clock = SimClock(min(t.discovered_at for t in workload))
    store = RecordingStore()
    client = FakeClient(clock, workload, limit_per_minute)
    registry = CollectorRegistry()
    classifier = ReasonClassifier(list(DEFAULT_FAILURE_REASONS))
    recorder = Recorder(
        registry,
        duration_buckets=[1, 10, 100, 1000],
        pending_buckets=[1, 10, 100],
        max_models=50,
        reasons=classifier.reasons,
        budget_rps=config.requests_per_second,
    )
    schedule = build_schedule(config)
    per_cycle = max(1, int(config.requests_per_second * config.cycle_interval_seconds))
    cycle = build_poller(
        store,
        client,
        classifier,
        recorder,
        _CycleBudget(config.requests_per_second),
        PollPolicy(
            task_interval=config.task_interval_seconds,
            max_wait=config.max_wait_seconds,
            backoff_base=config.backoff_base_seconds,
            backoff_max=config.backoff_max_seconds,
        ),
        CycleSettings(workers=1, batch_size=per_cycle, lookahead=config.cycle_interval_seconds / 2),
        clock=clock,
        jitter=random.Random(seed).random,
        schedule=schedule,
        share=AccountShare(config.requests_per_second, config.rate_limit_reserve_ratio, clock),
    ).cycle
    pending = list(workload)
    next_index = 0
    step = config.cycle_interval_seconds
    tick = clock.now
    try:
        while tick < end:
            # Answers come LATENCY after the cycle starts: the agent plans the
            # next poll from the answer's time, as it does for real.
            clock.now = tick + LATENCY
            batch = []
            while next_index < len(pending) and pending[next_index].discovered_at <= clock.now:
                task = pending[next_index]
                batch.append(DiscoveredTask(task.plan.task_id, "file", task.plan.model))
                next_index += 1
            if batch:
                store.add(batch, clock.now)
            cycle.run_once()
            tick += step
    finally:
        cycle.stop()
    return _measure(label, workload, store, client, measure_from, measure_until)


def _measure(
    label: str,
    workload: Sequence[WorkloadTask],
    store: RecordingStore,
    client: FakeClient,
    measure_from: float,
    measure_until: float,
) -> DesResult:
    result = DesResult(label, 0, 0)
    paths: dict[str, tuple[int, int, list[float]]] = {}
    for task in workload:
        plan = task.plan
        if not measure_from <= plan.created < measure_until or plan.lost:
            continue
        path = "tasks (updated, progress)" if task.unified else "images (neither)"
        count, spent, delays = paths.get(path, (0, 0, []))
        spent += client.requests[plan.task_id]
        result.requests += client.requests[plan.task_id]
        result.task_requests[plan.task_id] = client.requests[plan.task_id]
        result.tasks += 1
        count += 1
        seen = store.seen.get(plan.task_id)
        if seen is None or seen[1] not in FINISHED:
            result.missed += 1
        else:
            delay = seen[0] - plan.finished_at
            result.task_delays[plan.task_id] = delay
            result.delays.append(delay)
            delays.append(delay)
        paths[path] = (count, spent, delays)
    result.by_path = paths
    return result
