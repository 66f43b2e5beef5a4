"""The proxy tests' upstream: echoes what it got, or streams what it is told."""

from __future__ import annotations

import dataclasses
import gzip
import json
from typing import Any

from tests.harness import FakeUpstream, Handler, Request

HEADERS = [
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
    ("X-Resp", "yes"),
    ("Connection", "X-Hop"),
    ("X-Hop", "1"),
    ("Keep-Alive", "timeout=5"),
]


def _seen(request: Request) -> dict[str, Any]:
    seen = dataclasses.asdict(request)
    seen["headers"] = [list(header) for header in request.headers]
    return seen


def _stream(handler: Handler, blocks: int, fill: bytes, chunked: bool) -> None:
    """A large body: of unknown length (chunked) or of known length."""
    handler.send_response(200)
    block = fill * 65536
    if chunked:
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Content-Length", str(blocks * len(block)))
    handler.end_headers()
    for _ in range(blocks):
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
    if chunked:
        handler.wfile.write(b"0\r\n\r\n")


class Upstream(FakeUpstream):
    def __init__(self) -> None:
        super().__init__(self._respond, protocol_version="HTTP/1.1")
        self.create_reply: dict[str, Any] = {"task_id": "img_1", "status": "pending"}
        self.gzip = False

    @property
    def seen(self) -> list[dict[str, Any]]:
        with self.lock:
            return [_seen(request) for request in self.requests]

    def _respond(self, request: Request, handler: Handler) -> None:
        path = request.path.split("?")[0]
        if path in ("/stream", "/big"):
            count = int(request.path.split("=")[1])
            _stream(handler, count, b"x" if path == "/stream" else b"y", path == "/stream")
        elif path == "/redirect":
            handler.send(302, b"", [("Location", "https://elsewhere.example/")])
        elif path == "/headers":
            handler.send(201, b"ok", HEADERS)
        elif path.startswith("/create"):
            body = json.dumps(self.create_reply).encode()
            headers = [("Content-Type", "application/json")]
            if self.gzip:
                body = gzip.compress(body)
                headers.append(("Content-Encoding", "gzip"))
            handler.send(200, body, headers)
        else:
            handler.send(
                200, json.dumps(_seen(request)).encode(), [("Content-Type", "application/json")]
            )
