"""One discovery pass: every source -> the store."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from exporter.discovery.base import DiscoverySource
from exporter.intake import RegistrationRecorder, TaskAdder, TaskIntake, register_tasks

log = logging.getLogger(__name__)


class DiscoveryStore(TaskAdder, Protocol):
    def source_state(self, source: str) -> str | None:
        """Where a source left off (its saved position), None at first."""
        ...


class DiscoveryRecorder(RegistrationRecorder, Protocol):
    def discovery_error(self, source: str) -> None: ...


def run_discovery(
    sources: Sequence[DiscoverySource],
    store: DiscoveryStore,
    recorder: DiscoveryRecorder,
    now: float,
    intake: TaskIntake | None = None,
) -> int:
    """Add what each source found since its saved position; returns tasks added.

    With `intake`, tasks beyond the cap on tracked tasks are dropped (counted and
    logged) and the source's position still moves on: a full store must not make
    a source read the same lines for ever.
    """
    total = 0
    for source in sources:
        try:
            batch = source.discover(store.source_state(source.name))
        except Exception:  # a broken source must not stop the others
            log.exception("discovery source %s failed", source.name)
            recorder.discovery_error(source.name)
            continue
        for error in batch.errors:
            log.warning("discovery %s: %s", source.name, error)
            recorder.discovery_error(source.name)
            if intake is not None:
                intake.reject(source.name, "invalid")
        if batch.state is None and not batch.tasks:
            continue
        state = (source.name, batch.state) if batch.state is not None else None
        tasks = intake.admit(source.name, batch.tasks).tasks if intake is not None else batch.tasks
        total += len(register_tasks(store, recorder, source.name, tasks, now, state))
    return total
