"""The poll loop: due tasks from the store, polled concurrently, each answer handed on.

The cycle thread picks due tasks, a bounded worker pool sends the requests
(each waits for the request budget first), and each answer is handed, in the
cycle thread and as it arrives, to the outcome handler (`handler.py`:
decide -> classify -> store -> listeners). Nothing here decides what an
answer means.

With adaptive polling (`ranking`), when more tasks are due than the budget
allows, those most likely to have finished go first.

When no status request went out for `probe_interval` seconds (nothing due,
or every task backing off after errors), one request for a task that cannot
exist (`PROBE_TASK_ID`, answered 404 task-not-found) tells whether the API
answers and takes the key, so `api_up` and the account state recover
without tasks to poll.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Protocol

from exporter.model import PollOutcome, Task
from exporter.poller.events import CycleEnd
from exporter.store.guard import StoreUnavailable

log = logging.getLogger(__name__)

# With adaptive polling, due tasks looked at per cycle, per task the budget allows.
CANDIDATES_PER_SLOT = 4
# Looks like an image task ID (`img_` and 24 hex digits) but names none: the
# API answers 404 async_task_not_found, which needs a working key.
PROBE_TASK_ID = "img_" + "0" * 24


class DueTasks(Protocol):
    def due(self, now: float, limit: int) -> list[Task]:
        """Unfinished tasks whose next poll is due, most overdue first."""
        ...


class StatusFetcher(Protocol):
    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        """One status request; never raises for network or protocol trouble."""
        ...


class RequestGate(Protocol):
    """The budget as the cycle sees it (`ratecontrol.RateController`)."""

    def acquire(self, stop: threading.Event) -> bool: ...

    def limit(self, batch_size: int) -> int: ...


class AnswerHandler(Protocol):
    """Where answers go (`handler.OutcomeHandler`)."""

    def handle(self, task: Task, outcome: PollOutcome, seen_at: float) -> bool: ...

    def probe(self, outcome: PollOutcome) -> None: ...

    def reachable(self, answered: bool) -> None: ...

    def cycle_done(self, end: CycleEnd) -> None: ...


class FinishChance(Protocol):
    """Adaptive polling's order when the budget is short (`AdaptiveSchedule`)."""

    def finish_chance(self, model: str | None, age_then: float | None, age_now: float) -> float: ...


@dataclass(frozen=True, slots=True)
class CycleSettings:
    workers: int
    batch_size: int
    # Tasks due within this many seconds are taken now: with a cycle every
    # c seconds, half a cycle rounds each task's poll to the nearest cycle
    # instead of always to the next one (a 3 s interval would become 4 s).
    lookahead: float = 0.0
    # None: a cycle waits for every request it sent. Else it waits at most
    # this long; slower requests stay in flight and a later cycle applies
    # them, so one hanging request does not hold back every due task.
    straggler_wait: float | None = None
    # None: no probes. Else a probe goes out when no request did for this long.
    probe_interval: float | None = None


@dataclass(frozen=True, slots=True)
class CycleResult:
    polled: int
    finished: int
    lag: float


