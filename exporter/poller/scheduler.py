"""APScheduler wiring: a handful of periodic jobs, never one job per task."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


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
