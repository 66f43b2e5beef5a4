"""Scrapes first: which request of the web port runs now and which waits.

One Python process, with one pool of worker threads, serves every request of
the web port: pages (`/status`, the task API, the landing page) and scrapes
share its threads and its interpreter. Admission keeps scrapes and health
checks ahead of pages:

- a scrape or a health check (`priority` paths, asked without a body) always
  starts at once, on a worker thread that pages cannot all take
  (`page_slots` < worker threads), so clients that send a page's body slowly
  hold page threads, not those;
- a page starts only while no scrape or health check is being answered and
  fewer than `page_slots` pages are; otherwise its connection is parked,
  holding no thread, and resumed in arrival order when that changes;
- no page waits longer than `max_wait_seconds`, so a stream of scrapes (or a
  client that reads a scrape's answer slowly) delays pages, never stops them;
- when the server is full, a parked page is closed to make room (after the
  clients still sending a head and the idle ones): a scrape can always get in.

The connection hands itself over with `park` only after its worker has let go
of it, and a resumed page already holds its slot (`admitted`), so no
connection is ever served by two threads or counted twice.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_WAIT_SECONDS = 0.25
_BODY_HEADERS = re.compile(rb"\r\n(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)


def request_path(head: bytes) -> bytes:
    """The path of a request head's target (origin or absolute form), without its
    query; b"" for a request with a body, which is never a scrape or a health check
    (a slow body would hold the threads kept for them)."""
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[: end + 2]  # what follows may be a body
    if _BODY_HEADERS.search(head):
        return b""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    target = parts[1] if len(parts) == 3 else b""
    if target[:1] != b"/":
        _, sep, rest = target.partition(b"://")
        target = b"/" + rest.split(b"/", 1)[1] if sep and b"/" in rest else b""
    return target.split(b"?", 1)[0].split(b"#", 1)[0]


class ScrapesFirst:
    """Admission of one server's requests; thread-safe."""

    def __init__(
        self,
        is_priority: Callable[[bytes], bool],
        page_slots: int,
        resume: Callable[[Any], None],
        *,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`resume(conn)` queues a parked connection for a worker again."""
        if page_slots < 1:
            raise ValueError("page_slots must be at least 1")
        self._is_priority = is_priority
        self.page_slots = page_slots
        self.max_wait_seconds = max_wait_seconds
        self._resume = resume
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._priority = 0  # scrapes and health checks being answered
        self._pages = 0  # pages being answered, resumed ones included
        self._parked: deque[tuple[float, Any]] = deque()
        self._closed = False
        self._timer: threading.Thread | None = None  # started by the first `park`

    @property
    def parked(self) -> int:
        return len(self._parked)

    def priority(self, head: bytes) -> bool:
        """Whether a whole request head (and whatever follows it) is a scrape or a
        health check: the `priority` of its `start` and `finish`."""
        return self._is_priority(request_path(head))

    def start(self, priority: bool) -> bool:
        """Whether a request may run now; if so it counts until `finish(priority)`."""
        with self._lock:
            if priority:
                self._priority += 1
                return True
            if self._priority or self._parked or self._pages >= self.page_slots:
                return False
            self._pages += 1
            return True

    def finish(self, priority: bool) -> None:
        with self._lock:
            if priority:
                self._priority -= 1
            else:
                self._pages -= 1
            ready = self._take(self._clock())
        self._hand_over(ready)

    def park(self, conn: Any) -> None:
        """A page that `start` refused, after its worker let go of the connection.
        Marks it `admitted` before it is resumed."""
        with self._lock:
            if self._closed:
                ready = []
                conn.close()
            else:
                if self._timer is None:
                    self._timer = threading.Thread(
                        target=self._expire_waits, name="http-lanes", daemon=True
                    )
                    self._timer.start()
                self._parked.append((self._clock(), conn))
                ready = self._take(self._clock())
                self._wake.notify()
        self._hand_over(ready)

    def evict(self) -> bool:
        """Close the page parked longest, to make room for a new connection."""
        with self._lock:
            if not self._parked:
                return False
            _, conn = self._parked.popleft()
        conn.close()
        return True

    def close(self) -> None:
        """Stop: close every parked connection."""
        with self._lock:
            self._closed = True
            parked = [conn for _, conn in self._parked]
            self._parked.clear()
            self._wake.notify()
        for conn in parked:
            conn.close()

    def _take(self, now: float) -> list[Any]:
        """Under the lock: the parked pages that may start now, their slots taken."""
        ready = []
        while self._parked and self._pages < self.page_slots:
            since, conn = self._parked[0]
            if self._priority and now - since < self.max_wait_seconds:
                break
            self._parked.popleft()
            self._pages += 1
            conn.admitted = True
            ready.append(conn)
        return ready

    def _hand_over(self, ready: list[Any]) -> None:
        for conn in ready:
            self._resume(conn)

    def _expire_waits(self) -> None:
        """Resume the pages that have waited `max_wait_seconds` behind scrapes."""
        while True:
            with self._lock:
                if self._closed:
                    return
                if not self._parked:
                    self._wake.wait()
                    continue
                left = self._parked[0][0] + self.max_wait_seconds - self._clock()
                if left > 0:
                    self._wake.wait(left)
                    continue
                ready = self._take(self._clock())
                if not ready:  # every page slot is busy: a finish resumes it
                    self._wake.wait(self.max_wait_seconds)
            self._hand_over(ready)
