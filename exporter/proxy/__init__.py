"""The proxy: fronts the upstream API and registers the tasks its create calls return."""

from __future__ import annotations

import logging
import time

from exporter.config import Config
from exporter.intake import TaskIntake
from exporter.metrics.recorder import Recorder
from exporter.model import DiscoveredTask
from exporter.proxy.register import SOURCE
from exporter.proxy.server import ProxyServer
from exporter.store.base import TaskStore

log = logging.getLogger(__name__)


def build_proxy(
    config: Config, store: TaskStore, recorder: Recorder, intake: TaskIntake | None = None
) -> ProxyServer:
    """The proxy of `config.proxy`, registering into `store` (OSError if it cannot listen).

    Beyond the cap on tracked tasks the answer still goes back to the caller;
    its task is not tracked, and that is counted and logged.
    """

    def register(tasks: list[DiscoveredTask]) -> None:
        if intake is not None:
            tasks = intake.admit(SOURCE, tasks).tasks
        added = store.add(tasks, time.time())
        if added:
            recorder.tasks_discovered(SOURCE, len(added))
            recorder.add_models(task.model for task in added)

    def register_error(problem: str) -> None:
        log.warning("proxy: %s", problem)
        recorder.discovery_error(SOURCE)

    settings = config.proxy
    return ProxyServer(
        config.api.base_url,
        settings.listen_address,
        register,
        register_error=register_error,
        create_paths=settings.create_paths,
        timeout_seconds=settings.timeout_seconds,
        max_connections=settings.max_connections,
        max_create_body_bytes=settings.max_create_body_bytes,
        max_body_bytes=settings.max_body_bytes,
    )
