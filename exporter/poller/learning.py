"""Adaptive polling learns from finishes: a poll listener feeding the duration
learner, and saving what it learnt so that a restart keeps it."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from exporter.poller.adaptive import AdaptiveSchedule
from exporter.poller.events import Change, CycleEnd, PollListener

log = logging.getLogger(__name__)
SAVE_INTERVAL_SECONDS = 30.0


class StatsKeeper(Protocol):
    """Where learnt task durations are kept across restarts (a store that can)."""

    def load_model_stats(self) -> dict[str, str]: ...

    def save_model_stats(self, stats: dict[str, str | None]) -> None: ...


class DurationLearning(PollListener):
    """Every finish with a duration teaches the schedule how long its model takes;
    the changed models are saved every `SAVE_INTERVAL_SECONDS` and at shutdown."""

    def __init__(self, schedule: AdaptiveSchedule, keeper: StatsKeeper | None = None) -> None:
        self._schedule = schedule
        self._keeper = keeper
        self._saved = time.monotonic()
        if keeper is not None:
            loaded = schedule.learner.load(keeper.load_model_stats())
            if loaded:
                log.info("adaptive polling: task durations of %d model(s) loaded", loaded)

    def changed(self, change: Change) -> None:
        finish = change.update.finish
        if finish is not None and finish.duration is not None:
            self._schedule.observe_finish(change.model, finish.duration)

    def cycle_done(self, end: CycleEnd) -> None:
        if time.monotonic() - self._saved > SAVE_INTERVAL_SECONDS:
            self.save()

    def save(self) -> None:
        """Save what adaptive polling learnt (models changed since the last save)."""
        self._saved = time.monotonic()
        if self._keeper is None:
            return
        changed = self._schedule.learner.dump()
        if changed:
            try:
                self._keeper.save_model_stats(changed)
            except Exception:  # the store's trouble shows elsewhere; try again later
                log.warning("could not save adaptive polling stats", exc_info=True)
