"""The attacks of the second hardening round, against the running exporter.

The exporter runs as a process with its proxy in front of a trap upstream that
records every byte it receives: no smuggled request may ever reach it. Raw
sockets send what a client library would refuse to.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.hardening.raw import RawTrap, exchange, status_lines, threads
from tests.hardening.support import rss_mib
from tests.harness import ExporterProcess, free_port, total, wait_for

pytestmark = pytest.mark.integration

KEY = "sk-attacks-test-key-0123456789"
TOKEN = "attack-test-token-0123456789abcdef"
LIMIT = 5
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


def _request(headers: bytes, body: bytes, line: bytes = b"POST /v1/x HTTP/1.1") -> bytes:
    return line + b"\r\nHost: x\r\n" + headers + b"\r\n" + body


# name -> raw request whose body is (or hides) a second request
ATTACKS = {
    "te-gzip-and-cl": _request(
        b"Transfer-Encoding: gzip\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED
    ),
    "te-chunked-and-cl": _request(
        TE + b"Content-Length: %d\r\n" % (len(SMUGGLED) + 5), b"0\r\n\r\n" + SMUGGLED
    ),
    "te-gzip": _request(b"Transfer-Encoding: gzip\r\n", SMUGGLED),
    "te-chunked-gzip": _request(b"Transfer-Encoding: chunked, gzip\r\n", SMUGGLED),
    "te-twice": _request(TE + TE, b"0\r\n\r\n" + SMUGGLED),
    "te-space-before-colon": _request(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-on-http-1.0": _request(
        TE + b"Connection: keep-alive\r\n", b"0\r\n\r\n" + SMUGGLED, b"POST /v1/x HTTP/1.0"
    ),
    "te-folded": _request(b"X-A: 1\r\n " + TE, b"0\r\n\r\n" + SMUGGLED),
    "cl-hex": _request(b"Content-Length: 0x%x\r\n" % len(SMUGGLED), SMUGGLED),
    "cl-plus": _request(b"Content-Length: +%d\r\n" % len(SMUGGLED), SMUGGLED),
    "cl-underscore": _request(b"Content-Length: 1_0\r\n", SMUGGLED),
    "cl-two-different": _request(
        b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED
    ),
    "cl-two-same": _request(b"Content-Length: 0\r\nContent-Length: 0\r\n", SMUGGLED),
    "cl-list": _request(b"Content-Length: 0, %d\r\n" % len(SMUGGLED), SMUGGLED),
    "chunk-zz": _request(TE, b"zz\r\n" + SMUGGLED),
    "chunk-negative": _request(TE, b"-3\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-0x": _request(TE, b"0x3\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-plus": _request(TE, b"+3\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-bare-lf": _request(TE, b"3\nabc\n0\n\n" + SMUGGLED),
    "chunk-too-long": _request(TE, b"2\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-huge-size": _request(TE, b"fffffffffffffffffff\r\n" + SMUGGLED),
}


@pytest.fixture(scope="module")
def trap() -> Iterator[RawTrap]:
    server = RawTrap().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def exporter(trap: RawTrap, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    workdir = tmp_path_factory.mktemp("attacks")
    proxy_port = free_port()
    config = {
        "api": {"base_url": trap.url, "timeout_seconds": 2},
        "polling": {"cycle_interval_seconds": 0.5, "requests_per_second": 5},
        "store": {"path": str(workdir / "store.db"), "max_tracked_tasks": LIMIT},
        "proxy": {"enabled": True, "listen_address": f"127.0.0.1:{proxy_port}"},
        "log_level": "info",
    }
    process = ExporterProcess(workdir, config, KEY)
    process.env["LEMONDATA_EXPORTER_TOKEN"] = TOKEN
    process.proxy_port = proxy_port  # type: ignore[attr-defined]
    process.start()
    yield process
    assert process.terminate() == 0
    log = process.log_text()
    assert "Traceback" not in log, log[-3000:]


def ports(exporter: ExporterProcess) -> dict[str, int]:
    return {"web": exporter.port, "proxy": exporter.proxy_port}  # type: ignore[attr-defined]


# ---- request smuggling -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_ambiguous_framing_is_refused_and_the_connection_closed(
    exporter: ExporterProcess, trap: RawTrap, name: str
) -> None:
    for port_name, port in ports(exporter).items():
        answer, closed = exchange(port, ATTACKS[name])
        lines = status_lines(answer)
        assert closed, f"{port_name}: the connection stayed open after {lines}"
        assert len(lines) == 1, f"{port_name}: {lines}"  # the hidden request got no answer
        if port_name == "proxy" or not name.startswith("chunk"):
            # (The web port answers a bad chunked body it never reads with its page,
            # then closes: what follows is never parsed either.)
            assert lines[0].startswith(b"HTTP/1.1 400"), f"{port_name}: {lines}"
    assert b"/smuggled" not in trap.raw()


def test_a_good_request_still_goes_through(exporter: ExporterProcess, trap: RawTrap) -> None:
    port = ports(exporter)["proxy"]
    answer, _ = exchange(
        port,
        _request(TE + b"Connection: close\r\n", b"3\r\nabc\r\n0\r\n\r\n", b"POST /v1/ok HTTP/1.1"),
    )
    assert status_lines(answer) == [b"HTTP/1.1 200 OK"]
    assert b"POST /v1/ok HTTP/1.1" in trap.raw()


# ---- memory, threads, slow clients -------------------------------------------------


def _flood(port: int, connections: int, line: bytes, lines: int, seconds: float) -> None:
    """`connections` clients each sending `lines` header lines and never the blank
    line, until the server closes them (or `seconds` pass)."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        socks.append([sock, 0])
    deadline = time.monotonic() + seconds
    while socks and time.monotonic() < deadline:
        for entry in list(socks):
            sock, sent = entry
            try:
                sock.send(line)
                entry[1] = sent + 1
                if entry[1] >= lines:
                    socks.remove(entry)
                    sock.close()
            except BlockingIOError:
                continue
            except OSError:  # the server refused the head and closed
                socks.remove(entry)
                sock.close()
        time.sleep(0.01)
    for sock, _ in socks:
        sock.close()


