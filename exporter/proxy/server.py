"""The proxy server: an HTTP/1.1 forwarder in front of `api.base_url`.

Every request is sent to the API base with the same method, path, query,
headers (less hop-by-hop ones) and body, and the answer comes back the same
way: status, headers (less hop-by-hop ones) and body, streamed in both
directions. The caller's own `Authorization` header passes through; it is
never stored or logged (logs name the method and path, without the query).

A POST to one of the create paths is forwarded the same way, but its request
body (up to `max_create_body_bytes`) is read first to learn `model`, and a 2xx
answer (up to `MAX_ANSWER_BYTES`) is read whole before it is passed on, so the
task it names is in the store before the caller hears of it. Registration
problems are logged and counted; they never change the answer.

It runs on its own port, apart from /metrics: it carries the application's
traffic and its keys, so it can be exposed, firewalled and sized on its own,
and every path (including `/` and `/metrics`) belongs to the API behind it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from urllib3.util import SKIP_HEADER

from exporter.model import DiscoveredTask
from exporter.proxy.register import NotATask, created_task, decode_body, request_model
from exporter.upstream.session import upstream_session
from exporter.web.server import parse_listen_address

log = logging.getLogger(__name__)

# RFC 9110 7.6.1, plus the non-standard ones still seen in the wild.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the client library for the upstream leg, or framing decided per leg.
_NOT_FORWARDED = frozenset({"host", "content-length", "expect"})
CHUNK_BYTES = 65536
MAX_ANSWER_BYTES = 1 << 20  # a create answer larger than this passes through unregistered
CLIENT_IDLE_SECONDS = 120.0

Register = Callable[[list[DiscoveredTask]], None]
RegisterError = Callable[[str], None]


class _Body:
    """A request body of known length, read from the client as the upstream leg sends it."""

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self._left = length
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data: bytes = self._stream.read(size)
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        self._left -= len(data)
        return data

    @property
    def complete(self) -> bool:
        return self._left <= 0


def _dechunk(stream: Any) -> Iterator[bytes]:
    """A chunked request body (RFC 9112 7.1) as its chunks; trailers are dropped."""
    while True:
        line = stream.readline(1024)
        if not line.endswith(b"\n"):
            raise ConnectionError("bad chunk size line")
        size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while stream.readline(8192) not in (b"\r\n", b"\n", b""):
                pass
            return
        left = size
        while left:
            data = stream.read(min(left, CHUNK_BYTES))
            if not data:
                raise ConnectionError("client closed the connection mid-chunk")
            left -= len(data)
            yield data
        stream.readline(8)


def _connection_tokens(values: list[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",")}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], proxy: ProxyServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.proxy = proxy
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_IDLE_SECONDS
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: _Server

    def do_GET(self) -> None:
        self.server.proxy.forward(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The method and path only: a query may carry anything.
        log.debug("proxy %s %s -> %s", self.command, self.path.split("?", 1)[0], code)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("proxy: " + format, *args)


class ProxyServer:
    def __init__(
        self,
        base_url: str,
        listen_address: str,
        register: Register,
        *,
        register_error: RegisterError | None = None,
        create_paths: tuple[str, ...] | list[str] = (
            "/v1/images/generations",
            "/v1/videos/generations",
        ),
        timeout_seconds: float = 300.0,
        max_connections: int = 64,
        max_create_body_bytes: int = 1_048_576,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._register = register
        self._register_error = register_error or (lambda _problem: None)
        self._create_paths = frozenset(path.rstrip("/") or "/" for path in create_paths)
        self._timeout = (min(timeout_seconds, 10.0), timeout_seconds)
        self._max_create_body = max_create_body_bytes
        self._session = upstream_session(max_connections)
        self._session.headers.clear()  # only what the caller sent
        host, port = parse_listen_address(listen_address)
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="proxy", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._session.close()

    # ---- one request ----------------------------------------------------------

    def forward(self, handler: _Handler) -> None:
        path = handler.path
        if not path.startswith("/"):
            # Absolute-form targets would name another host: only the API base is served.
            self._error(handler, 400, "only paths on the API are proxied", "invalid_request")
            return
        incoming = handler.headers
        dropped = (
            HOP_BY_HOP | _NOT_FORWARDED | _connection_tokens(incoming.get_all("Connection", []))
        )
        headers: list[tuple[str, str]] = [
            (name, value) for name, value in incoming.items() if name.lower() not in dropped
        ]
        if "user-agent" not in {name.lower() for name, _ in headers}:
            headers.append(("User-Agent", SKIP_HEADER))
        is_create = (
            handler.command == "POST"
            and (path.split("?", 1)[0].rstrip("/") or "/") in self._create_paths
        )
        try:
            body, body_bytes = self._request_body(handler, is_create)
        except ValueError:
            self._error(handler, 400, "bad Content-Length or Transfer-Encoding", "invalid_request")
            return
        try:
            upstream = self._session.request(
                handler.command,
                self.base_url + path,
                headers=_HeaderList(headers),
                data=body,
                stream=True,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except requests.Timeout:
            handler.close_connection = True
            self._error(handler, 504, "the API did not answer in time", "upstream_timeout")
            return
        except (requests.RequestException, ConnectionError, OSError) as exc:
            handler.close_connection = True
            log.warning(
                "proxy: %s %s: upstream request failed: %s",
                handler.command,
                path.split("?", 1)[0],
                type(exc).__name__,
            )
            self._error(handler, 502, "the API could not be reached", "upstream_unreachable")
            return
        if isinstance(body, _Body) and not body.complete:
            handler.close_connection = True  # the rest of the body is still on the socket
        try:
            if is_create and 200 <= upstream.status_code < 300:
                self._answer_create(handler, upstream, request_model(body_bytes))
            else:
                self._answer(handler, upstream, b"")
        except Exception as exc:  # the caller went away, or the API mid-body
            log.debug("proxy: answer cut short: %s", type(exc).__name__)
            handler.close_connection = True
        finally:
            upstream.close()

    def _request_body(
        self, handler: _Handler, is_create: bool
    ) -> tuple[bytes | _Body | Iterator[bytes] | None, bytes | None]:
        """(what to send upstream, the body's bytes if it was read whole)."""
        encoding = handler.headers.get("Transfer-Encoding", "").strip().lower()
        if encoding:
            if encoding != "chunked":
                raise ValueError(encoding)
            handler.close_connection = True  # framing of what follows is ours to trust
            return _dechunk(handler.rfile), None
        length_text = handler.headers.get("Content-Length")
        if length_text is None:
            return None, None
        if not length_text.strip().isdigit():
            raise ValueError(length_text)
        length = int(length_text)
        if is_create and length <= self._max_create_body:
            data = handler.rfile.read(length)
            if len(data) != length:
                raise ValueError("short body")
            return data, data
        return _Body(handler.rfile, length), None

    def _answer_create(
        self, handler: _Handler, upstream: requests.Response, model: str | None
    ) -> None:
        raw = upstream.raw
        head = b""
        while len(head) <= MAX_ANSWER_BYTES:
            chunk = raw.read1(CHUNK_BYTES, decode_content=False)
            if not chunk:
                break
            head += chunk
        if len(head) > MAX_ANSWER_BYTES:
            self._register_error("create answer too large to read; its task is not registered")
        else:
            self._register_from(upstream, head, model)
        self._answer(handler, upstream, head)

    def _register_from(self, upstream: requests.Response, body: bytes, model: str | None) -> None:
        try:
            plain = decode_body(body, upstream.headers.get("Content-Encoding"), MAX_ANSWER_BYTES)
            task, problem = created_task(model, plain, self.base_url)
        except NotATask:
            return  # e.g. a synchronous model's finished image
        except ValueError as exc:
            self._register_error(f"create answer unreadable: {exc}")
            return
        if problem:
            self._register_error(f"task {task.task_id}: {problem}; polled on api.status_path")
        try:
            self._register([task])
        except Exception as exc:  # the caller's answer must not depend on the store
            log.error("proxy: cannot register task %s: %s", task.task_id, type(exc).__name__)
            self._register_error(f"cannot register task {task.task_id}")

    def _answer(self, handler: _Handler, upstream: requests.Response, head: bytes) -> None:
        """Status line, headers, then `head` (already read) and the rest of the body."""
        raw_headers = upstream.raw.headers
        dropped = HOP_BY_HOP | _connection_tokens(raw_headers.getlist("Connection"))
        handler.log_request(upstream.status_code)
        handler.send_response_only(upstream.status_code, upstream.reason)
        for name, value in raw_headers.items():
            if name.lower() not in dropped:
                handler.send_header(name, value)
        no_body = (
            handler.command == "HEAD"
            or upstream.status_code in (204, 304)
            or 100 <= upstream.status_code < 200
        )
        length = raw_headers.get("Content-Length")
        chunked = False
        if not no_body and length is None:
            if handler.request_version == "HTTP/1.1":
                handler.send_header("Transfer-Encoding", "chunked")
                chunked = True
            else:
                handler.close_connection = True  # the body ends when the connection does
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if no_body:
            handler.wfile.flush()
            return
        out = handler.wfile
        for chunk in _chunks(upstream, head):
            out.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            out.flush()
        if chunked:
            out.write(b"0\r\n\r\n")
            out.flush()

    @staticmethod
    def _error(handler: _Handler, status: int, message: str, code: str) -> None:
        body = json.dumps(
            {"error": {"message": message, "type": "proxy_error", "code": code}}
        ).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()


class _HeaderList(dict[str, str]):
    """Headers for `requests` that keep repeated names (sent as one, joined as RFC 9110
    says: with commas; cookies with semicolons)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        merged: dict[str, str] = {}
        names: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            if key in merged:
                merged[key] += ("; " if key == "cookie" else ", ") + value
            else:
                merged[key] = value
                names[key] = name
        super().__init__({names[key]: value for key, value in merged.items()})


def _chunks(upstream: requests.Response, head: bytes) -> Iterator[bytes]:
    if head:
        yield head
    raw = upstream.raw
    while True:
        chunk = raw.read1(CHUNK_BYTES, decode_content=False)
        if not chunk:
            return
        yield chunk
