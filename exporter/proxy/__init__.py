"""The proxy: fronts the upstream API and registers the tasks its create calls return."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from exporter.config import Config
from exporter.intake import RegistrationRecorder, TaskAdder, TaskIntake, register_tasks
from exporter.model import DiscoveredTask
from exporter.proxy.accounts import KeyAccounts
from exporter.proxy.register import SOURCE
from exporter.proxy.server import ProxyServer

log = logging.getLogger(__name__)


class ProxyRecorder(RegistrationRecorder, Protocol):
    def discovery_error(self, source: str) -> None: ...


def build_proxy(
    config: Config,
    store: TaskAdder,
    recorder: ProxyRecorder,
    intake: TaskIntake | None = None,
    accounts: KeyAccounts | None = None,
) -> ProxyServer:
    """The proxy of `config.proxy`, registering into `store` (OSError if it cannot listen).

    Beyond the cap on tracked tasks the answer still goes back to the caller;
    its task is not tracked, and that is counted and logged. `accounts` (with
    `accounts:` configured): a task is registered under the account whose key
    created it; a key of no account's is forwarded, its task not tracked.
    """

    if intake is not None:
        intake.add_sources([SOURCE])

    def register_created(tasks: list[DiscoveredTask]) -> None:
        if intake is not None:
            tasks = intake.admit(SOURCE, tasks).tasks
        register_tasks(store, recorder, SOURCE, tasks, time.time())

    def register_error(problem: str) -> None:
        log.warning("proxy: %s", problem)
        recorder.discovery_error(SOURCE)

    settings = config.proxy
    return ProxyServer(
        config.api.base_url,
        settings.listen_address,
        register_created,
        register_error=register_error,
        create_paths=settings.create_paths,
        timeout_seconds=settings.timeout_seconds,
        max_connections=settings.max_connections,
        max_create_body_bytes=settings.max_create_body_bytes,
        max_body_bytes=settings.max_body_bytes,
        **({"account_of": accounts.account_of} if accounts is not None else {}),
    )
