"""The interface every discovery source implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from exporter.model import DiscoveredTask


@dataclass(frozen=True, slots=True)
class DiscoveryBatch:
    tasks: list[DiscoveredTask] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per unusable entry, for logs
    # The source's read position after this batch; the store saves it together
    # with the tasks. None: nothing to save.
    state: str | None = None


class DiscoverySource(Protocol):
    name: str

    def discover(self, state: str | None) -> DiscoveryBatch:
        """New tasks since `state` (the position saved after the previous batch)."""
        ...
