"""The HTTP server: /metrics, a landing page, and health endpoints.

A thin WSGI dispatcher; `/metrics` is prometheus-client's own app (content
negotiation for OpenMetrics, gzip, `name[]` filtering).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporter import __version__

log = logging.getLogger(__name__)

__all__ = ["HealthView", "build_app", "is_scrape_or_health"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class HealthView(Protocol):
    """What the server needs to know about the agent, and nothing more."""

    def healthy(self) -> tuple[bool, str]: ...

    def alive(self) -> tuple[bool, str]:
        """Whether a restart would help: what a liveness probe asks."""
        ...

    def ready(self) -> tuple[bool, str]: ...

    def summary(self) -> dict[str, int]:
        """Tasks in the store by status, for the landing page."""
        ...

    def hint(self) -> str:
        """A line for the landing page, e.g. why there are no task metrics."""
        ...


def is_scrape_or_health(path: bytes) -> bool:
    """The requests the web port answers before pages (exporter.web.lanes)."""
    return path == b"/metrics" or path.startswith(b"/-/")


def build_app(
    registry: CollectorRegistry,
    health: HealthView,
    mounts: dict[str, WSGIApp] | None = None,
) -> WSGIApp:
    """The exporter's routes; `mounts` adds apps by path prefix (e.g. "/api/v1/")."""
    metrics_app = make_wsgi_app(registry)
    prefixes = sorted((mounts or {}).items(), key=lambda item: -len(item[0]))

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        for prefix, mounted in prefixes:
            if path.startswith(prefix):
                return mounted(environ, start_response)
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/-/healthy":
            return _plain(start_response, *health.healthy())
        if path == "/-/live":
            return _plain(start_response, *health.alive())
        if path == "/-/ready":
            return _plain(start_response, *health.ready())
        if path == "/":
            return _landing(start_response, health)
        return _plain(start_response, False, "not found", status="404 Not Found")

    return app


def _plain(start_response: StartResponse, ok: bool, text: str, status: str = "") -> list[bytes]:
    body = (text + "\n").encode()
    start_response(
        status or ("200 OK" if ok else "503 Service Unavailable"),
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _landing(start_response: StartResponse, health: HealthView) -> list[bytes]:
    rows = "".join(
        f"<tr><td>{html.escape(status)}</td><td>{count}</td></tr>"
        for status, count in health.summary().items()
    )
    # The hint marks names in backticks; shown as <code>, everything else escaped.
    hint = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(health.hint()))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LemonData exporter</title></head>
<body>
<h1>LemonData exporter</h1>
<p>Version {html.escape(__version__)}</p>
{f'<p class="hint"><strong>{hint}</strong></p>' if hint else ""}
<ul>
<li><a href="metrics">Metrics</a></li>
<li><a href="status">Status of the tasks</a></li>
<li><a href="-/healthy">Health</a></li>
<li><a href="-/live">Liveness</a></li>
<li><a href="-/ready">Readiness</a></li>
</ul>
<h2>Tasks in the store</h2>
<table><tr><th>status</th><th>tasks</th></tr>{rows}</table>
</body></html>
"""
    body = page.encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
