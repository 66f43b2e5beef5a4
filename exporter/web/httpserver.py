"""The HTTP server under both ports (web and proxy): cheroot, with a few guards.

cheroot parses HTTP/1.1 itself, runs a fixed pool of worker threads and speaks
TLS through the standard `ssl` module (docs/security.md says why it was
chosen). What it leaves open, and what this module adds:

- A request head is gathered without a worker thread: the connection sits in
  cheroot's selector and each readable moment adds what has arrived, so a
  client that dribbles (or never sends) its head holds a socket, not a thread.
  The head must be complete within `head_seconds` of its first byte (or of the
  accept, for the first request) and `head_bytes` in size, in total, not per
  read or per line.
- The TLS handshake happens the same way, not in cheroot's accept loop, where
  one silent client would stall every other one.
- Framing is strict: one Content-Length of digits only, Transfer-Encoding only
  `chunked` on HTTP/1.1 and never next to a Content-Length, no obsolete line
  folding, no duplicate Host; anything else is a 400 and the connection closes.
  Chunk sizes are hex digits only (no `0x`, sign or underscore) and a body
  that was not read to its end closes the connection, so no leftover byte is
  ever read as the next request.
- A body must arrive within `body_seconds`, whole.
- At most `max_connections` sockets are open; more are closed at accept.
- cheroot's messages go through `logging`, one line each, never a traceback
  to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi
from cheroot.connections import ConnectionManager
from cheroot.makefile import MakeFile, StreamReader

from exporter.logsetup import EveryInterval
from exporter.web.lanes import ScrapesFirst

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(rb"[0-9]{1,15}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[^\r\n]*)?\r\n")
# Headers that must not be repeated: a second value would make framing or the
# target ambiguous between this server and the next hop.
_SINGLE = frozenset({b"Content-Length", b"Transfer-Encoding", b"Host"})
MAX_CHUNK_LINE_BYTES = 1024
MAX_TRAILER_BYTES = 8192
# A body the application left unread is drained up to this size to keep the
# connection; a longer one closes it.
DRAIN_BYTES = 65536
_LOG_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost. The defaults suit the web port."""

    threads: int = 16  # worker threads: requests handled at once
    max_connections: int = 512  # open sockets, idle and slow ones included
    head_bytes: int = 32768  # request line and headers together
    head_seconds: float = 10.0  # for the whole head
    idle_seconds: float = 30.0  # keep-alive wait; also each read and write
    body_bytes: int = 16 * 1_048_576  # 0: no limit
    body_seconds: float = 60.0  # for the whole body
    backlog: int = 128  # listen() queue
    # With priority paths: how many worker threads pages may hold at once; the
    # rest stay free for scrapes and health checks (exporter.web.lanes).
    page_threads: int = 12


class FramingError(ValueError):
    """A request body whose framing is broken (bad chunk size, cut short)."""


class BodyTooLarge(FramingError):
    """A request body over the server's limit."""


# ---- request bodies ----------------------------------------------------------------


class _BodyReader:
    """wsgi.input base: reads with a deadline for the whole body, one socket read at a time."""

    def __init__(self, rfile: StreamReader, sock: socket.socket, deadline: float, idle: float):
        self._rfile = rfile
        self._sock = sock
        self._deadline = deadline
        self._idle = idle
        self.broken = False

    def _wait(self) -> None:
        """Before a read that may block: the socket waits no longer than the deadline."""
        if self._rfile.has_data():
            return
        left = self._deadline - time.monotonic()
        if left <= 0:
            self.broken = True
            raise TimeoutError("timed out")
        self._sock.settimeout(min(self._idle, left))

    def _read1(self, size: int) -> bytes:
        self._wait()
        try:
            data: bytes = self._rfile.read1(size)
        except OSError:
            self.broken = True
            raise
        return data

    @property
    def complete(self) -> bool:
        raise NotImplementedError

    def read(self, size: int | None = -1) -> bytes:
        raise NotImplementedError

    def readline(self, size: int | None = -1) -> bytes:
        """Up to and including a newline; within `size` if given."""
        line = bytearray()
        limit = size if size is not None and size >= 0 else 1 << 62
        while len(line) < limit:
            byte = self.read(1)
            if not byte:
                break
            line += byte
            if byte == b"\n":
                break
        return bytes(line)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> _BodyReader:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        pass


