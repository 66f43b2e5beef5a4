"""One poll cycle: due tasks from the store, polled concurrently, results stored.

The cycle thread picks due tasks, a bounded worker pool sends the requests
(each waits for the shared request budget first), and results are applied in
the cycle thread as they arrive: decide -> classify -> store -> record.

With adaptive polling (`schedule`), finished tasks teach the schedule how long
their model takes, and when more tasks are due than the budget allows, those
most likely to have finished go first. With `share`, X-RateLimit headers
lower the budget before the account runs out.

When no status request went out for `probe_interval` seconds (nothing due,
or every task backing off after errors), one request for a task that cannot
exist (`PROBE_TASK_ID`, answered 404 task-not-found) tells whether the API
answers and takes the key, so `api_up` and the account state recover
without tasks to poll.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from exporter.classify import ReasonClassifier
from exporter.metrics.recorder import Recorder, answered
from exporter.model import Finish, OutcomeKind, PollOutcome, Status, Task
from exporter.poller.account import MESSAGES, AccountState, account_state_after
from exporter.poller.ratelimit import AccountShare, RequestBudget
from exporter.poller.schedule import AdaptiveSchedule
from exporter.poller.transitions import PollPolicy, decide
from exporter.store.base import FinishLabels, ModelStatsStore, TaskStore
from exporter.store.guard import StoreUnavailable
from exporter.upstream.client import UpstreamClient

log = logging.getLogger(__name__)

# With adaptive polling, due tasks looked at per cycle, per task the budget allows.
CANDIDATES_PER_SLOT = 4
# Never slower than this when X-RateLimit headers say the account runs low.
MIN_RATE = 0.2
STATS_SAVE_INTERVAL_SECONDS = 30.0
# Looks like an image task ID (`img_` and 24 hex digits) but names none: the
# API answers 404 async_task_not_found, which needs a working key.
PROBE_TASK_ID = "img_" + "0" * 24
_REDIRECT_MESSAGE = (
    "the API answered with a redirect, which is never followed (the key must not leave "
    "api.base_url): check api.base_url"
)


@dataclass(frozen=True, slots=True)
class CycleResult:
    polled: int
    finished: int
    lag: float


class PollCycle:
    def __init__(
        self,
        store: TaskStore,
        client: UpstreamClient,
        classifier: ReasonClassifier,
        recorder: Recorder,
        budget: RequestBudget,
        policy: PollPolicy,
        *,
        workers: int,
        batch_size: int,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        schedule: AdaptiveSchedule | None = None,
        share: AccountShare | None = None,
        lookahead: float = 0.0,
        straggler_wait: float | None = None,
        probe_interval: float | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._classifier = classifier
        self._recorder = recorder
        self._budget = budget
        self._policy = policy
        self._batch_size = batch_size
        self._clock = clock
        self._jitter = jitter
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll")
        self._stop = threading.Event()
        self._account = AccountState.OK
        self._redirected = False
        # None: no probes. Else a probe goes out when no request did for this long.
        self._probe_interval = probe_interval
        self._probe: Future[PollOutcome | None] | None = None
        self._last_sent = -math.inf
        self._schedule = schedule
        # Tasks due within this many seconds are taken now: with a cycle every
        # c seconds, half a cycle rounds each task's poll to the nearest cycle
        # instead of always to the next one (a 3 s interval would become 4 s).
        self._lookahead = lookahead
        # None: a cycle waits for every request it sent. Else it waits at most
        # this long; slower requests stay in flight and a later cycle applies
        # them, so one hanging request does not hold back every due task.
        self._straggler_wait = straggler_wait
        self._in_flight: dict[Future[tuple[PollOutcome, float, float] | None], Task] = {}
        self._share = share
        self._configured_rate = budget.rate
        self._allowed_rate = budget.rate
        self._stats_saved = time.monotonic()
        if schedule is not None and isinstance(store, ModelStatsStore):
            loaded = schedule.learner.load(store.load_model_stats())
            if loaded:
                log.info("adaptive polling: task durations of %d model(s) loaded", loaded)

    def stop(self) -> None:
        """Stop taking work: waiting workers give up, running requests finish."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_once(self) -> CycleResult:
        started = time.monotonic()
        now = self._clock()
        limit = self._limit()
        wanted = limit * CANDIDATES_PER_SLOT if self._schedule is not None else limit
        busy = {task.task_id for task in self._in_flight.values()}
        due = self._store.due(now + self._lookahead, wanted + len(busy))
        # Requests still in flight from earlier cycles take their share of the limit.
        room = max(0, limit - len(busy))
        tasks = self._pick([task for task in due if task.task_id not in busy], room, now)
        deferred = tasks[room:]
        tasks = tasks[:room]
        for task in tasks:
            if self._stop.is_set():
                break
            self._in_flight[self._pool.submit(self._poll, task)] = task
            self._last_sent = now  # on its way: no probe needed meanwhile
        polled, finished, lag, any_answer = self._collect(self._straggler_wait)
        if deferred:  # due, but left for later: the budget is short
            lag = max(lag, self._clock() - min(t.next_poll_at for t in deferred))
        if any_answer is not None:
            self._recorder.api_reachable(any_answer)
        self._run_probe()
        if time.monotonic() - self._stats_saved > STATS_SAVE_INTERVAL_SECONDS:
            self.save_stats()
        self._recorder.cycle_done(time.monotonic() - started, lag, self._clock())
        return CycleResult(polled, finished, lag)

    def settle(self, timeout: float) -> int:
        """At shutdown, after the last cycle: apply what requests still in flight
        answer within `timeout` seconds. Returns how many were left unanswered."""
        self._collect(timeout)
        return len(self._in_flight)

    def _collect(self, timeout: float | None) -> tuple[int, int, float, bool | None]:
        """Apply results of requests in flight as they arrive (the finish is
        observed then), for at most `timeout` seconds (None: until all are in).
        Returns (polled, finished, lag, whether any got a usable answer)."""
        polled = finished = 0
        lag = 0.0
        any_answer: bool | None = None
        arrivals = as_completed(list(self._in_flight), timeout=timeout)
        while True:
            try:
                future = next(arrivals)
            except (StopIteration, TimeoutError):  # stragglers stay in flight
                break
            task = self._in_flight.pop(future)
            if future.cancelled():
                continue
            try:
                result = future.result()
                if result is None:  # not sent: shutting down
                    continue
                outcome, sent_at, seen_at = result
                polled += 1
                lag = max(lag, sent_at - task.next_poll_at)
                any_answer = bool(any_answer) or answered(outcome)
                finished += self._apply(task, outcome, seen_at)
            except StoreUnavailable:
                continue  # counted and logged (once) by the store guard; polling pauses
            except Exception:
                if self._stop.is_set():  # shutting down: the store may be closed already
                    continue
                # One task's trouble must not cost the cycle the other results.
                log.exception("polling task %s failed", task.task_id)
        return polled, finished, lag, any_answer

    def _limit(self) -> int:
        """Tasks per cycle: `batch_size`, less when the headers lowered the rate."""
        share = self._budget.rate / self._configured_rate if self._configured_rate else 1.0
        return max(1, min(self._batch_size, math.ceil(self._batch_size * share)))

    def _pick(self, due: list[Task], limit: int, now: float) -> list[Task]:
        """Due tasks in polling order: as given, or, when there are more than
        `limit`, those most likely to have finished since their last poll first."""
        schedule = self._schedule
        if schedule is None or len(due) <= limit:
            return due

        def chance(task: Task) -> float:
            start = task.created if task.created is not None else task.discovered_at
            then = task.last_polled - start if task.last_polled is not None else None
            return schedule.finish_chance(task.model, then, now - start)

        # Stable sort: equal chances keep the most overdue first.
        return sorted(due, key=chance, reverse=True)

    def save_stats(self) -> None:
        """Save what adaptive polling learnt (models changed since the last save)."""
        self._stats_saved = time.monotonic()
        if self._schedule is None or not isinstance(self._store, ModelStatsStore):
            return
        changed = self._schedule.learner.dump()
        if changed:
            try:
                self._store.save_model_stats(changed)
            except Exception:  # the store's trouble shows elsewhere; try again later
                log.warning("could not save adaptive polling stats", exc_info=True)

    def _poll(self, task: Task) -> tuple[PollOutcome, float, float] | None:
        """(outcome, when it was sent, when the API saw the task so).

        The API answered between sending and receiving: the midpoint is when
        it saw the task. The time the cycle thread gets to apply the answer
        is later by however many answers wait before it, which would bias
        every duration measured between two polls."""
        if not self._budget.acquire(self._stop):
            return None
        sent_at = self._last_sent = self._clock()
        outcome = self._client.fetch_status(task.task_id, task.poll_url)
        return outcome, sent_at, (sent_at + self._clock()) / 2

    def _run_probe(self) -> None:
        """Apply a finished probe's answer; send one if no request went out for a while."""
        probe = self._probe
        if probe is not None and probe.done():
            self._probe = None
            try:
                outcome = None if probe.cancelled() else probe.result()
            except Exception:  # the client never raises; a bug must not stop polling
                log.exception("the probe request failed")
                outcome = None
            if outcome is not None:
                self._observe(outcome, probe=True)
                self._recorder.api_reachable(answered(outcome))
        interval = self._probe_interval
        if self._probe is not None or interval is None or self._stop.is_set():
            return
        if self._clock() - self._last_sent >= interval:
            self._last_sent = self._clock()
            self._probe = self._pool.submit(self._send_probe)

    def _send_probe(self) -> PollOutcome | None:
        if not self._budget.acquire(self._stop):
            return None
        self._last_sent = self._clock()
        return self._client.fetch_status(PROBE_TASK_ID)

    def _observe(self, outcome: PollOutcome, probe: bool = False) -> None:
        """What any answer tells about the API and the account."""
        self._recorder.api_response(outcome, probe=probe)
        self._note_account(outcome)
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            self._budget.pause_for(outcome.retry_after or self._policy.backoff_base)
        if self._share is not None and outcome.rate_limit is not None:
            self._follow_headers(outcome)

    def _apply(self, task: Task, outcome: PollOutcome, now: float) -> bool:
        """decide -> classify -> store -> record, as of `now`, when the API
        answered. True if the task finished."""
        self._observe(outcome)
        update = decide(task, outcome, now, self._policy, self._jitter())
        finish = update.finish
        reason = None
        labels = None
        if finish is not None:
            if finish.status is Status.FAILED:
                reason = self._classifier.classify(finish.error_message)
            labels = FinishLabels(
                self._recorder.model_label(update.model),
                finish.status.value,
                reason,
                self._classifier.class_of(reason) if reason is not None else None,
            )
        if not self._store.apply(task.task_id, update, now, reason, labels):
            return False  # finished or removed meanwhile: already recorded
        self._recorder.task_update(update.model, update, reason)
        if finish is not None and finish.duration is not None:
            self._seen_finish(update.model, update.created, finish.duration, finish, now)
        return finish is not None

    def _seen_finish(
        self, model: str | None, created: float | None, duration: float, finish: Finish, now: float
    ) -> None:
        if finish.exact and created is not None:
            self._recorder.detection_delay(now - (created + duration))
        elif finish.uncertainty is not None:
            # The whole gap since the previous poll: an upper bound.
            self._recorder.detection_delay(2 * finish.uncertainty)
        if self._schedule is not None:
            self._schedule.observe_finish(model, duration)

    def _follow_headers(self, outcome: PollOutcome) -> None:
        assert self._share is not None and outcome.rate_limit is not None
        info = outcome.rate_limit
        allowed = self._share.observe(info.limit, info.remaining, info.reset)
        if self._share.exhausted_for > 0:
            self._budget.pause_for(self._share.exhausted_for)
        rate = max(MIN_RATE, allowed)
        if rate != self._allowed_rate:
            self._allowed_rate = rate
            self._budget.rate = rate
            self._recorder.allowed_rate(rate)

    def _note_account(self, outcome: PollOutcome) -> None:
        """Account state changes are exported and logged once per episode."""
        state = account_state_after(self._account, outcome.kind)
        if state is not self._account:
            if state is AccountState.OK:
                log.info("%s", MESSAGES[state])
            else:
                log.error("%s", MESSAGES[state])
            self._account = state
            self._recorder.set_account_state(state.value)
        if outcome.kind is OutcomeKind.REDIRECT and not self._redirected:
            log.error("%s", _REDIRECT_MESSAGE)
        if outcome.kind in (OutcomeKind.REDIRECT, OutcomeKind.REPORT, OutcomeKind.NOT_FOUND):
            self._redirected = outcome.kind is OutcomeKind.REDIRECT
