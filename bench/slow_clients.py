"""Slow clients against both ports: threads, memory and /metrics latency.

    python -m bench.slow_clients --connections 2000 --seconds 20

The exporter (proxy on, in front of the simulator) runs as a subprocess. The
benchmark measures it idle (the baseline of this run), then opens
`--connections` sockets, half to the web port and half to the proxy port,
each sending the start of a request head and then one more byte a second
without ever finishing it, while it scrapes /metrics twice a second. It
reports the exporter's threads and RSS, the connections the exporter kept
open, and the scrape latency under load against the idle baseline. Everything
is on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

import requests

from bench.common import machine, quantile, start_simulator, table
from tests.hardening.raw import threads
from tests.hardening.support import rss_mib
from tests.harness import ExporterProcess, free_port

KEY = "sk-bench-slow-clients-0123456789"


def scrape(url: str) -> float | None:
    """Seconds for one /metrics answer, None if it failed."""
    started = time.monotonic()
    try:
        ok = requests.get(f"{url}/metrics", timeout=10).status_code == 200
    except requests.RequestException:
        return None
    return time.monotonic() - started if ok else None


def open_slow(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
            sock.setblocking(False)
        except OSError:
            continue
        socks.append(sock)
    return socks


def dribble(socks: list[socket.socket]) -> int:
    """One byte on each; returns how many the exporter still keeps open."""
    alive = 0
    for sock in socks:
        try:
            if sock.recv(1) == b"":
                continue  # closed by the exporter
        except BlockingIOError:
            pass
        except OSError:
            continue
        try:
            sock.send(b"a")
            alive += 1
        except OSError:
            continue
    return alive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 512)), hard))

    sim, sim_url = start_simulator(KEY)
    workdir = Path(f"/tmp/bench-slow-clients-{time.time():.0f}")
    workdir.mkdir()
    proxy_port = free_port()
    config = {
        "api": {"base_url": sim_url},
        "store": {"path": str(workdir / "store.db")},
        "proxy": {"enabled": True, "listen_address": f"127.0.0.1:{proxy_port}"},
        "log_level": "info",
    }
    exporter = ExporterProcess(workdir, config, KEY).start()
    assert exporter.proc is not None
    pid = exporter.proc.pid
    try:
        idle = [s for s in (scrape(exporter.url) for _ in range(20)) if s is not None]
        idle_threads, idle_rss = threads(pid), rss_mib(pid)
        half = args.connections // 2
        socks = open_slow(exporter.port, half) + open_slow(proxy_port, args.connections - half)
        opened = len(socks)
        loaded: list[float] = []
        failed = 0
        peak_threads, peak_rss, kept = idle_threads, idle_rss, 0
        ends = time.monotonic() + args.seconds
        while time.monotonic() < ends:
            kept = dribble(socks)
            for _ in range(2):
                latency = scrape(exporter.url)
                if latency is None:
                    failed += 1
                else:
                    loaded.append(latency)
                peak_threads = max(peak_threads, threads(pid))
                peak_rss = max(peak_rss, rss_mib(pid))
                time.sleep(0.5)
        for sock in socks:
            sock.close()
        time.sleep(2)
        after_threads, after_rss = threads(pid), rss_mib(pid)
    finally:
        exporter.terminate()
        sim.terminate()
        sim.wait(10)
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded or [float("nan")])
    rows = [
        ("threads", idle_threads, peak_threads, after_threads),
        ("RSS MiB", idle_rss, peak_rss, after_rss),
        ("/metrics p50 ms", idle_p50 * 1000, loaded_p50 * 1000, ""),
        ("/metrics max ms", max(idle) * 1000, quantile(loaded, 1.0) * 1000, ""),
    ]
    report = "\n".join(
        [
            f"Machine: {machine()}",
            f"{opened} slow connections opened ({half} web, {opened - half} proxy), "
            f"{args.seconds:.0f} s; still open at the end: {kept}; "
            f"scrapes under load: {len(loaded)} answered, {failed} failed",
            "",
            table(["", "idle", "under load (peak)", "2 s after"], rows),
            "",
            f"Scrape p50 under load / idle: {loaded_p50 / idle_p50:.2f}x; "
            f"threads under load / idle: {peak_threads / idle_threads:.2f}x; "
            f"RSS under load / idle: {peak_rss / idle_rss:.2f}x",
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
