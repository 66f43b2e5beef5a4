"""What a test outside the `integration` lane may not do: start a process or listen."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock


class StartsAProcess(AssertionError):
    pass


@contextmanager
def no_processes(nodeid: str) -> Iterator[None]:
    """Fail a subprocess or a listening socket started inside the block."""

    def refuse(what: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise StartsAProcess(
                f"{nodeid} {what}: mark it `integration` (pytest.mark.integration), "
                "the fast lane runs without processes and servers"
            )

        return refused

    with (
        mock.patch.object(subprocess.Popen, "__init__", refuse("starts a subprocess")),
        mock.patch.object(socket.socket, "listen", refuse("listens on a socket")),
    ):
        yield