class PollCycle:
    def __init__(
        self,
        tasks: DueTasks,
        fetcher: StatusFetcher,
        handler: AnswerHandler,
        gate: RequestGate,
        settings: CycleSettings,
        *,
        clock: Callable[[], float] = time.time,
        ranking: FinishChance | None = None,
    ) -> None:
        self._tasks = tasks
        self._fetcher = fetcher
        self._handler = handler
        self._gate = gate
        self._settings = settings
        self._clock = clock
        self._ranking = ranking
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="poll")
        self._stop = threading.Event()
        self._probe: Future[PollOutcome | None] | None = None
        self._last_sent = -math.inf
        # Requests sent and not yet applied (a straggler stays here across cycles).
        self._requests: dict[Future[tuple[PollOutcome, float, float] | None], Task] = {}

    def stop(self) -> None:
        """Stop taking work: waiting workers give up, running requests finish."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_once(self) -> CycleResult:
        started = time.monotonic()
        now = self._clock()
        limit = self._gate.limit(self._settings.batch_size)
        wanted = limit * CANDIDATES_PER_SLOT if self._ranking is not None else limit
        busy = {task.task_id for task in self._requests.values()}
        due = self._tasks.due(now + self._settings.lookahead, wanted + len(busy))
        # Requests still in flight from earlier cycles take their share of the limit.
        room = max(0, limit - len(busy))
        tasks = self._pick([task for task in due if task.task_id not in busy], room, now)
        deferred = tasks[room:]
        tasks = tasks[:room]
        for task in tasks:
            if self._stop.is_set():
                break
            self._requests[self._pool.submit(self._poll, task)] = task
            self._last_sent = now  # on its way: no probe needed meanwhile
        polled, finished, lag, any_answer = self._collect(self._settings.straggler_wait)
        if deferred:  # due, but left for later: the budget is short
            lag = max(lag, self._clock() - min(t.next_poll_at for t in deferred))
        if any_answer is not None:
            self._handler.reachable(any_answer)
        self._run_probe()
        self._handler.cycle_done(CycleEnd(time.monotonic() - started, lag, self._clock()))
        return CycleResult(polled, finished, lag)

    def settle(self, timeout: float) -> int:
        """At shutdown, after the last cycle: apply what requests still in flight
        answer within `timeout` seconds. Returns how many were left unanswered."""
        self._collect(timeout)
        return len(self._requests)

    def _collect(self, timeout: float | None) -> tuple[int, int, float, bool | None]:
        """Hand on answers of requests in flight as they arrive (the finish is
        observed then), for at most `timeout` seconds (None: until all are in).
        Returns (polled, finished, lag, whether any got a usable answer)."""
        polled = finished = 0
        lag = 0.0
        any_answer: bool | None = None
        arrivals = as_completed(list(self._requests), timeout=timeout)
        while True:
            try:
                future = next(arrivals)
            except (StopIteration, TimeoutError):  # stragglers stay in flight
                break
            task = self._requests.pop(future)
            if future.cancelled():
                continue
            try:
                result = future.result()
                if result is None:  # not sent: shutting down
                    continue
                outcome, sent_at, seen_at = result
                polled += 1
                lag = max(lag, sent_at - task.next_poll_at)
                any_answer = bool(any_answer) or outcome.answered
                finished += self._handler.handle(task, outcome, seen_at)
            except StoreUnavailable:
                continue  # counted and logged (once) by the store guard; polling pauses
            except Exception:
                if self._stop.is_set():  # shutting down: the store may be closed already
                    continue
                # One task's trouble must not cost the cycle the other results.
                log.exception("polling task %s failed", task.task_id)
        return polled, finished, lag, any_answer

    def _pick(self, due: list[Task], limit: int, now: float) -> list[Task]:
        """Due tasks in polling order: as given, or, when there are more than
        `limit`, those most likely to have finished since their last poll first."""
        ranking = self._ranking
        if ranking is None or len(due) <= limit:
            return due

        def chance(task: Task) -> float:
            start = task.created if task.created is not None else task.discovered_at
            then = task.last_polled - start if task.last_polled is not None else None
            return ranking.finish_chance(task.model, then, now - start)

        # Stable sort: equal chances keep the most overdue first.
        return sorted(due, key=chance, reverse=True)

    def _poll(self, task: Task) -> tuple[PollOutcome, float, float] | None:
        """(outcome, when it was sent, when the API saw the task so).

        The API answered between sending and receiving: the midpoint is when
        it saw the task. The time the cycle thread gets to apply the answer
        is later by however many answers wait before it, which would bias
        every duration measured between two polls."""
        if not self._gate.acquire(self._stop):
            return None
        sent_at = self._last_sent = self._clock()
        outcome = self._fetcher.fetch_status(task.task_id, task.poll_url)
        return outcome, sent_at, (sent_at + self._clock()) / 2

    def _run_probe(self) -> None:
        """Hand on a finished probe's answer; send one if no request went out for a while."""
        probe = self._probe
        if probe is not None and probe.done():
            self._probe = None
            try:
                outcome = None if probe.cancelled() else probe.result()
            except Exception:  # the client never raises; a bug must not stop polling
                log.exception("the probe request failed")
                outcome = None
            if outcome is not None:
                self._handler.probe(outcome)
        interval = self._settings.probe_interval
        if self._probe is not None or interval is None or self._stop.is_set():
            return
        if self._clock() - self._last_sent >= interval:
            self._last_sent = self._clock()
            self._probe = self._pool.submit(self._send_probe)

    def _send_probe(self) -> PollOutcome | None:
        if not self._gate.acquire(self._stop):
            return None
        self._last_sent = self._clock()
        return self._fetcher.fetch_status(PROBE_TASK_ID)
