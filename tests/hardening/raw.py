"""Raw sockets for the HTTP attack tests: a trap upstream that records every byte, a
client that sends bytes as they are, and /proc readings of a process."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class RawTrap:
    """An upstream that keeps the raw bytes of every connection and answers each
    request head with `{}` (bodies of a Content-Length are read first)."""

    connections: list[bytearray] = field(default_factory=list)
    _sock: socket.socket = field(default_factory=socket.socket)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> RawTrap:
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept, name="trap", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def raw(self) -> bytes:
        return b"".join(bytes(data) for data in self.connections)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            received = bytearray()
            self.connections.append(received)
            threading.Thread(target=self._serve, args=(conn, received), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket, received: bytearray) -> None:
        conn.settimeout(10)
        answered = 0
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                received += data
                heads = received.count(b"\r\n\r\n")
                try:
                    while answered < heads:
                        conn.sendall(ANSWER)
                        answered += 1
                except OSError:
                    return

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


def exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, bool]:
    """Send `data` on a new connection; (all that came back, whether the server
    closed the connection within `wait` seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def status_lines(answer: bytes) -> list[bytes]:
    return [line for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no Threads line for {pid}")