class _KnownLengthBody(_BodyReader):
    def __init__(
        self,
        rfile: StreamReader,
        sock: socket.socket,
        deadline: float,
        idle: float,
        length: int,
    ) -> None:
        super().__init__(rfile, sock, deadline, idle)
        self.remaining = length  # cheroot drains `remaining` before it answers

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and not self.broken

    def read(self, size: int | None = -1) -> bytes:
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        parts = []
        while want > 0:
            data = self._read1(min(want, 65536))
            if not data:
                self.broken = True  # the client closed before the end
                break
            parts.append(data)
            want -= len(data)
            self.remaining -= len(data)
        return b"".join(parts)


class _ChunkedBody(_BodyReader):
    """A chunked body (RFC 9112 7.1), read strictly; trailers are read and dropped."""

    def __init__(
        self,
        rfile: StreamReader,
        sock: socket.socket,
        deadline: float,
        idle: float,
        limit: int,
    ) -> None:
        super().__init__(rfile, sock, deadline, idle)
        self._limit = limit
        self._left_in_chunk = 0
        self._done = False
        self.bytes_read = 0

    @property
    def complete(self) -> bool:
        return self._done and not self.broken

    def _fail(self, error: FramingError) -> FramingError:
        self.broken = True
        return error

    def _line(self, limit: int) -> bytes:
        line = bytearray()
        while True:
            self._wait()
            seen = self._rfile.peek(1)[: limit + 1 - len(line)]
            if not seen:
                raise self._fail(FramingError("the body ended inside a chunk header"))
            newline = seen.find(b"\n")
            take = len(seen) if newline < 0 else newline + 1
            line += self._rfile.read(take)
            if newline >= 0:
                return bytes(line)
            if len(line) > limit:
                raise self._fail(FramingError("chunk header line too long"))

    def _exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            part = self._read1(size - len(data))
            if not part:
                raise self._fail(FramingError("the body ended inside a chunk"))
            data += part
        return bytes(data)

    def _next_chunk(self) -> None:
        match = _CHUNK_SIZE.fullmatch(self._line(MAX_CHUNK_LINE_BYTES))
        if match is None:
            raise self._fail(FramingError("bad chunk size"))
        size = int(match.group(1), 16)
        if size == 0:
            trailer_bytes = 0
            while True:
                line = self._line(MAX_TRAILER_BYTES)
                trailer_bytes += len(line)
                if line == CRLF:
                    break
                if trailer_bytes > MAX_TRAILER_BYTES or not line.endswith(CRLF):
                    raise self._fail(FramingError("bad chunked trailer"))
            self._done = True
            return
        if self._limit and self.bytes_read + size > self._limit:
            raise self._fail(BodyTooLarge("the body is larger than this server accepts"))
        self._left_in_chunk = size

    def read(self, size: int | None = -1) -> bytes:
        want = 1 << 62 if size is None or size < 0 else size
        parts = []
        while want > 0 and not self._done:
            if self.broken:
                raise FramingError("the body could not be read")
            if self._left_in_chunk == 0:
                self._next_chunk()
                continue
            data = self._read1(min(want, self._left_in_chunk, 65536))
            if not data:
                raise self._fail(FramingError("the body ended inside a chunk"))
            parts.append(data)
            want -= len(data)
            self._left_in_chunk -= len(data)
            self.bytes_read += len(data)
            if self._left_in_chunk == 0 and self._exactly(2) != CRLF:
                raise self._fail(FramingError("a chunk does not end with CRLF"))
        return b"".join(parts)


# ---- requests ----------------------------------------------------------------------


