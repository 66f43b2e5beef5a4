"""Helpers shared by the benchmarks: the machine, percentiles, processes, tables."""

from __future__ import annotations

import datetime
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (requests.RequestException, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Exporter:
    """`python -m exporter run` as a subprocess, with a config written from a dict."""

    def __init__(self, workdir: Path, config: dict[str, Any], api_key: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "LEMONDATA_API_KEY"}
        self.env["LEMONDATA_API_KEY"] = api_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.serving_after = 0.0  # seconds from spawn to the first HTTP answer

    def start(self, ready_timeout: float = 120.0) -> float:
        """Starts it; returns seconds until /-/ready answered 200."""
        log = (self.workdir / "exporter.log").open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "run",
                "--config.file",
                str(self.config_path),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
            ],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"exporter exited: {(self.workdir / 'exporter.log').read_text()}"
                )
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

        def serving() -> bool:
            return requests.get(f"{self.url}/-/healthy", timeout=2).status_code in (200, 503)

        wait_until(serving, ready_timeout, "the exporter to answer")
        self.serving_after = time.monotonic() - self.started_at
        wait_until(ready, ready_timeout, "the exporter to be ready")
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
