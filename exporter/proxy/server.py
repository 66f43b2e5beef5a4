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

It is a WSGI application behind the same hardened server as the web port
(`exporter.web.httpserver`): that server parses and checks the framing of
every request (a request whose length is ambiguous is refused with 400 and its
connection closed, so nothing of it can reach the API as a second request),
caps heads, bodies, threads and connections, and times out whole requests.
Paths with dot segments are refused here, so nothing climbs out of the base
URL's path upstream.

It runs on its own port, apart from /metrics: it carries the application's
traffic and its keys, so it can be exposed, firewalled and sized on its own,
and every path (including `/` and `/metrics`) belongs to the API behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from http import HTTPStatus
from typing import Any

import requests
from urllib3.util import SKIP_HEADER

from exporter.model import DEFAULT_ACCOUNT, DiscoveredTask
from exporter.proxy.register import NotATask, created_task, decode_body, request_model
from exporter.store.guard import StoreUnavailable
from exporter.upstream.paths import dot_segment_problem
from exporter.upstream.session import upstream_session
from exporter.web.httpserver import BodyTooLarge, HttpServer, ServerLimits, StartResponse

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
CLIENT_IDLE_SECONDS = 60.0  # keep-alive wait, and each read or write of a client
MIN_OPEN_CONNECTIONS = 256

Register = Callable[[list[DiscoveredTask]], None]
RegisterError = Callable[[str], None]
Headers = list[tuple[str, str]]


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
        data: bytes = self._stream.read(min(size, CHUNK_BYTES))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        self._left -= len(data)
        return data


def _chunked(stream: Any) -> Iterator[bytes]:
    """A chunked request body, already de-chunked (strictly) by the server."""
    while True:
        data: bytes = stream.read(CHUNK_BYTES)
        if not data:
            return
        yield data


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",")}


def _request_headers(environ: dict[str, Any]) -> Headers:
    """The caller's headers, less hop-by-hop ones and those the upstream leg sets itself."""
    pairs: Headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        pairs.append((name.replace("_", "-").title(), str(value)))
    dropped = HOP_BY_HOP | _NOT_FORWARDED | _connection_tokens([environ.get("HTTP_CONNECTION", "")])
    headers = [(name, value) for name, value in pairs if name.lower() not in dropped]
    if "user-agent" not in {name.lower() for name, _ in headers}:
        headers.append(("User-Agent", SKIP_HEADER))
    return headers


def _status_line(upstream: requests.Response) -> str:
    code = upstream.status_code
    reason = upstream.reason or ""
    if not reason.isascii() or not reason.isprintable():
        reason = ""
    if not reason:
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
    return f"{code} {reason}"


