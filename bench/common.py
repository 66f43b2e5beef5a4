"""Helpers shared by the benchmarks: the machine, percentiles, processes, tables."""

from __future__ import annotations

import datetime
import http.client
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from exporter.simulator import Simulator, SimulatorSettings
from tests.harness import ExporterProcess, wait_for
from tests.harness import free_port as free_port  # re-exported for the benchmarks

# Benchmarks wait the way the tests do.
wait_until = wait_for


def machine() -> str:
    """One line: CPUs, memory, CPU model, Python, date."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        out = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
        memory = out.splitlines()[1].split()[1] + " GB"
    except (OSError, IndexError):
        pass
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return (
        f"{os.cpu_count()} CPUs (nproc), {memory} RAM (free -g), {model}, "
        f"{platform.python_implementation()} {platform.python_version()}, {date}"
    )


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile; nan for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class KeptAliveClient:
    """GETs on one kept-alive connection, the way Prometheus scrapes: what is
    timed is the exporter and loopback, not a client library (requests adds
    about 2 ms a request on this machine, and more of the tail)."""

    def __init__(
        self, url: str, timeout: float = 120.0, headers: dict[str, str] | None = None
    ) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._timeout = timeout
        self._headers = headers or {}
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body); reconnects once if the kept connection was closed.
        OSError or HTTPException if the server cannot be reached."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            try:
                self._conn.request("GET", path, headers=self._headers)
                answer = self._conn.getresponse()
                return answer.status, answer.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def timed(self, path: str) -> float:
        """Seconds a GET of `path` took; it must answer 200."""
        started = time.perf_counter()
        status, body = self.get(path)
        took = time.perf_counter() - started
        assert status == 200, (path, status, body[:300])
        return took


def slow_simulator(key: str, **settings: Any) -> Simulator:
    """An in-process simulator (not started) whose tasks stay unfinished for
    hours (time scale 0.01), with no rate limit and no lost tasks: the agent
    polls them as long as a benchmark runs. `settings` override the rest."""
    defaults: dict[str, Any] = {
        "port": 0,
        "api_keys": (key,),
        "time_scale": 0.01,
        "seed": 3,
        "rate_limit_per_minute": 0,
        "lost_fraction": 0.0,
    }
    return Simulator(SimulatorSettings(**{**defaults, **settings}))


def start_simulator(key: str, *extra_args: str) -> tuple[subprocess.Popen[bytes], str]:
    """The simulator as a subprocess (tasks finish at once, no rate limit, no lost
    tasks), ready to answer; returns the process and its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "exporter.simulator",
            "--web.listen-address", f"127.0.0.1:{port}",
            "--api-key", key,
            "--time-scale", "0.01",
            "--rate-limit-per-minute", "0",
            "--lost-fraction", "0",
            "--log-level", "warning",
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/_sim/health", timeout=1).status_code == 200,
            30,
            "simulator",
        )
    except BaseException:
        proc.kill()
        raise
    return proc, url


class Exporter(ExporterProcess):
    """The test harness's exporter subprocess, timed and measured from /proc."""

    def __init__(self, workdir: Path, config: dict[str, Any], api_key: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, config, api_key)
        self.started_at = 0.0
        self.serving_after = 0.0  # seconds from spawn to the first HTTP answer

    def start(self, ready_timeout: float = 120.0) -> float:  # type: ignore[override]
        """Starts it; returns seconds until /-/ready answered 200."""
        self.started_at = time.monotonic()
        super().start(wait_ready=False)

        def serving() -> bool:
            return requests.get(f"{self.url}/-/healthy", timeout=2).status_code in (200, 503)

        wait_until(serving, ready_timeout, "the exporter to answer")
        self.serving_after = time.monotonic() - self.started_at
        wait_until(self.ready, ready_timeout, "the exporter to be ready")
        return time.monotonic() - self.started_at

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
