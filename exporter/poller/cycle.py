"""One poll cycle: due tasks from the store, polled concurrently, results stored.

The cycle thread picks due tasks, a bounded worker pool sends the requests
(each waits for the shared request budget first), and results are applied in
the cycle thread as they arrive: decide -> classify -> store -> record.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from exporter.classify import ReasonClassifier
from exporter.metrics.recorder import Recorder, answered
from exporter.model import OutcomeKind, PollOutcome, Status, Task
from exporter.poller.ratelimit import RequestBudget
from exporter.poller.transitions import PollPolicy, decide
from exporter.store.base import TaskStore
from exporter.upstream.client import UpstreamClient

log = logging.getLogger(__name__)

# Outcomes about the account rather than the task: logged once per episode.
_ACCOUNT_PROBLEMS = {
    OutcomeKind.UNAUTHORIZED: "the API rejects the API key (HTTP 401/403): check "
    "LEMONDATA_API_KEY or api.key_file; polling goes on with backoff",
    OutcomeKind.PAYMENT_REQUIRED: "the API reports the account's quota or balance is "
    "exhausted (HTTP 402); polling goes on with backoff",
    OutcomeKind.REDIRECT: "the API answered with a redirect, which is never followed (the "
    "key must not leave api.base_url): check api.base_url",
}


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
        self._account_problem: OutcomeKind | None = None

    def stop(self) -> None:
        """Stop taking work: waiting workers give up, running requests finish."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_once(self) -> CycleResult:
        started = time.monotonic()
        tasks = self._store.due(self._clock(), self._batch_size)
        futures: dict[Future[tuple[PollOutcome, float] | None], Task] = {}
        for task in tasks:
            if self._stop.is_set():
                break
            futures[self._pool.submit(self._poll, task)] = task
        polled = finished = 0
        lag = 0.0
        any_answer: bool | None = None
        for future in as_completed(futures):
            if future.cancelled():
                continue
            result = future.result()
            if result is None:  # not sent: shutting down
                continue
            outcome, sent_at = result
            task = futures[future]
            polled += 1
            lag = max(lag, sent_at - task.next_poll_at)
            any_answer = bool(any_answer) or answered(outcome)
            finished += self._apply(task, outcome)
        if any_answer is not None:
            self._recorder.api_reachable(any_answer)
        self._recorder.cycle_done(time.monotonic() - started, lag, self._clock())
        return CycleResult(polled, finished, lag)

    def _poll(self, task: Task) -> tuple[PollOutcome, float] | None:
        if not self._budget.acquire(self._stop):
            return None
        sent_at = self._clock()
        return self._client.fetch_status(task.task_id, task.poll_url), sent_at

    def _apply(self, task: Task, outcome: PollOutcome) -> bool:
        """decide -> classify -> store -> record. True if the task finished."""
        self._recorder.api_response(outcome)
        self._note_account_problem(outcome)
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            self._budget.pause_for(outcome.retry_after or self._policy.backoff_base)
        now = self._clock()
        update = decide(task, outcome, now, self._policy, self._jitter())
        finish = update.finish
        reason = None
        if finish is not None and finish.status is Status.FAILED:
            reason = self._classifier.classify(finish.error_message)
        if not self._store.apply(task.task_id, update, now, reason):
            return False  # finished or removed meanwhile: already recorded
        self._recorder.task_update(update.model, update, reason)
        return finish is not None

    def _note_account_problem(self, outcome: PollOutcome) -> None:
        problem = outcome.kind if outcome.kind in _ACCOUNT_PROBLEMS else None
        if problem is self._account_problem or outcome.kind not in (
            *_ACCOUNT_PROBLEMS,
            *_RECOVERED,
        ):
            return
        if problem is not None:
            log.error("%s", _ACCOUNT_PROBLEMS[problem])
        else:
            log.info("the API accepts requests again")
        self._account_problem = problem


_RECOVERED = (OutcomeKind.REPORT, OutcomeKind.NOT_FOUND)