def test_endless_headers_do_not_exhaust_memory(exporter: ExporterProcess) -> None:
    pid = exporter.proc.pid  # type: ignore[union-attr]
    before = rss_mib(pid)
    peak = before
    line = b"X-Filler: " + b"a" * 65000 + b"\r\n"
    for port in ports(exporter).values():
        flood = threading.Thread(target=_flood, args=(port, 150, line, 99, 60), daemon=True)
        flood.start()
        while flood.is_alive():
            peak = max(peak, rss_mib(pid))
            flood.join(0.05)
    # The old server held every header it was sent: +900 MiB for this load.
    assert peak - before < 64, f"RSS {before:.0f} -> {peak:.0f} MiB"
    wait_for(lambda: rss_mib(pid) < before + 32, 30, "RSS to come back down")
    assert requests.get(f"{exporter.url}/metrics", timeout=5).status_code == 200


def test_slow_clients_hold_no_threads(exporter: ExporterProcess) -> None:
    pid = exporter.proc.pid  # type: ignore[union-attr]
    baseline = threads(pid)
    slow: list[socket.socket] = []
    try:
        # More than the web port keeps open (512): the ones waiting longest make room.
        for port, count in ((exporter.port, 600), (ports(exporter)["proxy"], 300)):
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(sock)
        for _ in range(3):  # they dribble on
            for sock in slow:
                with contextlib.suppress(OSError):  # closed to make room
                    sock.sendall(b"a")
            answer = requests.get(f"{exporter.url}/metrics", timeout=5)
            assert answer.status_code == 200
            assert threads(pid) <= baseline + 2, f"{baseline} -> {threads(pid)} threads"

        # Still dribbling after the head deadline: closed by the server.
        def closed() -> bool:
            try:
                slow[-1].sendall(b"a")
                slow[-1].settimeout(0.5)
                answer = slow[-1].recv(4096)
            except TimeoutError:
                return False
            except OSError:  # reset
                return True
            return answer == b"" or answer.startswith(b"HTTP/1.1 408")

        wait_for(closed, 60, "the server to close a client that never finishes its head", 1)
    finally:
        for sock in slow:
            sock.close()
    assert threads(pid) <= baseline + 2


