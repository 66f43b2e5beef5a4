"""APScheduler wiring: a handful of periodic jobs, never one job per task."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

# How much lower a background job (the prune) runs than the rest of the
# exporter: when a scrape or a poll and a prune batch want the same CPU, the
# scheduler gives the scrape about nine tenths of it instead of half.
BACKGROUND_NICE = 10


def build_scheduler(jobs: list[tuple[str, Callable[[], object], float]]) -> BackgroundScheduler:
    """A scheduler running each (name, function, interval seconds) job.

    A job that overruns its interval is not started twice: the next run is
    skipped (`max_instances=1`, `coalesce`), and the poll lag metric shows it.
    """
    # Skipped overlapping runs are expected under a tight budget; the metrics say so.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=max(2, len(jobs)))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )
    now = datetime.now(UTC)
    for name, function, interval in jobs:
        scheduler.add_job(
            _guarded(name, function),
            "interval",
            seconds=interval,
            id=name,
            name=name,
            next_run_time=now,
        )
    return scheduler


def _guarded(name: str, function: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            function()
        except Exception:  # keep the loop alive; the health check notices a stall
            log.exception("job %s failed", name)

    return run


def in_background(function: Callable[[], object]) -> Callable[[], object]:
    """`function` run in a thread of its own at a lower CPU priority (Linux: that
    thread's nice value raised by BACKGROUND_NICE), waited for. A thread of its
    own because an unprivileged process cannot raise a thread's priority back:
    the scheduler's pool threads keep theirs. Returns or raises what it does."""

    def run() -> object:
        outcome: list[object] = []
        failure: list[BaseException] = []

        def target() -> None:
            lower_priority(BACKGROUND_NICE)
            try:
                outcome.append(function())
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=target, name="background", daemon=True)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return outcome[0]

    return run


def lower_priority(increment: int) -> None:
    """Raise the calling thread's nice value by `increment` (Linux, where
    setpriority on a thread ID applies to that thread alone); elsewhere nothing,
    as an ID there may name a process."""
    if sys.platform != "linux":
        return
    thread_id = threading.get_native_id()
    with contextlib.suppress(OSError):  # not allowed here: it runs at the usual priority
        os.setpriority(
            os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + increment
        )
