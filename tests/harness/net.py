"""Loopback ports and polling waits."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    every: float = 0.1,
    tolerate: tuple[type[Exception], ...] = (),
) -> Any:
    """The first truthy result of `condition`; fails after `timeout` seconds.

    A connection error (the server is not up yet) counts as "not yet", and so
    does any exception in `tolerate`; the last one is named in the failure.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    tolerated: tuple[type[Exception], ...] = (requests.RequestException, OSError, *tolerate)
    while True:
        result = None
        try:
            result = condition()
        except tolerated as exc:
            last_error = f" (last error: {exc!r})"
        if result:
            return result
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {described}{last_error}")
        time.sleep(every)
