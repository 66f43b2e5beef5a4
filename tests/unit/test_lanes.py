"""Scrapes first: which web request runs now and which waits (exporter.web.lanes)."""

from __future__ import annotations

import threading

import pytest

from exporter.web.lanes import ScrapesFirst, request_path
from exporter.web.server import is_scrape_or_health


class FakeConn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.admitted = False
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Resumed(list[FakeConn]):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def __call__(self, conn: FakeConn) -> None:
        self.append(conn)
        self.event.set()


def lanes(slots: int = 2, max_wait: float = 60.0) -> tuple[ScrapesFirst, Resumed, list[float]]:
    now = [100.0]
    resumed = Resumed()
    first = ScrapesFirst(
        is_scrape_or_health, slots, resumed, max_wait_seconds=max_wait, clock=lambda: now[0]
    )
    return first, resumed, now


@pytest.mark.parametrize(
    ("head", "path"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"/metrics"),
        (b"GET /metrics?name[]=up HTTP/1.1\r\n\r\n", b"/metrics"),
        (b"GET http://exporter:9847/-/ready HTTP/1.1\r\n\r\n", b"/-/ready"),
        (b"GET http://exporter:9847 HTTP/1.1\r\n\r\n", b""),
        (b"GET /status HTTP/1.1\r\nX-Content-Length: 3\r\n\r\n", b"/status"),
        # A body, however it is framed, makes any request a page.
        (b"POST /metrics HTTP/1.1\r\ncontent-LENGTH: 3\r\n\r\nabc", b""),
        (b"GET /-/healthy HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b""),
        # Only the head counts, not what is pipelined after it.
        (
            b"GET /metrics HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"/metrics",
        ),
        (b"GARBAGE\r\n\r\n", b""),
    ],
)
def test_request_path(head: bytes, path: bytes) -> None:
    assert request_path(head) == path


def test_a_head_is_a_scrape_or_health_check_by_its_path() -> None:
    first, _, _ = lanes()
    assert first.priority(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert first.priority(b"GET /-/ready HTTP/1.1\r\n\r\n")
    assert not first.priority(b"GET /status HTTP/1.1\r\n\r\n")
    assert not first.priority(b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")


def test_scrapes_always_start_and_pages_take_at_most_their_slots() -> None:
    first, resumed, _ = lanes(slots=2)
    assert first.start(priority=False) and first.start(priority=False)
    assert not first.start(priority=False)  # both page slots are taken
    assert all(first.start(priority=True) for _ in range(5))  # scrapes never wait
    waiting = FakeConn("third page")
    first.park(waiting)
    assert not resumed and first.parked == 1
    for _ in range(5):
        first.finish(priority=True)
    assert not resumed  # still no page slot
    first.finish(priority=False)
    assert resumed == [waiting] and waiting.admitted  # it holds the slot that was freed
    assert not first.start(priority=False)
    first.finish(priority=False)
    assert first.start(priority=False)


def test_no_page_starts_while_a_scrape_is_answered_and_the_waiting_go_in_order() -> None:
    first, resumed, _ = lanes(slots=4)
    assert first.start(priority=True)
    assert not first.start(priority=False)
    pages = [FakeConn(f"page {n}") for n in range(3)]
    for conn in pages:
        first.park(conn)
    assert first.start(priority=True)  # a second scrape, overlapping
    first.finish(priority=True)
    assert not resumed
    first.finish(priority=True)
    assert resumed == pages
    assert first.parked == 0


def test_a_page_parked_after_the_scrape_ended_is_resumed_at_once() -> None:
    # The worker hands the connection over only after it let go of it; by then the
    # scrape that refused it may be over.
    first, resumed, _ = lanes()
    assert first.start(priority=True)
    assert not first.start(priority=False)
    first.finish(priority=True)
    conn = FakeConn("late")
    first.park(conn)
    assert resumed == [conn]


def test_a_page_waits_for_scrapes_at_most_max_wait() -> None:
    now = [0.0]
    resumed = Resumed()
    first = ScrapesFirst(
        is_scrape_or_health, 2, resumed, max_wait_seconds=0.5, clock=lambda: now[0]
    )
    assert first.start(priority=True)  # e.g. a client reading a scrape's answer slowly
    first.park(FakeConn("page"))
    now[0] = 0.4
    first.start(priority=True)
    first.finish(priority=True)
    assert not resumed
    now[0] = 0.5  # the scrape still runs: the timer thread resumes the page anyway
    with first._wake:
        first._wake.notify()
    assert resumed.event.wait(10)
    first.close()


def test_evict_closes_the_page_parked_longest() -> None:
    first, resumed, _ = lanes()
    assert not first.evict()
    assert first.start(priority=True)
    older, newer = FakeConn("older"), FakeConn("newer")
    first.park(older)
    first.park(newer)
    assert first.evict()
    assert older.closed and not newer.closed and first.parked == 1
    first.finish(priority=True)
    assert resumed == [newer]


def test_close_closes_the_waiting_connections() -> None:
    first, resumed, _ = lanes()
    assert first.start(priority=True)
    parked = FakeConn("parked")
    first.park(parked)
    first.close()
    assert parked.closed and not resumed
    late = FakeConn("after close")
    first.park(late)
    assert late.closed


def test_page_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="page_slots"):
        ScrapesFirst(is_scrape_or_health, 0, print)
