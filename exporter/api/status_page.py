"""The HTML status page at /status: what the store holds now, for people.

Counts by status, per-model summaries, the tasks in flight with their age and
the latest failures with their error text. Read-only and unauthenticated like
/metrics. Error texts come from upstream and are untrusted: they are cut to
300 characters, stripped of control characters and HTML-escaped; the page has
no script and a Content-Security-Policy that would block one anyway. It
reloads itself every REFRESH_SECONDS.

/status/tasks/{id} shows one task as the store holds it: where a Grafana
exemplar's data link goes (a task ID on a histogram bucket), behind the same
auth as /status, so it needs no API token unless `status_page_auth: token`.
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from exporter import __version__
from exporter.model import FINISHED_STATUSES, Status, Task, valid_task_id
from exporter.store.base import TaskReader
from exporter.store.guard import StoreUnavailable

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
PATH = "/status"
TASK_PATH = PATH + "/tasks/"  # + a task ID: one task's page
REFRESH_SECONDS = 10
# A page is rendered at most this often; every request meanwhile gets the same
# page, so reloading it, by any number of clients, cannot load the store.
CACHE_SECONDS = 2.0
MAX_TEXT_CHARS = 300
IN_FLIGHT_ROWS = 50
FAILURE_ROWS = 20
# The failure ratio's statuses (cancellations are a user's choice, not a failure).
FAILURE_STATUSES = (Status.FAILED, Status.EXPIRED, Status.TIMEOUT)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
]
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.message { max-width: 60em; white-space: pre-wrap; overflow-wrap: anywhere; }
.muted { color: #777; }
"""


def clean_text(text: str | None, limit: int = MAX_TEXT_CHARS) -> str:
    """Untrusted text, ready to escape: control characters replaced, cut to `limit`."""
    if not text:
        return ""
    cleaned = _CONTROL.sub("\ufffd", text.replace("\r\n", "\n"))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "\u2026"


