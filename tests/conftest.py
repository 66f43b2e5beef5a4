"""The fast lane stays fast: a test that starts a process is marked `integration`.

`python -m pytest -m "not integration"` runs what needs no server, no
subprocess and no listening socket. A test without the marker that starts a
subprocess or listens on a socket fails here, so the lane cannot slowly fill
with servers again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.guard import no_processes

pytest_plugins = ["tests.harness.fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if item.get_closest_marker("integration") is not None:
        yield
        return
    with no_processes(item.nodeid):
        yield