def test_slow_page_bodies_leave_scrapes_their_threads(exporter: ExporterProcess) -> None:
    # More bodies crawling in than the web port has worker threads (16): each
    # holds one while it reads. Scrapes and health checks have threads of their own.
    head = (
        b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{" % TOKEN.encode()
    )
    slow = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(head)
        for path in ("/metrics", "/-/healthy", "/-/ready", "/metrics"):
            answer = requests.get(f"{exporter.url}{path}", timeout=5)
            assert answer.status_code == 200, path
        # Pages wait for a thread, parked; more of them than the port keeps open
        # (512): the ones parked longest are closed to let a scrape in.
        for _ in range(520):
            sock = socket.create_connection(("127.0.0.1", exporter.port))
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            slow.append(sock)
        for path in ("/metrics", "/-/ready"):
            answer = requests.get(f"{exporter.url}{path}", timeout=5)
            assert answer.status_code == 200, path
    finally:
        for sock in slow:
            sock.close()
    # The bodies ended short: their threads are free again, and pages are answered.
    wait_for(
        lambda: requests.get(f"{exporter.url}/status", timeout=5).status_code == 200,
        30,
        "/status once the slow bodies are gone",
        tolerate=(requests.RequestException,),
    )


# ---- dot segments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/../../../etc/x",
        b"/v1/../admin/secret",
        b"/v1/.%2e/admin",
        b"/v1/%2E%2E/admin",
        b"/v1/%2e./admin",
        b"/v1/..%2fadmin",
        b"/v1/%252e%252e/admin",
        b"/v1/./x",
        b"/v1/..;/admin",
        b"/v1/a%5c..%5cadmin",
    ],
)
def test_dot_segments_never_reach_the_api(
    exporter: ExporterProcess, trap: RawTrap, target: bytes
) -> None:
    request = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target
    answer, _ = exchange(ports(exporter)["proxy"], request)
    assert status_lines(answer)[0].startswith(b"HTTP/1.1 400"), answer
    assert b"admin" not in trap.raw() and b"/etc/x" not in trap.raw()
    # The web port serves none of these (nothing there climbs anywhere either).
    answer, _ = exchange(exporter.port, request)
    assert status_lines(answer)[0].startswith(b"HTTP/1.1 404"), answer


@pytest.mark.parametrize(
    "poll_url",
    ["/..", "/.%2e/x", "/v1/%2E%2e/admin", "/v1/./x", "/v1/..%2Fadmin", "/a/%252e%252e/b"],
)
def test_the_task_api_refuses_dot_segments(exporter: ExporterProcess, poll_url: str) -> None:
    answer = requests.post(
        f"{exporter.url}/api/v1/tasks",
        json={"task_id": "dots_1", "poll_url": poll_url},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_poll_url"


# ---- the cap on tracked tasks ------------------------------------------------------


def test_registrations_beyond_the_cap_are_refused(exporter: ExporterProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{exporter.url}/api/v1/tasks"
    batch = {"tasks": [{"task_id": f"cap_{n}"} for n in range(LIMIT)]}
    assert requests.post(url, json=batch, headers=auth, timeout=5).status_code == 201
    refused = requests.post(
        url, json={"tasks": [{"task_id": "cap_x"}, {"task_id": "cap_y"}]}, headers=auth, timeout=5
    )
    assert refused.status_code == 503
    error: dict[str, Any] = refused.json()["error"]
    assert error["code"] == "too_many_tasks" and "store.max_tracked_tasks" in error["message"]
    # Known tasks are not new: registering them again is fine.
    assert requests.post(url, json={"task_id": "cap_0"}, headers=auth, timeout=5).status_code == 200
    samples = exporter.metrics()
    assert total(samples, "lemondata_tracked_tasks_limit") == LIMIT
    assert total(samples, "lemondata_tasks_rejected_total", source="api", reason="limit") == 2
    listed = requests.get(url, params={"limit": 100}, headers=auth, timeout=5).json()["tasks"]
    assert sorted(task["task_id"] for task in listed) == sorted(f"cap_{n}" for n in range(LIMIT))


def test_no_traceback_for_garbage_and_timeouts(exporter: ExporterProcess, tmp_path: Path) -> None:
    for port in ports(exporter).values():
        for garbage in (b"\x16\x03\x01\x00\xff" + b"\x00" * 300, b"GET\r\n\r\n", b"\r\n\r\n"):
            exchange(port, garbage, wait=5)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            sock.shutdown(socket.SHUT_WR)  # the body never comes
            sock.settimeout(10)
            sock.recv(4096)
    assert "Traceback" not in exporter.log_text()
