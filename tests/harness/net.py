"""Loopback ports and polling waits."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import Any

import requests

# Ports handed to servers the tests start: below the kernel's ephemeral range
# (32768 and up by default), where every outgoing connection, of this suite or
# of another one running beside it, takes its local port. A port from that range
# could be taken between free_port() and the server's bind.
_SERVER_PORTS = range(20000, 32000)
_pick = random.Random()


def free_port() -> int:
    """A loopback port free now, outside the ephemeral range where possible."""
    for _ in range(50):
        port = _pick.choice(_SERVER_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
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