def _cell(text: str | None, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    if text is None or text == "":
        return f'<td{klass}><span class="muted">-</span></td>'
    return f"<td{klass}><bdi>{html.escape(clean_text(text))}</bdi></td>"


def _task_cell(task_id: str) -> str:
    """The task's ID, linking to its own page (relative to /status)."""
    href = html.escape("status/tasks/" + quote(task_id, safe=""))
    return f'<td><a href="{href}"><bdi>{html.escape(clean_text(task_id))}</bdi></a></td>'


def _number_cell(value: str) -> str:
    return f'<td class="num">{html.escape(value)}</td>'


def format_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def _table(headers: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render(store: TaskReader, now: float) -> str:
    """The page, from what the store holds at `now`."""
    counts = store.count_by_status()
    count_rows = [
        f"<tr><td>{html.escape(status.value)}</td>{_number_cell(str(counts.get(status, 0)))}</tr>"
        for status in Status
    ]
    model_rows = [
        "<tr>"
        + _cell(summary.model or "(none)")
        + _number_cell(str(summary.active))
        + _number_cell(str(summary.finished))
        + _number_cell(str(summary.failed))
        + _number_cell(format_seconds(summary.median_duration_seconds))
        + "</tr>"
        for summary in store.model_summaries()
    ]
    in_flight = store.in_flight(IN_FLIGHT_ROWS)
    active_total = sum(
        counts.get(status, 0) for status in Status if status not in FINISHED_STATUSES
    )
    flight_rows = [_flight_row(task, now) for task in in_flight]
    failure_rows = [
        _failure_row(task, now) for task in store.latest_finished(FAILURE_STATUSES, FAILURE_ROWS)
    ]
    shown = (
        f" (the {len(in_flight)} oldest of {active_total})" if active_total > len(in_flight) else ""
    )
    generated = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    models = _table(
        ("model", "in flight", "finished", "failed", "median duration (completed)"),
        model_rows,
        "No tasks in the store.",
    )
    flights = _table(
        ("task", "model", "status", "age", "polls", "last polling problem"),
        flight_rows,
        "No unfinished tasks.",
    )
    failures = _table(
        ("finished", "task", "model", "status", "reason", "error"),
        failure_rows,
        "No failures in the store.",
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LemonData exporter: status</title>
<style>{_STYLE}</style></head>
<body>
<h1>Task status</h1>
<p class="muted">lemondata-exporter {html.escape(__version__)}, as of
<time id="generated">{generated}</time>; reloads every {REFRESH_SECONDS} s.
<a href="./">Home</a> &middot; <a href="metrics">Metrics</a></p>
<h2>Tasks by status</h2>
<table id="counts"><thead><tr><th>status</th><th>tasks</th></tr></thead>
<tbody>{"".join(count_rows)}</tbody></table>
<h2>By model</h2>
<div id="models">{models}</div>
<h2>In flight{html.escape(shown)}</h2>
<div id="in-flight">{flights}</div>
<h2>Latest failures</h2>
<p class="muted">Failed, expired and timed-out tasks, newest first; error texts are cut to
{MAX_TEXT_CHARS} characters (the task API has them whole).</p>
<div id="failures">{failures}</div>
</body></html>
"""


def _flight_row(task: Task, now: float) -> str:
    started = task.created if task.created is not None else task.discovered_at
    return (
        "<tr>"
        + _task_cell(task.task_id)
        + _cell(task.model)
        + _cell(task.status.value)
        + _number_cell(format_seconds(now - started))
        + _number_cell(str(task.attempts))
        + _cell(task.last_error, "message")
        + "</tr>"
    )


def _failure_row(task: Task, now: float) -> str:
    ago = format_seconds(now - task.finished_at) + " ago" if task.finished_at else "-"
    return (
        "<tr>"
        + _number_cell(ago)
        + _task_cell(task.task_id)
        + _cell(task.model)
        + _cell(task.status.value)
        + _cell(task.reason)
        + _cell(task.error_message, "message")
        + "</tr>"
    )


def _time(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_task(task: Task, now: float) -> str:
    """One task's page: what the store holds about it at `now`."""
    started = task.created if task.created is not None else task.discovered_at
    age = task.finished_at - started if task.finished_at is not None else now - started
    rows = [
        ("task", task.task_id),
        ("model", task.model),
        ("status", task.status.value),
        ("source", task.source),
        ("created (upstream)", _time(task.created)),
        ("discovered", _time(task.discovered_at)),
        ("processing seen", _time(task.processing_seen)),
        ("finished", _time(task.finished_at)),
        ("duration", format_seconds(task.duration_seconds)),
        ("age" if task.finished_at is None else "until finish (seen)", format_seconds(age)),
        ("polls", str(task.attempts)),
        ("failure reason", task.reason),
        ("error", task.error_message),
        ("last polling problem", task.last_error),
    ]
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>{_cell(value, 'message')}</tr>" for name, value in rows
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LemonData exporter: task</title>
<style>{_STYLE}</style></head>
<body>
<h1>Task</h1>
<p class="muted">As of <time id="generated">{_time(now)}</time>.
<a href="../../status">All tasks</a></p>
<table id="task">{body}</table>
</body></html>
"""


class StatusPage:
    """The WSGI app mounted on /status."""

    def __init__(
        self,
        store: TaskReader,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._render_lock = threading.Lock()  # one render at a time; the others wait for it
        self._page: bytes | None = None
        self._rendered_at = -float("inf")

    def page(self) -> bytes:
        """The page, rendered at most every `cache_seconds`."""
        with self._render_lock:
            if self._page is None or self._monotonic() - self._rendered_at >= self._cache_seconds:
                self._page = render(self.store, self._clock()).encode("utf-8", errors="replace")
                self._rendered_at = self._monotonic()
            return self._page

    def task_page(self, task_id: str) -> bytes | None:
        """One task's page, None when the ID is not one or the store does not hold it.
        Not cached: one lookup by key, and each link asks for another task."""
        if not valid_task_id(task_id):
            return None
        task = self.store.get(task_id)
        if task is None:
            return None
        return render_task(task, self._clock()).encode("utf-8", errors="replace")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if path != PATH and not path.startswith(TASK_PATH):
            return _plain(start_response, "404 Not Found", "not found")
        if method not in ("GET", "HEAD"):
            return _plain(
                start_response, "405 Method Not Allowed", "only GET", [("Allow", "GET, HEAD")]
            )
        try:
            if path != PATH:
                found = self.task_page(path[len(TASK_PATH) :])
                if found is None:
                    return _plain(start_response, "404 Not Found", "no such task in the store")
                body = found
            else:
                body = self.page()
        except StoreUnavailable as exc:  # the guard has logged it
            return _plain(start_response, "503 Service Unavailable", f"the task store fails: {exc}")
        except Exception:
            log.exception("status page: cannot render")
            return _plain(start_response, "500 Internal Server Error", "cannot render the page")
        start_response("200 OK", [*_HEADERS, ("Content-Length", str(len(body)))])
        return [b""] if method == "HEAD" else [body]


def _plain(
    start_response: StartResponse,
    status: str,
    text: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(extra or []),
        ],
    )
    return [body]
