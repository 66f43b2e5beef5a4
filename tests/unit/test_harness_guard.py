"""The fast lane's guard: outside `integration`, no subprocess and no listening socket."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.harness.guard import StartsAProcess, no_processes


def test_a_subprocess_is_refused() -> None:
    with no_processes("t"), pytest.raises(StartsAProcess, match="mark it `integration`"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_listening_is_refused_and_connecting_is_not() -> None:
    with no_processes("t"), socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a free port is asked for this way: fine
        with pytest.raises(StartsAProcess, match="listens on a socket"):
            sock.listen()


def test_this_lane_is_guarded() -> None:
    # This test has no `integration` marker: tests/conftest.py guards it.
    with pytest.raises(StartsAProcess):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
