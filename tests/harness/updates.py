"""`TaskUpdate`s built by hand, for tests that store a poll's result without polling."""

from __future__ import annotations

from typing import Any

from exporter.model import Finish, Status, Task, TaskUpdate


def polled(
    status: Status,
    finish: Finish | None = None,
    *,
    at: float = 100.0,
    pending_seconds: float | None = None,
    **fields: Any,
) -> TaskUpdate:
    """A poll's result as `decide` would give it, seen at `at`: a task in `status`,
    finished then if `finish`; `fields` are other `Task` fields (the stores never
    write the task's identity, so it is a placeholder)."""
    values: dict[str, Any] = {
        "next_poll_at": 200.0,
        "created": 90.0,
        "model": "flux",
        "first_seen": 100.0,
        "last_polled": 100.0,
        "finished_at": at if finish else None,
        "duration_seconds": finish.duration if finish else None,
        "error_message": finish.error_message if finish else None,
    }
    values.update(fields)
    task = Task("polled", "test", poll_url=None, status=status, discovered_at=0.0, **values)
    return TaskUpdate(task, finish, pending_seconds)
