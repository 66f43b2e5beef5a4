"""Tasks listed in the config file."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from exporter.config import StaticTask
from exporter.discovery.base import DiscoveryBatch
from exporter.model import DEFAULT_ACCOUNT, DiscoveredTask


class StaticSource:
    name = "config"

    def __init__(self, tasks: Sequence[StaticTask], default_account: str = DEFAULT_ACCOUNT) -> None:
        """`default_account`: the account of a task that names none."""
        self._tasks = [
            DiscoveredTask(
                t.id,
                self.name,
                model=t.model,
                poll_url=t.poll_url,
                account=t.account or default_account,
            )
            for t in tasks
        ]
        # Offered once per distinct list: re-offering it every pass would bring
        # back tasks the store pruned after their retention.
        self._digest = hashlib.sha256(
            "\n".join(t.task_id for t in self._tasks).encode()
        ).hexdigest()

    def discover(self, state: str | None) -> DiscoveryBatch:
        if state == self._digest or not self._tasks:
            return DiscoveryBatch()
        return DiscoveryBatch(tasks=list(self._tasks), state=self._digest)
