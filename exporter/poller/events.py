"""What the poll path tells its listeners: small immutable values and one Protocol.

The outcome handler (`handler.py`) turns each answer into a stored change and
then tells every `PollListener` what happened; the listeners react (metrics,
the account state, the rate controller, the duration learner). A listener
that cares about one kind of event leaves the others as they are here: no-ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from exporter.model import PollOutcome, Task, TaskUpdate


@dataclass(frozen=True, slots=True)
class Change:
    """A change the store accepted: `before` is the task as polled, `update.task`
    the task now.

    `seen_at` is when the API saw the task so; `reason` is the failure reason
    of a failed finish, else None."""

    before: Task
    update: TaskUpdate
    reason: str | None
    seen_at: float

    @property
    def model(self) -> str | None:
        return self.update.task.model


@dataclass(frozen=True, slots=True)
class CycleEnd:
    """One poll cycle is over: its wall time, lag and when it ended (unix time)."""

    duration: float
    lag: float
    ended_at: float


class PollListener(Protocol):
    """Reacts to what the poll path saw. Called in the cycle thread, in this order
    per answer: `answer`, then `changed` if the store accepted a change."""

    def answer(self, outcome: PollOutcome, probe: bool) -> None:
        """Any answer, a task's or a probe's (before the task's change is decided)."""
        return None

    def changed(self, change: Change) -> None:
        """A task's change, once the store accepted it (never twice for one finish)."""
        return None

    def reachable(self, answered: bool) -> None:
        """Whether the latest requests (a cycle's, or a probe) got a usable answer."""
        return None

    def cycle_done(self, end: CycleEnd) -> None:
        """A poll cycle ended."""
        return None
