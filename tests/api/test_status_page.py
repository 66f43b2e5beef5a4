"""The status page in-process: content, escaping, truncation, routes."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.api.status_page import MAX_TEXT_CHARS, StatusPage, clean_text, format_seconds
from exporter.model import DiscoveredTask, Finish, Status
from exporter.store.sqlite import SqliteTaskStore
from exporter.web.server import build_app
from tests.api.support import call
from tests.harness.updates import polled

HOSTILE = (
    '<script>alert("x")</script></td></tr></table><h1 id="injected">pwned</h1>'
    '<img src=x onerror="alert(1)">&amp; \x1b[31m\x00'
)


class Dom(HTMLParser):
    """Elements (tag, attributes) and the text of a page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def tags(self) -> set[str]:
        return {tag for tag, _ in self.elements}

    def ids(self) -> set[str | None]:
        return {attrs.get("id") for _, attrs in self.elements}


def fail(store: SqliteTaskStore, task_id: str, error: str, at: float) -> None:
    store.apply(
        task_id,
        polled(
            Status.FAILED,
            Finish(Status.FAILED, 10.0, error_message=error),
            at=at,
            next_poll_at=at,
            created=at - 10,
            model="flux-pro",
            first_seen=at,
            last_polled=at,
        ),
        at,
        "unknown",
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteTaskStore:
    return SqliteTaskStore(tmp_path / "s.db")


def test_page_shows_counts_flight_failures_and_models(store: SqliteTaskStore) -> None:
    store.add([DiscoveredTask(f"img_{n}", "api", model="flux-pro") for n in range(3)], 1000.0)
    store.add([DiscoveredTask("vid_1", "api", model="veo-3")], 1100.0)
    fail(store, "img_0", HOSTILE + "y" * 1000, 1150.0)
    page = StatusPage(store, clock=lambda: 1200.0)
    reply = call(page, "GET", "/status")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in reply.headers["Content-Security-Policy"]  # default-src 'none'
    text = reply.body.decode()
    dom = Dom(text)
    assert "script" not in dom.tags() and "img" not in dom.tags()
    assert "injected" not in dom.ids()
    assert {"counts", "models", "in-flight", "failures"} <= dom.ids()
    visible = "".join(dom.text)
    assert '<script>alert("x")</script></td></tr></table><h1 id="injected">' in visible
    assert "\x1b" not in visible and "\x00" not in visible
    assert "y" * (MAX_TEXT_CHARS - len(HOSTILE)) not in visible  # cut to 300 characters
    assert "\u2026" in visible
    assert "img_1" in visible and "img_2" in visible and "vid_1" in visible
    assert "3 min 20 s" in visible  # img_1 was discovered 200 s ago
    assert "50.0 s ago" in visible  # img_0 failed 50 s ago
    assert '<meta http-equiv="refresh"' in text


def test_clean_text_and_durations() -> None:
    assert clean_text(None) == ""
    assert clean_text("a\r\nb\tc\x07\u2028d") == "a\nb\tc\ufffd\ufffdd"
    assert len(clean_text("x" * 1000)) == MAX_TEXT_CHARS
    assert clean_text("x" * MAX_TEXT_CHARS) == "x" * MAX_TEXT_CHARS
    assert [format_seconds(s) for s in (None, -3, 2.25, 61, 3 * 3600 + 120, 50 * 3600)] == [
        "-",
        "0.0 s",
        "2.2 s",
        "1 min 01 s",
        "3 h 02 min",
        "2 d 2 h",
    ]


def test_lone_surrogates_do_not_break_the_page(
    store: SqliteTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add([DiscoveredTask("img_0", "api")], 1000.0)
    fail(store, "img_0", "error", 1100.0)
    task = store.get("img_0")
    assert task is not None
    task.error_message = "bad \ud800 text"  # what json.loads makes of "\\ud800"
    monkeypatch.setattr(store, "latest_finished", lambda *_: [task])
    reply = call(StatusPage(store, clock=lambda: 1200.0), "GET", "/status")
    assert reply.status == 200
    assert "bad ? text" in reply.body.decode()


def test_routes(store: SqliteTaskStore) -> None:
    page = StatusPage(store)
    assert call(page, "GET", "/statusx").status == 404
    assert call(page, "GET", "/status/").status == 404
    reply = call(page, "POST", "/status", body=b"")
    assert (reply.status, reply.headers["Allow"]) == (405, "GET, HEAD")
    head = call(page, "HEAD", "/status")
    assert (head.status, head.body) == (200, b"")
    # Mounted on the exporter's server, and linked from its landing page.

    class Health:
        def healthy(self) -> tuple[bool, str]:
            return True, "ok"

        def alive(self) -> tuple[bool, str]:
            return True, "ok"

        def ready(self) -> tuple[bool, str]:
            return True, "ok"

        def summary(self) -> dict[str, int]:
            return {}

        def hint(self) -> str:
            return ""

    app = build_app(CollectorRegistry(), Health(), {"/status": page})
    assert call(app, "GET", "/status").status == 200
    assert '<a href="status">' in call(app, "GET", "/").body.decode()
