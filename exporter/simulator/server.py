"""The HTTP transport: turns sockets into `Request`s and `Reply`s into bytes.

All API behaviour lives behind the `handle` callable; this module only knows
HTTP/1.1 framing, keep-alive, and the delivery tricks of the fault modes
(delays, dripping, resets) that need the socket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, cast
from urllib.parse import urlsplit

from exporter.simulator.reply import Reply, Request, error_reply

logger = logging.getLogger(__name__)

Handle = Callable[[Request], Reply]
SERVER_HEADER = "lemondata-simulator"
# Bodies larger than this are written part by part instead of joined first.
JOIN_LIMIT = 65536


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections under load.
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        handle: Handle,
        *,
        idle_timeout: float,
        max_body_bytes: int,
    ) -> None:
        self.handle = handle
        self.idle_timeout = idle_timeout
        self.max_body_bytes = max_body_bytes
        self.stop_event = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup that can stall for seconds.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def drop_connections(self) -> None:
        """Wakes handler threads blocked on reads or writes so they can end."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("unhandled error serving %s", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_HEADER
    sys_version = ""

    @property
    def sim_server(self) -> _Server:
        return cast(_Server, self.server)

    def setup(self) -> None:
        super().setup()
        # Idle keep-alive connections end with a timeout on the next request line.
        self.connection.settimeout(self.sim_server.idle_timeout)
        # Small replies go out in one write; without this, dripped bytes would coalesce.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sim_server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim_server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _read_body(self) -> bytes | Reply:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return error_reply(
                411, "Chunked bodies are not supported", "invalid_request_error", "length_required"
            )
        raw = self.headers.get("Content-Length", "0")
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return error_reply(400, "Bad Content-Length", "invalid_request_error", "bad_request")
        if length > self.sim_server.max_body_bytes:
            self.close_connection = True
            return error_reply(
                413, "Request body too large", "invalid_request_error", "request_too_large"
            )
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        body = self._read_body()
        if isinstance(body, Reply):
            reply = body
        else:
            request = Request(
                method=self.command,
                path=urlsplit(self.path).path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
            )
            try:
                reply = self.sim_server.handle(request)
            except Exception:
                logger.exception("error handling %s %s", self.command, self.path)
                reply = error_reply(500, "Simulator error", "server_error", "internal_error")
        try:
            self._send(reply)
        except OSError:  # the client went away (or was reset on purpose)
            self.close_connection = True

    def _head(self, reply: Reply) -> bytes:
        lines = [
            f"HTTP/1.1 {reply.status} {_phrase(reply.status)}",
            f"Server: {SERVER_HEADER}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {reply.content_length}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, reply: Reply) -> None:
        stop = self.sim_server.stop_event
        if reply.delay_seconds > 0 and stop.wait(reply.delay_seconds):
            self.close_connection = True
            return
        head = self._head(reply)
        self.log_request(reply.status, reply.content_length)
        if self.command == "HEAD":
            self.wfile.write(head)
        elif reply.reset_after_bytes is not None:
            self.wfile.write(head + reply.body[: reply.reset_after_bytes])
            self._reset()
        elif reply.drip_interval is not None:
            self.wfile.write(head)
            self._drip(reply.body, reply.drip_interval, stop)
        elif reply.content_length <= JOIN_LIMIT:
            self.wfile.write(head + reply.body)
        else:
            self.wfile.write(head)
            for part in reply.parts:
                self.wfile.write(part)

    def _drip(self, body: bytes, interval: float, stop: threading.Event) -> None:
        for index in range(len(body)):
            if stop.wait(interval):
                self.close_connection = True
                return
            self.wfile.write(body[index : index + 1])

    def _reset(self) -> None:
        # Linger 0 turns the close into a TCP RST. The fd really closes when
        # finish() drops the last file object on it.
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class SimulatorServer:
    """A threaded HTTP server running `handle` in the background."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Handle,
        *,
        idle_timeout: float = 60.0,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class(
            (host, port), handle, idle_timeout=idle_timeout, max_body_bytes=max_body_bytes
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"simulator-http-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Ends serving quickly, also cutting hanging, dripping and idle connections."""
        self._server.stop_event.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server.drop_connections()