class _StrictHeaderReader(cheroot_server.HeaderReader):
    """Header lines as RFC 9112 has them, and unambiguous framing."""

    def __init__(self, protocol: bytes) -> None:
        self._protocol = protocol

    def __call__(self, rfile: Any, hdict: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
        headers: dict[bytes, bytes] = {} if hdict is None else hdict
        while True:
            line = rfile.readline()
            if not line:
                raise ValueError("Illegal end of headers.")
            if line == CRLF:
                break
            if not line.endswith(CRLF):
                raise ValueError("HTTP requires CRLF terminators")
            if line[:1] in (b" ", b"\t"):
                raise ValueError("Obsolete line folding is not accepted.")
            name, colon, value = line[:-2].partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise ValueError("Illegal header line.")
            value = value.strip(b" \t")
            if any(byte in value for byte in b"\r\n\x00"):
                raise ValueError("Illegal header value.")
            if b"_" in name:
                continue  # would share a WSGI name with its dashed twin
            key = name.title()
            if key in headers:
                if key in _SINGLE:
                    raise ValueError(f"More than one {key.decode()} header.")
                headers[key] += (b"; " if key == b"Cookie" else b", ") + value
            else:
                headers[key] = value
        self._check_framing(headers)
        return headers

    def _check_framing(self, headers: dict[bytes, bytes]) -> None:
        length = headers.get(b"Content-Length")
        coding = headers.get(b"Transfer-Encoding")
        if length is not None and not _DIGITS.fullmatch(length):
            raise ValueError("Malformed Content-Length Header.")
        if coding is not None:
            if length is not None:
                raise ValueError("Both Transfer-Encoding and Content-Length.")
            if self._protocol != b"HTTP/1.1":
                raise ValueError("Transfer-Encoding needs HTTP/1.1.")
            if coding.lower() != b"chunked":
                raise ValueError("Only Transfer-Encoding: chunked is accepted.")


class _Request(cheroot_server.HTTPRequest):
    server: _Server
    conn: _Connection

    def __init__(self, server: Any, conn: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, conn, *args, **kwargs)
        self._started = time.monotonic()

    def read_request_headers(self) -> bool:
        self.header_reader = _StrictHeaderReader(self.request_protocol)
        ok: bool = super().read_request_headers()
        return ok

    def respond(self) -> None:
        limits = self.server.limits
        sock = self.conn.socket
        deadline = self._started + limits.body_seconds
        if self.chunked_read:
            self.rfile = _ChunkedBody(
                self.conn.rfile, sock, deadline, self.server.timeout, limits.body_bytes
            )
        else:
            length = int(self.inheaders.get(b"Content-Length", 0) or 0)
            self.rfile = _KnownLengthBody(
                self.conn.rfile, sock, deadline, self.server.timeout, length
            )
        try:
            self.server.gateway(self).respond()
        except FramingError as exc:  # the application read a broken body
            self.close_connection = True
            if self.sent_headers:
                raise
            status = "413 Request Entity Too Large" if isinstance(exc, BodyTooLarge) else ""
            self.simple_response(status or "400 Bad Request", str(exc))
            return
        if self.ready:
            self.ensure_headers_sent()
        if self.chunked_write:
            self.conn.wfile.write(b"0\r\n\r\n")

    def send_headers(self) -> None:
        body = self.rfile
        if isinstance(body, _BodyReader) and not body.complete:
            # Whatever is left of the body must never be read as a request.
            remaining = getattr(body, "remaining", None)
            if body.broken or remaining is None or remaining > DRAIN_BYTES:
                self.close_connection = True
        super().send_headers()


# ---- connections -------------------------------------------------------------------

_WAIT, _READY, _CLOSE = range(3)
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request
    server: _Server

    def __init__(self, server: _Server, sock: socket.socket, makefile: Any = MakeFile) -> None:
        super().__init__(server, sock, makefile)
        self._pending = bytearray()
        # The handshake and the first head count from the accept.
        self._head_since: float | None = time.monotonic()
        self._handshaken = not isinstance(sock, ssl.SSLSocket)
        self._counted = True
        self.parked = False  # refused by the lanes: `put_conn` parks it there
        self.admitted = False  # resumed by the lanes, its page slot already taken
        server.connection_opened()

    def communicate(self) -> bool:
        """Gather the head without blocking; hand a whole one to cheroot when
        the lanes let it run."""
        state = self._gather()
        lanes = self.server.lanes
        if state != _READY:
            if self.admitted and lanes is not None:  # resumed, but the client is gone
                self.admitted = False
                lanes.finish(priority=False)
            return state == _WAIT  # _WAIT: back to the selector until more arrives
        if lanes is None:
            return self._respond()
        priority = False
        if self.admitted:
            self.admitted = False
        else:
            priority = lanes.priority(self.rfile._read_buf)
            if not lanes.start(priority):
                self.parked = True
                return True
        try:
            return self._respond()
        finally:
            lanes.finish(priority)

    def _respond(self) -> bool:
        self.socket.settimeout(self.server.timeout)
        keep: bool = super().communicate()
        self._head_since = None  # the next head's clock starts at its first byte
        return keep

    def _gather(self) -> int:
        limits = self.server.limits
        try:
            self.socket.settimeout(0)
            if not self._handshaken and not self._handshake():
                return self._wait_or_expire()
            rfile = self.rfile
            if rfile.has_data():  # pipelined bytes cheroot already buffered
                self._pending += rfile._read_buf[rfile._read_pos :]
                rfile._reset_read_buf()
                if self._head_since is None:
                    self._head_since = time.monotonic()
            while self._pending.find(_HEAD_END) < 0 and len(self._pending) <= limits.head_bytes:
                try:
                    data = self.socket.recv(65536)
                except _WOULD_BLOCK:
                    break
                if not data:
                    if self._pending:
                        self._note("closed mid-head")
                    return _CLOSE
                if self._head_since is None:
                    self._head_since = time.monotonic()
                self._pending += data
        except OSError as exc:  # a reset, a TLS alert, a certificate refused
            self._note(f"{type(exc).__name__}")
            return _CLOSE
        end = self._pending.find(_HEAD_END)
        if (end < 0 and len(self._pending) > limits.head_bytes) or end + 4 > limits.head_bytes:
            self._refuse("431 Request Header Fields Too Large", "request head too large")
            return _CLOSE
        if end < 0:
            return self._wait_or_expire()
        # cheroot reads the head (and whatever follows) from the reader's buffer.
        self.rfile._read_buf = bytes(self._pending)
        self.rfile._read_pos = 0
        self._pending.clear()
        return _READY

    def _handshake(self) -> bool:
        try:
            self.socket.do_handshake()
        except _WOULD_BLOCK:
            return False
        self._handshaken = True
        adapter = self.server.ssl_adapter
        self.ssl_env = adapter.get_environ(self.socket) if adapter is not None else {}
        return True

    def _wait_or_expire(self) -> int:
        since = self._head_since
        if since is not None and time.monotonic() - since > self.server.limits.head_seconds:
            self._refuse("408 Request Timeout", "request head too slow")
            return _CLOSE
        return _WAIT

    def eviction_key(self) -> tuple[bool, float]:
        """Connections still sending a head first, the oldest first; then idle ones."""
        if self._head_since is not None:
            return (False, self._head_since)
        return (True, float(self.last_used or 0.0))

    def _note(self, what: str) -> None:
        log.debug("http %s: connection from %s: %s", self.server.name, self.remote_addr, what)

    def _refuse(self, status: str, what: str) -> None:
        self._note(what)
        if not self._handshaken:
            return
        body = status[4:].encode() + b"\n"
        try:
            self.socket.settimeout(1.0)
            self.socket.sendall(
                b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (status.encode(), len(body), body)
            )
        except OSError:
            pass

    def close(self) -> None:
        if self._counted:
            self._counted = False
            self.server.connection_closed()
        with contextlib.suppress(OSError):
            super().close()


class _Connections(ConnectionManager):
    server: _Server

    def _from_server_socket(self, server_socket: socket.socket) -> Any:
        try:
            conn = super()._from_server_socket(server_socket)  # type: ignore[misc]
        except OSError as exc:  # out of file descriptors or memory: back off a little
            self.server.note_trouble(f"cannot accept: {exc.strerror or type(exc).__name__}")
            time.sleep(0.05)
            return None
        if conn is not None and self.server.open_connections > self.server.limits.max_connections:
            if self._evict_slowest():
                self.server.note_trouble(
                    f"{self.server.limits.max_connections} connections open; closing the ones "
                    "that have waited longest to finish a request head"
                )
            else:  # every connection is busy in a worker: the new one must wait its turn
                self.server.note_trouble(
                    f"{self.server.limits.max_connections} connections open and busy; "
                    "closing new ones"
                )
                conn.close()
                return None
        return conn

    def _evict_slowest(self) -> bool:
        """Close the waiting connection that has been sending its head the longest
        (else the longest idle one, else the page parked longest), so clients that
        never finish cannot keep a scrape out. Runs in the selector thread, which
        owns the waiting ones."""
        selector: Any = self._selector  # type: ignore[attr-defined]
        waiting = [(fd, conn) for fd, conn in list(selector.connections) if conn is not self.server]
        if not waiting:
            lanes = self.server.lanes
            return lanes is not None and lanes.evict()
        fd, victim = min(waiting, key=lambda item: item[1].eviction_key())
        selector.unregister(fd)
        victim.close()
        return True


class _TLSAdapter:
    """cheroot's adapter interface over a ready `ssl.SSLContext`; the handshake is
    left to the connection (see `_Connection._handshake`)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def bind(self, sock: socket.socket) -> socket.socket:
        return sock

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, str]]:
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), {}

    def get_environ(self, sock: ssl.SSLSocket) -> dict[str, str]:
        environ = {"wsgi.url_scheme": "https", "HTTPS": "on", "SSL_CLIENT_VERIFY": "NONE"}
        cipher = sock.cipher()
        if cipher:
            environ["SSL_PROTOCOL"], environ["SSL_CIPHER"] = cipher[1], cipher[0]
        if self.context.verify_mode != ssl.CERT_NONE and sock.getpeercert():
            environ["SSL_CLIENT_VERIFY"] = "SUCCESS"  # unverified ones fail the handshake
        return environ

    def makefile(self, sock: socket.socket, mode: str = "r", bufsize: int = 8192) -> Any:
        return MakeFile(sock, mode, bufsize)


class _Server(cheroot_wsgi.Server):
    ConnectionClass = _Connection

    def __init__(
        self,
        bind: tuple[str, int],
        app: WSGIApp,
        limits: ServerLimits,
        name: str,
        priority: Callable[[bytes], bool] | None = None,
    ):
        super().__init__(
            bind,
            app,
            numthreads=limits.threads,
            max=limits.threads,
            request_queue_size=limits.backlog,
            shutdown_timeout=2,
        )
        self.timeout = limits.idle_seconds
        self.limits = limits
        self.name = name
        self.max_request_header_size = limits.head_bytes
        self.max_request_body_size = limits.body_bytes
        self.keep_alive_conn_limit = limits.max_connections
        self.server_name = "lemondata-exporter"
        self.open_connections = 0
        self._count_lock = threading.Lock()
        self._trouble_notes = EveryInterval(_LOG_EVERY_SECONDS)
        self.lanes = (
            None
            if priority is None
            else ScrapesFirst(priority, min(limits.page_threads, limits.threads), self.process_conn)
        )

    def prepare(self) -> None:
        super().prepare()
        # cheroot builds its own manager in prepare(); ours caps connections.
        self._connections._selector.close()  # type: ignore[attr-defined]
        self._connections: ConnectionManager = _Connections(self)

    def connection_opened(self) -> None:
        with self._count_lock:
            self.open_connections += 1

    def connection_closed(self) -> None:
        with self._count_lock:
            self.open_connections -= 1

    def put_conn(self, conn: Any) -> None:
        if conn.parked and self.lanes is not None:
            conn.parked = False
            self.lanes.park(conn)
            return
        sock = conn.socket
        if self.ready and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self.process_conn(conn)  # decrypted bytes the selector cannot see
            return
        super().put_conn(conn)

    def note_trouble(self, message: str) -> None:
        """A warning at most once a minute: under attack, the log must not be one."""
        if self._trouble_notes.due():
            log.warning("http %s: %s", self.name, message)

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        # One line through logging; the traceback only at debug level.
        text = str(msg).strip().splitlines()[0] if str(msg).strip() else "error"
        if level >= logging.ERROR:
            log.warning("http %s: %s", self.name, text, exc_info=log.isEnabledFor(logging.DEBUG))
        else:
            log.debug("http %s: %s", self.name, text)


def parse_listen_address(address: str) -> tuple[str, int]:
    """`host:port`, `:port` or `[::1]:port` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {address!r}: expected host:port, e.g. :9847")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpServer:
    """A WSGI app served on `address` (OSError at construction if it cannot listen)."""

    def __init__(
        self,
        app: WSGIApp,
        address: str,
        *,
        tls: ssl.SSLContext | None = None,
        limits: ServerLimits | None = None,
        name: str = "web",
        priority: Callable[[bytes], bool] | None = None,
    ) -> None:
        """`priority(path)`: requests answered first (exporter.web.lanes); None: in
        arrival order."""
        self.limits = limits or ServerLimits()
        self._server = _Server(parse_listen_address(address), app, self.limits, name, priority)
        if tls is not None:
            self._server.ssl_adapter = _TLSAdapter(tls)
        self._server.prepare()  # binds and listens now, so errors surface here
        self._thread = threading.Thread(target=self._serve, name=f"http-{name}", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.bind_addr[1])

    @property
    def open_connections(self) -> int:
        return int(self._server.open_connections)

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception as exc:  # cheroot re-raises a worker's fatal error here
            log.error("http %s: server stopped: %s", self._server.name, type(exc).__name__)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stop()
        if self._server.lanes is not None:
            self._server.lanes.close()
        self._thread.join(10)
