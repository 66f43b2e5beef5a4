"""EveryInterval: a recurring log line at most once per interval and key."""

from __future__ import annotations

from exporter.logsetup import EveryInterval


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
