"""The interface every task store implements (SQLite now; others may follow)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from exporter.model import DiscoveredTask, Status, Task, TaskUpdate


class TaskStore(Protocol):
    def add(
        self,
        tasks: Iterable[DiscoveredTask],
        now: float,
        source_state: tuple[str, str] | None = None,
    ) -> list[DiscoveredTask]:
        """Track new tasks (known IDs are left alone) and save a source's position."""
        ...

    def due(self, now: float, limit: int) -> list[Task]:
        """Unfinished tasks whose next poll is due, most overdue first."""
        ...

    def apply(self, task_id: str, update: TaskUpdate, now: float, reason: str | None) -> bool:
        """Store a poll's result; False if the task is gone or already finished."""
        ...

    def get(self, task_id: str) -> Task | None: ...

    def count_by_status(self) -> dict[Status, int]: ...

    def oldest_active(self) -> dict[Status, float]:
        """Per unfinished status, the earliest creation (or discovery) time."""
        ...

    def models(self) -> list[str]: ...

    def prune(self, finished_before: float) -> int: ...

    def source_state(self, source: str) -> str | None: ...

    def close(self) -> None: ...
