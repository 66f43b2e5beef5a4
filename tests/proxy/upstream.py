"""A scriptable upstream for proxy tests: echoes what it got, or streams what it is told."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                length = int(self.rfile.readline().split(b";")[0], 16)
                if length == 0:
                    self.rfile.readline()
                    break
                left = length
                while left:
                    data = self.rfile.read(min(left, 65536))
                    digest.update(data)
                    left -= len(data)
                    size += len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 65536))
                digest.update(data)
                left -= len(data)
                size += len(data)
        return size, digest.hexdigest()

    def _handle(self) -> None:
        size, sha = self._read_body()
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_bytes": size,
            "body_sha256": sha,
        }
        self.server.seen.append(seen)
        path = self.path.split("?")[0]
        if path == "/stream":  # a large body of unknown length, chunked
            count = int(self.path.split("=")[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"x" * 65536
            for _ in range(count):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/big":  # a large body of known length
            count = int(self.path.split("=")[1])
            self.send_response(200)
            self.send_header("Content-Length", str(count * 65536))
            self.end_headers()
            block = b"y" * 65536
            for _ in range(count):
                self.wfile.write(block)
            return
        if path == "/redirect":
            self._send(302, b"", [("Location", "https://elsewhere.example/")])
            return
        if path == "/headers":
            self._send(
                201,
                b"ok",
                [
                    ("Set-Cookie", "a=1"),
                    ("Set-Cookie", "b=2"),
                    ("X-Resp", "yes"),
                    ("Connection", "X-Hop"),
                    ("X-Hop", "1"),
                    ("Keep-Alive", "timeout=5"),
                ],
            )
            return
        if path.startswith("/create"):
            reply = dict(self.server.create_reply)
            body = json.dumps(reply).encode()
            headers = [("Content-Type", "application/json")]
            if self.server.gzip:
                body = gzip.compress(body)
                headers.append(("Content-Encoding", "gzip"))
            self._send(200, body, headers)
            return
        self._send(200, json.dumps(seen).encode(), [("Content-Type", "application/json")])

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[dict[str, Any]] = []
        self.create_reply: dict[str, Any] = {"task_id": "img_1", "status": "pending"}
        self.gzip = False
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> Upstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
