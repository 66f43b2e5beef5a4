"""One discovery pass: every source -> the store."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from exporter.discovery.base import DiscoverySource
from exporter.intake import TaskIntake
from exporter.metrics.recorder import Recorder
from exporter.store.base import TaskStore

log = logging.getLogger(__name__)


def run_discovery(
    sources: Sequence[DiscoverySource],
    store: TaskStore,
    recorder: Recorder,
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
        added = store.add(tasks, now, state)
        if added:
            recorder.tasks_discovered(source.name, len(added))
            recorder.add_models(task.model for task in added)
            log.debug("discovery %s: %d new task(s)", source.name, len(added))
        total += len(added)
    return total
