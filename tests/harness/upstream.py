"""A fake upstream for what the simulator cannot serve.

The simulator (exporter/simulator) is the upstream wherever it can be: it
speaks the API's contract. Some tests need an upstream that breaks it (odd
codes, hostile bodies), stands in for a foreign host, or echoes raw HTTP for
the proxy. They give `FakeUpstream` a `respond` function; the server reads
the request (with chunked bodies), records it, and lets `respond` answer.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body_bytes: int
    body_sha256: str


class Handler(BaseHTTPRequestHandler):
    """What `respond` answers with: `send` a whole body, or write to `wfile`."""

    server: FakeUpstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        request = Request(self.command, self.path, list(self.headers.items()), *self._read_body())
        with self.server.lock:
            self.server.requests.append(request)
        self.server.respond(request, self)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def send(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        for data in self._body_blocks():
            digest.update(data)
            size += len(data)
        return size, digest.hexdigest()

    def _body_blocks(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            yield from self._blocks(int(self.headers.get("Content-Length") or 0))
            return
        while True:
            length = int(self.rfile.readline().split(b";")[0], 16)
            if length == 0:
                self.rfile.readline()
                return
            yield from self._blocks(length)
            self.rfile.readline()

    def _blocks(self, left: int) -> Iterator[bytes]:
        while left:
            data = self.rfile.read(min(left, 65536))
            left -= len(data)
            yield data


Respond = Callable[[Request, Handler], None]


class FakeUpstream(ThreadingHTTPServer):
    """A threaded HTTP server on a free loopback port, serving from `start()` to `stop()`."""

    daemon_threads = True

    def __init__(self, respond: Respond, protocol_version: str = "HTTP/1.0") -> None:
        handler = type("Handler", (Handler,), {"protocol_version": protocol_version})
        super().__init__(("127.0.0.1", 0), handler)
        self.respond = respond
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@contextmanager
def serving(respond: Respond, protocol_version: str = "HTTP/1.0") -> Iterator[FakeUpstream]:
    """A `FakeUpstream` serving for the block."""
    server = FakeUpstream(respond, protocol_version).start()
    try:
        yield server
    finally:
        server.stop()
