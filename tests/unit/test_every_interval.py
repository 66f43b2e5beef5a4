"""EveryInterval: a recurring log line at most once per interval and key."""

from __future__ import annotations

import logging

import pytest

from exporter.logsetup import EveryInterval
from exporter.web.httpserver import HttpServer


def test_first_at_once_then_once_per_interval_per_key() -> None:
    now = [5.0]  # monotonic time may be small just after boot
    due = EveryInterval(60.0, clock=lambda: now[0])
    assert due.due("a") and not due.due("a")
    assert due.due("b")  # keys are apart
    now[0] += 59.9
    assert not due.due("a")
    now[0] += 0.1
    assert due.due("a") and not due.due("a")
    assert due.due() and not due.due()


@pytest.mark.integration
def test_the_http_server_notes_a_flood_of_trouble_once(caplog: pytest.LogCaptureFixture) -> None:
    server = HttpServer(lambda environ, start_response: [], "127.0.0.1:0")
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.web.httpserver"):
            for _ in range(100):  # e.g. out of file descriptors under a connection flood
                server._server.note_trouble("cannot accept: Too many open files")
        assert caplog.text.count("cannot accept") == 1
    finally:
        server._server.stop()
