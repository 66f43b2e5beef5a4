"""Serving: the agent, its web server and the proxy, run until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Mapping

from pydantic import SecretStr

from exporter.agent import Agent
from exporter.api.mounts import WebApis
from exporter.api.validation import SOURCE as API_SOURCE
from exporter.config import Config
from exporter.metrics.accounts import AccountsRegistry
from exporter.metrics.static_labels import serving_registry
from exporter.proxy import build_proxy
from exporter.proxy.accounts import KeyAccounts
from exporter.web.httpserver import HttpServer
from exporter.web.security import WebSecurity
from exporter.web.server import build_app, is_scrape_or_health

log = logging.getLogger(__name__)


def bind_failure(exc: OSError) -> str:
    """Why a port could not be opened, e.g. "Address already in use" (the HTTP server
    wraps the socket's error in a message of its own)."""
    if exc.strerror:
        return exc.strerror
    found = re.search(r"\[Errno \d+\] ([^)]+)", str(exc))
    return found.group(1) if found else str(exc)


def serve(
    config: Config,
    api_key: SecretStr | Mapping[str, SecretStr],
    listen_address: str,
    config_source: str = "",
    stop: threading.Event | None = None,
    web_security: WebSecurity | None = None,
) -> int:
    """Run the agent and its web server until SIGINT/SIGTERM (or `stop` is set).

    `web_security` (from --web.config.file) puts TLS and basic auth on every endpoint.
    """
    stop = stop or threading.Event()
    apis = WebApis.from_config(config)  # an unusable API token stops the start (ValueError)
    agent = Agent(config, api_key, config_source)
    agent.task_api_on = apis.token is not None
    if apis.token is not None:
        agent.recorder.add_sources([API_SOURCE])
        agent.intake.add_sources([API_SOURCE])
    registry = agent.registry
    if agent.account_registries:
        registry = AccountsRegistry(registry, agent.account_registries)
    app = build_app(
        serving_registry(registry, config.metrics.static_labels),
        agent,
        apis.mounts(agent.store, agent.registration, agent.intake),
    )
    if web_security is not None:
        app = web_security.wrap(app, own_auth_prefixes=apis.own_auth_prefixes())
        log.info("web: %s", web_security.describe())
    try:
        web = HttpServer(
            app,
            listen_address,
            tls=web_security.tls if web_security else None,
            priority=is_scrape_or_health,
        )
    except OSError as exc:
        agent.store.close()
        log.error(
            "cannot listen on %s: %s; choose another address with --web.listen-address",
            listen_address,
            bind_failure(exc),
        )
        return 1
    try:
        proxy = (
            build_proxy(
                config,
                agent.store,
                agent.registration,
                agent.intake,
                KeyAccounts(api_key, agent.registry)
                if config.accounts and isinstance(api_key, Mapping)
                else None,
            )
            if config.proxy.enabled
            else None
        )
    except OSError as exc:
        agent.store.close()
        log.error(
            "proxy: cannot listen on %s: %s; choose another address in proxy.listen_address",
            config.proxy.listen_address,
            bind_failure(exc),
        )
        return 1
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
        if threading.current_thread() is threading.main_thread()
    }
    web.start()
    agent.start()
    if proxy is not None:
        proxy.start()
        log.info("proxy on %s for %s", config.proxy.listen_address, config.api.base_url)
    log.info(
        "listening on %s (metrics at /metrics), polling %s", listen_address, config.api.base_url
    )
    stop.wait()  # the first poll cycle logs a hint if nothing is tracked
    log.info("shutting down")
    if proxy is not None:
        proxy.stop()  # no new tasks while the agent stops
    agent.stop()  # /-/ready answers 503 meanwhile
    web.stop()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return 0