class _Answer:
    """The upstream answer's body as the WSGI iterable; closing it releases the upstream leg."""

    def __init__(self, upstream: requests.Response, head: bytes, no_body: bool) -> None:
        self._upstream = upstream
        self._head = head
        self._no_body = no_body

    def __iter__(self) -> Iterator[bytes]:
        if self._no_body:
            return
        if self._head:
            yield self._head
        raw = self._upstream.raw
        while True:
            # An error here (the API cut the body) ends the answer and closes the
            # connection, so the caller sees a short body, not a wrong one.
            chunk = raw.read1(CHUNK_BYTES, decode_content=False)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        self._upstream.close()


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
        max_body_bytes: int = 64 * 1_048_576,
        account_of: Callable[[str | None], str | None] = lambda _authorization: DEFAULT_ACCOUNT,
    ) -> None:
        """`account_of`: the account a create call's Authorization header belongs to
        (None: no configured account; the call is forwarded, its task not registered)."""
        self.base_url = base_url.rstrip("/")
        self._account_of = account_of
        self._register = register
        self._register_error = register_error or (lambda _problem: None)
        self._create_paths = frozenset(path.rstrip("/") or "/" for path in create_paths)
        self._timeout = (min(timeout_seconds, 10.0), timeout_seconds)
        self._max_create_body = max_create_body_bytes
        self._session = upstream_session(max_connections)
        self._session.headers.clear()  # only what the caller sent
        # One worker thread per upstream connection: a request holds both.
        self.limits = ServerLimits(
            threads=max_connections,
            max_connections=max(MIN_OPEN_CONNECTIONS, 4 * max_connections),
            body_bytes=max_body_bytes,
            body_seconds=timeout_seconds,
            idle_seconds=CLIENT_IDLE_SECONDS,
        )
        self._server = HttpServer(self, listen_address, limits=self.limits, name="proxy")

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
        self._session.close()

    # ---- one request ----------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        target = str(environ.get("REQUEST_URI", ""))
        path = target.split("?", 1)[0]
        if not target.startswith("/"):
            # Absolute-form targets would name another host: only the API base is served.
            return _error(
                start_response, 400, "only paths on the API are proxied", "invalid_request"
            )
        problem = dot_segment_problem(path)
        if problem is not None:
            return _error(start_response, 400, f"the path {problem}", "invalid_path")
        is_create = method == "POST" and (path.rstrip("/") or "/") in self._create_paths
        stream = environ["wsgi.input"]
        try:
            body, body_bytes = self._request_body(environ, stream, is_create)
            upstream = self._session.request(
                method,
                self.base_url + target,
                headers=_HeaderList(_request_headers(environ)),
                data=body,
                stream=True,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except Exception as exc:
            if getattr(stream, "broken", False) or isinstance(exc, ValueError):
                # The server closes the connection: the rest of the body is not ours to parse.
                if isinstance(exc, BodyTooLarge):
                    return _error(start_response, 413, str(exc), "body_too_large")
                return _error(
                    start_response, 400, "the request body could not be read", "invalid_request"
                )
            if isinstance(exc, requests.Timeout):
                return _error(
                    start_response, 504, "the API did not answer in time", "upstream_timeout"
                )
            if not isinstance(exc, requests.RequestException | OSError):
                raise
            log.warning(
                "proxy: %s %s: upstream request failed: %s", method, path, type(exc).__name__
            )
            return _error(
                start_response, 502, "the API could not be reached", "upstream_unreachable"
            )
        log.debug("proxy %s %s -> %s", method, path, upstream.status_code)
        try:
            head = b""
            if is_create and 200 <= upstream.status_code < 300:
                account = self._account_of(environ.get("HTTP_AUTHORIZATION"))
                head = self._read_create_answer(upstream, request_model(body_bytes), account)
            return self._answer(method, upstream, head, start_response)
        except BaseException:
            upstream.close()
            raise

    def _request_body(
        self, environ: dict[str, Any], stream: Any, is_create: bool
    ) -> tuple[bytes | _Body | Iterator[bytes] | None, bytes | None]:
        """(what to send upstream, the body's bytes if it was read whole)."""
        if environ.get("wsgi.input_terminated"):  # chunked: the server checked its framing
            return _chunked(stream), None
        length_text = environ.get("CONTENT_LENGTH")
        if not length_text:
            return None, None
        length = int(length_text)  # digits only: the server refuses anything else
        if is_create and length <= self._max_create_body:
            data: bytes = stream.read(length)
            if len(data) != length:
                raise ValueError("short body")
            return data, data
        return _Body(stream, length), None

    def _read_create_answer(
        self, upstream: requests.Response, model: str | None, account: str | None
    ) -> bytes:
        """The start of a create answer, read to register the task it names."""
        raw = upstream.raw
        head = b""
        while len(head) <= MAX_ANSWER_BYTES:
            chunk = raw.read1(CHUNK_BYTES, decode_content=False)
            if not chunk:
                break
            head += chunk
        if len(head) > MAX_ANSWER_BYTES:
            self._register_error("create answer too large to read; its task is not registered")
        elif account is not None:  # None: the key is no configured account's
            self._register_from(upstream, head, model, account)
        return head

    def _register_from(
        self, upstream: requests.Response, body: bytes, model: str | None, account: str
    ) -> None:
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
        if account != task.account:
            task = replace(task, account=account)
        try:
            self._register([task])
        except StoreUnavailable as exc:
            # The store's guard counts this (lemondata_store_errors_total) and logs
            # its trouble once a minute; a line per create call would flood the log.
            log.debug("proxy: cannot register task %s: %s", task.task_id, exc)
        except Exception as exc:  # the caller's answer must not depend on the store
            log.error("proxy: cannot register task %s: %s", task.task_id, type(exc).__name__)
            self._register_error(f"cannot register task {task.task_id}")

    @staticmethod
    def _answer(
        method: str, upstream: requests.Response, head: bytes, start_response: StartResponse
    ) -> _Answer:
        """Status line and headers; the body (`head`, already read, then the rest) streams."""
        raw_headers = upstream.raw.headers
        dropped = HOP_BY_HOP | _connection_tokens(raw_headers.getlist("Connection"))
        headers = [
            (name, value) for name, value in raw_headers.items() if name.lower() not in dropped
        ]
        code = upstream.status_code
        no_body = method == "HEAD" or code in (204, 304) or 100 <= code < 200
        # Without a Content-Length the server frames the answer itself (chunked,
        # or by closing the connection for HTTP/1.0 callers).
        start_response(_status_line(upstream), headers)
        return _Answer(upstream, head, no_body)


def _error(start_response: StartResponse, status: int, message: str, code: str) -> list[bytes]:
    body = json.dumps({"error": {"message": message, "type": "proxy_error", "code": code}}).encode()
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class _HeaderList(dict[str, str]):
    """Headers for `requests` that keep repeated names (sent as one, joined as RFC 9110
    says: with commas; cookies with semicolons)."""

    def __init__(self, pairs: Headers) -> None:
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
